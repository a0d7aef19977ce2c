"""Perturbed copies of a dataset folder for red-teaming the review gate (red-team rounds 12-13).

    python benchmarks/red_team_sets.py SRC_DIR OUT_DIR [--kinds shutter,bite,keystone,...]

Each sample of SRC_DIR (images/, masks/, annotations/, e.g. ``make phantoms`` or
``benchmarks/independent_phantoms.py`` output) gets variants written to OUT_DIR as
``<id>_<kind><k>``:

- ``shutter`` (4 each): everything more than 5 or 8 mm behind the truth Schoettle point, beyond
  a line parallel to the truth cortex line or turned by +-8 deg, set to 0 (a black electronic
  shutter cutting the posterior condyles; round 10's family 2). Truth unchanged.
- ``white`` (4): the same half-planes set to 1 (an unexposed region shown white: a CR plate
  without electronic masking). Truth unchanged.
- ``corner`` (4): an L-shaped collimator corner over the condyles: the half-plane 5 or 8 mm
  behind the point joined by the half-plane beyond a line across the cortex line 12 or 20 mm
  distal to it, black (variants 0, 1) or white (2, 3). Truth unchanged.
- ``bilateral`` (2): a side-by-side film: the knee beside the next sample of SRC_DIR (the last
  beside the first), mirrored, scaled to the same height, 2 % of the width apart on black; the
  knee on the left (variant 0) or the right (1), its truth moved with it. Truth is this knee's:
  a plan on the other knee is counted wrong (which knee was meant cannot be told).
- ``bite`` (1-2): an ellipse of 6-15 mm radii within 5 mm of p_tmc filled at the soft tissue's
  level with matched noise (a lesion where the cortex meets the condyle). Truth unchanged: the
  anatomy's truth is where the bone was.
- ``keystone`` / ``shear`` / ``barrel`` (1-2 each): a perspective warp (corners moved 3-8 % of
  the side), a shear of 0.08-0.2, a barrel distortion (corners 3-6 % inward). Masks, landmarks,
  cortex points and the Schoettle point move with the pixels (pixel centres on integers); the
  outside is filled with 0. A variant whose landmarks or Schoettle point leave the image is
  dropped. Spacing is kept (a distorted image's mm are approximate).

Random draws are seeded from the sample id (crc32) and the kind, so a variant can be rebuilt
alone. ``meta["perturbation"]`` records the kind and the exact parameters. These are test
material, not training data: the perturbations were chosen to attack the gate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datamodules.dataset_io import write_sample
from datamodules.sample import LANDMARKS, Sample
from geometry.lines import fit_line_tls
from geometry.plan_geometry import femur_side
from planning.evaluate import dataset_samples
from planning.perturb import warped_sample
from planning.references import rater_schoettle

KINDS = ("shutter", "bite", "keystone", "shear", "barrel", "white", "corner", "bilateral")
TMC = LANDMARKS.index("p_tmc")
SHUTTERS = ((5.0, 0.0), (8.0, 0.0), (6.0, 8.0), (6.0, -8.0))  # (mm behind the point, deg)
CORNERS = ((5.0, 12.0, 0.0), (8.0, 20.0, 0.0), (5.0, 20.0, 1.0), (8.0, 12.0, 1.0))
# (mm behind the point, mm distal to it, fill)
BLANKS = ("shutter", "white", "corner")  # kinds that blank part of the image, truth unchanged
BARREL_ITERS = 30
Points = Callable[[np.ndarray], np.ndarray]
Warp = Callable[[np.ndarray, bool], np.ndarray]  # (array, is_mask) -> warped array
Warped = tuple[Warp, Points, dict[str, Any]]  # the warp, its map of points, its parameters


SEEDED = ("bite", "keystone", "shear", "barrel")  # (the order round 12's sets were drawn in)


def rng_for(sample_id: str, kind: str) -> np.random.Generator:
    """The generator of one sample's variants of one kind."""
    return np.random.default_rng([zlib.crc32(sample_id.encode()), SEEDED.index(kind)])


