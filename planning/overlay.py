"""The plan drawn over the radiograph at its ORIGINAL resolution (OpenCV, anti-aliased).

Shows: bone outlines (femur, patella, tibia, fibula in distinct colours), p_blum and p_tmc,
the posterior cortex line LM1 and its perpendiculars LM2, LM3 (across the whole image), the
Schoettle point with the 2.5 mm reference circle (an ellipse in pixels when the spacing is
anisotropic; omitted when the spacing is unknown), a mm scale bar, and a legend in a panel to the
right of the image (it hides no anatomy). A plan that
needs review gets a red banner with its first reasons. With the model's uncertainty
(``planning.tta.Uncertainty``) each landmark and the Schoettle point carry their 2-sigma TTA
ellipse. Line widths and text scale with the image
so labels stay legible on 500 px and 3000 px images alike.

Example:
    >>> rgb = draw_plan(image, plan, masks)    # image (H, W) in [0, 1], masks (4, H, W) bool
    >>> cv2.imwrite("plan.png", rgb[..., ::-1])
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from datamodules.colours import BONE_RGB as BONE_COLOURS
from datamodules.colours import CORTEX_RGB as LM1_COLOUR
from datamodules.colours import LANDMARK_RGB as LANDMARK_COLOURS
from datamodules.colours import SCHOETTLE_RGB as SCHOETTLE_COLOUR
from datamodules.sample import BONES
from geometry.lines import Line
from geometry.plan_geometry import Plan

# RGB colours (bones, landmarks, LM1, Schoettle point: datamodules.colours)
LM23_COLOUR = (255, 150, 0)
REVIEW_COLOUR = (255, 40, 40)
WINDOW_COLOUR = (170, 170, 255)  # the second look's square (planning/zoom.py)
REFERENCE_RADIUS_MM = 2.5
_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


class Style:
    """Sizes derived from the image size (line width, font scale, marker size)."""

    def __init__(self, h: int, w: int):
        side = min(h, w)
        self.thick = max(1, round(side / 450))
        self.font_scale = max(0.4, side / 1100)
        self.font_thick = max(1, round(side / 550))
        self.marker = max(6, round(side / 70))
        self.pad = max(4, round(side / 120))

    def text_size(self, text: str) -> tuple[int, int]:
        (tw, th), base = cv2.getTextSize(
            printable(text), cv2.FONT_HERSHEY_SIMPLEX, self.font_scale, self.font_thick
        )
        return tw, th + base


def printable(text: str) -> str:
    """``text`` as OpenCV can draw it: ASCII, anything else as a backslash escape. OpenCV's
    Hershey fonts draw ASCII only, and its Python binding crashes the process on a str holding
    a lone surrogate (a file name that is not valid UTF-8 decodes to one)."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _dashed_square(img: np.ndarray, window: dict[str, int], st: Style) -> None:
    """The second look's square (x0, y0, side in pixels), dashed."""
    x0, y0, sd = (float(window[k]) for k in ("x0", "y0", "side"))
    box = np.array([[x0, y0], [x0 + sd, y0], [x0 + sd, y0 + sd], [x0, y0 + sd]]) - 0.5
    _dashed_contour(img, box[:, None], WINDOW_COLOUR, st)


def _fixed(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]) * _ONE)), int(round(float(p[1]) * _ONE))


def _finite(p: np.ndarray | None) -> bool:
    return p is not None and bool(np.all(np.isfinite(p)))


