"""Compare two models evaluated on the same test set, image by image:
``python -m planning.compare A B [--out DIR] [--level 0.95] [--n-boot N] [--seed S]``.

A and B are ``make evaluate`` folders (or their ``per_image.csv``). Side-by-side medians with
overlapping CIs cannot say which model is better, and each model's median is taken over the
images where it constructed a point, so a model that fails more often looks better than it is.
Here every metric is compared on the images where both models have a value: the median of the
paired differences B - A with a percentile-bootstrap CI (``geometry.stats.median_ci``) and the
Wilcoxon signed-rank test (scipy); the images where only one model constructed no Schoettle
point are counted and compared with an exact sign test (scipy's ``binomtest``); and the review
gate of each (plans flagged, unflagged plans further off than ``--limit``). Writes
``compare.md`` / ``compare.csv`` (default ``runs/compare/<A>-vs-<B>/``) and prints the table.
Exit status: 0 written, 2 a usage problem (a folder without per_image.csv, other test sets).
"""

from __future__ import annotations

import argparse
import csv
import math
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.decoder_messages import printable
from datamodules.one_line_parser import OneLineParser
from geometry.stats import median_ci
from planning.evaluation_record import read_record
from planning.output_paths import out_folder_problem
from planning.plan import path_argument
from planning.tables import markdown_table, write_table

# (column of per_image.csv, label, lower is better)
METRICS = (("schoettle", "Schoettle point", True), ("ed_p_blum", "p_blum", True),
           ("ed_p_tmc", "p_tmc", True), ("line", "cortex line LM1", True),
           ("iou_femur", "IoU femur", False), ("iou_patella", "IoU patella", False),
           ("iou_tibia", "IoU tibia", False), ("iou_fibula", "IoU fibula", False))
MAX_CSV_BYTES = 256 << 20  # per_image.csv of 100,000 images is ~60 MB
MAX_N_BOOT = 100_000


class CompareError(ValueError):
    """A comparison that cannot be made (one line, status 2)."""