def truth_point(s: Sample) -> np.ndarray:
    """The truth Schoettle point: the sample's own, else the primary rater's construction."""
    p = s.schoettle_point
    return np.asarray(rater_schoettle(s.annotations[0], s.spacing_mm) if p is None else p, float)


def _frame(s: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offset of every pixel from the truth point (h, w, 2), anterior unit normal, distal unit
    direction) of the truth cortex line; distal points from the cortex points to the point."""
    line = fit_line_tls(np.asarray(s.annotations[0].cortex_points, float))
    side = femur_side(s.masks[0], line, lambda q: q)  # (masks and line in the same pixels)
    p = truth_point(s)
    along = line.direction * np.sign(
        float((p - np.mean(s.annotations[0].cortex_points, axis=0)) @ line.direction) or 1.0)
    h, w = s.shape
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx, yy], -1) - p, side * line.normal, along


def _turned(v: np.ndarray, deg: float) -> np.ndarray:
    t = np.radians(deg)
    return np.array([v[0] * np.cos(t) - v[1] * np.sin(t), v[0] * np.sin(t) + v[1] * np.cos(t)])


def shutter(s: Sample, k: int, fill: float = 0.0) -> tuple[np.ndarray, dict[str, Any]]:
    """Variant ``k`` of ``SHUTTERS``: the image with everything beyond the line set to ``fill``."""
    d_mm, deg = SHUTTERS[k]
    off, n, _ = _frame(s)
    img = s.image.copy()
    img[off @ _turned(n, deg) < -d_mm / float(np.mean(s.spacing_mm))] = fill
    return img, {"behind_mm": d_mm, "angle_deg": deg, "fill": fill}


def corner(s: Sample, k: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Variant ``k`` of ``CORNERS``: the half-plane behind the point and the one distal to it
    (an L-shaped collimator corner over the condyles) set to the variant's fill."""
    behind, distal, fill = CORNERS[k]
    off, n, along = _frame(s)
    mm = float(np.mean(s.spacing_mm))
    img = s.image.copy()
    img[(off @ n < -behind / mm) | (off @ along > distal / mm)] = fill
    return img, {"behind_mm": behind, "distal_mm": distal, "fill": fill}


