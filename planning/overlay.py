"""The plan drawn over the radiograph at its ORIGINAL resolution (OpenCV, anti-aliased).

Shows: bone outlines (femur, patella, tibia, fibula in distinct colours), p_blum and p_tmc, the
posterior cortex line LM1 and its perpendiculars LM2, LM3 (across the whole image), the Schoettle
point with the 2.5 mm reference circle (an ellipse in pixels when the spacing is anisotropic; a
ring of a marker's size when the spacing is unknown) and a mm scale bar on a dark plate. A panel to
the right of the image (it hides no anatomy) states the verdict (NEEDS REVIEW with every reason,
wrapped, or that none was found), the spacing and where it came from, the input warnings, and a
legend of what is drawn. With the model's uncertainty (``planning.tta.Uncertainty``) each landmark
and the Schoettle point carry their dashed 2-sigma TTA ellipse. Line widths and text scale with the
image so labels stay legible on 500 px and 3000 px images alike.

Example:
    >>> rgb = draw_plan(image, plan, masks)    # image (H, W) in [0, 1], masks (4, H, W) bool
    >>> cv2.imwrite("plan.png", rgb[..., ::-1])
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from datamodules.colours import BONE_RGB as BONE_COLOURS
from datamodules.colours import CORTEX_RGB as LM1_COLOUR
from datamodules.colours import LANDMARK_RGB as LANDMARK_COLOURS
from datamodules.colours import SCHOETTLE_RGB as SCHOETTLE_COLOUR
from datamodules.sample import BONES
from geometry.lines import Line
from geometry.plan_geometry import Plan

if TYPE_CHECKING:  # (annotations only)
    from planning.second_knee import SecondKnee

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


# letters NFKD does not take apart into an ASCII letter and accents
_LATIN = str.maketrans({"ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "œ": "oe",
                        "Œ": "OE", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "þ": "th", "Þ": "Th"})


def printable(text: str) -> str:
    """``text`` as OpenCV can draw it: ASCII, accented Latin letters without their accents
    ("Röntgen" -> "Rontgen", a patient's name stays readable), anything else as a backslash
    escape. OpenCV's Hershey fonts draw ASCII only, and its Python binding crashes the process
    on a str holding a lone surrogate (a file name that is not valid UTF-8 decodes to one)."""
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFKD", text.translate(_LATIN))
                       if not unicodedata.combining(c))
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
) -> list[tuple[float, float, float, float]]:
    """Label each point on the side facing away from the other labelled points; returns the
    labels' (x0, y0, x1, y1) boxes.

    ``items`` are (text, point, colour, clearance in px from the point to the label).
    """
    pts = np.array([p for _, p, _, _ in items], dtype=np.float64)
    placed: list[tuple[float, float, float, float]] = []  # (x0, y0, x1, y1) of drawn labels
    for i, (text, p, colour, clear) in enumerate(items):
        others = np.delete(pts, i, axis=0)
        away = p - others.mean(axis=0) if len(others) else np.array([1.0, -1.0])
        n = float(np.hypot(*away))
        d = away / n if n > 1e-6 else np.array([1.0, -1.0])
        # the side facing away first, then turned by 45 deg steps: the first box that covers
        # no label drawn before and no other point (two points 14 px apart had their labels
        # drawn over each other)
        boxes = [_label_box(img, text, p, _turn(d, k * 45.0), clear, st)
                 for k in (0, 1, -1, 2, -2, 3, -3, 4)]
        box = next((b for b in boxes if not any(_overlap(b, q) for q in placed)
                    and not any(_covers(b, q, st.marker) for q in others)), boxes[0])
        placed.append(box)
        _text(img, text, (int(round(box[0])), int(round(box[3]))), colour, st)
    return placed


def _turn(d: np.ndarray, degrees: float) -> np.ndarray:
    """The unit vector ``d`` turned by ``degrees``."""
    a = math.radians(degrees)
    return np.array([d[0] * math.cos(a) - d[1] * math.sin(a),
                     d[0] * math.sin(a) + d[1] * math.cos(a)])


def _label_box(img: np.ndarray, text: str, p: np.ndarray, d: np.ndarray, clear: float,
               st: Style) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of ``text`` drawn ``clear`` + pad px from ``p`` in direction ``d``,
    kept inside the image (y1 is the text's baseline origin)."""
    h, w = img.shape[:2]
    tw, th = st.text_size(text)
    anchor = p + d * (clear + st.pad)
    x = anchor[0] - (tw if d[0] < -0.3 else tw / 2 if abs(d[0]) <= 0.3 else 0)
    y = anchor[1] + (th if d[1] > 0.3 else th / 2 if abs(d[1]) <= 0.3 else 0)
    x = float(np.clip(x, 0, max(0, w - tw)))
    y = float(np.clip(y, th, h - 1))
    return (x, y - th, x + tw, y)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether two (x0, y0, x1, y1) boxes intersect."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _covers(box: tuple[float, ...], p: np.ndarray, margin: float) -> bool:
    """Whether ``box`` comes within ``margin`` px of the point ``p``."""
    return (box[0] - margin < p[0] < box[2] + margin) and (box[1] - margin < p[1] < box[3] + margin)


def _outline(img: np.ndarray, mask: np.ndarray, colour, st: Style) -> None:
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(img, contours, -1, colour, st.thick, cv2.LINE_AA)


def _nice_length(target_mm: float) -> float:
    """1, 2, 5 x 10^k mm not above ``target_mm``."""
    k = 10 ** math.floor(math.log10(target_mm))
    return max(m * k for m in (1, 2, 5) if m * k <= target_mm)


def _scale_bar(img: np.ndarray, spacing: tuple[float, float] | None, st: Style) -> None:
    """A horizontal mm bar with end and middle ticks and its length, bottom left, on a dark
    plate sized to the line width (a white bar alone vanished on a bright corner)."""
    if spacing is None:
        return  # the panel says "scale unknown"
    h, w = img.shape[:2]
    col_mm = spacing[1]
    length_mm = _nice_length(0.2 * w * col_mm)
    length_px = int(round(length_mm / col_mm))
    label = f"{length_mm:g} mm" + ("" if math.isclose(spacing[0], col_mm, rel_tol=0.01)
                                   else " (horizontal)")
    bar_h = max(3, st.thick * 3)
    tw, th = st.text_size(label)
    m = max(3, st.thick * 2)  # the plate's margin
    x0, y0 = st.pad * 2, h - st.pad * 2 - m
    label_y = y0 - bar_h * 2 - st.pad
    top, right = label_y - th - m, max(x0 + length_px, x0 + tw) + m
    if top < 0 or right > w:
        return  # an image too small for a bar: the panel states the spacing
    cv2.rectangle(img, (x0 - m, top), (right, y0 + m), (0, 0, 0), -1)
    cv2.rectangle(img, (x0, y0 - bar_h), (x0 + length_px, y0), (255, 255, 255), -1)
    for frac in (0.0, 0.5, 1.0):  # ticks, inside the plate
        xt = int(x0 + frac * length_px)
        cv2.line(img, (xt, y0 - bar_h * 2), (xt, y0), (255, 255, 255), st.thick, cv2.LINE_AA)
    _text(img, label, (x0, label_y), (255, 255, 255), st)


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


def wrap_text(text: str, width: int, st: Style) -> list[str]:
    """``text`` broken into lines of at most ``width`` px (words kept whole where they fit; a
    word longer than a line is cut with an ellipsis)."""
    lines: list[str] = []
    cur = ""
    for word in printable(text).split():
        trial = f"{cur} {word}".strip()
        if cur and st.text_size(trial)[0] > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    if cur:
        lines.append(cur)
    return [_fit_text(t, width, st) for t in lines]


MAX_PANEL_REASONS = 12  # more are in the JSON report
STATUS_OK_COLOUR = (150, 230, 150)
WARNING_COLOUR = (255, 200, 80)
TEXT_COLOUR = (235, 235, 235)
PANEL_GRAY = 24
PANEL_CHARS = 44  # wrapped panel text is at least this many characters wide


def _panel(h: int, title: str | None, status: list[tuple[str, tuple[int, int, int]]],
           entries: list[tuple[str, tuple[int, int, int]]], st: Style) -> np.ndarray:
    """A dark panel for beside the image (it hides no anatomy): the title, the status lines
    (verdict, scale, warnings; wrapped) and the legend (a swatch per drawn element). At least
    ``h`` tall; taller when its text needs it (the caller pads the image to match)."""
    swatch = st.text_size("Ag")[1]
    line_h = swatch + st.pad
    legend_w = max((st.text_size(t)[0] for t, _ in entries), default=0) + swatch + st.pad
    inner = max(legend_w, st.text_size("n" * PANEL_CHARS)[0])
    rows: list[tuple[str, tuple[int, int, int], bool]] = []  # (text, colour, swatch?)
    if title:
        rows.append((_fit_text(title, inner, st), (255, 255, 255), False))
    for text, colour in status:
        indent = "  " if text.startswith("- ") else ""
        parts = wrap_text(text, inner, st)
        rows += [(p if i == 0 else indent + p, colour, False) for i, p in enumerate(parts)]
    if entries:
        rows.append(("", TEXT_COLOUR, False))  # a gap before the legend
    rows += [(t, c, True) for t, c in entries]
    width = inner + 3 * st.pad
    panel = np.full((max(h, 2 * st.pad + len(rows) * line_h), width, 3), PANEL_GRAY, np.uint8)
    for i, (text, colour, has_swatch) in enumerate(rows):
        y = st.pad + i * line_h
        x = st.pad
        if has_swatch:
            cv2.rectangle(panel, (x, y), (x + swatch, y + swatch), colour, -1)
            x += swatch + st.pad
        if text:
            _text(panel, text, (x, y + swatch), colour, st)
    return panel


SOURCE_TEXT = {  # geometry.pixel_spacing's source names, as a reader of the overlay knows them
    "user": "--spacing (given by the user)", "annotation": "the annotation file",
    "PixelSpacing": "DICOM PixelSpacing", "sphere": "the calibration sphere",
    "ImagerPixelSpacing": "DICOM ImagerPixelSpacing (detector plane, not corrected for "
    "magnification: sizes ~5-20 % too large)",
    "ImagerPixelSpacing/magnification": "DICOM ImagerPixelSpacing / magnification",
}


def _scale_line(spacing: tuple[float, float] | None, source: str | None) -> str:
    """The panel's statement of the pixel spacing and where it came from."""
    if spacing is None:
        return "scale unknown: no pixel spacing (no mm values)"
    row, col = spacing
    value = (f"{col:.4g} mm/px" if math.isclose(row, col, rel_tol=0.01)
             else f"{row:.4g} (rows) x {col:.4g} (columns) mm/px")
    return f"scale: {value}" + (f" from {SOURCE_TEXT.get(source, source)}" if source else "")


def _dashed_ellipse(img: np.ndarray, centre: np.ndarray, axes: np.ndarray, angle: float,
                    colour, st: Style) -> None:
    """An ellipse (semi-axes in px) drawn dashed over a dark rim, so that it reads apart from
    the solid 2.5 mm circle of the same colour."""
    pts = cv2.ellipse2Poly((0, 0), (1000, 1000), 0, 0, 360, 4).astype(np.float64) / 1000.0
    a = np.radians(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    contour = (pts * axes) @ rot.T + centre
    _dashed_contour(img, contour[:, None], (0, 0, 0), st, st.thick + 2)
    _dashed_contour(img, contour[:, None], colour, st)


def _uncertainty_ellipses(img: np.ndarray, uncertainty, st: Style) -> int:
    """Dashed 2-sigma TTA scatter ellipses of p_blum, p_tmc and the Schoettle point (original
    px), each in its point's colour; returns how many were drawn."""
    colours = (LANDMARK_COLOURS["p_blum"], LANDMARK_COLOURS["p_tmc"], SCHOETTLE_COLOUR)
    drawn = 0
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
        _dashed_ellipse(img, pts.mean(axis=0), np.array([axes[0], max(axes[1], 0.5)]), angle,
                        colour, st)
        drawn += 1
    return drawn


def _window_visible(window: dict[str, int], h: int, w: int) -> bool:
    """Whether any side of the second look's square crosses the image (a square around the
    whole image, or beside it, shows nothing)."""
    x0, y0, sd = (float(window[k]) for k in ("x0", "y0", "side"))
    x1, y1 = x0 + sd, y0 + sd
    overlaps = x0 < w and x1 > 0 and y0 < h and y1 > 0
    encloses = x0 <= 0 and y0 <= 0 and x1 >= w and y1 >= h
    return overlaps and not encloses


MIN_SHOWN_RANGE = 0.25  # an image using less of [0, 1] than this is stretched for display


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) float image in [0, 1] -> (H, W, 3) uint8 gray RGB.

    An image whose 0.5-99.5 % percentiles span less than ``MIN_SHOWN_RANGE`` (e.g. a 12-bit
    detector in a 16-bit file without a window: values in [0, 0.06], a black overlay) is shown
    stretched to those percentiles; any other image as it is.
    """
    # float32, in place: a 36 MP image is 144 MB a copy (float64 copies peaked at 0.8 GB here)
    g = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(g[::4, ::4], (0.5, 99.5)))
    if 0.0 < hi - lo < MIN_SHOWN_RANGE:
        g -= np.float32(lo)
        g /= np.float32(hi - lo)
        np.clip(g, 0.0, 1.0, out=g)
    g *= np.float32(255.0)
    g8 = np.rint(g, out=g).astype(np.uint8)
    return np.repeat(g8[..., None], 3, axis=2)


Colour = tuple[int, int, int]


def panel_text(
    plan: Plan, masks: bool | Sequence[str], reasons: list[str] | None,
    spacing_source: str | None,
    warnings: list[str] | None, ellipses: bool, window: bool, second_knee: bool = False,
) -> tuple[list[tuple[str, Colour]], list[tuple[str, Colour]]]:
    """(status lines, legend entries) of the panel: the verdict, whether a Schoettle point
    exists, the scale and its source, the warnings; a legend entry only for what is drawn
    (``masks``: the bones outlined, True for all of them, ``ellipses``: TTA ellipses,
    ``window``: the second look,
    ``second_knee``: the circle around a second knee)."""
    sp = plan.schoettle
    status: list[tuple[str, tuple[int, int, int]]] = []
    if reasons:
        status.append((f"NEEDS REVIEW ({len(reasons)} reason{'s' if len(reasons) > 1 else ''}):",
                       REVIEW_COLOUR))
        status += [(f"- {r}", REVIEW_COLOUR) for r in reasons[:MAX_PANEL_REASONS]]
        if len(reasons) > MAX_PANEL_REASONS:
            status.append((f"  (+{len(reasons) - MAX_PANEL_REASONS} more in the JSON report)",
                           REVIEW_COLOUR))
    elif reasons is not None:
        status.append(("review: no reason found", STATUS_OK_COLOUR))
    if not _finite(sp):
        status.append(("no Schoettle point could be constructed", REVIEW_COLOUR))
    status.append((_scale_line(plan.spacing, spacing_source), TEXT_COLOUR))
    status += [(f"warning: {t}", WARNING_COLOUR) for t in warnings or []]
    entries: list[tuple[str, tuple[int, int, int]]] = []
    drawn = BONES if masks is True else masks or ()  # (a bone the model did not predict has
    entries += [(bone, BONE_COLOURS[bone]) for bone in BONES if bone in drawn]  # no outline)
    if plan.lm1 is not None:
        entries.append(("LM1 posterior cortex", LM1_COLOUR))
    if plan.lm2 is not None or plan.lm3 is not None:
        entries.append(("LM2 / LM3 perpendiculars", LM23_COLOUR))
    entries += [(n, LANDMARK_COLOURS[n]) for n in ("p_blum", "p_tmc") if _finite(plan.landmark(n))]
    if _finite(sp):
        entries.append(("Schoettle point, 2.5 mm reference circle" if plan.spacing is not None
                        else "Schoettle point (ring: no mm scale)", SCHOETTLE_COLOUR))
    if ellipses:
        entries.append(("dashed ellipses: 2-sigma TTA spread", (200, 200, 200)))
    if window:
        entries.append(("dashed square: the network's second look", WINDOW_COLOUR))
    if second_knee:
        entries.append(("dashed circle: a second knee, not planned", REVIEW_COLOUR))
    return status, entries


def draw_plan(
    image: np.ndarray,
    plan: Plan,
    masks: np.ndarray | None = None,
    title: str | None = None,
    reasons: list[str] | None = None,
    uncertainty=None,
    window: dict[str, int] | None = None,
    spacing_source: str | None = None,
    warnings: list[str] | None = None,
    second_knee: SecondKnee | None = None,
) -> np.ndarray:
    """Draw ``plan`` over ``image`` at its resolution; returns (max(H, panel), W + panel, 3)
    uint8 RGB.

    The radiograph keeps its original resolution in ``[:H, :W]`` and nothing is written over
    it but the plan and a scale bar; the verdict, the scale and the legend stand in a panel to
    its right (below the image, when the panel is taller, the canvas is dark).

    Args:
        image: (H, W) float image in [0, 1] (original resolution).
        plan: the plan, points in original pixels (``geometry.plan_geometry.Plan``).
        masks: (4, H, W) bool bone masks in original pixels (``BONES`` order), or None.
        title: optional first panel line (e.g. the file name).
        reasons: review reasons (``planning.review.review``): "NEEDS REVIEW" and each reason in
            red; an empty list says no reason was found; None (not reviewed) says nothing.
        uncertainty: ``planning.tta.Uncertainty`` for the dashed 2-sigma ellipses, or None.
        window: the second look's square (``x0``, ``y0``, ``side``; ``planning.plan.zoom_window``),
            drawn dashed where it crosses the image, or None.
        spacing_source: where the pixel spacing came from (e.g. ``user``, ``PixelSpacing``),
            stated beside its value.
        warnings: input warnings (e.g. lossy compression), shown in the panel.
        second_knee: a ``planning.second_knee.SecondKnee`` beside the planned knee, circled
            dashed (one condyle width across) in the review colour, or None.
    """
    img = to_rgb(image)
    h, w = img.shape[:2]
    st = Style(h, w)
    show_window = window is not None and _window_visible(window, h, w)
    if show_window:
        _dashed_square(img, window, st)
    outlined = []
    if masks is not None:
        for b, bone in enumerate(BONES):
            if np.any(masks[b]):
                _outline(img, masks[b], BONE_COLOURS[bone], st)
                outlined.append(bone)
    _draw_line(img, plan.lm1, LM1_COLOUR, st)
    _draw_line(img, plan.lm2, LM23_COLOUR, st, dashed=True)
    _draw_line(img, plan.lm3, LM23_COLOUR, st, dashed=True)
    ellipses = _uncertainty_ellipses(img, uncertainty, st) if uncertainty is not None else 0
    if second_knee is not None:
        r = 0.5 * second_knee.condyle_width_px
        _dashed_ellipse(img, np.asarray(second_knee.centre, np.float64), np.array([r, r]), 0.0,
                        REVIEW_COLOUR, st)
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
        else:  # no mm circle: a ring of a marker's size, so the point is found at a glance
            ring = st.marker * _ONE  # (a 4 px dot alone was the hardest mark to find)
            cv2.circle(img, centre, ring, (0, 0, 0), st.thick + 2, cv2.LINE_AA, _SHIFT)
            cv2.circle(img, centre, ring, SCHOETTLE_COLOUR, st.thick, cv2.LINE_AA, _SHIFT)
        dot = max(2, st.thick + 1) * _ONE
        cv2.circle(img, centre, dot + 2 * _ONE, (0, 0, 0), -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(img, centre, dot, SCHOETTLE_COLOUR, -1, cv2.LINE_AA, _SHIFT)
        clear = st.marker if plan.spacing is None else max(
            float(st.marker), REFERENCE_RADIUS_MM / min(plan.spacing))
        inside = -0.5 <= sp[0] <= w - 0.5 and -0.5 <= sp[1] <= h - 0.5
        name = "Schoettle" if inside else "Schoettle (outside the image)"
        labels.append((name, sp, SCHOETTLE_COLOUR, float(clear)))
    if labels:
        _place_labels(img, labels, st)
    _scale_bar(img, plan.spacing, st)
    status, entries = panel_text(plan, outlined, reasons, spacing_source, warnings,
                                 ellipses > 0, show_window, second_knee is not None)
    panel = _panel(h, title, status, entries, st)
    if panel.shape[0] > h:  # a panel taller than the image: the canvas grows below the image
        img = np.vstack([img, np.full((panel.shape[0] - h, w, 3), PANEL_GRAY, np.uint8)])
    return np.hstack([img, panel])


# ------------------------------------------------------------------ reference (ground truth)
TRUTH_STYLE = "truth: dashed outlines and LM1, diamonds"
PREDICTION_STYLE = "prediction: solid outlines and LM1 (its LM2/LM3 dashed), crosses, dot"
ERROR_COLOUR = (255, 255, 255)


def _dashed_contour(img: np.ndarray, contour: np.ndarray, colour, st: Style,
                    thick: int | None = None) -> None:
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
    cv2.polylines(img, list(np.round(runs * _ONE).astype(np.int32)), False, colour,
                  st.thick if thick is None else thick, cv2.LINE_AA, _SHIFT)


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