def read_rows(path: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    """(the evaluation folder, its per_image.csv rows by id) of a folder or a CSV path."""
    csv_path = path / "per_image.csv" if path.is_dir() else path
    try:
        st = csv_path.stat()
    except OSError as err:
        raise CompareError(f"{path}: no per_image.csv ({err.strerror or err}); give a make "
                           "evaluate folder") from None
    if not stat.S_ISREG(st.st_mode):  # a pipe would block the reader for ever
        raise CompareError(f"{csv_path}: not a regular file")
    size = st.st_size
    if size > MAX_CSV_BYTES:
        raise CompareError(f"{csv_path}: {size:,} bytes, more than {MAX_CSV_BYTES:,}")
    try:
        with csv_path.open(newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            missing = {"id", "unit", *(m for m, _, _ in METRICS)} - set(reader.fieldnames or ())
            if missing:
                raise CompareError(f"{csv_path}: not a make evaluate per_image.csv (no column "
                                   f"{sorted(missing)[0]!r})")
            rows = {r["id"]: r for r in reader}
    except (OSError, csv.Error) as err:
        raise CompareError(f"{csv_path}: cannot read it ({err})") from None
    if not rows:
        raise CompareError(f"{csv_path}: no images")
    return csv_path.parent, rows


def _value(row: dict[str, str], key: str) -> float:
    try:
        v = float(row.get(key) or "nan")
    except ValueError:
        return math.nan
    return v if math.isfinite(v) else math.nan


def paired(a: dict[str, dict[str, str]], b: dict[str, dict[str, str]], key: str
           ) -> tuple[np.ndarray, np.ndarray]:
    """The values of ``key`` of A and of B on the images where both have one, in one unit."""
    ids = [i for i in sorted(a.keys() & b.keys()) if a[i]["unit"] == b[i]["unit"]]
    va = np.array([_value(a[i], key) for i in ids], dtype=np.float64)
    vb = np.array([_value(b[i], key) for i in ids], dtype=np.float64)
    both = np.isfinite(va) & np.isfinite(vb)
    return va[both], vb[both]


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of the paired differences (1 when all are zero, NaN
    without any)."""
    from scipy.stats import wilcoxon

    if d.size == 0:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d).pvalue)


def compare(a: dict[str, dict[str, str]], b: dict[str, dict[str, str]], level: float = 0.95,
            n_boot: int = 10_000, seed: int = 0, limit: float = 10.0
            ) -> tuple[str, list[dict[str, Any]]]:
    """Markdown and CSV rows of the paired comparison of B against A (see the module text)."""
    from scipy.stats import binomtest

    units = {r["unit"] for r in [*a.values(), *b.values()]}
    unit = "mm" if units == {"mm"} else "px" if units == {"px"} else "mm or px"
    rows_md, summary = [], []
    for key, label, lower in METRICS:
        va, vb = paired(a, b, key)
        d = vb - va
        med, lo, hi = median_ci(d, level=level, n_boot=n_boot, seed=seed)
        p = wilcoxon_p(d)
        # a winner only when the CI excludes 0 and the signed-rank test agrees: with every
        # difference of one sign the bootstrap CI excludes 0 for any n, one image included
        shows = np.isfinite(lo) and (lo > 0 or hi < 0) and p < 1 - level
        better = ("B" if (hi < 0) == lower else "A") if shows else "-"
        size = "" if key.startswith("iou") else f" ({unit})"
        rows_md.append([label + size, str(d.size), _f(np.median(va) if va.size else math.nan),
                        _f(np.median(vb) if vb.size else math.nan), f"{_f(med)} [{_f(lo)}, "
                        f"{_f(hi)}]", _p(p), better])
        summary.append({"table": "compare", "metric": key, "n_paired": int(d.size),
                        "median_a": float(np.median(va)) if va.size else math.nan,
                        "median_b": float(np.median(vb)) if vb.size else math.nan,
                        "median_difference": med, "ci_low": lo, "ci_high": hi, "level": level,
                        "wilcoxon_p": p, "better": better})
    common = sorted(a.keys() & b.keys())
    fail_a = {i for i in common if math.isnan(_value(a[i], "schoettle"))}
    fail_b = {i for i in common if math.isnan(_value(b[i], "schoettle"))}
    only_a, only_b = len(fail_a - fail_b), len(fail_b - fail_a)
    sign_p = (binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0)
    gate = []
    for name, rows in (("A", a), ("B", b)):
        flagged = [r for i, r in rows.items() if i in common and r.get("needs_review") in ("1",
                                                                                          "True")]
        wrong = [i for i in common if rows[i].get("needs_review") not in ("1", "True")
                 and _value(rows[i], "schoettle") > limit]
        gate.append([name, f"{len(flagged)}/{len(common)}", str(len(wrong))])
        summary.append({"table": "gate", "model": name, "flagged": len(flagged),
                        "n": len(common), "unflagged_over_limit": len(wrong), "limit": limit})
    summary.append({"table": "no_point", "a": len(fail_a), "b": len(fail_b),
                    "only_a": only_a, "only_b": only_b, "sign_test_p": sign_p})
    pct = f"{level:.0%}"
    text = "\n\n".join([
        f"## B against A on {len(common)} common images (A {len(a)}, B {len(b)} images)",
        markdown_table(["metric", "n paired", "median A", "median B",
                        f"median B - A [{pct} CI]", "Wilcoxon p", "better"], rows_md),
        f"Each metric over the images where both models have a value; the CI is a percentile "
        f"bootstrap of the median paired difference ({n_boot:,} resamples, seed {seed}); "
        f"'better' names a model only when the CI excludes 0 and the Wilcoxon p is below "
        f"{1 - level:.2g}. Negative differences favour B for distances, positive ones for IoU.",
        f"**No Schoettle point:** A on {len(fail_a)}, B on {len(fail_b)} of the common images; "
        f"only A failed on {only_a}, only B on {only_b} (exact sign test p = {_p(sign_p)}). The "
        "paired rows above leave these images out.",
        markdown_table(["model", "flagged by the review gate",
                        f"unflagged and > {limit:g} {unit} off"], gate),
    ])
    return text, summary


def _f(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def _p(p: float) -> str:
    return "-" if not math.isfinite(p) else f"{p:.2g}" if p >= 1e-4 else "< 1e-4"


def same_test_set(a_dir: Path, b_dir: Path) -> str | None:
    """Why A and B cannot be compared (their records name other test sets), or None; a note
    is printed when a record is missing (nothing to check)."""
    ra, rb = read_record(a_dir), read_record(b_dir)
    if ra is None or rb is None:
        print(f"compare: note: {a_dir if ra is None else b_dir} has no evaluation.json: the test "
              "sets are matched by image id only", file=sys.stderr)
        return None
    if ra.get("test_set") != rb.get("test_set"):
        return f"other test sets: A {ra.get('test_set')}, B {rb.get('test_set')}"
    return None


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m planning.compare``."""
    p = OneLineParser(prog="python -m planning.compare", description=__doc__.splitlines()[0])
    p.add_argument("a", type=path_argument,
                   help="make evaluate folder (or its per_image.csv) of model A")
    p.add_argument("b", type=path_argument, help="the same of model B, on the same test set")
    p.add_argument("--out", type=path_argument,
                   help="output folder (default runs/compare/<A>-vs-<B>)")
    p.add_argument("--level", type=float, default=0.95, help="CI level (default 0.95)")
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--limit", type=float, default=10.0,
                   help="an unflagged plan further off than this (mm or px) is counted")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (problems are one line)."""
    args = build_parser().parse_args(argv)
    if not 0 < args.level < 1:
        return _error(f"--level must be in (0, 1), got {args.level}")
    if not 1 <= args.n_boot <= MAX_N_BOOT:
        return _error(f"--n-boot must be 1..{MAX_N_BOOT:,}, got {args.n_boot}")
    if args.seed < 0 or not (math.isfinite(args.limit) and args.limit > 0):
        return _error("--seed must be >= 0 and --limit a positive number")
    try:
        a_dir, a = read_rows(args.a)
        b_dir, b = read_rows(args.b)
    except CompareError as err:
        return _error(str(err))
    if why := same_test_set(a_dir, b_dir):
        return _error(why)
    if not a.keys() & b.keys():
        return _error(f"{args.a} and {args.b} share no image id: not the same test set")
    text, summary = compare(a, b, args.level, args.n_boot, args.seed, args.limit)
    out = args.out or Path("runs") / "compare" / (
        f"{a_dir.resolve().name}-vs-{b_dir.resolve().name}")  # (a_dir "." has no name)
    header = f"# Comparison\n\nA: {a_dir}\n\nB: {b_dir}\n\n"
    if problem := out_folder_problem(out):  # a file, under a file, a name too long
        return _error(problem)
    try:
        write_table(out, "compare", header + text, summary)
    except OSError as err:
        return _error(f"--out {out}: cannot write ({err.strerror or err})")
    print(header + text)
    return 0


def _error(message: str) -> int:
    print(f"compare: error: {printable(message)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
