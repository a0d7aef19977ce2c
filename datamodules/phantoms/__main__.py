"""Write phantoms as a dataset: ``python -m datamodules.phantoms --out DIR --n N --seed S
[--config configs/phantoms/X.yaml]``.

Sample i is ``phantom_{i:05d}``, generated with seed ``sample_seed(S, i)``, so any sample can be
regenerated alone and runs with different N share their first samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

from datamodules.dataset_io import write_sample
from datamodules.one_line_parser import OneLineParser
from datamodules.phantoms.config import PhantomConfig, side_problem
from datamodules.phantoms.generate import generate_phantom, sample_seed
from datamodules.progress import progress_iter


def write_phantoms(
    out: str | Path, n: int, seed: int, config: PhantomConfig | None = None, progress: bool = True
) -> list[Path]:
    """Generate ``n`` phantoms and write them under ``out``; return the image paths. A sample
    whose writing is interrupted (Ctrl-C, a full disk) is removed again: the folder never
    holds an image without its masks or annotation. Each annotation records the config's digest
    (``meta.config_digest``), so that a later run with another config is refused."""
    paths = []
    digest = config_digest(config or PhantomConfig())
    # a bar on a terminal, plain lines in a log (tqdm's carriage returns filled it)
    indices = progress_iter(range(n), "phantoms", stream=sys.stderr) if progress else range(n)
    for i in indices:
        sample = generate_phantom(sample_seed(seed, i), config, sample_id=f"phantom_{i:05d}")
        sample.meta["config_digest"] = digest
        try:
            paths.append(write_sample(out, sample))
        except BaseException:
            _remove_sample(Path(out), sample.id)
            raise
    return paths


def _remove_sample(root: Path, sample_id: str) -> None:
    """Remove whatever of sample ``sample_id`` was written (image, masks, annotation)."""
    for path in [root / "images" / f"{sample_id}.png", root / "annotations" / f"{sample_id}.json",
                 *(root / "masks").glob(f"{sample_id}_*.png")]:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def config_digest(config: PhantomConfig) -> str:
    """SHA-256 (16 hex digits) of every value of a phantom config: equal digests draw equal
    phantoms from equal seeds."""
    text = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def other_set(out: Path, n: int, seed: int, config: PhantomConfig) -> tuple[str, str] | None:
    """The first ``phantom_NNNNN`` in ``out`` (of the ``n`` to write) made with another seed
    (its annotation's ``meta.seed``) or another config (``meta.config_digest``, where recorded),
    with which of the two ("--seed" or "--config"); None: writing would not mix two sets."""
    from datamodules.annotations import AnnotationError, load_json

    digest = config_digest(config)
    for i in range(n):
        path = out / "annotations" / f"phantom_{i:05d}.json"
        if not path.is_file():
            continue
        try:
            meta = load_json(path).get("meta", {})
            recorded, recorded_digest = meta.get("seed"), meta.get("config_digest")
        except (AnnotationError, AttributeError):
            return path.stem, "--seed"
        if recorded != sample_seed(seed, i):
            return path.stem, "--seed"
        if recorded_digest is not None and recorded_digest != digest:
            return path.stem, "--config (or --min-side/--max-side)"
    return None


def main(argv: list[str] | None = None) -> int:
    """``make phantoms``; 0 when written, 2 for a bad argument or config file."""
    parser = OneLineParser(prog="phantoms",
                           description="Write synthetic lateral knee radiographs.")
    parser.add_argument("--out", required=True, help="dataset folder to create/extend")
    parser.add_argument("--n", type=int, default=200, help="number of samples")
    parser.add_argument("--seed", type=int, default=0, help="base seed")
    parser.add_argument("--min-side", type=int, default=None, help="smallest image side (px)")
    parser.add_argument("--max-side", type=int, default=None, help="largest image side (px)")
    parser.add_argument("--config", default=None, help="phantom YAML (configs/phantoms/)")
    args = parser.parse_args(argv)
    if args.n < 0:
        parser.error("--n must be >= 0")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    try:
        cfg = PhantomConfig.from_yaml(args.config) if args.config else PhantomConfig()
    except ValueError as err:  # a bad config file is one line naming it, not a usage text
        print(f"phantoms: error: {err}", file=sys.stderr)
        return 2
    if args.min_side is not None:
        cfg.min_side = args.min_side
    if args.max_side is not None:
        cfg.max_side = args.max_side
    if problem := side_problem(cfg.min_side, cfg.max_side, ("--min-side", "--max-side")):
        parser.error(problem)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"phantoms: error: --out {out} is a file, not a folder", file=sys.stderr)
        return 2
    if out.is_dir() and (taken := other_set(out, args.n, args.seed, cfg)):
        print(f"phantoms: error: --out {out} already holds {taken[0]} made with another "
              f"{taken[1]}: writing there would mix two phantom sets; choose another folder, or "
              "the settings it was made with to extend it", file=sys.stderr)
        return 2
    try:
        paths = write_phantoms(out, args.n, args.seed, cfg)
    except KeyboardInterrupt:
        done = len(list((out / "annotations").glob("phantom_*.json"))) if out.is_dir() else 0
        print(f"phantoms: interrupted: {out} holds {done} complete phantoms (the one being "
              "written was removed); run the same command to finish", file=sys.stderr)
        return 130
    except OSError as err:
        print(f"phantoms: error: cannot write into {out}: {err.strerror or err} "
              f"({err.filename or out})", file=sys.stderr)
        return 1
    return 0 if len(paths) == args.n else 1


if __name__ == "__main__":
    raise SystemExit(main())
