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