def _text(
    img: np.ndarray, text: str, org: tuple[int, int], colour: tuple[int, int, int], st: Style
) -> None:
    """Text with a dark outline so it reads on bright and dark bone alike."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    text = printable(text)
    # The outline is the same text shifted around (a thicker stroke would also be wider and
    # drift out of register along the string).
    o = max(1, st.font_thick)
    for dx, dy in ((-o, 0), (o, 0), (0, -o), (0, o), (-o, -o), (o, o), (-o, o), (o, -o)):
        cv2.putText(img, text, (org[0] + dx, org[1] + dy), font, st.font_scale, (0, 0, 0),
                    st.font_thick, cv2.LINE_AA)
    cv2.putText(img, text, org, font, st.font_scale, colour, st.font_thick, cv2.LINE_AA)


def _draw_line(img: np.ndarray, line: Line | None, colour, st: Style, dashed: bool = False):
    if line is None:
        return
    seg = line.clip_to_box(*img.shape[:2])
    if seg is None:
        return
    a, b = seg
    if not dashed:
        cv2.line(img, _fixed(a), _fixed(b), colour, st.thick, cv2.LINE_AA, _SHIFT)
        return
    length = float(np.hypot(*(b - a)))
    dash = 6.0 * st.marker / 4
    for s in np.arange(0.0, length, 2 * dash):
        p = a + (b - a) * (s / length)
        q = a + (b - a) * (min(s + dash, length) / length)
        cv2.line(img, _fixed(p), _fixed(q), colour, st.thick, cv2.LINE_AA, _SHIFT)


def _marker(img: np.ndarray, p: np.ndarray, colour, st: Style) -> None:
    """A cross with a gap at the centre, so the point itself stays visible."""
    m, g = st.marker, max(2, st.marker // 3)
    x, y = float(p[0]), float(p[1])
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        a = np.array([x + dx * g, y + dy * g])
        b = np.array([x + dx * m, y + dy * m])
        cv2.line(img, _fixed(a), _fixed(b), (0, 0, 0), st.thick + 2, cv2.LINE_AA, _SHIFT)
        cv2.line(img, _fixed(a), _fixed(b), colour, st.thick, cv2.LINE_AA, _SHIFT)


def _place_labels(
    img: np.ndarray, items: list[tuple[str, np.ndarray, tuple[int, int, int], float]], st: Style
) -> None:
    """Label each point on the side facing away from the other labelled points.

    ``items`` are (text, point, colour, clearance in px from the point to the label).
    """
    pts = np.array([p for _, p, _, _ in items], dtype=np.float64)
    h, w = img.shape[:2]
    for i, (text, p, colour, clear) in enumerate(items):
        others = np.delete(pts, i, axis=0)
        away = p - others.mean(axis=0) if len(others) else np.array([1.0, -1.0])
        n = float(np.hypot(*away))
        d = away / n if n > 1e-6 else np.array([1.0, -1.0])
        tw, th = st.text_size(text)
        anchor = p + d * (clear + st.pad)
        x = anchor[0] - (tw if d[0] < -0.3 else tw / 2 if abs(d[0]) <= 0.3 else 0)
        y = anchor[1] + (th if d[1] > 0.3 else th / 2 if abs(d[1]) <= 0.3 else 0)
        x = float(np.clip(x, 0, max(0, w - tw)))
        y = float(np.clip(y, th, h - 1))
        _text(img, text, (int(round(x)), int(round(y))), colour, st)


def _outline(img: np.ndarray, mask: np.ndarray, colour, st: Style) -> None:
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(img, contours, -1, colour, st.thick, cv2.LINE_AA)


def _nice_length(target_mm: float) -> float:
    """1, 2, 5 x 10^k mm not above ``target_mm``."""
    k = 10 ** math.floor(math.log10(target_mm))
    return max(m * k for m in (1, 2, 5) if m * k <= target_mm)


def _scale_bar(
    img: np.ndarray, spacing: tuple[float, float] | None, st: Style, bottom: int = 0
) -> None:
    h, w = img.shape[:2]
    x0, y0 = st.pad * 2, h - bottom - st.pad * 3
    if spacing is None:
        _text(img, "scale unknown (no pixel spacing)", (x0, y0), (255, 255, 255), st)
        return
    col_mm = spacing[1]
    length_mm = _nice_length(0.2 * w * col_mm)
    length_px = length_mm / col_mm
    bar_h = max(3, st.thick * 3)
    cv2.rectangle(img, (x0 - 2, y0 - bar_h - 2), (int(x0 + length_px) + 2, y0 + 2), (0, 0, 0), -1)
    cv2.rectangle(img, (x0, y0 - bar_h), (int(x0 + length_px), y0), (255, 255, 255), -1)
    for frac in (0.0, 0.5, 1.0):  # ticks
        xt = int(x0 + frac * length_px)
        cv2.line(img, (xt, y0 - bar_h * 2), (xt, y0), (255, 255, 255), st.thick, cv2.LINE_AA)
    _text(img, f"{length_mm:g} mm", (x0, y0 - bar_h * 2 - st.pad), (255, 255, 255), st)


def _legend_panel(
    h: int, entries: list[tuple[str, tuple[int, int, int]]], st: Style
) -> np.ndarray:
    """A dark (h, width, 3) panel with the legend, set beside the image so it hides no anatomy."""
    sizes = [st.text_size(t) for t, _ in entries]
    line_h = max(th for _, th in sizes) + st.pad
    swatch = line_h - st.pad
    width = max(tw for tw, _ in sizes) + swatch + 4 * st.pad
    panel = np.full((h, width, 3), 24, np.uint8)
    for i, (text, colour) in enumerate(entries):
        y = st.pad + i * line_h
        cv2.rectangle(panel, (st.pad, y), (st.pad + swatch, y + swatch), colour, -1)
        _text(panel, text, (2 * st.pad + swatch, y + swatch), colour, st)
    return panel


def _fit_text(text: str, width: int, st: Style) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels."""
    text = printable(text)
    if st.text_size(text)[0] <= width:
        return text
    lo, hi = 4, len(text)  # the longest prefix that fits, by bisection (width grows with length)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if st.text_size(text[:mid] + "...")[0] <= width else (lo, mid - 1)
    return text[:lo].rstrip() + "..."


