"""Calibration-sphere detection: find a metal calibration ball and derive mm per pixel from it.

A solid sphere of radius R projects as a bright disc whose attenuation follows its path length,
chord(d) = 2 sqrt(R^2 - d^2) at distance d from the centre, with a sharp circular edge. After the
detector's response the displayed profile is B + A g_k(c) with c = sqrt(1 - (d/R)^2) and
g_k(c) = (1 - exp(-k c)) / (1 - exp(-k)) (Beer-Lambert; k -> 0 gives the chord itself), blurred
by the detector. A steel ball usually saturates the display (k large: a flat white disc at the
image's clip level). So a candidate is accepted only when ALL of these hold:

1. contrast: disc level minus surrounding level >= ``MIN_CONTRAST`` and >= 8 x the noise;
2. circularity: >= 90 % of 72 rays find the steepest edge within 5 % of the fitted radius;
3. edge sharpness: the fitted blur sigma <= max(2 px, 8 % of the radius) (at the fit scale);
4. profile: the chord model explains the radial profile (R^2 >= 0.95), and either it explains
   it clearly better than a flat disc (a visible dome: residual <= 0.7 x the flat disc's and
   k <= 10) or the
   disc is saturated (>= 30 % of its inner pixels within 1 % of the image maximum, plus 5 x the
   image's pixel noise when grain was added after the clip, as clipping gives; its radius is
   then fitted with the clip, which happens after the blur).
   A flat disc below the clip level is a coin, a lid or an electrode seen face-on, not a sphere.

Cost is bounded by a fixed pixel budget, whatever the image size: candidates are round bright
connected components (several thresholds) of a copy halved until its longer side is
<= ``WORK_SIDE`` (a Hough transform was tried: on noise it ran for seconds and it ranked the knee
outline above the sphere); each of at most
``MAX_CANDIDATES`` is fitted on a crop of the pyramid level where its radius is about
``FIT_RADIUS`` px; only the saturation test reads full-resolution pixels (a few thousand).

scipy is imported where it is used, not with the module: ``make plan`` starts the search in a
thread beside the network, so its ~0.4 s import is paid there, off the critical path.

mm per pixel = diameter_mm / (2 x radius_px). Which source of spacing wins is decided in
``geometry.pixel_spacing`` (the only place that knows the order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from geometry.lines import fit_circle

WORK_SIDE = 512  # Hough runs on a copy whose longer side is at most this
FIT_RADIUS = 40.0  # candidates are fitted at the pyramid level where the radius is ~this (px)
MAX_CANDIDATES = 8
MIN_CONTRAST = 0.05  # display units (image in [0, 1])
MIN_CIRCULARITY = 0.9
MIN_R2 = 0.95
DOME_RATIO = 0.7  # chord-model residual / flat-disc residual below this = a visible dome (a flat
# disc scores ~1.0, a dome with k <= 9 below 0.25, the test phantom's partly processed dome 0.58)
SAT_TOL = 0.01  # "at the clip level": within 1 % of the display range of the image maximum
# (plus 5 x the image's grain, ``_grain``)
MIN_SATURATED = 0.3  # fraction of inner pixels at the clip level for a saturated ball
MAX_DOME_K = 10.0  # beyond this the profile is flat inside (the dome is not visible)


@dataclass(frozen=True)
class SphereDetection:
    """A calibration-sphere candidate: centre (x, y) px, radius px, mm per px, score in [0, 1].

    ``accepted`` says whether every test passed; ``why`` names the first failed test (or the
    kind of sphere accepted), ``metrics`` holds each tested value (lengths such as ``r_edges``
    and ``blur_px`` in pixels of the input image, whatever pyramid level was fitted).
    """

    center: np.ndarray
    radius_px: float
    mm_per_px: float
    score: float
    accepted: bool = True
    why: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float]:
        """(row_mm, col_mm) implied by the sphere (isotropic)."""
        return (self.mm_per_px, self.mm_per_px)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description of the candidate."""
        return {
            "center_px": [round(float(v), 2) for v in self.center],
            "radius_px": round(float(self.radius_px), 3),
            "mm_per_px": round(float(self.mm_per_px), 5),
            "score": round(float(self.score), 3),
            "accepted": bool(self.accepted),
            "why": self.why,
            "metrics": {k: round(float(v), 4) for k, v in self.metrics.items()},
        }


