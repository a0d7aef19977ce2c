"""The sphere search beside the network: its own process gives exactly the in-process result,
and a failed or stuck process falls back to searching here."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from datamodules.phantoms import PhantomConfig, generate_phantom
from geometry.spacing import find_sphere_candidates
from planning import sphere_search
from planning.sphere_search import start_sphere_search


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A phantom with a calibration sphere (seed with an accepted one)."""
    for seed in range(20):
        s = generate_phantom(seed, PhantomConfig(min_side=300, max_side=420, p_sphere=1.0))
        if "sphere" in s.meta:
            return s.image.astype(np.float32)
    raise AssertionError("no phantom with a sphere in 20 seeds")


def same(a: list, b: list) -> None:
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.center, y.center)
        assert (x.radius_px, x.mm_per_px, x.score, x.accepted, x.why, x.metrics) == (
            y.radius_px, y.mm_per_px, y.score, y.accepted, y.why, y.metrics)  # fmt: skip


def test_own_process_gives_the_in_process_candidates(image):
    search = start_sphere_search(image, own_process=True)
    try:
        assert search._proc is not None  # it really ran in another process
        got = search.result()
    finally:
        search.close()
    same(got, find_sphere_candidates(image))


def test_thread_gives_the_same(image):
    search = start_sphere_search(image)
    try:
        same(search.result(), find_sphere_candidates(image))
    finally:
        search.close()


def run_instead(monkeypatch, argv: list[str]) -> None:
    """Make the search process run ``argv`` (a broken or stuck stand-in) instead."""
    real = subprocess.Popen
    monkeypatch.setattr(sphere_search.subprocess, "Popen", lambda cmd, **kw: real(argv, **kw))


SLEEP = [sys.executable, "-c", "import time; time.sleep(30)"]


@pytest.mark.parametrize("argv", [
    ["/nonexistent/python"],
    [sys.executable, "-c", "import sys; sys.exit(3)"],
    [sys.executable, "-c", "print('not json')"],
])  # fmt: skip
def test_failed_process_falls_back_to_searching_here(image, monkeypatch, argv):
    run_instead(monkeypatch, argv)
    search = start_sphere_search(image, own_process=True)
    try:
        same(search.result(), find_sphere_candidates(image))
    finally:
        search.close()


def test_stuck_process_is_killed_and_searched_here(image, monkeypatch):
    monkeypatch.setattr(sphere_search, "TIMEOUT_S", 0.5)
    run_instead(monkeypatch, SLEEP)
    search = start_sphere_search(image, own_process=True)
    try:
        same(search.result(), find_sphere_candidates(image))
        assert search._proc.poll() is not None  # killed, not left running
    finally:
        search.close()


def test_close_stops_a_running_search(image, monkeypatch):
    run_instead(monkeypatch, SLEEP)
    search = start_sphere_search(image, own_process=True)
    proc = search._proc
    search.close()
    assert proc.poll() is not None


# -- batch mode: one search process serves every image -------------------------------------------


def ready(server: sphere_search.SearchServer, timeout: float = 60.0) -> None:
    """Wait until the server has said it is ready (its imports are done)."""
    import time

    t0 = time.monotonic()
    while not server._up():
        assert time.monotonic() - t0 < timeout, "search server never became ready"
        time.sleep(0.05)


def test_server_serves_many_images_in_one_process(image):
    images = [image, image[:, ::-1].copy(), np.random.default_rng(0).random((300, 340), np.float32)]
    with sphere_search.SearchServer() as server:
        ready(server)
        pid = server._proc.pid
        for img in images:
            search = server.start(img)
            assert isinstance(search, sphere_search.ServedSearch)
            try:
                got = search.result()
            finally:
                search.close()
            want = find_sphere_candidates(img)
            if want:
                same(got, want)
            else:
                assert got == []
        assert server._proc.pid == pid  # the same process answered all three
        proc = server._proc
    assert proc.poll() is not None  # closed with the server


def test_server_not_yet_ready_searches_in_a_thread(image):
    with sphere_search.SearchServer() as server:
        search = server.start(image)  # microseconds after the start: imports are not done
        assert isinstance(search, sphere_search.SphereSearch)
        same(search.result(), find_sphere_candidates(image))
        search.close()