def _banner(img: np.ndarray, reasons: list[str], st: Style) -> int:
    """Red 'NEEDS REVIEW' lines (up to three reasons) at the bottom; returns the banner height."""
    h, w = img.shape[:2]
    lines = [f"NEEDS REVIEW ({len(reasons)} reason{'s' if len(reasons) > 1 else ''}):"]
    lines += [f"- {r}" for r in reasons[:3]]
    if len(reasons) > 3:
        lines.append(f"  (+{len(reasons) - 3} more in the JSON report)")
    lines = [_fit_text(t, w - 2 * st.pad, st) for t in lines]
    line_h = max(st.text_size(t)[1] for t in lines) + st.pad // 2
    top = max(0, h - line_h * len(lines) - st.pad)
    band = img[top:, :]
    band[:] = (band * 0.3).astype(img.dtype)
    for i, t in enumerate(lines):
        _text(img, t, (st.pad, top + (i + 1) * line_h), REVIEW_COLOUR, st)
    return h - top


def _uncertainty_ellipses(img: np.ndarray, uncertainty, st: Style) -> None:
    """2-sigma TTA scatter ellipses of p_blum, p_tmc and the Schoettle point (original px)."""
    colours = (LANDMARK_COLOURS["p_blum"], LANDMARK_COLOURS["p_tmc"], SCHOETTLE_COLOUR)
    for j, colour in enumerate(colours):
        cov = np.asarray(uncertainty.covariance[j], dtype=np.float64)
        pts = np.asarray(uncertainty.points[:, j], dtype=np.float64)
        pts = pts[np.all(np.isfinite(pts), axis=1)]
        if not np.all(np.isfinite(cov)) or len(pts) == 0:
            continue
        vals, vecs = np.linalg.eigh(cov)
        axes = 2.0 * np.sqrt(np.clip(vals[::-1], 0.0, None))  # major, minor
        if axes[0] < 0.5:
            continue  # below a pixel: nothing to draw
        angle = float(np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1])))
        centre = _fixed(pts.mean(axis=0))
        size = (int(round(axes[0] * _ONE)), int(round(max(axes[1], 0.5) * _ONE)))
        cv2.ellipse(img, centre, size, angle, 0, 360, (0, 0, 0), st.thick + 2, cv2.LINE_AA,
                    _SHIFT)
        cv2.ellipse(img, centre, size, angle, 0, 360, colour, st.thick, cv2.LINE_AA, _SHIFT)


