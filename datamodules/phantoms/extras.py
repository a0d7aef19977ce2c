"""What real lateral radiographs show besides the knee: calibration sphere, metal, ruler,
electrodes, cassette edge (added as attenuation), collimation, borders and burned-in text
(applied to the display image)."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from datamodules.phantoms.render import MU_METAL, fill


def sphere_attenuation(
    acc: np.ndarray, centre_grid: np.ndarray, radius_grid: float, spacing: float, mu: float
) -> None:
    """Add a solid sphere's chord 2 sqrt(R^2 - r^2) (mm) * mu to ``acc`` in place."""
    hr, wr = acc.shape
    x0 = max(int(centre_grid[0] - radius_grid) - 1, 0)
    x1 = min(int(centre_grid[0] + radius_grid) + 2, wr)
    y0 = max(int(centre_grid[1] - radius_grid) - 1, 0)
    y1 = min(int(centre_grid[1] + radius_grid) + 2, hr)
    if x1 <= x0 or y1 <= y0:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    r2 = (xx - centre_grid[0]) ** 2 + (yy - centre_grid[1]) ** 2
    chord = 2.0 * np.sqrt(np.maximum(radius_grid**2 - r2, 0.0)) * spacing
    acc[y0:y1, x0:x1] += (mu * chord).astype(np.float32)


def place_sphere(
    rng: np.random.Generator,
    bone_union: np.ndarray,
    radius_px: float,
    field_box: np.ndarray,
    inside: Callable[[np.ndarray, float], bool] | None = None,
) -> np.ndarray | None:
    """A sphere centre (px) inside the field, clear of bone (< 1 % of its box), or None.

    ``field_box`` is the field's bounding box; ``inside(centre, margin)`` (the field polygon
    test) keeps the whole ball inside a tilted field too: a ball in the unexposed border is not
    imaged, so its truth would name a sphere that is not drawn.
    """
    h, w = bone_union.shape
    x_lo, y_lo, x_hi, y_hi = field_box
    for _ in range(24):
        cx = rng.uniform(
            x_lo + radius_px * 1.1, max(x_lo + radius_px * 1.1, x_hi - radius_px * 1.1)
        )
        cy = rng.uniform(
            y_lo + radius_px * 1.1, max(y_lo + radius_px * 1.1, y_hi - radius_px * 1.1)
        )
        r = int(radius_px)
        ys = slice(max(int(cy) - r, 0), min(int(cy) + r + 1, h))
        xs = slice(max(int(cx) - r, 0), min(int(cx) + r + 1, w))
        patch = bone_union[ys, xs]
        if inside is not None and not inside(np.array([cx, cy]), radius_px * 1.1):
            continue
        if patch.size and patch.mean() < 0.01:
            return np.array([cx, cy])
    return None


def metal_occluder(
    rng: np.random.Generator, acc: np.ndarray, avoid: np.ndarray, spacing: float
) -> dict:
    """A screw/staple-like metal body (attenuation) anywhere but within 15 mm of ``avoid`` points
    (grid px). Returns its description for meta."""
    hr, wr = acc.shape
    for _ in range(20):
        c = np.array([rng.uniform(0.1, 0.9) * wr, rng.uniform(0.1, 0.9) * hr])
        if np.min(np.linalg.norm(avoid - c, axis=1)) * spacing > 15.0 + 25.0:
            break
    length = rng.uniform(15.0, 45.0) / spacing
    width = rng.uniform(3.0, 7.0) / spacing
    ang = rng.uniform(0, np.pi)
    d = np.array([np.cos(ang), np.sin(ang)])
    n = np.array([-d[1], d[0]])
    rect = np.array(
        [
            c - d * length / 2 - n * width / 2,
            c + d * length / 2 - n * width / 2,
            c + d * length / 2 + n * width / 2,
            c - d * length / 2 + n * width / 2,
        ]
    )
    head = (
        c
        - d * length / 2
        + np.stack(
            [np.cos(np.linspace(0, 2 * np.pi, 16)), np.sin(np.linspace(0, 2 * np.pi, 16))], 1
        )
        * width
    )
    layer = fill(acc.shape, [rect, head]).astype(np.float32)
    acc += layer * np.float32(MU_METAL * 6.0)
    return {"centre_grid": [float(c[0]), float(c[1])], "length_mm": float(length * spacing)}


def ruler(rng: np.random.Generator, acc: np.ndarray, spacing: float, box: np.ndarray) -> None:
    """A radiopaque ruler along one side of ``box`` (grid px): bar with 5/10 mm ticks."""
    x0, y0, x1, y1 = box
    layer = np.zeros_like(acc)
    vertical = rng.random() < 0.5
    step = 5.0 / spacing
    tick = max(1, int(round(0.5 / spacing)))
    if vertical:
        x = x0 + 8.0 / spacing if rng.random() < 0.5 else x1 - 8.0 / spacing
        a, b = y0 + 0.1 * (y1 - y0), y1 - 0.1 * (y1 - y0)
        cv2.line(layer, (int(x), int(a)), (int(x), int(b)), 0.6, tick)
        for i, t in enumerate(np.arange(a, b, step)):
            ln = (4.0 if i % 2 else 7.0) / spacing
            cv2.line(layer, (int(x), int(t)), (int(x + ln), int(t)), 1.0, tick)
    else:
        y = y0 + 8.0 / spacing if rng.random() < 0.5 else y1 - 8.0 / spacing
        a, b = x0 + 0.1 * (x1 - x0), x1 - 0.1 * (x1 - x0)
        cv2.line(layer, (int(a), int(y)), (int(b), int(y)), 0.6, tick)
        for i, t in enumerate(np.arange(a, b, step)):
            ln = (4.0 if i % 2 else 7.0) / spacing
            cv2.line(layer, (int(t), int(y)), (int(t), int(y - ln)), 1.0, tick)
    acc += layer * np.float32(rng.uniform(0.3, 0.8))


