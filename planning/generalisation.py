"""Leave-one-factor-out generalisation protocol on the phantoms.

    python -m planning.generalisation --minutes M --factors metal,collimation --out DIR
        [--config configs/quick.yaml] [--phantom-config configs/phantoms/default.yaml]
        [--n-test 50] [--test-seed 2000000] [--max-epochs -1] [--seed N] [--no-all-on]
        [--train-args "--data.num_train=4000 --data.cache_phantoms=false"]

Trains one model with every factor on and one per factor switched off (``PhantomConfig.without``;
factors: ``datamodules.phantoms.config.FACTORS``), each for M minutes of wall time, evaluates
every model on ONE fixed phantom test set drawn with every factor enabled (the default mixture
or ``--phantom-config``; no factor switched off), and writes ``DIR/lofo.md``
(Schoettle, p_blum and p_tmc medians in mm, mean IoU per bone, deltas against all-on) and
``DIR/lofo.json``. A positive delta of a distance (or a negative one of an IoU) is the cost of
training without that factor.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.config_file import ConfigFileError, read_yaml
from datamodules.sample import BONES
from planning.evaluate import DEFAULT_PHANTOM_SEED, evaluate, phantom_samples

DISTANCES = ("schoettle", "ed_p_blum", "ed_p_tmc")


def max_time(minutes: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for a wall-time budget (at least one second)."""
    sec = max(1, int(round(minutes * 60)))
    return f"{sec // 86400:02d}:{sec % 86400 // 3600:02d}:{sec % 3600 // 60:02d}:{sec % 60:02d}"


def train_args(config: str, minutes: float, out: Path, name: str, factors_off: list[str],
               phantom_config: str | None, max_epochs: int, seed: int | None = None,
               extra: Sequence[str] = ()) -> list[str]:
    """LightningCLI arguments of one variant's training run (``seed``: the run's global seed,
    for repeats that measure run-to-run noise; None keeps the preset's; ``extra``: further
    arguments for every variant, after the protocol's own)."""
    args = ["--config", config, f"--trainer.max_time={max_time(minutes)}",
            f"--trainer.max_epochs={max_epochs}", f"--run.root={out / 'runs'}",
            f"--run.name={name}", "--run.wandb=false",
            f"--data.phantom_overrides={json.dumps({'factors_off': factors_off})}"]
    if phantom_config:
        args.append(f"--data.phantom_config={phantom_config}")
    if seed is not None:
        args.append(f"--seed_everything={seed}")
    return args + list(extra)


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Medians of the distances (NaN-aware) and mean IoU per bone over the test set."""
    out = {}
    for key in DISTANCES:
        vals = np.array([float(r[key]) for r in rows], dtype=np.float64)
        out[key] = float(np.nanmedian(vals)) if np.isfinite(vals).any() else math.nan
    for bone in BONES:
        vals = np.array([float(r[f"iou_{bone}"]) for r in rows], dtype=np.float64)
        out[f"iou_{bone}"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
    return out


def lofo_table(results: dict[str, dict[str, float]], n_test: int, minutes: float) -> str:
    """Markdown table: one row per variant, deltas against ``all_on`` (none without it)."""
    base = results.get("all_on")
    head = ["trained without", "Schoettle mm", "d", "p_blum mm", "d", "p_tmc mm", "d"]
    head += [f"IoU {b}" for b in BONES] + ["d IoU mean"]
    lines = [
        f"Leave-one-factor-out: each model trained {minutes:g} min; test set: {n_test} phantoms "
        "with every factor enabled (medians of distances, mean IoU).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, r in results.items():
        cells = ["(nothing: all on)" if name == "all_on" else name]
        delta = base is not None and name != "all_on"
        for key in DISTANCES:
            cells.append(f"{r[key]:.2f}")
            cells.append(f"{r[key] - base[key]:+.2f}" if delta else "")
        cells += [f"{r[f'iou_{b}']:.3f}" for b in BONES]
        d_iou = np.mean([r[f"iou_{b}"] - base[f"iou_{b}"] for b in BONES]) if delta else 0.0
        cells.append(f"{d_iou:+.3f}" if delta else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Train every variant, evaluate on the shared test set, write lofo.md / lofo.json."""
    from datamodules.phantoms import PhantomConfig
    from lightning_modules.module import load_module
    from lightning_modules.train import fit

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = (read_yaml(args.config) or {}).get("data", {})
    sides = {k: data[k] for k in ("min_side", "max_side") if data.get(k)}
    pcfg = (PhantomConfig.from_yaml(args.phantom_config, **sides) if args.phantom_config
            else PhantomConfig(**sides))
    tests = list(phantom_samples(args.n_test, args.test_seed, pcfg))
    variants = [] if args.no_all_on else [("all_on", [])]
    variants += [(f, [f]) for f in args.factors]
    results: dict[str, dict[str, float]] = {}
    for name, off in variants:
        print(f"== {name}: training {args.minutes:g} min without {off or 'nothing'}", flush=True)
        res = fit(train_args(args.config, args.minutes, out, name, off, args.phantom_config,
                             args.max_epochs, args.seed, shlex.split(args.train_args)))
        ckpt = res.best_checkpoint or res.last_checkpoint
        module = load_module(ckpt) if ckpt else res.module
        module.eval()
        ev = evaluate(tests, out / "eval" / name, module=module, log=None)
        results[name] = summarise(ev.rows)
        print(f"   {name}: {json.dumps(results[name])}", flush=True)
    (out / "lofo.md").write_text(lofo_table(results, len(tests), args.minutes))
    (out / "lofo.json").write_text(json.dumps(results, indent=2))
    print((out / "lofo.md").read_text())
    return results