MIN_SHOWN_RANGE = 0.25  # an image using less of [0, 1] than this is stretched for display


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) float image in [0, 1] -> (H, W, 3) uint8 gray RGB.

    An image whose 0.5-99.5 % percentiles span less than ``MIN_SHOWN_RANGE`` (e.g. a 12-bit
    detector in a 16-bit file without a window: values in [0, 0.06], a black overlay) is shown
    stretched to those percentiles; any other image as it is.
    """
    g = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(g[::4, ::4], (0.5, 99.5)))
    if 0.0 < hi - lo < MIN_SHOWN_RANGE:
        g = np.clip((g - lo) / (hi - lo), 0.0, 1.0)
    g8 = np.round(g * 255.0).astype(np.uint8)
    return np.repeat(g8[..., None], 3, axis=2)


def draw_plan(
    image: np.ndarray,
    plan: Plan,
    masks: np.ndarray | None = None,
    title: str | None = None,
    reasons: list[str] | None = None,
    uncertainty=None,
    window: dict[str, int] | None = None,
) -> np.ndarray:
    """Draw ``plan`` over ``image`` at its resolution; returns (H, W + legend, 3) uint8 RGB.

    The radiograph keeps its original resolution in ``[:, :W]``; the legend stands in a panel to
    its right so that it never hides anatomy.

    Args:
        image: (H, W) float image in [0, 1] (original resolution).
        plan: the plan, points in original pixels (``geometry.plan_geometry.Plan``).
        masks: (4, H, W) bool bone masks in original pixels (``BONES`` order), or None.
        title: optional first legend line (e.g. the file name).
        reasons: review reasons (``planning.review.review``); any gives the red banner.
        uncertainty: ``planning.tta.Uncertainty`` for the 2-sigma ellipses, or None.
        window: the second look's square (``x0``, ``y0``, ``side``; ``planning.plan.zoom_window``),
            drawn dashed, or None.
    """
    img = to_rgb(image)
    h, w = img.shape[:2]
    st = Style(h, w)
    if window is not None:
        _dashed_square(img, window, st)
    if masks is not None:
        for b, bone in enumerate(BONES):
            _outline(img, masks[b], BONE_COLOURS[bone], st)
    _draw_line(img, plan.lm1, LM1_COLOUR, st)
    _draw_line(img, plan.lm2, LM23_COLOUR, st, dashed=True)
    _draw_line(img, plan.lm3, LM23_COLOUR, st, dashed=True)
    if uncertainty is not None:
        _uncertainty_ellipses(img, uncertainty, st)
    labels = []
    for name in ("p_blum", "p_tmc"):
        p = plan.landmark(name)
        if _finite(p):
            _marker(img, p, LANDMARK_COLOURS[name], st)
            labels.append((name, p, LANDMARK_COLOURS[name], float(st.marker)))
    sp = plan.schoettle
    if _finite(sp):
        centre = _fixed(sp)
        if plan.spacing is not None:
            axes = (
                int(round(REFERENCE_RADIUS_MM / plan.spacing[1] * _ONE)),
                int(round(REFERENCE_RADIUS_MM / plan.spacing[0] * _ONE)),
            )
            cv2.ellipse(img, centre, axes, 0, 0, 360, (0, 0, 0), st.thick + 2, cv2.LINE_AA,
                        _SHIFT)
            cv2.ellipse(img, centre, axes, 0, 0, 360, SCHOETTLE_COLOUR, st.thick, cv2.LINE_AA,
                        _SHIFT)
        dot = max(2, st.thick + 1) * _ONE
        cv2.circle(img, centre, dot + 2 * _ONE, (0, 0, 0), -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(img, centre, dot, SCHOETTLE_COLOUR, -1, cv2.LINE_AA, _SHIFT)
        clear = st.marker if plan.spacing is None else REFERENCE_RADIUS_MM / min(plan.spacing)
        inside = -0.5 <= sp[0] <= w - 0.5 and -0.5 <= sp[1] <= h - 0.5
        name = "Schoettle" if inside else "Schoettle (outside the image)"
        labels.append((name, sp, SCHOETTLE_COLOUR, float(clear)))
    if labels:
        _place_labels(img, labels, st)
    entries: list[tuple[str, tuple[int, int, int]]] = []
    if title:
        entries.append((title, (255, 255, 255)))
    if masks is not None:
        entries += [(bone, BONE_COLOURS[bone]) for bone in BONES]
    entries += [
        ("LM1 posterior cortex", LM1_COLOUR),
        ("LM2 / LM3 perpendiculars", LM23_COLOUR),
        ("p_blum", LANDMARK_COLOURS["p_blum"]),
        ("p_tmc", LANDMARK_COLOURS["p_tmc"]),
        (
            "Schoettle point, r = 2.5 mm"
            if plan.spacing is not None
            else "Schoettle point (no mm: spacing unknown)",
            SCHOETTLE_COLOUR,
        ),
    ]
    if uncertainty is not None:
        entries.append(("ellipses: 2-sigma TTA spread", (200, 200, 200)))
    if window is not None:
        entries.append(("dashed square: the network's second look", WINDOW_COLOUR))
    banner_h = _banner(img, list(reasons), st) if reasons else 0
    _scale_bar(img, plan.spacing, st, bottom=banner_h)
    return np.hstack([img, _legend_panel(h, entries, st)])


# ------------------------------------------------------------------ reference (ground truth)
TRUTH_STYLE = "truth: dashed outlines and LM1, diamonds"
PREDICTION_STYLE = "prediction: solid outlines and LM1, crosses, dot"
ERROR_COLOUR = (255, 255, 255)


def _dashed_contour(img: np.ndarray, contour: np.ndarray, colour, st: Style) -> None:
    """A closed (K, 1, 2) OpenCV contour drawn dashed (dash = gap, a few line widths long), all
    dashes in one polylines call (one call per dash took 25 ms for a long window outline)."""
    pts = contour.reshape(-1, 2).astype(np.float64)
    if len(pts) < 2:
        return
    pts = np.vstack([pts, pts[:1]])
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    dash = max(4.0, 3.0 * st.marker / 4)
    total = float(s[-1])
    starts = np.arange(0.0, total, 2 * dash)
    ends = np.minimum(starts + dash, total)
    ts = starts[:, None] + (ends - starts)[:, None] * np.linspace(0.0, 1.0, 8)[None, :]
    runs = np.stack([np.interp(ts, s, pts[:, 0]), np.interp(ts, s, pts[:, 1])], axis=-1)
    cv2.polylines(img, list(np.round(runs * _ONE).astype(np.int32)), False, colour, st.thick,
                  cv2.LINE_AA, _SHIFT)


def _diamond(img: np.ndarray, p: np.ndarray, colour, st: Style) -> None:
    """An open diamond (with a dark rim) centred on ``p``: the truth's point marker."""
    c = (int(round(float(p[0]))), int(round(float(p[1]))))
    size = int(round(st.marker * 1.5))
    cv2.drawMarker(img, c, (0, 0, 0), cv2.MARKER_DIAMOND, size, st.thick + 2, cv2.LINE_AA)
    cv2.drawMarker(img, c, colour, cv2.MARKER_DIAMOND, size, st.thick, cv2.LINE_AA)


