"""Small vectorised curve helpers used to build smooth bone outlines (all in mm, (N, 2) arrays)."""

from __future__ import annotations

import numpy as np


def catmull_rom(points: np.ndarray, samples: int = 8, closed: bool = False) -> np.ndarray:
    """Centripetal-free (uniform) Catmull-Rom spline through ``points``.

    Args:
        points: (N, 2) control points, N >= 2; the curve passes through every one.
        samples: points generated per segment (the segment's end point excluded).
        closed: treat the points as a closed loop.

    Returns:
        (M, 2) points along the curve; for an open curve the last control point is included.
    """
    p = np.asarray(points, dtype=np.float64)
    if closed:
        ext = np.concatenate([p[-1:], p, p[:2]])
    else:
        ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
    p0, p1, p2, p3 = ext[:-3], ext[1:-2], ext[2:-1], ext[3:]
    t = (np.arange(samples) / samples)[None, :, None]
    t2, t3 = t * t, t * t * t
    seg = 0.5 * (
        2 * p1[:, None]
        + (p2 - p0)[:, None] * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3)[:, None] * t2
        + (3 * p1 - p0 - 3 * p2 + p3)[:, None] * t3
    )
    out = seg.reshape(-1, 2)
    return out if closed else np.concatenate([out, p[-1:]])


def cubic_bezier(p0, p1, p2, p3, samples: int = 12) -> np.ndarray:
    """(samples + 1, 2) points of the cubic Bezier curve with control points p0..p3."""
    t = np.linspace(0.0, 1.0, samples + 1)[:, None]
    p0, p1, p2, p3 = (np.asarray(q, dtype=np.float64) for q in (p0, p1, p2, p3))
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def arc(centre, radius, start_deg: float, stop_deg: float, step_deg: float = 4.0):
    """Points on an arc from ``start_deg`` to ``stop_deg`` (counter-clockwise if rising);
    ``radius`` is a number (circle) or (rx, ry) semi-axes (axis-aligned ellipse)."""
    n = max(2, int(abs(stop_deg - start_deg) / step_deg) + 1)
    a = np.deg2rad(np.linspace(start_deg, stop_deg, n))
    r = np.asarray(radius, dtype=np.float64)
    return np.asarray(centre, dtype=np.float64) + r * np.stack([np.cos(a), np.sin(a)], 1)


def rotation(deg: float) -> np.ndarray:
    """2x2 counter-clockwise rotation matrix (in a y-up frame)."""
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def ray_exit(polygon: np.ndarray, origin, direction, max_len: float = 200.0) -> float:
    """Distance along a ray from ``origin`` (inside ``polygon``) to where it leaves the polygon.

    Exact segment intersection: the smallest positive hit over all polygon edges.
    """
    o = np.asarray(origin, dtype=np.float64)
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    a = polygon
    b = np.roll(polygon, -1, axis=0)
    e = b - a
    denom = d[0] * e[:, 1] - d[1] * e[:, 0]
    w = a - o
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (w[:, 0] * e[:, 1] - w[:, 1] * e[:, 0]) / denom
        u = (w[:, 0] * d[1] - w[:, 1] * d[0]) / denom
    ok = (np.abs(denom) > 1e-12) & (t > 1e-9) & (u >= 0) & (u <= 1)
    return float(t[ok].min()) if ok.any() else max_len
