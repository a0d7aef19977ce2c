"""Write phantoms as a dataset: ``python -m datamodules.phantoms --out DIR --n N --seed S
[--config configs/phantoms/X.yaml]``.

Sample i is ``phantom_{i:05d}``, generated with seed ``sample_seed(S, i)``, so any sample can be
regenerated alone and runs with different N share their first samples.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from datamodules.dataset_io import write_sample
from datamodules.one_line_parser import OneLineParser
from datamodules.phantoms.config import PhantomConfig, side_problem
from datamodules.phantoms.generate import generate_phantom, sample_seed


def write_phantoms(
    out: str | Path, n: int, seed: int, config: PhantomConfig | None = None, progress: bool = True
) -> list[Path]:
    """Generate ``n`` phantoms and write them under ``out``; return the image paths."""
    paths = []
    for i in tqdm(range(n), desc="phantoms", unit="img", disable=not progress):
        sample = generate_phantom(sample_seed(seed, i), config, sample_id=f"phantom_{i:05d}")
        paths.append(write_sample(out, sample))
    return paths


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
    write_phantoms(args.out, args.n, args.seed, cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
