"""Training-step time of the paper network with per-hourglass GradNorm vs fixed task weights.

Paper configuration (4 hourglasses, C*=256, 256 px), batch 2, CPU, RMSProp as in the paper.
Both modes run in one process on the same batch, interleaved step by step (so drifts of the
machine hit both alike); after warm-up the median of ``--steps`` steps is reported, with the
ratio GradNorm / fixed (target <= 1.10). Also prints the forward GFLOP and the FLOP count of one
step in each mode (``torch.utils.flop_counter``), the machine-independent ratio, and times the
original stacked hourglass's training step (``reference_hourglass.PoseNet``, BatchNorm, MSE on its
16 heat-maps per stack, RMSProp) in the same rounds: the per-FLOP ratio of the GradNorm step to it.

    python benchmarks/bench_step.py [--steps 7] [--warmup 2] [--threads 2] [--size 256]
        [--no-malloc-tuning] [--alone]

``--alone`` times only the GradNorm step, one network in the process as in training, and prints
its minor page faults per step: with and without ``--no-malloc-tuning`` it shows what the
allocator setting of ``lightning_modules/malloc_tuning.py`` gives a training process (interleaving
three networks in one process hides it: their steps reuse each other's freed memory).
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_hourglass import PoseNet  # noqa: E402

from lightning_modules.gradnorm import GradNorm  # noqa: E402
from lightning_modules.losses import MultiTaskLoss  # noqa: E402
from lightning_modules.malloc_tuning import keep_freed_memory  # noqa: E402
from lightning_modules.shgn import MultiTaskSHGN  # noqa: E402


def make_batch(batch_size: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Synthetic batch with overlapping masks and Gaussian heat-maps (sigma 6 px)."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")

    def blob(cx: float, cy: float, sigma: float) -> torch.Tensor:
        return torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))

    centres = torch.rand(batch_size, 7, 2, generator=g) * size
    seg = torch.stack([torch.stack([(blob(*centres[b, c], size / 5) > 0.3).float()
                                    for c in range(4)]) for b in range(batch_size)])
    lm = torch.stack([torch.stack([blob(*centres[b, 4 + c], 6.0) for c in range(2)])
                      for b in range(batch_size)])
    roi = torch.stack([blob(*centres[b, 6], 6.0)[None] for b in range(batch_size)])
    image = (0.5 * seg.sum(1, keepdim=True) + 0.1 * torch.rand(batch_size, 1, size, size,
                                                               generator=g)).clamp(0, 1)
    return {"image": image, "seg": seg, "lm": lm, "roi": roi}


class Stepper:
    """One network + optimiser; ``step`` runs a full training step in one of the two modes."""

    def __init__(self, net: MultiTaskSHGN, use_gradnorm: bool) -> None:
        self.net = net
        self.crit = MultiTaskLoss(beta=0.6)
        self.use_gradnorm = use_gradnorm
        self.gn = GradNorm(net.num_stacks, len(net.task_names), alpha=1.0,
                           task_names=net.task_names)
        self.opt = torch.optim.RMSprop(net.parameters(), lr=2.5e-4)
        self.w_opt = torch.optim.RMSprop(self.gn.parameters(), lr=0.025)

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        self.opt.zero_grad(set_to_none=True)
        out = self.net(batch["image"])
        losses = self.crit(out, batch)
        total = self.gn.total_loss(losses)  # fixed mode: weights stay at their initial 1
        if self.use_gradnorm:  # the training step's path (module.py): one fused backward
            self.w_opt.zero_grad(set_to_none=True)
            shared = [self.net.shared_params(l) for l in range(self.net.num_stacks)]
            self.gn.backward_fused(losses, out.gradnorm_taps(self.crit.task_names), shared)
        else:
            total.backward()
        self.opt.step()
        if self.use_gradnorm:
            self.w_opt.step()
            self.gn.renormalise()
        return float(total.detach())


class ReferenceStepper:
    """The original stacked hourglass trained on heat-maps at S/4 (MSE, RMSProp)."""

    def __init__(self, batch_size: int, size: int) -> None:
        self.net = PoseNet(in_channels=1).train()
        self.opt = torch.optim.RMSprop(self.net.parameters(), lr=2.5e-4)
        self.target = torch.rand(batch_size, 4, 16, size // 4, size // 4)

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(self.net(batch["image"]), self.target)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def time_alone(args: argparse.Namespace) -> int:
    """Median wall and CPU time and mean minor page faults of the GradNorm step alone."""
    stepper = Stepper(MultiTaskSHGN(), use_gradnorm=True)
    batch = make_batch(args.batch_size, args.size)
    for _ in range(max(args.warmup, 1)):
        stepper.step(batch)
    wall, cpu, faults = [], [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        stepper.step(batch)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print(f"GradNorm training step alone, batch {args.batch_size}, {args.size} px, "
          f"{args.threads} threads, median of {args.steps}: wall {statistics.median(wall):.3f} s, "
          f"CPU {statistics.median(cpu):.3f} s, minor page faults per step "
          f"{statistics.mean(faults):,.0f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=7, help="timed steps per mode (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--size", type=int, default=256, help="input side in px")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="leave glibc's allocator as it is (training calls keep_freed_memory)")
    p.add_argument("--alone", action="store_true",
                   help="time only the GradNorm step (one network per process, as training)")
    args = p.parse_args(argv)
    if not args.no_malloc_tuning:  # as `python -m lightning_modules.train` does
        print(f"allocator keeps freed memory (malloc_tuning.py): {keep_freed_memory()}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.alone:
        return time_alone(args)
    net = MultiTaskSHGN()
    n_params = sum(q.numel() for q in net.parameters())
    batch = make_batch(args.batch_size, args.size)
    fixed = Stepper(net, use_gradnorm=False)
    gradnorm = Stepper(copy.deepcopy(net), use_gradnorm=True)
    reference = ReferenceStepper(args.batch_size, args.size)
    steppers = {"fixed": fixed, "gradnorm": gradnorm, "reference": reference}

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(batch["image"][:1])
    print(f"paper network: {n_params:,} parameters; forward of 1x1x{args.size}x{args.size}: "
          f"{fc.get_total_flops() / 1e9:.1f} GFLOP")

    step_flops = {}
    for name, stepper in steppers.items():
        with FlopCounterMode(display=False) as fc:
            stepper.step(batch)  # also the first warm-up step (sets GradNorm's L(0))
        step_flops[name] = fc.get_total_flops()
    print(f"FLOP per training step (batch {args.batch_size}): fixed "
          f"{step_flops['fixed'] / 1e9:.1f} G, gradnorm {step_flops['gradnorm'] / 1e9:.1f} G, "
          f"ratio {step_flops['gradnorm'] / step_flops['fixed']:.3f}; reference stacked "
          f"hourglass {step_flops['reference'] / 1e9:.1f} G")

    for _ in range(max(args.warmup - 1, 0)):
        for stepper in steppers.values():
            stepper.step(batch)
    wall: dict[str, list[float]] = {k: [] for k in steppers}
    cpu: dict[str, list[float]] = {k: [] for k in steppers}
    for _ in range(args.steps):
        for name, stepper in steppers.items():
            t0, c0 = time.perf_counter(), time.process_time()
            stepper.step(batch)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    print(f"training step, batch {args.batch_size}, {args.size} px, {args.threads} threads, "
          f"median of {args.steps} (CPU time = process time, robust to other load):")
    ratio = 0.0
    for clock, times in (("wall", wall), ("CPU", cpu)):
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["gradnorm"] / med["fixed"]
        for name in steppers:
            print(f"  {clock:4s} {name:9s} {med[name]:.3f} s  (all: "
                  f"{', '.join(f'{t:.2f}' for t in times[name])})")
        print(f"  {clock:4s} ratio GradNorm / fixed = {ratio:.3f}  (target <= 1.10: "
              f"{'met' if ratio <= 1.10 else 'NOT met'})")
        per_flop = (med["gradnorm"] / step_flops["gradnorm"]) / (
            med["reference"] / step_flops["reference"])
        print(f"  {clock:4s} time per FLOP, GradNorm step / reference step = {per_flop:.2f}")
    print(f"  GradNorm weights after the run: {gradnorm.gn.weights.tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
