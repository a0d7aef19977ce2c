"""Stress test of the review gate: the test set evaluated again under each ``planning.perturb``.

``make evaluate ARGS="--perturb all"`` (or a comma list of kinds) evaluates every perturbed copy
of the test set like the set itself (``planning.evaluate.evaluate``, one folder per kind under
``OUT/stress/``) and writes ``OUT/stress.md`` / ``stress.csv``: per perturbation the Schoettle
error of all plans and of the unflagged ones, the femur IoU, how many plans the gate flagged, and
the verdict: **unsafe** when an unflagged plan is more than ``--max-unflagged-mm`` off (the
surgeon would trust a wrong plan), else ok. A perturbation after which the image is no longer a
lateral knee as shown (``perturb.FOREIGN``) should be flagged nearly always; after the others
(``perturb.LATERAL``) the plans should stay right, flagged or not.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.sample import Sample
from planning.evaluate import MAX_UNFLAGGED_MM, evaluate, sample_spacing
from planning.perturb import FOREIGN, KINDS, perturb
from planning.tables import markdown_table, write_table


def parse_kinds(text: str) -> list[str]:
    """``all`` or a comma list of ``perturb.KINDS``; raises ValueError naming an unknown one."""
    parts = [k.strip() for k in text.split(",") if k.strip()]
    kinds = list(KINDS) if parts == ["all"] else parts
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"--perturb: unknown perturbation(s) {bad or text!r}; choose 'all' or "
                         f"from {', '.join(KINDS)}")
    return kinds


def _with_spacing(sample: Sample) -> Sample:
    """The sample with its resolved spacing written in (a dataset sample keeps its raw DICOM
    or annotation inputs in meta; a resampled copy needs the number itself, scaled)."""
    if sample.spacing_mm is not None:
        return sample
    res = sample_spacing(sample, sample.masks[0], detect_sphere=False)
    if res.spacing is None:
        return sample
    return dataclasses.replace(sample, spacing_mm=res.spacing.as_tuple(),
                               spacing_source=res.source or "annotation")


def summarise(kind: str, rows: list[dict[str, Any]], skipped: int, limit: float) -> dict[str, Any]:
    """One stress-table row from ``evaluate``'s per-image rows."""
    err = np.array([float(r["schoettle"]) for r in rows], dtype=np.float64)
    flagged = np.array([bool(r["needs_review"]) for r in rows])
    iou = np.array([float(r.get("iou_femur", math.nan)) for r in rows], dtype=np.float64)
    ok = ~flagged
    free = err[ok & np.isfinite(err)]
    in_mm = np.array([r["unit"] == "mm" for r in rows])
    # an unflagged plan more than ``limit`` mm off, or without a point, is unsafe (in pixels,
    # without a spacing, only the latter can be judged)
    unsafe = int(np.sum(ok & (~np.isfinite(err) | (in_mm & (err > limit)))))
    units = {r["unit"] for r in rows}

    def med(a: np.ndarray) -> float:
        a = a[np.isfinite(a)]
        return float(np.median(a)) if a.size else math.nan

    return {
        "perturbation": kind, "expected": "flag" if kind in FOREIGN else "plan",
        "n": len(rows), "skipped": skipped, "unit": "/".join(sorted(units)) or "",
        "median": med(err), "femur_iou": float(np.nanmean(iou)) if np.isfinite(iou).any()
        else math.nan, "flagged": int(flagged.sum()), "unflagged": int(ok.sum()),
        "unflagged_median": med(free), "unflagged_max": float(free.max()) if free.size
        else math.nan, "unsafe": unsafe,
        "verdict": "ok" if unsafe == 0 else f"UNSAFE: {unsafe} unflagged > {limit:g}",
    }  # fmt: skip


def stress_table(summaries: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the stress rows."""
    head = ["perturbation", "expected", "n (skipped)", "median", "femur IoU", "flagged",
            "unflagged: median / max", "verdict"]
    return markdown_table(head, [[
        s["perturbation"], s["expected"], f"{s['n']} ({s['skipped']})",
        f"{s['median']:.2f} {s['unit']}", f"{s['femur_iou']:.3f}", f"{s['flagged']}/{s['n']}",
        f"{s['unflagged_median']:.2f} / {s['unflagged_max']:.2f}" if s["unflagged"] else "-",
        s["verdict"],
    ] for s in summaries])  # fmt: skip


def run_stress(samples: Sequence[Sample], out_dir: Path, kinds: Sequence[str],
               limit: float = MAX_UNFLAGGED_MM, log: Any = print,
               **evaluate_kwargs: Any) -> list[dict[str, Any]]:
    """Evaluate ``samples`` as given (``none``) and under each of ``kinds``; write
    ``out_dir/stress.md`` and ``stress.csv``; return the rows. ``evaluate_kwargs`` go to
    ``planning.evaluate.evaluate`` (module, decode, line_fit, tta, review_config, ...)."""
    base = [_with_spacing(s) for s in samples]
    summaries = []
    for kind in ["none", *kinds]:
        copies = base if kind == "none" else [perturb(s, kind) for s in base]
        kept = [s for s in copies if s is not None]
        if not kept:
            log(f"stress: {kind}: every sample's truth leaves the image; skipped")
            continue
        res = evaluate(kept, out_dir / "stress" / kind, log=None, **evaluate_kwargs)
        summaries.append(summarise(kind, res.rows, len(copies) - len(kept), limit))
        s = summaries[-1]
        log(f"stress: {kind:11s} median {s['median']:.2f} {s['unit']}, flagged {s['flagged']}/"
            f"{s['n']}, {s['verdict']}")
    write_table(out_dir, "stress",
                f"## Review gate under perturbations (unsafe: an unflagged plan more than "
                f"{limit:g} mm off, or without a point)\n\n" + stress_table(summaries), summaries)
    return summaries
