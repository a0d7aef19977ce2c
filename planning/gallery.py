"""The error gallery of ``make evaluate``: the cases behind the Schoettle error numbers.

:class:`Gallery` is offered every evaluated image and keeps, with bounded memory, the ``n``
worst by Schoettle error (a point that could not be constructed counts as the worst) and a
seeded random ``n`` of the others. :meth:`Gallery.write` then writes into ``gallery/``:

- ``worst_01_<id>.png`` .. and ``random_01_<id>.png`` ..: the prediction drawn as by
  ``make plan`` (``planning.overlay.draw_plan``: solid outlines and LM1, crosses, dot and
  2.5 mm circle) with the truth of the primary rater over it (``draw_truth``: same colours,
  dashed, diamonds), a white segment from the true to the predicted Schoettle point labelled
  with the error, and a side panel (rank, errors, the review reasons);
- ``contact_sheet.png``: all of them as captioned thumbnails, worst first;
- ``index.csv``: kind, rank, id, Schoettle error, unit, review reasons, file.

Every case is drawn at one size (short side :data:`CASE_SIDE` px), so line widths and text
are alike in all pictures and on the sheet.
"""

from __future__ import annotations

import csv
import dataclasses
import heapq
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datamodules.image_io import write_image
from datamodules.path_limits import replace_link
from datamodules.sample import BONES, Sample
from geometry.lines import Line, fit_line_tls
from geometry.plan_geometry import Plan, masks_to_original
from planning import overlay
from planning.overlay import (
    BONE_COLOURS,
    LANDMARK_COLOURS,
    LM1_COLOUR,
    PREDICTION_STYLE,
    REVIEW_COLOUR,
    SCHOETTLE_COLOUR,
    TRUTH_STYLE,
    Style,
)
from planning.references import rater_schoettle
from planning.review import reasons_cell
from planning.tables import csv_cell

CASE_SIDE = 720  # short side (px) every case is drawn at
THUMB_HEIGHT = 340  # contact sheet cell image height (px)
SHEET_COLUMNS = 4


def _scale_point(p: np.ndarray, s: float) -> np.ndarray:
    """Original pixel (x, y) -> pixel of the image resized by ``s`` (pixel centres kept)."""
    return (np.asarray(p, np.float64) + 0.5) * s - 0.5


def _scale_line(line: Line | None, s: float) -> Line | None:
    return None if line is None else line.map(lambda pts: _scale_point(pts, s))


def scaled_plan(plan: Plan, s: float) -> Plan:
    """``plan`` for the image resized by ``s``: points, lines and pixel spacing scaled."""
    return dataclasses.replace(
        plan,
        landmarks=_scale_point(plan.landmarks, s),
        schoettle=_scale_point(plan.schoettle, s),
        lm1=_scale_line(plan.lm1, s), lm2=_scale_line(plan.lm2, s), lm3=_scale_line(plan.lm3, s),
        lm1_points=_scale_point(plan.lm1_points, s) if len(plan.lm1_points) else plan.lm1_points,
        radius_px=plan.radius_px * s,
        spacing=None if plan.spacing is None else (plan.spacing[0] / s, plan.spacing[1] / s),
    )  # fmt: skip


def _resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.stack([cv2.resize(np.asarray(m, np.uint8), size, interpolation=cv2.INTER_NEAREST)
                     for m in masks]).astype(bool)


def truth_line(cortex_points: np.ndarray) -> Line | None:
    """The rater's LM1: total least squares line through the cortex points (None if undefined)."""
    try:
        return fit_line_tls(cortex_points)
    except ValueError:
        return None


def error_text(error: float, unit: str) -> str:
    """``11.2 mm``, or ``not constructed`` for a NaN error."""
    return "not constructed" if not math.isfinite(error) else f"{error:.1f} {unit}"


