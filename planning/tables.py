"""The paper's tables from per-image evaluation rows: Table 1 (segmentation, landmarks, line,
Schoettle point) and Table 2 (Schoettle point agreement between plannings), as Markdown and CSV.

Per-image rows are plain dicts (one CSV row each). Column names used here:
``iou_<bone>``, ``asd_<bone>``, ``hd_<bone>`` (surface distances in ``unit``), ``ed_p_blum``,
``ed_p_tmc``, ``line`` and ``schoettle`` (in ``unit``). NaN marks a value that could not be
computed (e.g. an empty predicted mask); it is left out of the statistics and counted in ``n``.

Medians come with a confidence interval from a seeded percentile bootstrap of the median
(``geometry.stats.median_ci``), so the same rows always give the same table.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.path_limits import replace_link
from datamodules.sample import BONES
from geometry.stats import mean_std, median_ci

LOCALISATION_ROWS: tuple[tuple[str, str], ...] = (
    ("ed_p_blum", "p_blum (ED)"),
    ("ed_p_tmc", "p_tmc (ED)"),
    ("line", "Cortex line LM1 (mean distance of p_prox, p_dist)"),
    ("schoettle", "Schoettle point (ED)"),
)


@dataclass(frozen=True)
class BootstrapSpec:
    """How medians' confidence intervals are computed (stated under every table)."""

    level: float = 0.8
    n_boot: int = 10_000
    seed: int = 0

    def note(self) -> str:
        """One sentence for the table footnote."""
        return (
            f"CI: {self.level:.0%} percentile bootstrap of the median "
            f"({self.n_boot} resamples, seed {self.seed})."
        )


@dataclass(frozen=True)
class MedianCI:
    """Median of the finite values with its bootstrap interval; NaN when there are none."""

    median: float
    low: float
    high: float
    n: int
    n_total: int

    def text(self, digits: int = 2) -> str:
        """``1.50 [1.41, 2.07]`` (the paper's format), or ``n/a``."""
        if self.n == 0:
            return "n/a"
        return f"{self.median:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def finite(values: Iterable[float]) -> np.ndarray:
    """The finite entries of ``values`` as a float64 array."""
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def summarise_median(values: Sequence[float], spec: BootstrapSpec) -> MedianCI:
    """Median with a seeded bootstrap CI over the finite values."""
    vals = finite(values)
    if vals.size == 0:
        return MedianCI(math.nan, math.nan, math.nan, 0, len(values))
    med, low, high = median_ci(vals, level=spec.level, n_boot=spec.n_boot, seed=spec.seed)
    return MedianCI(float(med), float(low), float(high), int(vals.size), len(values))


def _fmt_mean_std(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of ``rows`` under ``header`` (cells as given)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _csv(rows: Sequence[Mapping[str, object]]) -> str:
    if not rows:
        return ""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k, "")) for k in fields})
    return buf.getvalue()


def _csv_value(v: object) -> object:
    if isinstance(v, float | np.floating):
        return "" if not math.isfinite(float(v)) else f"{float(v):.10g}"
    return csv_cell(v)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs such a cell (OWASP)


def csv_cell(v: object) -> object:
    """``v`` as a CSV cell a spreadsheet shows as text: a string that would start a formula
    (an image named ``=HYPERLINK(...).png``) gets a leading apostrophe; numbers stay as they
    are, also when written as text ("-3.5")."""
    if not isinstance(v, str) or not v.startswith(FORMULA_START):
        return v
    try:
        float(v)
        return v
    except ValueError:
        return "'" + v


def _col(rows: Sequence[Mapping[str, object]], key: str) -> list[float]:
    return [float(r.get(key, math.nan)) for r in rows]  # type: ignore[arg-type]


