"""``generate_phantom``: one seeded synthetic lateral knee radiograph with exact ground truth."""

from __future__ import annotations

import cv2
import numpy as np

from datamodules.phantoms import extras
from datamodules.phantoms.anatomy import build_knee
from datamodules.phantoms.config import PhantomConfig
from datamodules.phantoms.layout import ImageFrame, place_knee, sample_size_and_spacing
from datamodules.phantoms.render import (
    MU_CANCELLOUS,
    MU_CORTEX,
    MU_METAL,
    RenderGrid,
    fill,
    render_blob,
    render_body,
    render_soft_tissue,
)
from datamodules.phantoms.schoettle import schoettle_from_construction
from datamodules.sample import BONES, RaterAnnotation, Sample

N_CORTEX_POINTS = 5


def sample_seed(base_seed: int, index: int) -> int:
    """Seed of sample ``index`` of a run with ``base_seed`` (independent streams per sample)."""
    return int(np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1)[0])


_NOISE_BANK: np.ndarray | None = None
_NOISE_SIDE = 2048


def _noise_window(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) unit Gaussian detector noise: a window of a fixed 2048^2 bank (made once from a
    fixed seed) at a seeded random offset and orientation; drawing 1M fresh normals per image
    would cost more than the whole rendering, and the result is still a pure function of seed."""
    global _NOISE_BANK
    if max(h, w) > _NOISE_SIDE:
        return rng.standard_normal((h, w), dtype=np.float32)
    if _NOISE_BANK is None:
        _NOISE_BANK = np.random.default_rng(20190512).standard_normal(
            (_NOISE_SIDE, _NOISE_SIDE), dtype=np.float32
        )
    bank = _NOISE_BANK if rng.random() < 0.5 else _NOISE_BANK.T
    oy = int(rng.integers(0, _NOISE_SIDE - h + 1))
    ox = int(rng.integers(0, _NOISE_SIDE - w + 1))
    win = bank[oy : oy + h, ox : ox + w]
    return win[::-1] if rng.random() < 0.5 else win


def _render_factor(h: int, w: int) -> int:
    return max(1, -(-max(h, w) // 640))


def _cortex_points(frame: ImageFrame, field: np.ndarray, k: float) -> np.ndarray:
    """Points on LM1 (x = 0 in the femur frame), proximal to distal, over the visible shaft."""
    ys = np.arange(5.0 * k, 420.0, 0.5)
    px = frame.to_px(np.stack([np.zeros_like(ys), ys], 1))
    x0, y0, x1, y1 = field
    m = 0.02 * min(frame.height, frame.width)
    inside = (
        (px[:, 0] >= x0 + m) & (px[:, 0] <= x1 - m) & (px[:, 1] >= y0 + m) & (px[:, 1] <= y1 - m)
    )
    # keep the run that starts at the distal end
    stop = int(np.argmin(inside)) if not inside.all() else len(ys)
    y_top = ys[max(stop - 1, 1)]
    yy = np.linspace(y_top, ys[0], N_CORTEX_POINTS)
    return frame.to_px(np.stack([np.zeros_like(yy), yy], 1))


def generate_phantom(
    seed: int, config: PhantomConfig | None = None, sample_id: str | None = None
) -> Sample:
    """Render one lateral knee phantom; the same seed and config give byte-identical output.

    Args:
        seed: seed of the numpy Generator that draws every random choice.
        config: ranges and probabilities; default ``PhantomConfig()`` (full realism).
        sample_id: id of the Sample; default ``phantom_seed<seed>``.

    The masks are the exact projections of the bone outlines, restricted to the exposed part of
    the image (inside the collimation and any black border); landmarks, cortex points and the
    Schoettle point always lie in that exposed part.

    Returns:
        Sample with image (H, W) float32 in [0, 1], masks (4, H, W) uint8, one annotation
        (landmarks p_blum, p_tmc; 5 cortex points proximal to distal), spacing (s, s) mm,
        the exact Schoettle point and JSON-serialisable meta.
    """
    cfg = config or PhantomConfig()
    rng = np.random.default_rng(int(seed))
    h, w, s, _ = sample_size_and_spacing(rng, cfg)
    side = "left" if rng.random() < cfg.p_left else "right"
    mirror = -1 if side == "left" else 1
    rot = float(rng.uniform(*cfg.rotation_deg))
    flexion = float(rng.uniform(*cfg.flexion_deg))
    k = float(rng.uniform(*cfg.scale))
    frame = place_knee(rng, cfg, h, w, s, mirror, rot)
    knee = build_knee(rng, k, flexion)

    # --- ground truth (full resolution) ---
    masks = np.zeros((len(BONES), h, w), np.uint8)
    for body in knee.bodies:
        if body.bone is not None:
            masks[body.bone] |= fill((h, w), [frame.to_px(body.polygon)])
    p_blum, p_tmc = frame.to_px(np.stack([knee.p_blum, knee.p_tmc]))
    keep = np.stack([p_blum, p_tmc, *frame.to_px(np.array([[0.0, 40.0 * k], [30.0, 0.0]]))])
    if rng.random() < cfg.p_collimation:
        field = extras.collimation_box(rng, h, w, keep)
    else:
        field = np.array([0.0, 0.0, w - 1.0, h - 1.0])
    cortex = _cortex_points(frame, field, k)
    line_dir = frame.to_px(np.array([[0.0, -1.0]]))[0] - frame.to_px(np.zeros((1, 2)))[0]
    sp, sp_r = schoettle_from_construction(p_tmc, line_dir, p_tmc, p_blum)

    # --- attenuation on the coarse grid ---
    grid = RenderGrid(frame, _render_factor(h, w))
    hr, wr = grid.shape
    gs = grid.spacing
    acc = np.zeros((hr, wr), np.float32)
    for body in knee.bodies:
        render_body(acc, body, grid)
    notch_loss = rng.uniform(6.0, 12.0) * MU_CANCELLOUS
    acc -= render_blob((hr, wr), grid.to_grid(knee.notch), 2.0 / gs, notch_loss)
    np.maximum(acc, 0.0, out=acc)
    texture = cv2.GaussianBlur(rng.standard_normal((hr, wr), dtype=np.float32), (0, 0), 0.7 / gs)
    texture *= np.float32(rng.uniform(0.04, 0.09) / max(float(texture.std()), 1e-6))
    acc *= 1.0 + texture  # trabecular texture: multiplicative, so outside bone stays zero
    acc += render_soft_tissue(
        (hr, wr), grid.to_grid(knee.soft_tissue[0]), gs, rng.uniform(45.0, 60.0)
    )
    blum = np.zeros_like(acc)
    a, b = grid.to_grid(np.stack([knee.p_blum, knee.blum_end]))
    cv2.line(
        blum,
        (int(round(a[0] * 16)), int(round(a[1] * 16))),
        (int(round(b[0] * 16)), int(round(b[1] * 16))),
        1.0,
        max(1, int(round(1.2 / gs))),
        cv2.LINE_AA,
        4,
    )
    acc += cv2.GaussianBlur(blum, (0, 0), 0.6 / gs) * np.float32(MU_CORTEX * rng.uniform(8, 14))
    np.maximum(acc, 0.0, out=acc)

    meta: dict = {
        "side": side,
        "flexion_deg": flexion,
        "rotation_deg": rot,
        "scale": k,
        "seed": int(seed),
        "generator": "kneeplan.phantoms.v1",
        "schoettle_radius_px": float(sp_r),
        "collimation_px": [float(v) for v in field],
    }
    field_grid = (field + 0.5) / grid.factor - 0.5
    if rng.random() < cfg.p_sphere:
        r_px = cfg.sphere_diameter_mm / 2 / s
        c = extras.place_sphere(rng, masks.max(0), r_px, field)
        if c is not None:
            extras.sphere_attenuation(
                acc, (c + 0.5) / grid.factor - 0.5, r_px / grid.factor, gs, MU_METAL
            )
            meta["sphere"] = {
                "centre_px": [float(c[0]), float(c[1])],
                "radius_px": float(r_px),
                "diameter_mm": float(cfg.sphere_diameter_mm),
            }
    if rng.random() < cfg.p_metal:
        avoid = (np.stack([p_blum, p_tmc]) + 0.5) / grid.factor - 0.5
        meta["metal"] = extras.metal_occluder(rng, acc, avoid, gs)
    if rng.random() < cfg.p_ruler:
        extras.ruler(rng, acc, gs, field_grid)
        meta["ruler"] = True
    if rng.random() < cfg.p_electrode:
        extras.electrode(rng, acc, gs)
        meta["electrode"] = True
    if rng.random() < cfg.p_cassette_edge:
        extras.cassette_edge(rng, acc)
        meta["cassette_edge"] = True

    # --- detector: blur, display curve, collimation, noise ---
    blur = rng.uniform(*cfg.blur_mm) / gs
    if blur > 0.3:
        acc = cv2.GaussianBlur(acc, (0, 0), blur)
    exposure = rng.uniform(*cfg.exposure)
    gamma = rng.uniform(*cfg.window_gamma)
    black = rng.uniform(0.0, 0.06)
    white = 1.0 - np.exp(-exposure * rng.uniform(1.9, 2.4))
    disp = (1.0 - np.exp(-exposure * acc) - black) / (white - black)
    yy, xx = np.ogrid[0:hr, 0:wr]
    tilt = rng.uniform(-0.06, 0.06)
    disp = disp + np.float32(tilt) * ((xx / wr) - 0.5) + np.float32(rng.uniform(-0.02, 0.04))
    disp = np.clip(disp, 0.0, 1.0) ** np.float32(gamma)
    if cfg.p_collimation > 0 and (field != [0.0, 0.0, w - 1.0, h - 1.0]).any():
        inside = (
            (xx >= field_grid[0])
            & (xx <= field_grid[2])
            & (yy >= field_grid[1])
            & (yy <= field_grid[3])
        )
        outside_val = 0.0 if rng.random() < 0.5 else rng.uniform(0.6, 0.9)
        soft_edge = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 1.0)
        disp = disp * soft_edge + np.float32(outside_val) * (1.0 - soft_edge)
    img = cv2.resize(
        disp.astype(np.float32),
        (wr * grid.factor, hr * grid.factor),
        interpolation=cv2.INTER_LINEAR,
    )[:h, :w]
    # Coarse pixels (small test images) average several detector elements: less noise.
    sigma = rng.uniform(*cfg.noise_sigma) * min(1.0, float(np.sqrt(0.15 / s)))
    if sigma > 0:
        noise = _noise_window(rng, h, w)
        img += noise * (np.float32(sigma) * (0.5 + img))
    text = extras.burn_text(
        rng, img, side, s, rng.random() < cfg.p_side_marker, rng.random() < cfg.p_text
    )
    if text:
        meta["burned_text"] = text
    visible = np.zeros((h, w), np.uint8)
    fx0, fy0 = int(np.ceil(field[0])), int(np.ceil(field[1]))
    visible[fy0 : int(field[3]) + 1, fx0 : int(field[2]) + 1] = 1
    if rng.random() < cfg.p_black_border:
        # Digitiser borders: black strips that never reach the landmarks or the cortex points.
        pts = np.concatenate([keep, cortex])
        room = [pts[:, 1].min(), h - 1 - pts[:, 1].max(), pts[:, 0].min(), w - 1 - pts[:, 0].max()]
        bw = [
            int(max(0.0, min(rng.uniform(0, 0.05) * n, r - 0.02 * n)))
            for n, r in zip((h, h, w, w), room, strict=True)
        ]
        for arr in (img, visible):
            arr[: bw[0]] = 0
            arr[h - bw[1] :] = 0
            arr[:, : bw[2]] = 0
            arr[:, w - bw[3] :] = 0
        meta["black_border_px"] = bw
    img = np.clip(img, 0.0, 1.0, out=img)
    masks &= visible[None]  # ground truth covers what the radiograph shows
    ann = RaterAnnotation(np.stack([p_blum, p_tmc]), cortex, rater=None)
    return Sample(
        id=sample_id or f"phantom_seed{int(seed)}",
        image=img,
        masks=masks,
        annotations=[ann],
        spacing_mm=(s, s),
        spacing_source="phantom",
        schoettle_point=sp,
        meta=meta,
    )