def test_dead_server_is_replaced_and_the_image_searched_here(image):
    with sphere_search.SearchServer() as server:
        ready(server)
        old = server._proc
        old.kill()
        old.wait()
        search = server.start(image)  # this image: searched here; a new server starts
        same(search.result(), find_sphere_candidates(image))
        search.close()
        ready(server)
        assert server._proc is not old and server._proc.poll() is None
        search = server.start(image)
        assert isinstance(search, sphere_search.ServedSearch)
        same(search.result(), find_sphere_candidates(image))


READY_THEN = "import sys; sys.stdout.buffer.write({ready!r}); sys.stdout.flush(); {then}"


@pytest.mark.parametrize("then", [
    "sys.stdin.buffer.readline(); sys.exit(3)",  # dies on the request
    "sys.stdin.buffer.readline(); sys.stdout.buffer.write(b'\\x05' + bytes(7) + b'junk!'); "
    "sys.stdout.flush(); import time; time.sleep(30)",  # answers nonsense
    "import time; time.sleep(30)",  # stuck: never answers
])  # fmt: skip
def test_failing_server_falls_back_to_searching_here(image, monkeypatch, then):
    monkeypatch.setattr(sphere_search, "TIMEOUT_S", 2.0)
    run_instead(monkeypatch, [sys.executable, "-c",
                              READY_THEN.format(ready=sphere_search.READY, then=then)])
    with sphere_search.SearchServer() as server:
        ready(server)
        search = server.start(image)
        assert isinstance(search, sphere_search.ServedSearch)
        same(search.result(), find_sphere_candidates(image))
        search.close()


@pytest.mark.parametrize("argv", [
    ["/nonexistent/python"],
    [sys.executable, "-c", "print('not ready')"],
])  # fmt: skip
def test_server_that_never_gets_ready_leaves_the_search_here(image, monkeypatch, argv):
    run_instead(monkeypatch, argv)
    with sphere_search.SearchServer() as server:
        for _ in range(2):
            search = server.start(image)
            assert isinstance(search, sphere_search.SphereSearch)
            same(search.result(), find_sphere_candidates(image))
            search.close()


def test_closing_a_running_served_search_stops_it(image, monkeypatch):
    import time

    run_instead(monkeypatch, [sys.executable, "-c", READY_THEN.format(
        ready=sphere_search.READY, then="import time; time.sleep(30)")])
    with sphere_search.SearchServer() as server:
        ready(server)
        proc = server._proc
        search = server.start(image)
        t0 = time.monotonic()
        search.close()
        assert time.monotonic() - t0 < 10 and proc.poll() is not None


def test_a_server_that_never_gets_ready_is_not_relaunched_for_every_image(image, monkeypatch):
    launched = []
    real = subprocess.Popen

    def counting(cmd, **kw):
        launched.append(cmd)
        return real([sys.executable, "-c", "print('not ready')"], **kw)

    monkeypatch.setattr(sphere_search.subprocess, "Popen", counting)
    with sphere_search.SearchServer() as server:
        assert not launched  # nothing starts before the first image
        for _ in range(8):
            search = server.start(image)
            same(search.result(), find_sphere_candidates(image))
            search.close()
            if server._ready is not None:
                server._ready.result()  # let the READY wait finish before the next image
    assert len(launched) == sphere_search.MAX_LAUNCHES


def test_closing_a_server_still_starting_does_not_wait_for_it(image, monkeypatch):
    import time

    run_instead(monkeypatch, SLEEP)  # never says READY
    server = sphere_search.SearchServer()
    server.start(image).close()  # starts the (hung) server; this image is searched in a thread
    t0 = time.monotonic()
    server.close()
    assert time.monotonic() - t0 < 5


def test_an_absurd_answer_length_falls_back(image, monkeypatch):
    then = ("import json, math; shape = json.loads(sys.stdin.buffer.readline()); "
            "sys.stdin.buffer.read(4 * math.prod(shape)); sys.stdout.buffer.write(b'\\xff' * 8); "
            "sys.stdout.flush(); import time; time.sleep(30)")  # reads the request, then lies
    run_instead(monkeypatch, [sys.executable, "-c",
                              READY_THEN.format(ready=sphere_search.READY, then=then)])
    with sphere_search.SearchServer() as server:
        ready(server)
        proc = server._proc
        search = server.start(image)
        same(search.result(), find_sphere_candidates(image))
        assert proc.poll() is not None  # the broken server was killed
