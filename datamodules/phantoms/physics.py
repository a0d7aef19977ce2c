"""Physics-style image formation: per-tissue path lengths, Beer-Lambert with beam hardening,
heel effect, scatter, detector blur and noise, then a randomised CR/DR processing chain.

Path lengths (mm) are rendered on the coarse ``RenderGrid``: cortical and cancellous bone from
each body's elliptic cross-section (``render.shell_chords``), muscle and subcutaneous fat from
the limb envelope, metal and plastic from the distractors. The line integral is

    L = mu_cortex t_cortex + mu_cancellous t_cancellous (1 + trabecular texture)
        + mu_muscle t_muscle + mu_fat t_fat + mu_metal t_metal + mu_plastic t_plastic,

the polychromatic beam hardens as P = L / (1 + b L), the detector sees
I = field * heel(x) * exp(-P) + scatter (a low-pass of the primary) blurred by the MTF with
quantum (sqrt(I / N0)) and electronic noise, and the processing chain maps -log(I) to display.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from datamodules.phantoms.anatomy import Body
from datamodules.phantoms.config import PhantomConfig
from datamodules.phantoms.noise import noise_window
from datamodules.phantoms.render import MU_CANCELLOUS, RenderGrid, body_chords, fill

LUT_SIZE = 4096


@dataclass
class PathMaps:
    """Per-tissue path lengths (mm) on the coarse grid (float32, all the same shape)."""

    cortex: np.ndarray
    cancellous: np.ndarray
    muscle: np.ndarray
    fat: np.ndarray
    metal: np.ndarray
    plastic: np.ndarray

    @classmethod
    def zeros(cls, shape: tuple[int, int]) -> PathMaps:
        return cls(*(np.zeros(shape, np.float32) for _ in range(6)))


def add_body_paths(maps: PathMaps, body: Body, grid: RenderGrid, gain: float = 1.0) -> None:
    """Add one body's cortical and cancellous-equivalent paths (marrow counts as a fraction of
    cancellous bone, by its attenuation) to ``maps`` in place."""
    ch = body_chords(body, grid, maps.cortex.shape)
    if ch is None:
        return
    w = np.float32(gain) * ch.weight
    maps.cortex[ch.rows, ch.cols] += np.where(ch.inside, ch.cortex * w, 0.0).astype(np.float32)
    rel = np.asarray(ch.inner_mu, np.float32) / np.float32(MU_CANCELLOUS)
    maps.cancellous[ch.rows, ch.cols] += np.where(
        ch.inside, ch.cancellous * w * rel, 0.0
    ).astype(np.float32)


def soft_paths(
    shape: tuple[int, int],
    poly_grid: np.ndarray,
    spacing: float,
    radius_mm: float,
    fat_mm: float,
    cast_mm: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(muscle, fat, cast) path lengths of a rounded limb with a subcutaneous fat layer and an
    optional cast shell, from the signed distance to the envelope on a 4x coarser grid."""
    hr, wr = shape
    c = 4
    pad = int(np.ceil((radius_mm + cast_mm) / (spacing * c))) + 2
    small = (-(-hr // c) + 2 * pad, -(-wr // c) + 2 * pad)
    m = fill(small, [(poly_grid + 0.5) / c - 0.5 + pad])
    d_in = cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_5)[pad:-pad, pad:-pad]
    d_in = d_in * np.float32(spacing * c)
    r = np.float32(radius_mm)
    fat_mm = min(fat_mm, 0.8 * radius_mm)

    def chord(dist: np.ndarray, rad: float) -> np.ndarray:
        dd = np.clip(dist, 0.0, rad)
        return 2.0 * np.sqrt(dd * (2.0 * rad - dd))

    total = chord(d_in, r)
    muscle = chord(d_in - fat_mm, r - fat_mm)
    out = [muscle, total - muscle]
    if cast_mm > 0:
        d_out = cv2.distanceTransform(1 - m, cv2.DIST_L2, cv2.DIST_MASK_5)[pad:-pad, pad:-pad]
        sd = d_in - d_out * np.float32(spacing * c)
        out.append(np.maximum(chord(sd + cast_mm, r + cast_mm) - total, 0.0))
    else:
        out.append(np.zeros_like(total))
    res = []
    for a in out:
        a = cv2.GaussianBlur(a.astype(np.float32), (0, 0), 1.0)
        up = cv2.resize(a, (a.shape[1] * c, a.shape[0] * c), interpolation=cv2.INTER_LINEAR)
        res.append(up[:hr, :wr])
    return res[0], res[1], res[2]


def lowpass(x: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian low-pass; large sigmas run on a decimated copy (same result to the eye)."""
    if sigma_px < 0.3:
        return x
    f = int(max(1, sigma_px // 4))
    if f == 1:
        return cv2.GaussianBlur(x, (0, 0), sigma_px)
    h, w = x.shape
    small = cv2.resize(x, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma_px / f)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def trabecular_texture(rng: np.random.Generator, shape: tuple[int, int], spacing: float,
                       cfg: PhantomConfig, axis_deg: float) -> np.ndarray:
    """Zero-mean texture in [-1, 1]: isotropic mottle (difference of Gaussians of white noise)
    plus struts (Gabor-filtered noise) along ``axis_deg`` and two weaker directions, so the
    pattern is oriented but irregular; wavelengths never below 4 grid px (no aliasing)."""
    h, w = shape
    noise = noise_window(rng, h, w).astype(np.float32)
    lam = max(4.0, rng.uniform(*cfg.trabecular_scale_mm) * 2.0 / spacing)
    out = cv2.GaussianBlur(noise, (0, 0), 0.2 * lam) - cv2.GaussianBlur(noise, (0, 0), 0.5 * lam)
    out *= np.float32(rng.uniform(0.6, 1.5) / max(float(out.std()), 1e-6))
    # One combined kernel: for white noise a kernel's response std is its L2 norm, so
    # normalising each Gabor by its norm weights the three directions as intended.
    sig = 0.45 * lam
    ks = int(2 * np.ceil(2.5 * sig) + 1)
    kern = np.zeros((ks, ks), np.float32)
    for dth, wt in ((0.0, 1.0), (60.0, rng.uniform(0.1, 0.5)), (120.0, rng.uniform(0.1, 0.5))):
        th = np.deg2rad(axis_deg + dth + rng.uniform(-15, 15))
        k = cv2.getGaborKernel((ks, ks), sig, th + np.pi / 2, lam, 0.5, 0.0, cv2.CV_32F)
        k -= k.mean()
        kern += np.float32(wt / max(float(np.linalg.norm(k)), 1e-6)) * k
    out += cv2.filter2D(noise, cv2.CV_32F, kern)
    out /= np.float32(max(float(out.std()), 1e-6))
    return np.tanh(out)  # bounded: struts and pores, not extreme values


def draw_lines(shape: tuple[int, int], lines: list[np.ndarray], width_px: float) -> np.ndarray:
    """Anti-aliased polylines (grid px) of value 1, blurred to ~``width_px``."""
    layer = np.zeros(shape, np.float32)
    pts = [np.round(np.asarray(p) * 16).astype(np.int32) for p in lines]
    cv2.polylines(layer, pts, False, 1.0, max(1, int(round(width_px))), cv2.LINE_AA, 4)
    return cv2.GaussianBlur(layer, (0, 0), max(0.5, 0.4 * width_px))


def form_image(
    rng: np.random.Generator, line_integral: np.ndarray, field: np.ndarray, spacing: float,
    cfg: PhantomConfig,
) -> np.ndarray:
    """Log detector signal -ln(I) from the line integral (beam hardening, heel, scatter, MTF,
    quantum and electronic noise); ``field`` in [0, 1] is the collimated exposure."""
    hr, wr = line_integral.shape
    bh = rng.uniform(*cfg.beam_hardening)
    p = line_integral / (1.0 + np.float32(bh) * line_integral)
    ang = rng.uniform(0, 2 * np.pi)
    yy = np.arange(hr, dtype=np.float32)[:, None] / np.float32(hr) - 0.5
    xx = np.arange(wr, dtype=np.float32)[None, :] / np.float32(wr) - 0.5
    u = xx * np.float32(np.cos(ang)) + yy * np.float32(np.sin(ang))
    heel = np.exp(np.float32(rng.uniform(*cfg.heel)) * u).astype(np.float32)
    incident = heel * (field + np.float32(0.015) * (1.0 - field))
    transmitted = np.exp(-p)
    primary = incident * transmitted
    # Scatter is made inside the patient (~P) and attenuated on the way out (~exp(-P)); it
    # reaches the detector as a wide low-pass; 2 P exp(-P) peaks at 0.74 for P = 1.
    spr = rng.uniform(*cfg.scatter_fraction)
    scat = lowpass(2.0 * primary * p, rng.uniform(*cfg.scatter_sigma_mm) / spacing)
    img = primary + np.float32(spr) * scat
    # detector MTF (at least half a grid pixel: it also anti-aliases the rasterised outlines)
    img = cv2.GaussianBlur(img, (0, 0), max(0.7, rng.uniform(*cfg.mtf_sigma_mm) / spacing))
    # Photons per coarse pixel; automatic exposure control scales the dose to the anatomy's
    # median transmission, so thick limbs are not starved.
    body = primary[::4, ::4][line_integral[::4, ::4] > 0.5]
    aec = float(np.median(body)) if body.size else 1.0
    n0 = rng.uniform(*cfg.photons) * (spacing / 0.3) ** 2 / max(aec, 1e-3)
    q = np.sqrt(np.maximum(img, 0.0) / np.float32(n0)) * noise_window(rng, hr, wr)
    e = np.float32(rng.uniform(*cfg.electronic_noise) * min(aec, 1.0)) * noise_window(rng, hr, wr)
    img = img + q + e
    return -np.log(np.maximum(img, np.float32(1e-4)))


def process(
    rng: np.random.Generator, log_img: np.ndarray, field: np.ndarray, spacing: float,
    cfg: PhantomConfig, tissue: np.ndarray | None = None, bone: np.ndarray | None = None,
) -> np.ndarray:
    """Randomised CR/DR processing: window/level from the histogram of the exposed anatomy (low
    end in the soft tissue, high end in the bone, as CR histogram analysis does), multi-scale
    unsharp masking (halos), S-shaped LUT blended with linear, gamma; returns [0, 1] float32."""
    sel = field[::3, ::3] > 0.5
    sub = log_img[::3, ::3]
    bone_sel = sel & bone[::3, ::3] if bone is not None else sel
    soft = sub[sel & tissue[::3, ::3]] if tissue is not None else sub[sel]
    hard = sub[bone_sel]
    if soft.size < 16:
        soft = sub.ravel()
    if hard.size < 16:
        hard = soft
    lo = float(np.quantile(soft, rng.uniform(*cfg.window_lo_q)))
    q_hi = rng.uniform(*cfg.window_hi_q)
    hi = float(np.quantile(hard, q_hi))
    bone_top = hi
    if rng.random() < 0.3:  # some systems keep the air in range: lower the low end
        air = float(np.quantile(sub[sel] if sel.any() else sub, 0.01))
        lo -= rng.uniform(0.0, 1.0) * (lo - air)
    hi = max(hi, lo + 1e-3)
    hi += rng.uniform(*cfg.window_headroom) * (hi - lo)
    x = (log_img - np.float32(lo)) / np.float32(hi - lo)
    for gain, sig in (
        (cfg.usm_gain_fine, cfg.usm_sigma_fine_mm),
        (cfg.usm_gain_medium, cfg.usm_sigma_medium_mm),
        (cfg.usm_gain_coarse, cfg.usm_sigma_coarse_mm),
    ):
        g = rng.uniform(*gain)
        s = rng.uniform(*sig) / spacing
        if g != 0 and s > 0.5:
            x = x + np.float32(g) * (x - lowpass(x, s))
    # Real systems choose the display window on the processed image: edge enhancement adds halos
    # but does not push the bone into saturation (a coarse positive gain lifts the whole bone).
    # So the bone's window quantile goes back to where it was before the frequency processing.
    target = (bone_top - lo) / (hi - lo)
    if bone_sel.sum() >= 16:
        now = float(np.quantile(x[::3, ::3][bone_sel], q_hi))
        if now > target > 0:
            x = x * np.float32(target / now)
    # S-shaped LUT, normalised to map 0 -> 0 and 1 -> 1, blended with the identity.
    a, c, mix = rng.uniform(*cfg.lut_slope), rng.uniform(*cfg.lut_centre), rng.uniform(*cfg.lut_mix)
    gamma = rng.uniform(*cfg.gamma)
    t = np.linspace(0.0, 1.0, LUT_SIZE)  # the LUT as a table, applied by indexing
    s0, s1 = 1 / (1 + np.exp(a * c)), 1 / (1 + np.exp(-a * (1 - c)))
    st = (1.0 / (1.0 + np.exp(-a * (t - c))) - s0) / (s1 - s0)
    table = (np.clip(mix * st + (1 - mix) * t, 0.0, 1.0) ** gamma).astype(np.float32)
    idx = np.clip(x * np.float32(LUT_SIZE - 1) + np.float32(0.5), 0, LUT_SIZE - 1)
    return table[idx.astype(np.int32)]


def quantise(img: np.ndarray, bits: int) -> np.ndarray:
    """Round [0, 1] values to ``bits`` bits (in place where possible)."""
    levels = np.float32(2**bits - 1)
    return np.round(img * levels) / levels
