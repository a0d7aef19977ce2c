"""The calibration-sphere search run beside the network, so that a plan does not wait for it.

The search needs only the image, the network needs no spacing: both can run at once. In a warm
process (batch mode) a thread is enough, as OpenCV and ONNX Runtime release the GIL. In a cold
``make plan`` the search would share the GIL with ``import torch`` (~1.2 s of mostly
GIL-holding work) and pay its own scipy import (~0.35 s) on top; so the single-image CLI starts
it in its own process first (``python -m planning.sphere_search``: a fresh interpreter that
imports only what the search needs; no forked OpenCV or OpenMP state, and unlike
multiprocessing's ``spawn`` it never re-runs the caller's script), which runs on the other core
while torch loads. The image goes to it on stdin, and the candidates come back on stdout, as
raw bytes and JSON (nothing is pickled). When that process cannot start,
dies or takes longer than ``TIMEOUT_S``, the search runs in this process instead: same result.

Batch mode keeps one such process for all its images (:class:`SearchServer`, started with
``--serve``): a search thread shares the GIL with torch's eager forward (hundreds of small ops,
each needing the GIL back), which cost ~40 ms per image in a warm checkpoint batch (A/B,
``benchmarks/bench_plan.py``'s setting); a process per image would wait for its start-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

TIMEOUT_S = 60.0  # the search is bounded (~1 s at 4k px); a child slower than this is stuck
READY = b"kneeplan-sphere-search-ready\n"  # a server's first line: its imports are done
MAX_LAUNCHES = 3  # servers started in a row that never got ready: then threads for the batch
MAX_ANSWER_BYTES = 64 << 20  # an answer longer than this is a broken server, not candidates


def search_now(image: np.ndarray) -> list[Any]:
    """``find_sphere_candidates(image)``, imported here (with its scipy) in whichever thread or
    process runs it."""
    from geometry.spacing import find_sphere_candidates

    return find_sphere_candidates(image)


def _to_json(cands: list[Any]) -> bytes:
    return json.dumps([
        {"center": [float(v) for v in c.center], "radius_px": c.radius_px,
         "mm_per_px": c.mm_per_px, "score": c.score, "accepted": c.accepted, "why": c.why,
         "metrics": c.metrics}
        for c in cands
    ]).encode()  # fmt: skip


def _from_json(data: bytes) -> list[Any]:
    from geometry.spacing import SphereDetection

    return [
        SphereDetection(np.asarray(d["center"], dtype=np.float64), float(d["radius_px"]),
                        float(d["mm_per_px"]), float(d["score"]), bool(d["accepted"]),
                        str(d["why"]), {str(k): float(v) for k, v in d["metrics"].items()})
        for d in json.loads(data)
    ]  # fmt: skip


def _request(image: np.ndarray) -> bytes:
    """One request: a JSON line with the shape, then the float32 pixels."""
    return json.dumps(list(image.shape)).encode() + b"\n" + image.tobytes()


def _read_request(stream: Any) -> np.ndarray | None:
    """The image of the next request on ``stream`` (None: end of input)."""
    line = stream.readline()
    if not line:
        return None
    shape = tuple(int(v) for v in json.loads(line))
    size = int(np.prod(shape)) * 4
    data = stream.read(size)
    if len(data) != size:
        raise SystemExit("sphere_search: truncated image on stdin")
    return np.frombuffer(data, dtype=np.float32).reshape(shape)


def _child(serve: bool = False) -> None:
    """Process body: one request on stdin, its candidates as JSON on stdout; ``serve``: requests
    until end of input, each answer an 8-byte little-endian length and the JSON."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print cannot corrupt the answers
    if serve:  # import what the search needs, then say so: images go to a thread until then
        import scipy.ndimage  # noqa: F401 (what the fits import when they first run)
        import scipy.optimize  # noqa: F401
        import scipy.special  # noqa: F401

        search_now(np.zeros((64, 64), np.float32))
        out.write(READY)
        out.flush()
    while (image := _read_request(inp)) is not None:
        body = _to_json(search_now(image))
        if not serve:
            out.write(body)
            return
        out.write(len(body).to_bytes(8, "little") + body)
        out.flush()