def build_parser() -> argparse.ArgumentParser:
    from datamodules.phantoms.config import FACTORS

    p = argparse.ArgumentParser(prog="python -m planning.generalisation",
                                description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, required=True, help="training wall time per model")
    p.add_argument("--factors", required=True,
                   help=f"comma-separated factors to leave out, of: {','.join(sorted(FACTORS))} "
                   "('' trains the all-on model only)")
    p.add_argument("--no-all-on", action="store_true",
                   help="skip the all-on model (trained by another process, e.g. side by side "
                   "on a second core, with the same --n-test/--test-seed); no deltas then")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--config", default="configs/quick.yaml", help="training preset")
    p.add_argument("--phantom-config", help="phantom YAML for training and test (default mix)")
    p.add_argument("--n-test", type=int, default=50, help="test phantoms")
    p.add_argument("--test-seed", type=int, default=DEFAULT_PHANTOM_SEED)
    p.add_argument("--max-epochs", type=int, default=-1,
                   help="epoch cap (-1: none, the wall time decides)")
    p.add_argument("--seed", type=int, default=None,
                   help="training seed of every variant (default: the preset's); repeat the "
                   "protocol with other seeds to see how large run-to-run differences are")
    p.add_argument("--train-args", default="",
                   help="extra training arguments for every variant, one string, e.g. "
                   "'--data.num_train=4000 --data.cache_phantoms=false'")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from datamodules.phantoms.config import FACTORS

    args = build_parser().parse_args(argv)
    args.factors = [f for f in args.factors.split(",") if f]
    bad = [f for f in args.factors if f not in FACTORS]
    if bad:
        print(f"generalisation: unknown factor(s) {bad}; known: {','.join(sorted(FACTORS))}",
              file=sys.stderr)
        return 2
    if args.no_all_on and not args.factors:
        print("generalisation: --no-all-on with no --factors leaves nothing to train",
              file=sys.stderr)
        return 2
    if not (math.isfinite(args.minutes) and args.minutes > 0) or args.n_test < 1:
        print("generalisation: --minutes must be > 0 and --n-test >= 1", file=sys.stderr)
        return 2
    for flag, value in (("--test-seed", args.test_seed), ("--seed", args.seed)):
        if value is not None and value < 0:
            print(f"generalisation: {flag} must be >= 0, got {value}", file=sys.stderr)
            return 2
    if args.max_epochs == 0 or args.max_epochs < -1:
        print(f"generalisation: --max-epochs must be -1 (no limit) or at least 1, got "
              f"{args.max_epochs}", file=sys.stderr)
        return 2
    if not Path(args.config).is_file():
        print(f"generalisation: config {args.config} does not exist", file=sys.stderr)
        return 2
    try:
        conf = read_yaml(args.config)
    except ConfigFileError as err:
        print(f"generalisation: {err}", file=sys.stderr)
        return 2
    if conf is not None and not isinstance(conf, dict):
        print(f"generalisation: {args.config}: expected a mapping of sections", file=sys.stderr)
        return 2
    try:
        shlex.split(args.train_args)
    except ValueError as exc:
        print(f"generalisation: --train-args {args.train_args!r}: {exc}", file=sys.stderr)
        return 2
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
