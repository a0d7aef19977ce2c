"""Phantom generation speed: samples per second on ONE core at ~1024 px (single process).

Run: ``python benchmarks/bench_phantoms.py [--n 60]``. OpenCV is limited to one thread so the
number is per core; target >= 20 samples/s so on-the-fly data never starves training. Both the
wall-clock rate and the CPU-time rate (process time, robust to other jobs sharing the machine)
are printed; the CPU-time rate is the per-core figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from datamodules.phantoms import PhantomConfig, generate_phantom  # noqa: E402

TARGET = 20.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    cfg = PhantomConfig(min_side=896, max_side=1152)  # ~1024 px images, full realism
    generate_phantom(0, cfg)  # warm-up (imports, allocator)
    pixels = []
    t0, c0 = time.perf_counter(), time.process_time()
    for seed in range(1, args.n + 1):
        pixels.append(np.prod(generate_phantom(seed, cfg).shape))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rate = args.n / cpu
    side = float(np.sqrt(np.mean(pixels)))
    print(
        f"phantoms: {rate:.1f} samples/s per core by CPU time ({1000 * cpu / args.n:.1f} ms), "
        f"{args.n / wall:.1f} samples/s wall ({1000 * wall / args.n:.1f} ms); mean side "
        f"{side:.0f} px, n={args.n}, load avg {os.getloadavg()[0]:.1f}; target >= "
        f"{TARGET:.0f}/s: {'OK' if rate >= TARGET else 'BELOW TARGET'}"
    )


if __name__ == "__main__":
    main()