def _spawn(*args: str) -> subprocess.Popen:
    """``python -m planning.sphere_search [args]`` with pipes (stderr discarded), the folder
    holding ``planning/`` first on its PYTHONPATH; OSError when it cannot start."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "planning.sphere_search", *args], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip


@contextlib.contextmanager
def _deadline(proc: subprocess.Popen) -> Iterator[None]:
    """Kill ``proc`` if the block takes longer than ``TIMEOUT_S`` (a blocked read then ends)."""
    timer = threading.Timer(TIMEOUT_S, proc.kill)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


class SphereSearch:
    """A search under way; ``result()`` waits for its candidates (best first)."""

    def __init__(self, image: np.ndarray, own_process: bool) -> None:
        self._image = np.ascontiguousarray(image, dtype=np.float32)
        self._proc: subprocess.Popen | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future | None = None
        self._closing = False
        if own_process and self._start_process():
            return
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sphere-search")
        self._future = self._pool.submit(search_now, self._image)

    def _start_process(self) -> bool:
        try:
            proc = _spawn()
        except OSError:
            return False
        self._proc = proc
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sphere-search-io")
        self._future = self._pool.submit(self._exchange, proc)
        return True

    def _exchange(self, proc: subprocess.Popen) -> list[Any]:
        """Send the image, read the answer; search here if the process fails (any way)."""
        try:
            out, _ = proc.communicate(_request(self._image), timeout=TIMEOUT_S)
            if proc.returncode == 0:
                return _from_json(out)
        except (subprocess.TimeoutExpired, OSError, ValueError, KeyError, TypeError):
            proc.kill()
            proc.wait()
        return [] if self._closing else search_now(self._image)

    def result(self) -> list[Any]:
        """The candidates, best first (waits for the search)."""
        assert self._future is not None
        return self._future.result()

    def close(self) -> None:
        """Stop the search if it is still running and release its thread and process."""
        self._closing = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._proc is not None:
            self._proc.wait()
            self._proc = None


def start_sphere_search(image: np.ndarray, own_process: bool = False) -> SphereSearch:
    """Start the search for ``image`` ((H, W) in [0, 1]) in a thread, or in its own process
    (``own_process``: for a cold process, before torch is imported)."""
    return SphereSearch(image, own_process)


def _read_exact(stream: Any, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError("sphere search server: answer cut short")
    return data


class SearchServer:
    """One search process that serves many images in turn (batch mode).

    ``start(image)`` returns a search whose ``result()`` and ``close()`` behave as
    :class:`SphereSearch`'s. The process is started by the first ``start`` (a batch that needs
    no search starts none). When it cannot start, dies or is stuck (> ``TIMEOUT_S``) that image
    is searched in this process instead and the next image starts a new server, at most
    ``MAX_LAUNCHES`` in a row that never get ready.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._io = ThreadPoolExecutor(1, thread_name_prefix="sphere-server-io")
        self._ready: Future | None = None
        self._launches = 0  # in a row, without one getting ready

    def _launch(self) -> None:
        """Start the process; its READY line is awaited in the I/O thread (meanwhile, and
        whenever it is not up, ``start`` searches in a thread of this process)."""
        self._launches += 1
        try:
            self._proc = _spawn("--serve")
        except OSError:
            self._proc, self._ready = None, None
            return
        self._ready = self._io.submit(self._await_ready, self._proc)

    def _await_ready(self, proc: subprocess.Popen) -> bool:
        assert proc.stdout is not None
        try:
            with _deadline(proc):
                ok = proc.stdout.readline() == READY
        except (OSError, ValueError):
            ok = False
        if not ok:
            proc.kill()
        return ok

    def _up(self) -> bool:
        """Whether the server is ready for a request now (restarted if it died)."""
        if self._proc is not None and self._proc.poll() is not None:
            self._proc, self._ready = None, None
        if self._proc is None:
            if self._launches < MAX_LAUNCHES:
                self._launch()
            return False
        up = self._ready is not None and self._ready.done() and self._ready.result()
        if up:
            self._launches = 0
        return up

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _exchange(self, image: np.ndarray, handle: ServedSearch) -> list[Any]:
        proc = self._proc
        if proc is not None:
            assert proc.stdin is not None and proc.stdout is not None
            try:
                with _deadline(proc):  # a stuck search ends the read
                    proc.stdin.write(_request(image))
                    proc.stdin.flush()
                    size = int.from_bytes(_read_exact(proc.stdout, 8), "little")
                    if size > MAX_ANSWER_BYTES:
                        raise ValueError(f"sphere search server: a {size}-byte answer")
                    return _from_json(_read_exact(proc.stdout, size))
            except Exception:  # noqa: BLE001 (any broken answer: kill it, search here)
                self._kill()
        return [] if handle.cancelled else search_now(image)

    def start(self, image: np.ndarray) -> ServedSearch | SphereSearch:
        """Send ``image`` ((H, W) in [0, 1]) to the server; its candidates come back later.
        While the server is starting (or cannot), the image is searched in a thread."""
        if not self._up():
            return SphereSearch(image, own_process=False)
        image = np.ascontiguousarray(image, dtype=np.float32)
        handle = ServedSearch(self)
        handle.future = self._io.submit(self._exchange, image, handle)
        return handle

    def cancel(self, handle: ServedSearch) -> None:
        """Abandon a search still running: the server is stopped (the next start restarts it)."""
        if handle.future is not None and not handle.future.done():
            handle.cancelled = True
            if self._proc is not None:
                self._proc.kill()
            with contextlib.suppress(Exception):
                handle.future.result()

    def close(self) -> None:
        """Stop the server process and its I/O thread (a server still starting is killed, not
        waited for)."""
        if self._proc is not None and not (self._ready is not None and self._ready.done()):
            self._proc.kill()
        self._io.shutdown(wait=True, cancel_futures=True)
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()  # end of input: the server exits
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._kill()
            self._proc = None

    def __enter__(self) -> SearchServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ServedSearch:
    """A :class:`SearchServer` request: ``result()`` waits for the candidates, ``close()``
    abandons it if still running."""

    def __init__(self, server: SearchServer) -> None:
        self.server = server
        self.future: Future | None = None
        self.cancelled = False  # abandoned: a failed exchange then searches nothing here

    def result(self) -> list[Any]:
        """The candidates, best first (waits for the search)."""
        assert self.future is not None
        return self.future.result()

    def close(self) -> None:
        """Abandon the search if it is still running."""
        self.server.cancel(self)


if __name__ == "__main__":
    _child(serve="--serve" in sys.argv[1:])
