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
training without that factor. The same command run again after a stop continues: models
already evaluated under the same settings (``DIR/lofo_settings.json``) are kept, not retrained.
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
from datamodules.one_line_parser import OneLineParser
from datamodules.path_limits import replace_link
from datamodules.sample import BONES
from planning.evaluate import DEFAULT_PHANTOM_SEED, evaluate, phantom_samples
from planning.output_paths import out_folder_problem
from planning.plan import path_argument

DISTANCES = ("schoettle", "ed_p_blum", "ed_p_tmc")
# Upper bounds of the numeric options (usage errors, status 2, before any training):
MAX_MINUTES = 7 * 24 * 60  # one week per model; 1e300 overflowed Lightning's max_time
# (a timedelta) with a traceback after the test set was drawn
MAX_N_TEST = 1_000  # the test set is held in memory (about 5 MB a phantom at the default
# sides) and every model plans all of it (about 1 s each)


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


def protocol_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What makes two runs' rows comparable: every protocol option and the contents of the
    training and phantom config files (a file edited in between is another protocol)."""
    from planning.batch import file_sha256

    def digest(path: str | None) -> str | None:
        return file_sha256(path) if path else None

    return {"config": str(Path(args.config).resolve()), "config_sha256": digest(args.config),
            "phantom_config": args.phantom_config and str(Path(args.phantom_config).resolve()),
            "phantom_config_sha256": digest(args.phantom_config), "minutes": args.minutes,
            "n_test": args.n_test, "test_seed": args.test_seed, "max_epochs": args.max_epochs,
            "seed": args.seed, "train_args": shlex.split(args.train_args)}


def finished_earlier(out: Path, settings: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The rows that an earlier run into ``out`` finished under the same ``settings``
    (``lofo_settings.json`` and ``lofo.json``; the factors may differ: one model per factor);
    {} when there are none, the settings differ or a file cannot be read (the run then starts
    again)."""
    try:
        if json.loads((out / "lofo_settings.json").read_text()) != settings:
            return {}
        rows = json.loads((out / "lofo.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(rows, dict):
        return {}
    return {n: r for n, r in rows.items() if isinstance(r, dict)
            and set(r) == {*DISTANCES, *(f"iou_{b}" for b in BONES)}}


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Train every variant, evaluate on the shared test set, write lofo.md / lofo.json; the
    variants an earlier run with the same settings finished are kept."""
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
    settings = protocol_settings(args)
    kept = finished_earlier(out, settings)
    # models of other factors an earlier run finished stay in the tables (a run with fewer or
    # reordered --factors dropped them from lofo.json)
    variants += [(name, [name]) for name in kept if name not in dict(variants)]
    results: dict[str, dict[str, float]] = {}
    replace_link(out / "lofo_settings.json").write_text(json.dumps(settings, indent=2))
    _write_tables(out, results, len(tests), args.minutes, len(variants))  # no earlier run's
    for name, off in variants:
        if name in kept:
            results[name] = kept[name]
            print(f"== {name}: kept from the earlier run into {out} (same settings)", flush=True)
            _write_tables(out, results, len(tests), args.minutes, len(variants))
            continue
        print(f"== {name}: training {args.minutes:g} min without {off or 'nothing'}", flush=True)
        res = fit(train_args(args.config, args.minutes, out, name, off, args.phantom_config,
                             args.max_epochs, args.seed, shlex.split(args.train_args)))
        ckpt = res.best_checkpoint or res.last_checkpoint
        module = load_module(ckpt) if ckpt else res.module
        module.eval()
        ev = evaluate(tests, out / "eval" / name, module=module, log=None)
        results[name] = summarise(ev.rows)
        print(f"   {name}: {json.dumps(results[name])}", flush=True)
        _write_tables(out, results, len(tests), args.minutes, len(variants))
    print((out / "lofo.md").read_text())
    return results


def _write_tables(out: Path, results: dict[str, dict[str, float]], n_tests: int,
                  minutes: float, total: int) -> None:
    """lofo.md / lofo.json of the models finished so far, said partial until all ``total``
    are: a run stopped midway leaves its own rows, never an earlier run's table beside its
    own eval/ files."""
    table = lofo_table(results, n_tests, minutes)
    if len(results) < total:
        table = (f"**Partial: {len(results)} of {total} models trained and evaluated (the run "
                 "was stopped, or is still running).**\n\n" + table)
    replace_link(out / "lofo.md").write_text(table)
    replace_link(out / "lofo.json").write_text(json.dumps(
        {**results, **({"_partial": f"{len(results)} of {total}"}
                       if len(results) < total else {})}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m planning.generalisation``."""
    from datamodules.phantoms.config import FACTORS

    p = OneLineParser(prog="python -m planning.generalisation",
                      description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, required=True,
                   help=f"training wall time per model (at most {MAX_MINUTES})")
    p.add_argument("--factors", required=True,
                   help=f"comma-separated factors to leave out, of: {','.join(sorted(FACTORS))} "
                   "('' trains the all-on model only)")
    p.add_argument("--no-all-on", action="store_true",
                   help="skip the all-on model (trained by another process, e.g. side by side "
                   "on a second core, with the same --n-test/--test-seed); no deltas then")
    p.add_argument("--out", type=path_argument, required=True, help="output folder")
    p.add_argument("--config", default="configs/quick.yaml", help="training preset")
    p.add_argument("--phantom-config", help="phantom YAML for training and test (default mix)")
    p.add_argument("--n-test", type=int, default=50, help=f"test phantoms (1..{MAX_N_TEST})")
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


def _error(message: str) -> int:
    """Print ``generalisation: error: <message>`` as one line; the usage status, 2."""
    from datamodules.decoder_messages import printable

    print(f"generalisation: error: {printable(message)}", file=sys.stderr)
    return 2


def _argument_problem(args: argparse.Namespace) -> str | None:
    """Why a numeric argument is out of range (a usage error), or None."""
    from lightning_modules.train import MAX_SEED  # the seeds Lightning's seed_everything takes

    if not (math.isfinite(args.minutes) and 0 < args.minutes <= MAX_MINUTES):
        return f"--minutes must be > 0 and at most {MAX_MINUTES} (a week), got {args.minutes:g}"
    if not 1 <= args.n_test <= MAX_N_TEST:
        return f"--n-test must be 1..{MAX_N_TEST}, got {args.n_test}"
    for flag, value in (("--test-seed", args.test_seed), ("--seed", args.seed)):
        if value is not None and value < 0:
            return f"{flag} must be >= 0, got {value}"
    if args.seed is not None and args.seed > MAX_SEED:
        return f"--seed must be 0..{MAX_SEED} (the seeds numpy takes), got {args.seed}"
    if args.max_epochs == 0 or args.max_epochs < -1:
        return f"--max-epochs must be -1 (no limit) or at least 1, got {args.max_epochs}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code. A usage problem is one line on stderr (status 2),
    said before any phantom is drawn or model trained."""
    from datamodules.phantoms.config import FACTORS

    args = build_parser().parse_args(argv)
    args.factors = [f for f in args.factors.split(",") if f]
    bad = [f for f in args.factors if f not in FACTORS]
    if bad:
        return _error(f"unknown factor(s) {bad}; known: {','.join(sorted(FACTORS))}")
    if args.no_all_on and not args.factors:
        return _error("--no-all-on with no --factors leaves nothing to train")
    if problem := _argument_problem(args):
        return _error(problem)
    if not Path(args.config).is_file():
        return _error(f"config {args.config} does not exist")
    try:
        conf = read_yaml(args.config)
    except ConfigFileError as err:
        return _error(str(err))
    if conf is not None and not isinstance(conf, dict):
        return _error(f"{args.config}: expected a mapping of sections")
    try:
        shlex.split(args.train_args)
    except ValueError as exc:
        return _error(f"--train-args {args.train_args!r}: {exc}")
    if problem := out_folder_problem(args.out):  # a file, under a file, a name too long
        return _error(problem)
    from lightning_modules.train import TrainingInterrupted

    try:
        run(args)
    except (TrainingInterrupted, KeyboardInterrupt):
        print(f"generalisation: interrupted; {Path(args.out) / 'lofo.md'} holds the models "
              "finished before (marked partial); run the same command to continue (finished "
              "models are kept)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
