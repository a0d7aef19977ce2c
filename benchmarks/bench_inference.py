"""Inference GFLOP/s of the paper network against baselines measured in the same run.

One 1x1x256x256 forward of ``MultiTaskSHGN()`` (eval, no autograd) is timed interleaved with
(a) the same network on PyTorch's plain ops (the code before the speed tricks, same weights),
(b) the original stacked hourglass (``reference_hourglass.PoseNet``, 4 stacks, BatchNorm, eval)
and (c) one float32 matmul of the same FLOP count; medians over ``--repeats`` rounds of wall and
CPU (process) time, and the ratios per FLOP (so the figures hold on a shared machine).

    python benchmarks/bench_inference.py [--repeats 9] [--threads 2] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_hourglass import PoseNet  # noqa: E402

from lightning_modules.shgn import MultiTaskSHGN  # noqa: E402


def flops(fn: Callable[[], object]) -> int:
    """FLOP of one call (``torch.utils.flop_counter``, 2 per multiply-add)."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9, help="timed rounds (median)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table")
    args = p.parse_args(argv)
    if args.size < 128 or args.size % 64 or args.repeats < 1 or args.threads < 1:
        p.error("--size must be a multiple of 64 and >= 128 (four hourglasses of depth 4 halve "
                "it 4 times after the stem's 4x), --repeats and --threads >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = MultiTaskSHGN().eval()
    plain = copy.deepcopy(net).requires_grad_(False)  # autograd on: the plain ops, no graph
    ref = PoseNet(in_channels=1).eval()
    x = torch.rand(1, 1, args.size, args.size)

    def ours() -> object:
        with torch.no_grad():
            return net(x)

    def ours_plain() -> object:
        with torch.enable_grad():
            return plain(x)

    def reference() -> object:
        with torch.no_grad():
            return ref(x)

    f_net, f_ref = flops(ours), flops(reference)
    n = round((f_net / 2) ** (1 / 3))  # an n x n @ n x n matmul has 2 n^3 FLOP
    a, b = torch.rand(n, n), torch.rand(n, n)
    f_mm = 2 * n**3
    cases = {"kneeplan": (ours, f_net), "kneeplan plain ops": (ours_plain, f_net),
             "reference SHG": (reference, f_ref), f"matmul {n}^3": (lambda: a @ b, f_mm)}
    with torch.no_grad():
        diff = max(float((ours().final[k] - ours_plain().final[k]).abs().max())
                   for k in net.task_names)
    print(f"paper network {f_net / 1e9:.1f} GFLOP, reference stacked hourglass {f_ref / 1e9:.1f} "
          f"GFLOP, {args.threads} threads; max |fast - plain| output difference {diff:.1e}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        ours()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            ours()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    for fn, _ in cases.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, (fn, _) in cases.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    for clock, times in (("wall", wall), ("CPU", cpu)):
        med = {k: statistics.median(v) for k, v in times.items()}
        rate = {k: cases[k][1] / med[k] / 1e9 for k in cases}
        print(f"{clock} time, median of {args.repeats}:")
        for name in cases:
            print(f"  {name:20s} {med[name]:.3f} s  {rate[name]:6.1f} GFLOP/s")
        base = rate["reference SHG"]
        print(f"  time per FLOP vs reference: kneeplan {base / rate['kneeplan']:.2f}x, plain ops "
              f"{base / rate['kneeplan plain ops']:.2f}x; kneeplan at "
              f"{rate['kneeplan'] / rate[f'matmul {n}^3']:.2f} of the matmul rate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
