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
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

TIMEOUT_S = 60.0  # the search is bounded (~1 s at 4k px); a child slower than this is stuck


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


def _child() -> None:
    """Process body: stdin = one JSON line with the shape, then the float32 pixels; stdout =
    the candidates as JSON."""
    shape = tuple(int(v) for v in json.loads(sys.stdin.buffer.readline()))
    size = int(np.prod(shape)) * 4
    data = sys.stdin.buffer.read(size)
    if len(data) != size:
        raise SystemExit("sphere_search: truncated image on stdin")
    image = np.frombuffer(data, dtype=np.float32).reshape(shape)
    sys.stdout.buffer.write(_to_json(search_now(image)))


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
        root = str(Path(__file__).resolve().parents[1])  # the folder holding `planning/`
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}  # fmt: skip
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "planning.sphere_search"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        except OSError:
            return False
        self._proc = proc
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sphere-search-io")
        self._future = self._pool.submit(self._exchange, proc)
        return True

    def _exchange(self, proc: subprocess.Popen) -> list[Any]:
        """Send the image, read the answer; search here if the process fails (any way)."""
        try:
            header = json.dumps(list(self._image.shape)).encode() + b"\n"
            out, _ = proc.communicate(header + self._image.tobytes(), timeout=TIMEOUT_S)
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


if __name__ == "__main__":
    _child()