def _grain(img: np.ndarray) -> float:
    """Pixel noise sigma of the whole image at full resolution: the robust (MAD) spread of
    neighbouring pixels' differences on at most 256 rows (edges are too few to move it)."""
    rows = img[:: max(1, img.shape[0] // 256)]
    if rows.shape[1] < 2:
        return 0.0
    d = np.abs(np.diff(rows, axis=1)).ravel()
    return float(1.4826 * np.median(d) / np.sqrt(2.0))


def _pyramid(img: np.ndarray) -> list[np.ndarray]:
    """Levels halved by area averaging until the longer side is <= WORK_SIDE (level 0 = input)."""
    levels = [img]
    while max(levels[-1].shape) > WORK_SIDE:
        h, w = levels[-1].shape
        levels.append(cv2.resize(levels[-1], (max(1, w // 2), max(1, h // 2)),
                                 interpolation=cv2.INTER_AREA))  # (3rd positional is dst)
    return levels


def _roundness(comp: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, area, compactness x fill) of the largest part of a binary mask (x, y in its px).

    Compactness is 4 pi area / perimeter^2, fill the area over its enclosing circle's; a disc
    scores ~1 on both.
    """
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cnt = max(contours, key=cv2.contourArea)
    area = max(float(cv2.contourArea(cnt)), 1.0)
    m = cv2.moments(cnt)
    x, y = m["m10"] / max(m["m00"], 1e-9), m["m01"] / max(m["m00"], 1e-9)
    _, r_enc = cv2.minEnclosingCircle(cnt)
    compact = 4 * np.pi * area / max(cv2.arcLength(cnt, True), 1.0) ** 2
    fill = area / (np.pi * max(r_enc, 0.5) ** 2)
    return x, y, area, min(compact, 1.0) * fill if compact >= 0.7 and fill >= 0.7 else 0.0


def _round_part(comp: np.ndarray, r_lo: float) -> tuple[float, float, float, float] | None:
    """The round part of a bright component as (x, y, radius, roundness), or None.

    A ball touched by something as bright (a lead wire, burned-in text, a ruler) is one component
    that is not round: it is opened with a disc of half its inscribed radius, which keeps the
    ball whole and cuts off whatever is narrower than that radius, and the largest part is tested.
    """
    x, y, area, score = _roundness(comp)
    if score > 0:
        return x, y, float(np.sqrt(area / np.pi)), score
    padded = cv2.copyMakeBorder(comp, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)  # a background
    r_in = float(cv2.distanceTransform(padded, cv2.DIST_L2, 5).max())  # pixel to measure from
    if r_in < 0.6 * r_lo:
        return None
    k = 2 * int(r_in / 2) + 1
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    opened = cv2.morphologyEx(padded, cv2.MORPH_OPEN, disc)
    if not opened.any():
        return None
    x, y, area, score = _roundness(opened)
    if area < 0.75 * float(comp.sum()):  # a quarter or more cut off: a disc on a shaft (a pin,
        return None  # a screw head), not a ball touched by a thin wire
    return (x - 1, y - 1, float(np.sqrt(area / np.pi)), score) if score > 0 else None


def _blobs(small: np.ndarray, r_lo: float, r_hi: float) -> np.ndarray:
    """(N, 3) disc proposals (x, y, r) in ``small`` pixels: round bright connected components.

    The image is thresholded at several levels between its 1st percentile and its maximum; a
    component of the right size whose outline is compact (4 pi area / perimeter^2 >= 0.7) and
    fills its enclosing circle (>= 0.7), or has such a part (``_round_part``), is proposed.
    Cost: a few passes over ``small``.
    """
    sm = cv2.GaussianBlur(small, (0, 0), 1.0)
    lo, hi = float(np.percentile(sm, 1)), float(sm.max())
    props: list[tuple[float, float, float, float]] = []
    for q in (0.3, 0.45, 0.6, 0.75, 0.85, 0.92, 0.97):
        binary = (sm >= lo + q * (hi - lo)).astype(np.uint8)
        n, lab, stats, cents = cv2.connectedComponentsWithStats(binary, connectivity=8)
        area = stats[1:, cv2.CC_STAT_AREA]
        for i in np.nonzero((area >= np.pi * (0.6 * r_lo) ** 2) & (area <= np.pi * r_hi**2))[0]:
            x, y, w, h = stats[i + 1, :4]
            part = _round_part((lab[y : y + h, x : x + w] == i + 1).astype(np.uint8), r_lo)
            if part is not None and part[2] >= 0.6 * r_lo:
                props.append((x + part[0], y + part[1], part[2], part[3]))
    props.sort(key=lambda p: -p[3])
    out: list[list[float]] = []
    for x, y, r, _ in props:  # one proposal per disc: concentric levels keep the largest
        near = [o for o in out if np.hypot(x - o[0], y - o[1]) <= 0.5 * max(r, o[2])]
        if near:
            near[0][2] = max(near[0][2], r)
        else:
            out.append([x, y, r])
    return np.array(out[:MAX_CANDIDATES]).reshape(-1, 3)


def _edges(img: np.ndarray, c: np.ndarray, r: float, n: int = 72) -> np.ndarray:
    """(n, 2) steepest bright-to-dark edge point along each ray in [0.6 r, 1.4 r] (NaN: none)."""
    from scipy.ndimage import gaussian_filter1d, map_coordinates

    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radii = np.arange(0.6 * r, 1.4 * r, 0.25)
    if len(radii) < 4:  # a candidate of under ~1.5 px: no edge to find (np.diff needs 3 taps)
        return np.full((n, 2), np.nan)
    xs = c[0] + np.outer(np.cos(angles), radii)
    ys = c[1] + np.outer(np.sin(angles), radii)
    prof = gaussian_filter1d(map_coordinates(img, [ys, xs], order=1, mode="nearest"), 2.0, axis=1)
    grad = np.diff(prof, axis=1)
    i = np.clip(np.argmin(grad, axis=1), 1, grad.shape[1] - 2)
    rows = np.arange(n)
    g0, g1, g2 = grad[rows, i - 1], grad[rows, i], grad[rows, i + 1]
    den = g0 - 2 * g1 + g2
    off = np.where(np.abs(den) > 1e-12, 0.5 * (g0 - g2) / np.where(den == 0, 1, den), 0.0)
    rr = radii[0] + (i + 0.5 + np.clip(off, -1, 1)) * 0.25
    strength = -g1
    ok = strength > 0.3 * max(float(np.median(strength)), 1e-9)
    pts = np.column_stack([c[0] + rr * np.cos(angles), c[1] + rr * np.sin(angles)])
    pts[~ok] = np.nan
    return pts


def _profile_model(d: np.ndarray, p: np.ndarray, dome: bool) -> np.ndarray:
    """Unit-height sphere profile at distances ``d`` for params p = (R, sigma, log k).

    Path length c = sqrt(1 - (d/R)^2) through the detector curve g_k(c) = (1 - exp(-k c)) /
    (1 - exp(-k)), blurred by sigma px. ``dome`` False: a flat disc (blurred step), p = (R, sigma).
    """
    from scipy.ndimage import gaussian_filter1d
    from scipy.special import ndtr

    radius, sigma = p[0], max(float(p[1]), 0.05)
    if not dome:  # a blurred step, in closed form (the blur's reflection at d = 0 is nil: R >> s)
        return ndtr((radius - d) / sigma)
    step = 0.1
    x = np.arange(0.0, float(d.max()) + 4 * sigma + 1.0, step)
    k = float(np.exp(p[2]))
    c = np.sqrt(np.clip(1.0 - (x / radius) ** 2, 0.0, 1.0))
    f = gaussian_filter1d(-np.expm1(-k * c) / -np.expm1(-k), sigma / step, mode="mirror")
    return np.interp(d, x, f)


def _weighted_line(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted least-squares slope and intercept of y = a x + b (closed form)."""
    sw = w.sum()
    mx, my = (w * x).sum() / sw, (w * y).sum() / sw
    vx = (w * (x - mx) ** 2).sum()
    a = float((w * (x - mx) * (y - my)).sum() / vx) if vx > 1e-12 else 0.0
    return a, float(my - a * mx)


def _bounded_lsq(
    fun: Callable[[np.ndarray], np.ndarray], start: Sequence[float], lo: Sequence[float],
    hi: Sequence[float],
) -> tuple[np.ndarray, float]:
    """Least squares of ``fun(p)`` with ``lo < p < hi``: (p, cost = half the squared norm).

    The box is mapped onto the real line by ``p = lo + (hi - lo) (1 + tanh u) / 2`` so that
    MINPACK's Levenberg-Marquardt (``method="lm"``) can run: on these 2-3 parameter fits it gives
    the same optimum as scipy's bounded ``trf`` at ~1/3 less CPU (its loop is compiled).
    """
    from scipy.optimize import least_squares

    lo_a, hi_a = np.asarray(lo, np.float64), np.asarray(hi, np.float64)

    def to_p(u: np.ndarray) -> np.ndarray:
        return lo_a + (hi_a - lo_a) * (0.5 + 0.5 * np.tanh(u))

    frac = 2 * (np.asarray(start, np.float64) - lo_a) / (hi_a - lo_a) - 1
    res = least_squares(lambda u: fun(to_p(u)), np.arctanh(np.clip(frac, -0.999, 0.999)),
                        method="lm", max_nfev=200)  # fmt: skip
    return to_p(res.x), float(res.cost)


def _fit_profile(
    d: list[np.ndarray], v: list[np.ndarray], w: list[np.ndarray], r0: float, dome: bool
) -> tuple[np.ndarray, float, float]:
    """Fit B_s + A_s model(d) to each angular sector s, sharing the model's parameters.

    Returns (params), the median amplitude A and the weighted RSS.
    """

    def linear(p: np.ndarray) -> tuple[np.ndarray, float]:
        resid, amps = [], []
        for ds, vs, ws in zip(d, v, w, strict=True):
            m = _profile_model(ds, p, dome)
            amp, base = _weighted_line(m, vs, ws)
            resid.append((base + amp * m - vs) * np.sqrt(ws))
            amps.append(amp)
        return np.concatenate(resid), float(np.median(amps))

    if dome:
        lo, hi = [0.7 * r0, 0.05, np.log(0.01)], [1.3 * r0, 0.3 * r0 + 2.0, np.log(60.0)]
        starts = [[r0, 1.0, np.log(2.0)], [r0, 1.0, np.log(20.0)]]
    else:
        lo, hi = [0.7 * r0, 0.05], [1.3 * r0, 0.3 * r0 + 2.0]
        starts = [[r0, 1.0]]
    fits = [_bounded_lsq(lambda p: linear(p)[0], start, lo, hi) for start in starts]
    best = min(fits, key=lambda f: f[1])[0]
    resid, amp = linear(best)
    return best, amp, float(np.sum(resid**2))


N_SECTORS = 1  # angular sectors with their own level and background (1: pooled, fastest)


def _fit_clipped(
    d: np.ndarray, v: np.ndarray, w: np.ndarray, r0: float, sigma0: float
) -> tuple[float, float]:
    """Radius and blur of a saturated disc: v = min(top, base + (top - base) a Phi((R - d)/s)).

    A saturated ball is clipped by the display AFTER the detector blur, so its visible edge
    lies outside R by about s Phi^-1(1 - 1/a); fitting the clip (a >= 1) removes that bias.
    ``r0``, ``sigma0``: the unclipped fit; the correction is inward, by at most 2 sigma0 + 0.5.
    """
    from scipy.special import ndtr

    top = float(np.median(v[d < 0.6 * r0]))
    base = float(np.median(v[d > 1.2 * r0])) if np.any(d > 1.2 * r0) else float(v.min())
    sw = np.sqrt(w)

    def resid(p: np.ndarray) -> np.ndarray:
        m = base + (top - base) * np.exp(p[2]) * ndtr((p[0] - d) / p[1])
        return (np.minimum(m, top) - v) * sw

    lo = [r0 - 2 * sigma0 - 0.5, 0.05, 0.0]
    hi = [r0 + 0.25, max(2 * sigma0, 0.1) + 0.5, 6.0]
    fits = [_bounded_lsq(resid, np.clip([r0, max(sigma0, 0.06), log_a], lo, hi), lo, hi)
            for log_a in (0.0, 1.0, 2.5)]  # fmt: skip
    best = min(fits, key=lambda f: f[1])[0]
    return float(best[0]), float(best[1])


def _sector_profiles(
    crop: np.ndarray, c: np.ndarray, r: float
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per angular sector: bin centres d (0.5 px bins up to 1.5 r), median values, weights."""
    ys, xs = np.mgrid[0 : crop.shape[0], 0 : crop.shape[1]]
    dx, dy = (xs - c[0]).ravel(), (ys - c[1]).ravel()
    dist = np.hypot(dx, dy)
    sector = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * N_SECTORS).astype(int) % N_SECTORS
    sel = dist <= 1.5 * r
    key = sector[sel] * 100_000 + np.floor(dist[sel] / 0.5).astype(int)
    order = np.argsort(key, kind="stable")
    k_sorted, v_sorted = key[order], crop.ravel()[sel][order]
    starts = np.r_[0, np.nonzero(np.diff(k_sorted))[0] + 1]
    med = np.array([np.median(g) for g in np.split(v_sorted, starts[1:])])
    counts = np.diff(np.r_[starts, len(k_sorted)])
    keys = k_sorted[starts]
    d_all, s_all = (keys % 100_000 + 0.5) * 0.5, keys // 100_000
    out: tuple[list, list, list] = ([], [], [])
    for s in range(N_SECTORS):
        m = s_all == s
        if m.sum() >= 8:
            out[0].append(d_all[m])
            out[1].append(med[m])
            out[2].append(np.sqrt(counts[m]).astype(np.float64))
    return out


def _verify(
    levels: list[np.ndarray], cand: np.ndarray, f_hough: float, diameter_mm: float, sat: float,
    grain: float = 0.0,
) -> SphereDetection:
    """Fit one Hough candidate (x, y, r in Hough pixels) and run every test of the module."""
    r_full = float(cand[2]) / f_hough
    c_full = (cand[:2] + 0.5) / f_hough - 0.5
    lvl = int(np.clip(np.floor(np.log2(max(r_full / FIT_RADIUS, 1.0))), 0, len(levels) - 1))
    img, s = levels[lvl], 2.0**-lvl
    c, r = (c_full + 0.5) * s - 0.5, r_full * s
    half = int(np.ceil(1.9 * r)) + 3
    x0, y0 = max(0, int(c[0]) - half), max(0, int(c[1]) - half)
    crop = img[y0 : int(c[1]) + half + 1, x0 : int(c[0]) + half + 1].astype(np.float64)
    c = c - [x0, y0]
    metrics: dict[str, float] = {}

    def result(why: str, score: float = 0.0, ok: bool = False) -> SphereDetection:
        centre = (c + [x0, y0] + 0.5) / s - 0.5
        rad = r / s
        return SphereDetection(centre, rad, diameter_mm / (2 * rad), score, ok, why, metrics)

    for _ in range(2):  # edge points -> circle, twice (the second from the refined centre)
        pts = _edges(crop, c, r)
        good = pts[np.all(np.isfinite(pts), axis=1)]
        if len(good) < 12:
            return result("too few edge points")
        rad = np.hypot(*(good - c).T)
        keep = np.abs(rad - np.median(rad)) <= 0.1 * np.median(rad)
        if keep.sum() < 12:
            return result("edge points not on a circle")
        c, r = fit_circle(good[keep])
    metrics["r_edges"] = r / s
    on_circle = np.abs(np.hypot(*(pts - c).T) - r) <= 0.05 * r  # NaN rays count as misses
    metrics["circularity"] = float(np.mean(on_circle))
    ys, xs = np.mgrid[0 : crop.shape[0], 0 : crop.shape[1]]
    dist = np.hypot(xs - c[0], ys - c[1]).ravel()
    vals = crop.ravel()
    ring = (dist > 1.15 * r) & (dist <= 1.5 * r)
    inner = dist <= 0.5 * r
    if ring.sum() < 20 or inner.sum() < 10:
        return result("candidate too close to the image border")
    outer = vals[ring]
    noise = 1.4826 * float(np.median(np.abs(np.diff(outer))) / np.sqrt(2)) + 1e-6
    metrics["contrast"] = float(np.median(vals[inner]) - np.median(outer))
    metrics["noise"] = noise
    if metrics["contrast"] < max(MIN_CONTRAST, 8 * noise):
        return result("too little contrast", 0.0)
    if metrics["circularity"] < MIN_CIRCULARITY:
        return result("edge not circular", 0.0)
    d, v, w = _sector_profiles(crop, c, r)
    p_dome, amp, rss_dome = _fit_profile(d, v, w, r, dome=True)
    _, _, rss_flat = _fit_profile(d, v, w, r, dome=False)
    tss = sum(
        float(np.sum(wi * (vi - np.average(vi, weights=wi)) ** 2))
        for vi, wi in zip(v, w, strict=True)
    )
    r, sigma, log_k = (float(v) for v in p_dome)
    metrics.update(
        r2=1 - rss_dome / (tss + 1e-12), dome_ratio=rss_dome / max(rss_flat, 1e-12),
        blur_px=sigma / s, k=float(np.exp(log_k)),  # px of the input, like the radius
    )  # fmt: skip
    # saturation, read at full resolution (pyramid levels average the clipped pixels away)
    ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    rr = np.linspace(0.0, 0.8, 40) * (r / s)
    cf = (c + [x0, y0] + 0.5) / s - 0.5
    px = np.clip(np.round(cf[0] + np.outer(np.cos(ang), rr)).astype(int), 0, levels[0].shape[1] - 1)
    py = np.clip(np.round(cf[1] + np.outer(np.sin(ang), rr)).astype(int), 0, levels[0].shape[0] - 1)
    inner_full = levels[0][py, px]
    # Noise added after the clip (detector grain, JPEG ringing) lifts the image maximum ~4.5
    # sigma above a clipped plateau: the tolerance widens by 5 x the image's own grain (0 when
    # the clip is exact), never by the disc's own spread (a coin's plateau is noisy too).
    metrics["saturated"] = float(np.mean(inner_full >= sat - SAT_TOL - 5.0 * grain))
    score = float(
        np.clip(metrics["r2"], 0, 1)
        * metrics["circularity"]
        * min(1.0, metrics["contrast"] / 0.2)
        * min(1.0, max(2.0, 0.08 * r) / max(sigma, 1e-6))
    )
    if sigma > max(2.0, 0.08 * r):
        return result("edge not sharp", score)
    if metrics["r2"] < MIN_R2:
        return result("radial profile does not follow a sphere's path length", score)
    if metrics["dome_ratio"] <= DOME_RATIO and amp > 0 and metrics["k"] <= MAX_DOME_K:
        return result("sphere: path-length dome", score, True)
    if metrics["saturated"] >= MIN_SATURATED:
        r_flat = r
        if sigma >= 0.5:  # the clip bias is ~sigma: below half a pixel it is not measurable
            r, _ = _fit_clipped(np.concatenate(d), np.concatenate(v), np.concatenate(w), r, sigma)
        metrics["r_unclipped"] = r_flat / s
        return result("sphere: saturated disc at the clip level", score, True)
    return result("flat disc below the clip level (not a sphere's profile)", score)


def find_sphere_candidates(
    image: np.ndarray,
    diameter_mm: float = 30.0,
    expected_px_range: tuple[float, float] | None = None,
) -> list[SphereDetection]:
    """Every tested candidate, best first (accepted before rejected, then by score).

    Args:
        image: (H, W) float image in [0, 1], bright = dense.
        diameter_mm: the sphere's true diameter.
        expected_px_range: (min, max) radius in pixels of the sphere; default 1.5 % to 30 % of
            the shorter image side.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"find_sphere_candidates: expected (H, W) image, got {img.shape}")
    # The tests' levels (contrast, clip level) are fractions of the image's own range: a 12-bit
    # detector stored in a 16-bit file without sBIT or window reads as [0, 0.06], not [0, 1].
    v_lo, v_hi = float(img.min()), float(img.max())
    if v_hi > v_lo and (v_lo > 0.0 or v_hi < 1.0):
        img = (img - np.float32(v_lo)) * np.float32(1.0 / (v_hi - v_lo))
    h, w = img.shape
    lo, hi = expected_px_range or (0.015 * min(h, w), 0.3 * min(h, w))
    levels = _pyramid(img)
    small = levels[-1]
    f = small.shape[1] / w
    # The clip level is the full-resolution maximum (a clipped marker or text stroke of a few
    # pixels counts: a smoothed or downsampled maximum loses it, and a coin then reads as "at the
    # clip level"); grain added after the clip is allowed for in the test (``_grain``).
    sat = float(img.max())
    grain = _grain(img)
    out = []
    for cand in _blobs(small, lo * f, hi * f):
        det = _verify(levels, np.asarray(cand, np.float64), f, diameter_mm, sat, grain)
        if not (0.9 * lo <= det.radius_px <= 1.1 * hi) and det.accepted:
            det = SphereDetection(
                det.center, det.radius_px, det.mm_per_px, det.score, False,
                "radius outside the expected range", det.metrics,
            )  # fmt: skip
        out.append(det)
    return sorted(out, key=lambda d: (not d.accepted, -d.score))


def detect_calibration_sphere(
    image: np.ndarray,
    diameter_mm: float = 30.0,
    expected_px_range: tuple[float, float] | None = None,
) -> SphereDetection | None:
    """The best accepted calibration sphere (see the module docstring), or None."""
    cands = find_sphere_candidates(image, diameter_mm, expected_px_range)
    return cands[0] if cands and cands[0].accepted else None
