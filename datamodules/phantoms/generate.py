"""``generate_phantom``: one seeded synthetic lateral knee radiograph with exact ground truth."""

from __future__ import annotations

import cv2
import numpy as np

from datamodules.phantoms import distractors, extras
from datamodules.phantoms.anatomy import build_knee
from datamodules.phantoms.config import PhantomConfig
from datamodules.phantoms.layout import ImageFrame, place_knee, sample_size_and_spacing
from datamodules.phantoms.noise import noise_window
from datamodules.phantoms.physics import (
    PathMaps,
    add_body_paths,
    draw_lines,
    form_image,
    lowpass,
    process,
    quantise,
    soft_paths,
    trabecular_texture,
)
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


def _render_factor(h: int, w: int, max_px: int = 640) -> int:
    """Coarse-grid factor: the grid's longer side stays <= ``max_px``."""
    return max(1, -(-max(h, w) // max_px))


def _inside_convex(poly: np.ndarray, pts: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """(N,) bool: points inside the convex polygon (any orientation) by at least ``margin``."""
    a = poly
    e = np.roll(poly, -1, axis=0) - a
    length = np.linalg.norm(e, axis=1)
    a, e, length = a[length > 0], e[length > 0], length[length > 0]  # repeated vertices: no edge
    cross = e[None, :, 0] * (pts[:, None, 1] - a[None, :, 1]) - e[None, :, 1] * (
        pts[:, None, 0] - a[None, :, 0]
    )
    cross = cross / length[None]
    sign = 1.0 if cross.sum() >= 0 else -1.0
    return (sign * cross >= margin).all(1)


def _cortex_points(frame: ImageFrame, field: np.ndarray, k: float) -> np.ndarray:
    """Points on LM1 (x = 0 in the femur frame), proximal to distal, over the visible shaft."""
    ys = np.arange(5.0 * k, 420.0, 0.5)
    px = frame.to_px(np.stack([np.zeros_like(ys), ys], 1))
    m = 0.02 * min(frame.height, frame.width)
    inside = _inside_convex(field, px, m)
    # keep the run that starts at the distal end
    stop = int(np.argmin(inside)) if not inside.all() else len(ys)
    y_top = ys[max(stop - 1, 1)]
    yy = np.linspace(y_top, ys[0], N_CORTEX_POINTS)
    return frame.to_px(np.stack([np.zeros_like(yy), yy], 1))


def _collimation(rng: np.random.Generator, cfg: PhantomConfig, h: int, w: int,
                 keep: np.ndarray) -> np.ndarray:
    """(4, 2) px corners of the exposed field: a box cut in from the edges, tilted when the
    tilt keeps every ``keep`` point inside; the full image without collimation."""
    full = np.array([[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]])
    if rng.random() >= cfg.p_collimation:
        return full
    x0, y0, x1, y1 = extras.collimation_box(rng, h, w, keep)
    box = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    tilt = np.deg2rad(rng.uniform(*cfg.collimation_tilt_deg))
    c = box.mean(0)
    rot = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
    tilted = (box - c) @ rot.T + c
    margin = 0.04 * min(h, w)
    return tilted if _inside_convex(tilted, keep, margin).all() else box


def _pick_style(rng: np.random.Generator, cfg: PhantomConfig) -> str:
    names = sorted(k for k, v in cfg.styles.items() if v > 0)
    if not names:
        raise ValueError("PhantomConfig.styles: no style has a positive weight")
    unknown = set(names) - {"physics", "classic"}
    if unknown:
        raise ValueError(f"PhantomConfig.styles: unknown style(s) {sorted(unknown)}")
    p = np.array([cfg.styles[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def generate_phantom(
    seed: int, config: PhantomConfig | None = None, sample_id: str | None = None
) -> Sample:
    """Render one lateral knee phantom; the same seed and config give byte-identical output.

    Args:
        seed: seed of the numpy Generator that draws every random choice.
        config: ranges and probabilities; default ``PhantomConfig()`` (the default mixture).
        sample_id: id of the Sample; default ``phantom_seed<seed>``.

    The masks are the exact projections of the bone outlines (never metal, calibration objects
    or the contralateral knee), restricted to the exposed part of the image (inside the
    collimation and any black border); landmarks, cortex points and the Schoettle point always
    lie in that exposed part.

    Returns:
        Sample with image (H, W) float32 in [0, 1], masks (4, H, W) uint8, one annotation
        (landmarks p_blum, p_tmc; 5 cortex points proximal to distal), spacing (s, s) mm,
        the exact Schoettle point and JSON-serialisable meta.
    """
    return render_phantom(seed, config, sample_id)[0]


def render_phantom(
    seed: int, config: PhantomConfig | None = None, sample_id: str | None = None
) -> tuple[Sample, dict]:
    """``generate_phantom`` plus the raw physics layers on the coarse grid (for tests): the
    line integral ``line_integral`` before beam hardening and the processing chain, ``bone``
    (the bones' share of it), the ``metal`` and ``plastic`` path lengths (mm), the log image
    ``log`` and the grid ``factor`` (an empty dict for the classic style)."""
    cfg = config or PhantomConfig()
    rng = np.random.default_rng(int(seed))
    h, w, s, _ = sample_size_and_spacing(rng, cfg)
    style = _pick_style(rng, cfg)
    side = "left" if rng.random() < cfg.p_left else "right"
    mirror = -1 if side == "left" else 1
    rot = float(rng.uniform(*cfg.rotation_deg))
    flexion = float(rng.uniform(*cfg.flexion_deg))
    adolescent = bool(rng.random() < cfg.p_open_physes)
    k = float(rng.uniform(*(cfg.adolescent_scale if adolescent else cfg.scale)))
    knee = build_knee(rng, k, flexion, cfg, adolescent)
    for _ in range(8):  # the tibial plateau stays in view: less rotation until it does
        frame = place_knee(rng, cfg, h, w, s, mirror, rot)
        plateau = frame.to_px(knee.info["plateau"][None])[0]
        m = 0.06 * min(h, w)
        if m <= plateau[0] <= w - 1 - m and m <= plateau[1] <= h - 1 - m:
            break
        rot *= 0.6

    # --- ground truth (full resolution) ---
    masks = np.zeros((len(BONES), h, w), np.uint8)
    for body in knee.bodies:
        if body.bone is not None:
            masks[body.bone] |= fill((h, w), [frame.to_px(body.polygon)])
    p_blum, p_tmc = frame.to_px(np.stack([knee.p_blum, knee.p_tmc]))
    keep = np.stack([p_blum, p_tmc, *frame.to_px(np.array([[0.0, 40.0 * k], [30.0, 0.0]]))])
    field = _collimation(rng, cfg, h, w, keep)
    cortex = _cortex_points(frame, field, k)
    lm1_point = frame.to_px(np.zeros((1, 2)))[0]  # the femur frame's origin lies on LM1
    line_dir = frame.to_px(np.array([[0.0, -1.0]]))[0] - lm1_point
    sp, sp_r = schoettle_from_construction(lm1_point, line_dir, p_tmc, p_blum)
    x0, y0 = field.min(0)
    x1, y1 = field.max(0)
    meta: dict = {
        "side": side,
        "flexion_deg": flexion,
        "rotation_deg": rot,
        "scale": k,
        "seed": int(seed),
        "generator": f"kneeplan.phantoms.v3.{style}",  # v3: p_tmc where the outline leaves LM1
        "style": style,
        "schoettle_radius_px": float(sp_r),
        "collimation_px": [float(x0), float(y0), float(x1), float(y1)],
        "anatomy": {
            key: bool(knee.info[key])
            for key in ("dysplasia", "open_physes", "osteophytes")
            if key in knee.info
        },
    }
    grid = RenderGrid(frame, _render_factor(h, w, cfg.render_grid_px))
    render = _render_classic if style == "classic" else _render_physics
    img, raw = render(rng, cfg, knee, grid, field, masks, np.stack([p_blum, p_tmc]), s, meta)
    text = extras.burn_text(
        rng, img, side, s, rng.random() < cfg.p_side_marker, rng.random() < cfg.p_text
    )
    if text:
        meta["burned_text"] = text
    visible = fill((h, w), [field]) if len(field) else np.ones((h, w), np.uint8)
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
    sample = Sample(
        id=sample_id or f"phantom_seed{int(seed)}",
        image=img,
        masks=masks,
        annotations=[ann],
        spacing_mm=(s, s),
        spacing_source="phantom",
        schoettle_point=sp,
        meta=meta,
    )
    return sample, raw


def _upsample(img: np.ndarray, f: int, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a grid image by ``f`` to exactly (h, w), pixel centres aligned
    (the same values as resizing to (f hr, f wr) and cropping, without the copy)."""
    if f == 1:
        return np.ascontiguousarray(img[:h, :w])
    m = np.array([[1.0 / f, 0.0, 0.5 / f - 0.5], [0.0, 1.0 / f, 0.5 / f - 0.5]])
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _place_sphere(rng, cfg, masks, field, s, meta) -> np.ndarray | None:
    """Centre (px) of the calibration sphere (clear of bone, inside the field) or None."""
    if rng.random() >= cfg.p_sphere:
        return None
    r_px = cfg.sphere_diameter_mm / 2 / s
    x0, y0 = field.min(0)
    x1, y1 = field.max(0)
    h, w = masks.shape[1:]

    def inside(p: np.ndarray, margin: float) -> bool:
        in_image = margin - 0.5 <= min(p[0], p[1], w - 0.5 - p[0], h - 0.5 - p[1])
        return bool(in_image and _inside_convex(field, p[None], margin)[0])

    c = extras.place_sphere(rng, masks.max(0), r_px, np.array([x0, y0, x1, y1]), inside)
    if c is not None:
        meta["sphere"] = {
            "centre_px": [float(c[0]), float(c[1])],
            "radius_px": float(r_px),
            "diameter_mm": float(cfg.sphere_diameter_mm),
        }
    return c


def _blum_layer(shape, grid: RenderGrid, lines: list[np.ndarray], width_mm: float) -> np.ndarray:
    """Sclerotic line(s) in grid px, blurred (Blumensaat's roof and similar)."""
    return draw_lines(shape, [grid.to_grid(p) for p in lines], width_mm / grid.spacing)


def _render_physics(rng, cfg, knee, grid, field, masks, landmarks, s, meta):
    """Physics style (see ``physics``): returns the display image (H, W) and the raw layers."""
    h, w = masks.shape[1:]
    hr, wr = grid.shape
    gs = grid.spacing
    maps = PathMaps.zeros((hr, wr))
    for body in knee.bodies:
        add_body_paths(maps, body, grid)
    # Notch: less bone under the roof; sclerotic roof line(s); physes and groove lines.
    notch = render_blob((hr, wr), grid.to_grid(knee.notch), 2.0 / gs, rng.uniform(0.35, 0.6))
    maps.cancellous *= 1.0 - notch
    lines = [np.stack([knee.p_blum, knee.blum_end])]
    lines += [pts for pts, _, kind in knee.info["lines"] if kind == "cortex"]
    maps.cortex += _blum_layer((hr, wr), grid, lines, 1.0) * np.float32(rng.uniform(3.0, 6.0))
    for pts, width, kind in knee.info["lines"]:
        if kind == "physis":
            band = _blum_layer((hr, wr), grid, [pts], width)
            band = np.minimum(band * 1.5, 1.0)
            maps.cancellous *= 1.0 - 0.8 * band
            maps.cortex *= 1.0 - 0.8 * band
    fat = rng.uniform(*cfg.fat_layer_mm)
    cast = rng.uniform(4.0, 12.0) if rng.random() < cfg.p_cast else 0.0
    if cast:
        meta["cast_mm"] = float(cast)
    muscle, fat_t, cast_t = soft_paths(
        (hr, wr), grid.to_grid(knee.soft_tissue[0]), gs, knee.info["soft_radius_mm"], fat, cast
    )
    maps.muscle += muscle
    maps.fat += fat_t
    maps.plastic += cast_t
    if rng.random() < cfg.p_contralateral:
        meta["contralateral"] = _contralateral(rng, cfg, knee, grid, maps)
    # distractors
    field_grid = (field + 0.5) / grid.factor - 0.5
    c = _place_sphere(rng, cfg, masks, field, s, meta)
    if c is not None:
        extras.sphere_attenuation(
            maps.metal, (c + 0.5) / grid.factor - 0.5, cfg.sphere_diameter_mm / 2 / gs, gs, 1.0
        )
    avoid = (landmarks + 0.5) / grid.factor - 0.5
    bone_any = (maps.cortex + maps.cancellous) > 0
    distractors.add_all(rng, cfg, maps, gs, field_grid, avoid, bone_any, meta)
    mu = {n: rng.uniform(*getattr(cfg, f"mu_{n}")) for n in
          ("cortex", "cancellous", "muscle", "fat", "metal", "plastic")}  # fmt: skip
    tex = trabecular_texture(rng, (hr, wr), gs, cfg, 90.0 + meta["rotation_deg"])
    tex *= np.float32(rng.uniform(*cfg.trabecular_contrast))
    bone = np.float32(mu["cortex"]) * maps.cortex + np.float32(mu["cancellous"]) * (
        maps.cancellous * np.maximum(1.0 + tex, 0.0)
    )
    line = bone + (
        np.float32(mu["muscle"]) * maps.muscle
        + np.float32(mu["fat"]) * maps.fat
        + np.float32(mu["metal"]) * maps.metal
        + np.float32(mu["plastic"]) * maps.plastic
    )
    if rng.random() < cfg.p_electrode:
        extras.electrode(rng, line, gs)
        meta["electrode"] = True
    if rng.random() < cfg.p_cassette_edge:
        extras.cassette_edge(rng, line)
        meta["cassette_edge"] = True
    exposed = fill((hr, wr), [field_grid]).astype(np.float32)
    exposed = cv2.GaussianBlur(exposed, (0, 0), max(0.5, 0.8 / gs))
    log_img = form_image(rng, line, exposed, gs, cfg)
    tissue = (maps.muscle + maps.fat) > 5.0
    disp = process(rng, log_img, exposed, gs, cfg, tissue, bone > 0.3)
    if rng.random() < cfg.p_shutter_dark:
        disp *= exposed  # processing masks the unexposed border to black
    if rng.random() < cfg.p_monochrome1:
        disp = 1.0 - disp
        meta["monochrome1"] = True
    # Stored bit depth (quantised on the grid: the upsampling below keeps the level steps).
    bits = int(rng.choice(np.asarray(cfg.bits)))
    disp = quantise(np.clip(disp, 0.0, 1.0), bits).astype(np.float32)
    meta["bits"] = bits
    img = _upsample(disp, grid.factor, h, w)
    if grid.factor > 1 and cfg.photons[0] < 1e8:  # detector grain finer than the grid
        img = cv2.scaleAdd(noise_window(rng, h, w), rng.uniform(0.002, 0.012), img)
    raw = {"line_integral": line, "bone": bone, "metal": maps.metal, "plastic": maps.plastic}
    return img, {**raw, "factor": grid.factor, "log": log_img}


def _contralateral(rng, cfg, knee, grid, maps) -> dict:
    """The other knee, displaced and blurred (farther from the detector), added as bone and soft
    tissue paths only (never to the masks)."""
    other = build_knee(rng, float(rng.uniform(*cfg.scale)), float(rng.uniform(*cfg.flexion_deg)),
                       cfg)  # fmt: skip
    dx = rng.choice([-1.0, 1.0]) * rng.uniform(60.0, 130.0)
    dy = rng.uniform(-40.0, 40.0)
    ang = rng.uniform(-20.0, 20.0)
    from datamodules.phantoms.curves import rotation

    r = rotation(ang)
    sub = PathMaps.zeros(maps.cortex.shape)
    for body in other.bodies:
        moved = type(body)(body.polygon @ r.T + [dx, dy], None, body.radius_mm, body.cortex_mm,
                           body.inner_mu, body.profile)  # fmt: skip
        if body.profile is not None:  # profiles follow femur-frame y: keep the shaft's one
            moved.profile = None
            moved.radius_mm = float(np.max(body.profile[1])) * 0.9
            moved.cortex_mm = float(np.min(body.profile[2]))
        add_body_paths(sub, moved, grid)
    blur = rng.uniform(1.0, 3.0) / grid.spacing
    maps.cortex += lowpass(sub.cortex, blur)
    maps.cancellous += lowpass(sub.cancellous, blur)
    return {"offset_mm": [float(dx), float(dy)], "rotation_deg": float(ang)}


def _render_classic(rng, cfg, knee, grid, field, masks, landmarks, s, meta):
    """The first generator's look: painted attenuation, exponential display curve."""
    h, w = masks.shape[1:]
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
        (hr, wr), grid.to_grid(knee.soft_tissue[0]), gs, knee.info["soft_radius_mm"]
    )
    lines = [np.stack([knee.p_blum, knee.blum_end])]
    lines += [pts for pts, _, kind in knee.info["lines"] if kind == "cortex"]
    acc += _blum_layer((hr, wr), grid, lines, 1.2) * np.float32(MU_CORTEX * rng.uniform(8, 14))
    np.maximum(acc, 0.0, out=acc)
    field_grid = (field + 0.5) / grid.factor - 0.5
    c = _place_sphere(rng, cfg, masks, field, s, meta)
    if c is not None:
        r_px = cfg.sphere_diameter_mm / 2 / s
        extras.sphere_attenuation(
            acc, (c + 0.5) / grid.factor - 0.5, r_px / grid.factor, gs, MU_METAL
        )
    if rng.random() < cfg.p_metal:
        avoid = (landmarks + 0.5) / grid.factor - 0.5
        meta["metal"] = extras.metal_occluder(rng, acc, avoid, gs)
    bx0, by0 = field_grid.min(0)
    bx1, by1 = field_grid.max(0)
    if rng.random() < cfg.p_ruler:
        extras.ruler(rng, acc, gs, np.array([bx0, by0, bx1, by1]))
        meta["ruler"] = True
    if rng.random() < cfg.p_electrode:
        extras.electrode(rng, acc, gs)
        meta["electrode"] = True
    if rng.random() < cfg.p_cassette_edge:
        extras.cassette_edge(rng, acc)
        meta["cassette_edge"] = True
    blur = max(0.6, rng.uniform(*cfg.blur_mm) / gs)  # at least ~half a grid px: anti-aliasing
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
    if cfg.p_collimation > 0:
        inside = fill((hr, wr), [field_grid]).astype(np.float32)
        outside_val = 0.0 if rng.random() < 0.5 else rng.uniform(0.6, 0.9)
        soft_edge = cv2.GaussianBlur(inside, (0, 0), 1.0)
        disp = disp * soft_edge + np.float32(outside_val) * (1.0 - soft_edge)
    img = _upsample(disp.astype(np.float32), grid.factor, h, w)
    # Coarse pixels (small test images) average several detector elements: less noise.
    sigma = rng.uniform(*cfg.noise_sigma) * min(1.0, float(np.sqrt(0.15 / s)))
    if sigma > 0:
        noise = noise_window(rng, h, w)
        img += noise * (np.float32(sigma) * (0.5 + img))
    return img, {}