def electrode(rng: np.random.Generator, acc: np.ndarray, spacing: float) -> None:
    """An ECG-style electrode: a snap ring with a dot and a wire curving off the image."""
    hr, wr = acc.shape
    layer = np.zeros_like(acc)
    c = np.array([rng.uniform(0.05, 0.95) * wr, rng.uniform(0.05, 0.95) * hr])
    r = 5.0 / spacing
    cv2.circle(layer, (int(c[0]), int(c[1])), int(r), 1.0, max(1, int(1.2 / spacing)))
    cv2.circle(layer, (int(c[0]), int(c[1])), max(1, int(1.8 / spacing)), 1.5, -1)
    pts = [c]
    ang = rng.uniform(0, 2 * np.pi)
    for _ in range(12):
        ang += rng.normal(0, 0.25)
        pts.append(pts[-1] + 20.0 / spacing * np.array([np.cos(ang), np.sin(ang)]))
    cv2.polylines(
        layer, [np.round(np.array(pts)).astype(np.int32)], False, 0.7, max(1, int(1.0 / spacing))
    )
    acc += layer * np.float32(0.5)


def cassette_edge(rng: np.random.Generator, acc: np.ndarray) -> None:
    """A straight cassette/plate edge: a step in background attenuation across the grid."""
    hr, wr = acc.shape
    yy, xx = np.ogrid[0:hr, 0:wr]
    ang = rng.uniform(0, 2 * np.pi)
    off = rng.uniform(0.2, 0.45) * min(hr, wr)
    s = (xx - wr / 2) * np.cos(ang) + (yy - hr / 2) * np.sin(ang) - off
    acc += np.float32(rng.uniform(0.05, 0.15)) * (s > 0).astype(np.float32)
    edge = np.abs(s) < 2
    acc[edge] += np.float32(0.15)


def collimation_box(
    rng: np.random.Generator, h: int, w: int, keep: np.ndarray, max_frac: float = 0.14
) -> np.ndarray:
    """Axis-aligned field (x0, y0, x1, y1) in px, cut in from the edges but never into ``keep``
    ((N, 2) px points that must stay visible, with a margin)."""
    margin = 0.04 * min(h, w)
    kx0, ky0 = keep.min(0) - margin
    kx1, ky1 = keep.max(0) + margin
    x0 = min(rng.uniform(0, max_frac) * w, max(kx0, 0))
    y0 = min(rng.uniform(0, max_frac) * h, max(ky0, 0))
    x1 = max(w - 1 - rng.uniform(0, max_frac) * w, min(kx1, w - 1))
    y1 = max(h - 1 - rng.uniform(0, max_frac) * h, min(ky1, h - 1))
    return np.array([x0, y0, x1, y1])


def burn_text(
    rng: np.random.Generator, img: np.ndarray, side: str, spacing: float, marker: bool, text: bool
) -> list[str]:
    """Burn a side marker ("L"/"R", optionally boxed) and/or text lines into ``img`` in place."""
    h, w = img.shape
    layer = np.zeros((h, w), np.uint8)  # OpenCV 5 draws text on 8-bit images only
    written = []
    font = cv2.FONT_HERSHEY_SIMPLEX
    if marker:
        letter = "L" if side == "left" else "R"
        scale = (rng.uniform(8.0, 14.0) / spacing) / 22.0
        th = max(1, int(scale * 2.2))
        (tw, tht), _ = cv2.getTextSize(letter, font, scale, th)
        x = (
            int(rng.uniform(0.03, 0.25) * w)
            if rng.random() < 0.5
            else int(w * 0.97 - tw - rng.uniform(0, 0.2) * w)
        )
        y = (
            int(rng.uniform(0.04, 0.2) * h + tht)
            if rng.random() < 0.7
            else int(h * 0.96 - rng.uniform(0, 0.15) * h)
        )
        val = int(rng.uniform(215, 255))
        cv2.putText(layer, letter, (x, y), font, scale, val, th, cv2.LINE_AA)
        if rng.random() < 0.5:
            pad = int(tht * 0.3)
            cv2.rectangle(
                layer, (x - pad, y - tht - pad), (x + tw + pad, y + pad), val, max(1, th // 2)
            )
        written.append(letter)
    if text:
        lines = [
            "LAT",
            "KNEE",
            "{:02d}.{:02d}.20{:02d}".format(
                *(int(v) for v in rng.integers([1, 1, 10], [29, 13, 26]))
            ),
            f"ID {int(rng.integers(10000, 99999))}",
            "STANDING" if rng.random() < 0.5 else "SUPINE",
        ]
        scale = max(0.3, (rng.uniform(3.0, 5.0) / spacing) / 22.0)
        th = max(1, int(scale * 1.5))
        x = int(rng.uniform(0.02, 0.6) * w)
        y = int(rng.uniform(0.6, 0.85) * h)
        picks = rng.choice(len(lines), size=int(rng.integers(1, 4)), replace=False)
        for i, j in enumerate(picks):
            s = lines[int(j)]
            cv2.putText(layer, s, (x, y + int(i * 30 * scale)), font, scale, 242, th, cv2.LINE_AA)
            written.append(s)
    if written:
        x, y, bw, bh = cv2.boundingRect(layer)
        roi = img[y : y + bh, x : x + bw]
        np.maximum(
            roi, layer[y : y + bh, x : x + bw].astype(np.float32) * np.float32(1 / 255), out=roi
        )
    return written