def draw_case(
    sample: Sample, plan: Plan, masks: np.ndarray, truth_schoettle: np.ndarray, row: dict
) -> tuple[np.ndarray, int]:
    """Prediction and truth of one image at :data:`CASE_SIDE`; returns (RGB, image width).

    The RGB holds the drawn radiograph in ``[:, :width]`` and ``draw_plan``'s legend to its
    right. Review reasons are left to the caller's panel (a banner would sit under the truth).
    """
    h, w = sample.shape
    s = CASE_SIDE / min(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    image = cv2.resize(np.asarray(sample.image, np.float32), size, interpolation=cv2.INTER_AREA
                       if s < 1 else cv2.INTER_LINEAR)
    shown = scaled_plan(plan, s)
    rgb = overlay.draw_plan(image, shown, _resize_masks(masks, size), title="prediction")
    width = size[0]
    view = np.ascontiguousarray(rgb[:, :width])
    primary = sample.annotations[0]
    overlay.draw_truth(
        view, masks=_resize_masks(sample.masks > 0, size),
        landmarks=_scale_point(primary.landmarks, s),
        lm1=_scale_line(truth_line(primary.cortex_points), s),
        schoettle=_scale_point(truth_schoettle, s), predicted_schoettle=shown.schoettle,
        error_text=error_text(float(row["schoettle"]), row["unit"]),
    )  # fmt: skip
    rgb[:, :width] = view
    return rgb, width


def _style_key(panel: np.ndarray, y: int, truth: bool, st: Style) -> None:
    """A line sample and a marker in the truth (dashed, diamond) or prediction style."""
    x0, x1 = st.pad * 2, st.pad * 2 + 5 * st.marker
    cy = y - st.text_size("Ag")[1] // 3
    if truth:
        contour = np.array([[[x0, cy]], [[x1, cy]]], np.int32)
        overlay._dashed_contour(panel, contour, (255, 255, 255), st)
        overlay._diamond(panel, np.array([x1 + 2 * st.marker, cy]), (255, 255, 255), st)
    else:
        cv2.line(panel, (x0, cy), (x1, cy), (255, 255, 255), st.thick, cv2.LINE_AA)
        overlay._marker(panel, np.array([x1 + 2 * st.marker, cy]), (255, 255, 255), st)


def info_panel(h: int, heading: str, row: dict, reasons: list[str], st: Style,
               width: int) -> np.ndarray:
    """A dark (h, width, 3) panel: which case, its errors, the truth/prediction key, reasons."""
    panel = np.full((h, width, 3), 24, np.uint8)
    inner = width - 3 * st.pad
    line_h = st.text_size("Ag")[1] + st.pad
    y = st.pad + line_h
    unit = row["unit"]

    def put(text: str, colour=(255, 255, 255), x: int = st.pad) -> None:
        nonlocal y
        if y < h - st.pad:
            overlay._text(panel, overlay._fit_text(text, inner - x, st), (x, y), colour, st)
        y += line_h

    put(heading)
    put(str(row["id"]))
    put(f"Schoettle error {error_text(float(row['schoettle']), unit)}", SCHOETTLE_COLOUR)
    for key, name in (("ed_p_blum", "p_blum"), ("ed_p_tmc", "p_tmc")):
        put(f"{name} error {error_text(float(row[key]), unit)}", LANDMARK_COLOURS[name])
    put(f"LM1 error {error_text(float(row['line']), unit)}", LM1_COLOUR)
    put(f"IoU femur {float(row['iou_femur']):.2f}", BONE_COLOURS["femur"])
    y += line_h // 2
    key_x = st.pad * 5 + 9 * st.marker
    for truth, label in ((False, PREDICTION_STYLE), (True, TRUTH_STYLE)):
        for i, part in enumerate(overlay.wrap_text(label, inner - key_x, st)):
            if i == 0:
                _style_key(panel, y, truth, st)
            put(part, x=key_x)
    put("white segment: Schoettle error", overlay.ERROR_COLOUR)
    y += line_h // 2
    if reasons:
        put(f"NEEDS REVIEW ({len(reasons)}):", REVIEW_COLOUR)
        for i, r in enumerate(reasons):
            parts = overlay.wrap_text("- " + r, inner - st.pad, st)  # (put's room at x = pad:
            # wrapped to inner, each line lost its last words to put's cut)
            room = -(-(h - st.pad - y) // line_h)  # lines put() still draws
            if len(parts) + (i < len(reasons) - 1) > room:  # (keep a line for the note)
                put(f"+{len(reasons) - i} more (index.csv)", REVIEW_COLOUR)
                break
            for part in parts:
                put(part, REVIEW_COLOUR)
    else:
        put("no review reason raised", (160, 160, 160))
    return panel


@dataclass
class _Case:
    """A kept candidate: its rendering and what the panel and index need."""

    row: dict[str, Any]
    reasons: list[str]
    picture: np.ndarray  # draw_case output
    width: int
    order: int


def severity(row: dict[str, Any]) -> tuple[int, int, float]:
    """Sort key, larger = worse: NaN first, then mm errors, then px errors, by size."""
    e = float(row["schoettle"])
    if not math.isfinite(e):
        return (1, 0, 0.0)
    return (0, int(row["unit"] == "mm"), e)


class Gallery:
    """Keeps the ``n`` worst and a seeded random ``n`` of the other cases (see the module doc).

    Args:
        n: cases per kind (worst, random).
        seed: seed of the random pick (the same test set and seed give the same cases).
    """

    def __init__(self, n: int = 8, seed: int = 0) -> None:
        if n < 1:
            raise ValueError(f"gallery: n must be >= 1, got {n}")
        self.n = int(n)
        self.seed = int(seed)
        self._rng = np.random.default_rng(seed)
        self._worst: list[tuple[tuple, int]] = []  # min-heap of ((severity, -order), order)
        self._lottery: list[tuple[float, int]] = []  # max-heap of (-priority, order)
        self._cases: dict[int, _Case] = {}
        self._count = 0

    def offer(self, sample: Sample, result: Any, maps: Any) -> None:
        """Consider one evaluated image.

        Args:
            sample: the test sample (truth: its first rater and its masks).
            result: its ``planning.evaluate.SampleResult`` (``row``, ``plan``, ``reasons``: the
                review verdict).
            maps: its ``NetworkMaps`` (the predicted masks are taken from them when kept).
        """
        row, plan = result.row, result.plan
        order = self._count
        self._count += 1
        priority = float(self._rng.random())
        key = (severity(row), -order)  # ties: the earlier image ranks worse
        in_worst = len(self._worst) < self.n or key > self._worst[0][0]
        # a random pick of n among the non-worst lies within the 2n lowest priorities
        in_lottery = len(self._lottery) < 2 * self.n or -priority > self._lottery[0][0]
        if not (in_worst or in_lottery):
            return
        if in_worst:
            heapq.heappush(self._worst, (key, order))
            if len(self._worst) > self.n:
                heapq.heappop(self._worst)
        if in_lottery:
            heapq.heappush(self._lottery, (-priority, order))
            if len(self._lottery) > 2 * self.n:
                heapq.heappop(self._lottery)
        masks = masks_to_original(maps.seg, maps.frame)
        truth = rater_schoettle(sample.annotations[0], plan.spacing)  # the spacing evaluate used
        picture, width = draw_case(sample, plan, masks, truth, row)
        self._cases[order] = _Case(dict(row), [str(r) for r in result.reasons], picture, width,
                                   order)
        keep = {o for _, o in self._worst} | {o for _, o in self._lottery}
        for o in [o for o in self._cases if o not in keep]:
            del self._cases[o]

    def selection(self) -> tuple[list[int], list[int]]:
        """Offer orders of the worst (worst first) and of the random pick (by lot)."""
        worst = [o for _, o in sorted(self._worst, reverse=True)]
        lots = [o for _, o in sorted(self._lottery, reverse=True) if o not in set(worst)]
        return worst, lots[: self.n]

    def write(self, folder: str | Path) -> list[Path]:
        """Write the case pictures, ``contact_sheet.png`` and ``index.csv``; returns the paths."""
        folder = replace_link(Path(folder))  # (a linked gallery folder: its target's pictures
        folder.mkdir(parents=True, exist_ok=True)  # would be deleted below)
        clear(folder)
        worst, lots = self.selection()
        written: list[Path] = []
        entries = []
        for kind, orders in (("worst", worst), ("random", lots)):
            for rank, o in enumerate(orders, 1):
                case = self._cases[o]
                heading = (f"worst #{rank} of {self._count} by Schoettle error" if kind == "worst"
                           else f"random #{rank} (seed {self.seed}) of the others")
                path = folder / f"{kind}_{rank:02d}_{_safe(str(case.row['id']))}.png"
                h = case.picture.shape[0]
                st = Style(h, case.width)
                panel = info_panel(h, heading, case.row, case.reasons, st,
                                   width=max(st.text_size("x" * 34)[0], case.width // 2))
                write_image(path, np.hstack([case.picture, panel])[..., ::-1])
                written.append(path)
                entries.append((kind, rank, case, path))
        sheet = contact_sheet([(_caption(kind, rank, c), c.picture[:, : c.width], c.reasons)
                               for kind, rank, c, _ in entries],
                              n_worst=len(worst), total=self._count, seed=self.seed)
        sheet_path = folder / "contact_sheet.png"
        write_image(sheet_path, sheet[..., ::-1])
        index = replace_link(folder / "index.csv")
        with index.open("w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
            w = csv.writer(fh)
            w.writerow(["kind", "rank", "id", "schoettle", "unit", "needs_review",
                        "review_reasons", "file"])
            for kind, rank, c, path in entries:
                w.writerow([csv_cell(v) for v in (
                    kind, rank, c.row["id"], c.row["schoettle"], c.row["unit"],
                    int(bool(c.reasons)), reasons_cell(c.reasons), path.name)])
        return [*written, sheet_path, index]


def _safe(name: str) -> str:
    """A file-name-safe version of an image id."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80]


def _caption(kind: str, rank: int, case: _Case) -> tuple[str, str]:
    err = error_text(float(case.row["schoettle"]), case.row["unit"])
    head = f"{kind} #{rank}: {err}"
    return head, str(case.row["id"])


def contact_sheet(cells: list[tuple[tuple[str, str], np.ndarray, list[str]]], n_worst: int,
                  total: int, seed: int) -> np.ndarray:
    """All cases as captioned thumbnails: a key, then the worst row(s), then the random ones.

    ``cells`` are ((caption, id), image RGB, review reasons), the worst first.
    """
    st = Style(900, 900)  # sheet text: font 0.82, legible at 100 %
    line_h = st.text_size("Ag")[1] + st.pad
    widths = [round(img.shape[1] * THUMB_HEIGHT / img.shape[0]) for _, img, _ in cells]
    cell_w = max([*widths, st.text_size("random #10: 10.0 mm (review)")[0]]) + 2 * st.pad
    cell_h = THUMB_HEIGHT + 2 * line_h + 2 * st.pad
    cols = max(1, min(SHEET_COLUMNS, len(cells)))
    sheet_w = cols * cell_w + st.pad
    blocks = [_sheet_key(sheet_w, st)]
    groups = (("worst", cells[:n_worst], f"The {n_worst} worst of {total} by Schoettle error"),
              ("random", cells[n_worst:],
               f"{len(cells) - n_worst} others picked at random (seed {seed})"))
    for _, group, title in groups:
        if not group:
            continue
        head = np.full((line_h + 2 * st.pad, sheet_w, 3), 255, np.uint8)
        cv2.putText(head, overlay.printable(title), (st.pad, line_h), cv2.FONT_HERSHEY_SIMPLEX,
                    st.font_scale, (0, 0, 0), st.font_thick, cv2.LINE_AA)
        blocks.append(head)
        for r in range(0, len(group), cols):
            row = np.full((cell_h, sheet_w, 3), 255, np.uint8)
            for c, ((caption, sid), img, reasons) in enumerate(group[r : r + cols]):
                x = st.pad + c * cell_w
                thumb = cv2.resize(img, (round(img.shape[1] * THUMB_HEIGHT / img.shape[0]),
                                         THUMB_HEIGHT), interpolation=cv2.INTER_AREA)
                thumb = thumb[:, : cell_w - 2 * st.pad]
                row[2 * line_h + st.pad: 2 * line_h + st.pad + THUMB_HEIGHT,
                    x: x + thumb.shape[1]] = thumb
                colour = REVIEW_COLOUR if reasons else (0, 0, 0)
                text = caption + (" (review)" if reasons else "")
                for k, t in enumerate((text, sid)):
                    fitted = overlay._fit_text(t, cell_w - 2 * st.pad, st)
                    cv2.putText(row, fitted, (x, (k + 1) * line_h), cv2.FONT_HERSHEY_SIMPLEX,
                                st.font_scale, colour if k == 0 else (60, 60, 60),
                                st.font_thick, cv2.LINE_AA)
            blocks.append(row)
    return np.vstack(blocks)


def _sheet_key(width: int, st: Style) -> np.ndarray:
    """The sheet's legend: colours of the structures, then the truth/prediction styles."""
    line_h = st.text_size("Ag")[1] + st.pad
    entries = [(b, BONE_COLOURS[b]) for b in BONES] + [
        ("LM1", LM1_COLOUR), ("LM2/LM3", overlay.LM23_COLOUR),
        ("p_blum", LANDMARK_COLOURS["p_blum"]), ("p_tmc", LANDMARK_COLOURS["p_tmc"]),
        ("Schoettle", SCHOETTLE_COLOUR)]
    key = np.full((10 * line_h + 2 * st.pad, width, 3), 24, np.uint8)
    x = st.pad
    y = line_h
    for text, colour in entries:
        tw = st.text_size(text)[0]
        if x + tw > width - st.pad:
            x, y = st.pad, y + line_h
        overlay._text(key, text, (x, y), colour, st)
        x += tw + 3 * st.pad
    key_x = st.pad * 5 + 9 * st.marker
    for truth, label in ((False, PREDICTION_STYLE), (True, TRUTH_STYLE)):
        y += line_h
        _style_key(key, y, truth, st)
        overlay._text(key, label, (key_x, y), (255, 255, 255), st)
    y += line_h
    overlay._text(key, "white segment: from the true to the predicted Schoettle point",
                  (st.pad, y), overlay.ERROR_COLOUR, st)
    return key[: y + 2 * st.pad]


def clear(folder: str | Path) -> None:
    """Remove an earlier gallery's files from ``folder`` (its case pictures, contact sheet and
    index), so that no picture of another run stands beside new tables; a folder that is a
    link is left alone (its target is not ours to clear)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return
    for old in [*folder.glob("worst_*.png"), *folder.glob("random_*.png"),
                folder / "contact_sheet.png", folder / "index.csv"]:
        old.unlink(missing_ok=True)