def table1(
    rows: Sequence[Mapping[str, object]], unit: str, spec: BootstrapSpec
) -> tuple[str, list[dict[str, object]]]:
    """Table 1 (per bone IoU/ASD/HD mean ± std) and the localisation rows (median [CI]).

    Args:
        rows: per-image evaluation rows (see the module docstring for the column names).
        unit: "mm" or "px", the unit of every distance in ``rows``.
        spec: bootstrap settings.

    Returns:
        (Markdown text, summary rows for CSV).
    """
    n = len(rows)
    seg_md, summary = [], []
    for bone in BONES:
        cells = [bone.capitalize()]
        rec: dict[str, object] = {"table": "1", "target": bone, "unit": unit}
        for metric, digits in (("iou", 3), ("asd", 2), ("hd", 2)):
            vals = _col(rows, f"{metric}_{bone}")
            mean, std = mean_std(np.asarray(vals))
            k = int(finite(vals).size)
            cells.append(_fmt_mean_std(mean, std, digits))
            rec.update({f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_n": k})
        n_iou, n_dist = rec["iou_n"], min(rec["asd_n"], rec["hd_n"])  # type: ignore[type-var]
        cells.append(str(n_iou) if n_dist == n_iou else f"{n_iou} (ASD/HD: {n_dist})")
        seg_md.append(cells)
        summary.append(rec)
    loc_md = []
    for key, label in LOCALISATION_ROWS:
        m = summarise_median(_col(rows, key), spec)
        loc_md.append([label, m.text(), f"{m.n}/{m.n_total}"])
        summary.append(
            {"table": "1", "target": key, "unit": unit, "median": m.median,
             "ci_low": m.low, "ci_high": m.high, "n": m.n, "level": spec.level}
        )
    text = "\n\n".join(
        [
            f"### Table 1: segmentation on {n} test images (mean ± sample std)",
            markdown_table(
                ["Anatomy", "IoU", f"ASD ({unit})", f"Hausdorff distance ({unit})", "n"], seg_md
            ),
            f"### Landmarks, cortex line and Schoettle point (median [{spec.level:.0%} CI], "
            f"{unit})",
            markdown_table(["Target", f"Median error [{spec.level:.0%} CI] ({unit})", "n"], loc_md),
            "Distances are measured in the original image after mapping predictions back "
            f"through the pad + resize frame. {spec.note()} Undefined values (ASD/HD of an "
            "empty predicted mask, a missing line fit) are left out; n counts the values used.",
        ]
    )
    return text, summary


def rater_pairs(raters: Sequence[str]) -> list[tuple[str, str]]:
    """Table 2 pairs: every pair of raters, model vs each rater, model vs raters' centroid."""
    pairs = list(itertools.combinations(raters, 2))
    pairs += [("model", r) for r in raters]
    if len(raters) > 1:
        pairs.append(("model", "centroid"))
    return pairs


def schoettle_pair_distances(
    points: Mapping[str, np.ndarray],
    raters: Sequence[str],
    spacing: tuple[float, float] | None,
) -> dict[tuple[str, str], float]:
    """Distances between the Schoettle points of one image for every Table 2 pair.

    Args:
        points: planning name ("model" or a rater id) -> (x, y) in original pixels; a missing
            or non-finite point gives NaN for its pairs.
        raters: rater ids in table order; their centroid is added as "centroid".
        spacing: (row_mm, col_mm); None measures in pixels.
    """
    pts = {k: np.asarray(v, dtype=np.float64) for k, v in points.items() if v is not None}
    rater_pts = [pts[r] for r in raters if r in pts]
    if len(raters) > 1 and len(rater_pts) == len(raters):
        pts["centroid"] = np.mean(rater_pts, axis=0)
    scale = np.ones(2) if spacing is None else np.array([spacing[1], spacing[0]], dtype=np.float64)
    out = {}
    for a, b in rater_pairs(raters):
        if a in pts and b in pts:
            out[(a, b)] = float(np.linalg.norm((pts[a] - pts[b]) * scale))
        else:
            out[(a, b)] = math.nan
    return out


def table2(
    rows: Sequence[Mapping[str, object]],
    raters: Sequence[str],
    unit: str,
    spec: BootstrapSpec,
    subset: set[str] | None = None,
    subset_name: str = "subset",
) -> tuple[str, list[dict[str, object]]]:
    """Table 2: median ED [CI] of Schoettle points for each pair, all images and a subset.

    Args:
        rows: per-image rows with an ``id`` and one column ``sp_<a>__<b>`` per pair (in
            ``unit``), as written by ``schoettle_pair_distances`` via ``pair_column``.
        raters: rater ids in table order.
        unit: "mm" or "px".
        spec: bootstrap settings.
        subset: image ids of the subset column (e.g. images all raters found suitable).
        subset_name: how the subset is named in the header.
    """
    n = len(rows)
    sub_rows = [r for r in rows if subset is not None and str(r["id"]) in subset]
    header = ["First", "Second", f"Schoettle point ({n}/{n} images)"]
    if subset is not None:
        header.append(f"Schoettle point ({len(sub_rows)}/{n} images, {subset_name})")
    md, summary = [], []
    for a, b in rater_pairs(raters):
        col = pair_column(a, b)
        full = summarise_median(_col(rows, col), spec)
        cells = [_label(a), _label(b), full.text()]
        rec: dict[str, object] = {
            "table": "2", "first": a, "second": b, "unit": unit, "median": full.median,
            "ci_low": full.low, "ci_high": full.high, "n": full.n, "level": spec.level,
        }
        if subset is not None:
            part = summarise_median(_col(sub_rows, col), spec)
            cells.append(part.text())
            rec.update({"subset_median": part.median, "subset_ci_low": part.low,
                        "subset_ci_high": part.high, "subset_n": part.n})
        md.append(cells)
        summary.append(rec)
    text = "\n\n".join(
        [
            f"### Table 2: Schoettle point agreement (median ED [{spec.level:.0%} CI], {unit})",
            markdown_table(header, md),
            "Each rater's Schoettle point is constructed from that rater's landmarks and cortex "
            f"line; the centroid is the mean of all raters' points. {spec.note()}",
        ]
    )
    return text, summary


def pair_column(a: str, b: str) -> str:
    """Per-image column name of the Schoettle distance between plannings ``a`` and ``b``."""
    return f"sp_{a}__{b}"


def _label(name: str) -> str:
    return {"model": "Model", "centroid": "Raters' centroid"}.get(name, name)


def write_table(out_dir: Path, stem: str, markdown: str, summary: Sequence[Mapping]) -> None:
    """Write ``<stem>.md`` and ``<stem>.csv`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    replace_link(out_dir / f"{stem}.md").write_text(markdown + "\n", encoding="utf-8",
                                         errors="backslashreplace")
    replace_link(out_dir / f"{stem}.csv").write_text(_csv(summary), encoding="utf-8",
                                          errors="backslashreplace")


def write_rows(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    """Write per-image rows as CSV (NaN as empty cells)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # (errors: ids come from file names)
    replace_link(path).write_text(_csv(rows), encoding="utf-8", errors="backslashreplace")


def _error_stats(errors: np.ndarray) -> tuple[float, float, float]:
    """(median, 95th percentile, max) of finite errors; NaN when there are none."""
    e = errors[np.isfinite(errors)]
    if e.size == 0:
        return math.nan, math.nan, math.nan
    return float(np.median(e)), float(np.percentile(e, 95)), float(e.max())


def risk_coverage(
    rows: Sequence[Mapping[str, object]], unit: str
) -> tuple[str, list[dict[str, object]]]:
    """The review gate's operating point: coverage (plans not flagged) and the Schoettle error
    among the unflagged and the flagged plans (median, 95th percentile, max over the plans with
    a Schoettle point), as Markdown and CSV rows; the plans without one (no plan at all) are
    counted apart, ``no_point`` (the risk-coverage curve counts them as infinite errors).

    Args:
        rows: per-image rows with ``schoettle`` (in ``unit``) and ``needs_review`` (0/1).
        unit: "mm" or "px".
    """
    err = np.array([float(r.get("schoettle", math.nan)) for r in rows], dtype=np.float64)
    err = np.where(np.isfinite(err), err, np.inf)
    flagged = np.array([bool(int(r.get("needs_review", 0))) for r in rows])  # type: ignore[call-overload]
    n = len(rows)
    md, summary = [], []
    for label, sel in (("not flagged", ~flagged), ("flagged", flagged), ("all", np.ones(n, bool))):
        e = err[sel]
        med, p95, mx = _error_stats(np.where(np.isinf(e), np.nan, e))
        n_inf = int(np.isinf(e).sum())
        md.append([label, f"{int(sel.sum())}/{n}", f"{med:.2f}", f"{p95:.2f}", f"{mx:.2f}",
                   str(n_inf)])  # fmt: skip
        summary.append({"table": "risk_coverage", "group": label, "n": int(sel.sum()),
                        "n_total": n, "unit": unit, "median": med, "p95": p95, "max": mx,
                        "no_point": n_inf})  # fmt: skip
    cov = float((~flagged).mean()) if n else math.nan
    text = "\n\n".join(
        [
            f"### Review gate: coverage {cov:.0%} ({int((~flagged).sum())}/{n} plans not flagged)",
            markdown_table(["Plans", "n", f"Median ({unit})", f"95th pct ({unit})", f"Max ({unit})",
                       "no point"], md),  # fmt: skip
            "Schoettle point error against the reference, over the plans with a Schoettle point; "
            "'no point' counts the others (in risk_coverage.png they count as infinitely wrong, "
            "so a curve ends where they enter). The gate should pass most clean plans and catch "
            "the wrong ones: the unflagged plans' 95th percentile and max are the risk a surgeon "
            "takes by trusting an unflagged plan.",
        ]
    )
    return text, summary


def risk_coverage_curve(
    errors: Sequence[float], scores: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coverage, median and 95th-percentile error when keeping the k plans of lowest ``score``
    (k = 1..n; ties keep the input order). Missing points count as infinite errors."""
    e = np.array([float(v) for v in errors], dtype=np.float64)
    e = np.where(np.isfinite(e), e, np.inf)
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
    e = e[order]
    k = np.arange(1, e.size + 1)
    med = np.array([np.median(e[:i]) for i in k])
    p95 = np.array([np.percentile(e[:i], 95) if np.isfinite(e[:i]).all() else np.inf
                    for i in k])  # fmt: skip
    return k / max(e.size, 1), med, p95


def reason_counts(codes: Iterable[Iterable[str]]) -> tuple[str, list[dict[str, object]]]:
    """How often each review reason fired (one count per image), as Markdown and CSV rows."""
    counts: dict[str, int] = {}
    n = 0
    for per_image in codes:
        n += 1
        for c in set(per_image):
            counts[c] = counts.get(c, 0) + 1
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    md = [[c, f"{k}/{n}"] for c, k in items] or [["(none)", f"0/{n}"]]
    rows = [{"table": "review_reasons", "reason": c, "count": k, "n": n} for c, k in items]
    return "### Review reasons fired (images)\n\n" + markdown_table(["Reason", "Images"], md), rows


__all__ = [
    "BootstrapSpec",
    "reason_counts",
    "risk_coverage",
    "risk_coverage_curve",
    "MedianCI",
    "pair_column",
    "rater_pairs",
    "schoettle_pair_distances",
    "summarise_median",
    "table1",
    "table2",
    "write_rows",
    "write_table",
]
