"""Phantom generation speed per core vs what a quick-preset training step consumes.

Run: ``python benchmarks/bench_phantoms.py [--n 40] [--steps 6] [--config configs/phantoms/...]``.
OpenCV and torch are limited to one thread, so the rates are per core; CPU (process) time is
used, robust to other jobs sharing the machine. Prints samples/s at ~1024 px (the default
mixture; target >= 10) and at the quick preset's sizes (256-400 px), and the samples/s that one
quick-preset training step consumes (batch 4, 128 px, 2 hourglasses): the generator must be at
least 3x faster so that on-the-fly data never starves training.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from datamodules.phantoms import PhantomConfig, generate_phantom  # noqa: E402

TARGET_RATE = 10.0
TARGET_RATIO = 3.0


def phantom_rate(cfg: PhantomConfig, n: int) -> tuple[float, float, dict[str, int]]:
    """(samples/s by CPU time, mean side px, style counts) over seeds 1..n after a warm-up."""
    generate_phantom(0, cfg)
    pixels, styles = [], {}
    c0 = time.process_time()
    for seed in range(1, n + 1):
        s = generate_phantom(seed, cfg)
        pixels.append(np.prod(s.shape))
        styles[s.meta["style"]] = styles.get(s.meta["style"], 0) + 1
    cpu = time.process_time() - c0
    return n / cpu, float(np.sqrt(np.mean(pixels))), styles


def quick_step_rate(steps: int) -> tuple[float, float]:
    """(samples/s consumed, s per step) of the quick preset's training step on one thread."""
    from bench_step import Stepper, make_batch

    from lightning_modules.shgn import MultiTaskSHGN

    q = yaml.safe_load((ROOT / "configs" / "quick.yaml").read_text())
    m, d = q["model"], q["data"]
    net = MultiTaskSHGN(stem_channels=m["c1"], stem_residual_channels=m["c2"],
                        hourglass_channels=m["c_star"], num_stacks=m["num_stacks"],
                        depth=m["depth"], norm=m["norm"], **(m.get("net_kwargs") or {}))
    stepper = Stepper(net, use_gradnorm=True)
    batch = make_batch(d["batch_size"], d["size"])
    stepper.step(batch)
    times = []
    for _ in range(steps):
        c0 = time.process_time()
        stepper.step(batch)
        times.append(time.process_time() - c0)
    t = statistics.median(times)
    return d["batch_size"] / t, t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="phantoms per size")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps")
    parser.add_argument("--config", type=Path, help="phantom YAML (default: the mixture)")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)

    def cfg(lo: int, hi: int) -> PhantomConfig:
        if args.config:
            return PhantomConfig.from_yaml(args.config, min_side=lo, max_side=hi)
        return PhantomConfig(min_side=lo, max_side=hi)

    big, side, styles = phantom_rate(cfg(896, 1152), args.n)
    print(f"phantoms ~{side:.0f} px: {big:.1f} samples/s per core ({1000 / big:.0f} ms), "
          f"styles {styles}; target >= {TARGET_RATE:.0f}: "
          f"{'OK' if big >= TARGET_RATE else 'BELOW TARGET'}")
    small, side_q, _ = phantom_rate(cfg(256, 400), args.n)
    print(f"phantoms ~{side_q:.0f} px (quick preset sizes): {small:.1f} samples/s per core")
    need, step = quick_step_rate(args.steps)
    print(f"quick-preset training step: {step * 1000:.0f} ms per batch of 4 = {need:.1f} "
          f"samples/s consumed per core")
    ratio_big, ratio_small = big / need, small / need
    print(f"generator / training: {ratio_big:.1f}x at 1024 px, {ratio_small:.1f}x at quick "
          f"sizes; target >= {TARGET_RATIO:.0f}x: "
          f"{'OK' if min(ratio_big, ratio_small) >= TARGET_RATIO else 'BELOW TARGET'} "
          f"(load avg {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