def draw_truth(
    img: np.ndarray,
    masks: np.ndarray | None = None,
    landmarks: np.ndarray | None = None,
    lm1: Line | None = None,
    schoettle: np.ndarray | None = None,
    predicted_schoettle: np.ndarray | None = None,
    error_text: str | None = None,
) -> None:
    """Draw a reference planning IN PLACE on an RGB image (e.g. ``draw_plan``'s ``[:, :W]``).

    Same colours as a plan, but dashed outlines and LM1 and open diamonds, so truth and a
    solid-line prediction read apart. With ``predicted_schoettle`` a white segment joins the two
    Schoettle points, labelled ``error_text`` beyond the true end.

    Args:
        img: (H, W, 3) uint8 RGB, contiguous; drawn on.
        masks: (4, H, W) true bone masks (``BONES`` order).
        landmarks: (2, 2) true p_blum, p_tmc (x, y).
        lm1: true posterior cortex line.
        schoettle: (2,) true Schoettle point.
    """
    h, w = img.shape[:2]
    st = Style(h, w)
    if masks is not None:
        for b, bone in enumerate(BONES):
            contours, _ = cv2.findContours(
                np.asarray(masks[b]).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
            )
            for c in contours:
                _dashed_contour(img, c, BONE_COLOURS[bone], st)
    _draw_line(img, lm1, LM1_COLOUR, st, dashed=True)
    if landmarks is not None:
        for name, p in zip(("p_blum", "p_tmc"), landmarks, strict=True):
            if _finite(p):
                _diamond(img, p, LANDMARK_COLOURS[name], st)
    if not _finite(schoettle):
        return
    _diamond(img, schoettle, SCHOETTLE_COLOUR, st)
    if not _finite(predicted_schoettle):
        return
    a, b = _fixed(schoettle), _fixed(predicted_schoettle)
    cv2.line(img, a, b, (0, 0, 0), st.thick + 2, cv2.LINE_AA, _SHIFT)
    cv2.line(img, a, b, ERROR_COLOUR, st.thick, cv2.LINE_AA, _SHIFT)
    if error_text:  # beyond the true end, away from the segment (and the predicted labels)
        _place_labels(img, [(error_text, np.asarray(schoettle, float), ERROR_COLOUR,
                             float(st.marker)),
                            ("", np.asarray(predicted_schoettle, float), ERROR_COLOUR, 0.0)], st)