def blanked(s: Sample, kind: str, k: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Variant ``k`` of one of the ``BLANKS`` kinds."""
    if kind == "corner":
        return corner(s, k)
    return shutter(s, k, 1.0 if kind == "white" else 0.0)


def bite(s: Sample, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """The image with a soft-tissue-level ellipse near p_tmc (truth unchanged)."""
    h, w = s.shape
    sy, sx = s.spacing_mm
    tmc = np.asarray(s.annotations[0].landmarks[TMC], float)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dmm = np.hypot((xx - tmc[0]) * sx, (yy - tmc[1]) * sy)
    ring = (dmm >= 10) & (dmm <= 20)
    soft = ring & (s.masks.max(0) == 0)
    if soft.sum() < 50:
        soft = ring & (s.masks[0] == 0)
    level = float(np.median(s.image[soft]))
    hp = s.image.astype(np.float64) - cv2.GaussianBlur(s.image.astype(np.float64), (0, 0), 1.5)
    noise_sd = 1.4826 * float(np.median(np.abs(hp[soft] - np.median(hp[soft]))))
    ang = rng.uniform(0, 2 * np.pi)
    off = rng.uniform(0, 5.0) * np.array([np.cos(ang), np.sin(ang)])  # mm
    c = tmc + off / np.array([sx, sy])
    a_mm, b_mm = rng.uniform(6, 15, size=2)
    th = rng.uniform(0, np.pi)
    edge = rng.uniform(1.0, 2.0)
    dxm, dym = (xx - c[0]) * sx, (yy - c[1]) * sy
    u = (np.cos(th) * dxm + np.sin(th) * dym) / a_mm
    v = (-np.sin(th) * dxm + np.cos(th) * dym) / b_mm
    phi = np.arctan2(v * b_mm, u * a_mm)  # the local radius in px, for a soft edge in px
    rad_px = 1.0 / np.hypot(np.cos(phi) / (a_mm / sx), np.sin(phi) / (b_mm / sy))
    alpha = np.clip(0.5 - (np.hypot(u, v) - 1.0) * rad_px / edge, 0.0, 1.0)
    fill = level + noise_sd * rng.standard_normal((h, w))
    img = np.clip((1 - alpha) * s.image + alpha * fill, 0, 1).astype(np.float32)
    return img, {"centre_xy": c.tolist(), "radii_mm": [a_mm, b_mm], "angle_rad": th,
                 "edge_px": edge, "level": level}


def _homogeneous(m: np.ndarray) -> Points:
    def points(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, np.float64).reshape(-1, 2)
        q = np.c_[p, np.ones(len(p))] @ m.T
        return q[:, :2] / q[:, 2:3] if m.shape[0] == 3 else q

    return points


def _interp(is_mask: bool) -> int:
    return cv2.INTER_NEAREST if is_mask else cv2.INTER_LINEAR


def keystone(s: Sample, rng: np.random.Generator) -> Warped:
    """A perspective warp: each corner moved 3-8 % of the side in a random direction."""
    h, w = s.shape
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    frac = rng.uniform(0.03, 0.08, size=4)
    ang = rng.uniform(0, 2 * np.pi, size=4)
    dst = src + np.c_[frac * np.cos(ang) * w, frac * np.sin(ang) * h]
    m = cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))
    return (lambda a, is_mask: cv2.warpPerspective(
        a, m, (w, h), flags=_interp(is_mask), borderMode=cv2.BORDER_CONSTANT, borderValue=0),
        _homogeneous(m), {"M": m.tolist(), "corner_frac": frac.tolist()})


def shear(s: Sample, rng: np.random.Generator) -> Warped:
    """A shear of 0.08-0.2 about the image centre, along x or y."""
    h, w = s.shape
    cx, cy = (w - 1) / 2, (h - 1) / 2
    k = rng.uniform(0.08, 0.2) * rng.choice([-1, 1])
    axis = str(rng.choice(["x", "y"]))
    if axis == "x":  # x' = x + k (y - cy)
        m = np.array([[1, k, -k * cy], [0, 1, 0]], np.float64)
    else:  # y' = y + k (x - cx)
        m = np.array([[1, 0, 0], [k, 1, -k * cx]], np.float64)
    return (lambda a, is_mask: cv2.warpAffine(
        a, m, (w, h), flags=_interp(is_mask), borderMode=cv2.BORDER_CONSTANT, borderValue=0),
        _homogeneous(m), {"M": m.tolist(), "shear": k, "axis": axis})


def barrel_maps(shape: tuple[int, int], k: float) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps (destination -> source): r_s = r_d (1 + k r_d^2), r in half-diagonals."""
    h, w = shape
    cx, cy = (w - 1) / 2, (h - 1) / 2
    r2 = np.hypot(cx, cy) ** 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    f = 1 + k * ((xx - cx) ** 2 + (yy - cy) ** 2) / r2
    return (cx + (xx - cx) * f).astype(np.float32), (cy + (yy - cy) * f).astype(np.float32)


def barrel_points(p: np.ndarray, shape: tuple[int, int], k: float) -> np.ndarray:
    """Source -> destination points: solve s = c + (d - c)(1 + k |d - c|^2 / R^2) for d."""
    h, w = shape
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    r2 = np.hypot(*c) ** 2
    ps = np.asarray(p, np.float64).reshape(-1, 2) - c
    d = ps.copy()
    for _ in range(BARREL_ITERS):
        d = ps / (1 + k * (d**2).sum(1, keepdims=True) / r2)
    err = np.abs(d * (1 + k * (d**2).sum(1, keepdims=True) / r2) - ps).max() if len(ps) else 0
    if err > 1e-6:
        raise RuntimeError(f"barrel inversion did not converge ({err:g} px)")
    return d + c


def barrel(s: Sample, rng: np.random.Generator) -> Warped:
    """A barrel distortion that moves the corners 3-6 % of the half-diagonal inward."""
    m = rng.uniform(0.03, 0.06)
    rd = 1 - m
    k = (1 / rd - 1) / rd**2  # so that rd (1 + k rd^2) = 1
    mx, my = barrel_maps(s.shape, k)
    return (lambda a, is_mask: cv2.remap(
        a, mx, my, _interp(is_mask), borderMode=cv2.BORDER_CONSTANT, borderValue=0),
        lambda p: barrel_points(p, s.shape, k), {"k1": k, "corner_move": m})


WARPS = {"keystone": keystone, "shear": shear, "barrel": barrel}


def bilateral(s: Sample, other: Sample, k: int) -> Warped:
    """The warp of a side-by-side film: ``s`` on the left (k = 0) or the right (1) of ``other``
    mirrored and scaled to ``s``'s height, 2 % of ``s``'s width apart on black (the partner is
    pasted into the image only; its masks stay empty)."""
    h, w = s.shape
    oh, ow = other.shape
    partner = cv2.resize(other.image, (max(1, round(ow * h / oh)), h),
                         interpolation=cv2.INTER_AREA)[:, ::-1]
    gap = max(1, round(0.02 * w))
    dx = 0 if k == 0 else partner.shape[1] + gap
    px = w + gap if k == 0 else 0

    def warp(a: np.ndarray, is_mask: bool) -> np.ndarray:
        out = np.zeros((h, w + gap + partner.shape[1]), a.dtype)
        out[:, dx : dx + w] = a
        if not is_mask:
            out[:, px : px + partner.shape[1]] = partner
        return out

    return (warp, lambda p: np.asarray(p, np.float64).reshape(-1, 2) + [dx, 0],
            {"partner_id": other.id, "partner_x": px, "knee_x": dx})


def variants(s: Sample, kind: str, partner: Sample | None = None) -> Iterator[Sample | None]:
    """The variants of one kind (None for one dropped: its truth left the image); ``partner``:
    the other knee of a ``bilateral`` film (no variant without one)."""
    rng = None
    if kind == "bilateral":
        n = 0 if partner is None else 2
    elif kind in BLANKS:
        n = len(CORNERS if kind == "corner" else SHUTTERS)
    else:
        rng = rng_for(s.id, kind)
        n = int(rng.integers(1, 3))
    s = dataclasses.replace(s, schoettle_point=truth_point(s))
    meta0 = {k: v for k, v in s.meta.items() if k not in ("spacing_inputs", "image_file")}
    for k in range(n):
        if kind in WARPS or kind == "bilateral":  # truth moved with the pixels
            # (planning.perturb), None if it leaves the image
            warp, points, params = (bilateral(s, partner, k) if kind == "bilateral"
                                    else WARPS[kind](s, rng))
            out = warped_sample(s, warp, points)
        else:
            img, params = blanked(s, kind, k) if rng is None else bite(s, rng)
            out = dataclasses.replace(s, image=img)
        if out is None:
            yield None
            continue
        meta = dict(meta0, source_id=s.id, perturbation=dict(kind=kind, index=k, **params))
        yield dataclasses.replace(out, id=f"{s.id}_{kind}{k}", meta=meta)


def _with_partners(samples: Iterator[Sample]) -> Iterator[tuple[Sample, Sample | None]]:
    """Each sample with the next one (the last with the first; a lone sample with none)."""
    first = prev = None
    for s in samples:
        if prev is None:
            first = s
        else:
            yield prev, s
        prev = s
    if prev is not None:
        yield prev, (first if first is not prev else None)


def main(argv: list[str] | None = None) -> int:
    """Write the variants; print what was written and dropped per kind (JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {KINDS}")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - set(KINDS):
        ap.error(f"--kinds: choose from {', '.join(KINDS)}")
    written, dropped = Counter(), Counter()
    try:
        for s, partner in _with_partners(dataset_samples(args.src)):
            if s.spacing_mm is None or not np.all(np.isfinite(truth_point(s))):
                print(f"skip {s.id}: no spacing or no Schoettle point", file=sys.stderr)
                continue
            for kind in kinds:
                for v in variants(s, kind, partner):
                    if v is None:
                        dropped[kind] += 1
                        continue
                    write_sample(args.out, v)
                    written[kind] += 1
    except (OSError, ValueError) as err:  # a bad image or annotation: one line naming the file
        print(f"red_team_sets: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"written": dict(written), "dropped": dict(dropped)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
