"""Knee anatomy of one phantom in millimetres, in the femur frame.

Femur frame: origin where the outline leaves LM1 along its tangent, x points anterior, y points
proximal (up the femoral shaft). The posterior femoral cortex line (LM1) is exactly the line
x = 0 for y >= 0: the posterior shaft cortex is straight (the anterior bow is put on the
anterior cortex only), so the cortex line, p_tmc (where the outline, bulging over the medial
condyle, has left LM1 by ``TMC_DEPARTURE_MM``: ``visible_departure``; since session 26, before
that the origin itself) and p_blum (posterior end of the notch roof, anterior of LM1) are exact
by construction.

Proportions (adult, before the global scale factor): femoral shaft 25-30 mm AP, condyles
~56-64 mm AP, posterior condyle ``condylar_offset_mm`` behind LM1 (default 7-30 mm; on real
lateral radiographs 25 +- 2 mm: README, "Condylar offset"), patella ~40 x 20 mm, tibial
plateau 44-52 mm AP, fibular head ~15 mm behind/overlapping the posterior tibia.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from datamodules.phantoms.config import PhantomConfig
from datamodules.phantoms.curves import arc, catmull_rom, cubic_bezier, ray_exit, rotation

SHAFT_TOP_MM = 420.0  # shafts run far beyond any field of view


@dataclass
class Body:
    """One attenuating bone body: a closed outline rendered as a cortical shell around its inside.

    Args:
        polygon: (N, 2) closed outline in femur-frame mm.
        bone: index into ``BONES`` whose mask this body belongs to, or None.
        radius_mm: half-thickness of the equivalent cylinder (sets the chord profile).
        cortex_mm: cortical thickness.
        inner_mu: attenuation per mm inside the cortex (cancellous bone, or marrow in a shaft).
        profile: optional (ys, radius, cortex, weight, inner_mu) arrays, interpolated along the
            femur-frame y of each pixel; overrides the constants (the femur has a marrow-filled
            shaft with a thick cortex, and thin cortex over cancellous bone distally).
    """

    polygon: np.ndarray
    bone: int | None
    radius_mm: float
    cortex_mm: float
    inner_mu: float = 0.010
    profile: tuple[np.ndarray, ...] | None = None


@dataclass
class KneeAnatomy:
    """Everything geometric about one knee, femur-frame mm (see module docstring)."""

    bodies: list[Body]
    p_blum: np.ndarray
    p_tmc: np.ndarray
    blum_end: np.ndarray
    notch: np.ndarray
    soft_tissue: list[np.ndarray]
    femur_outline: np.ndarray
    info: dict = field(default_factory=dict)


def _transform(points: np.ndarray, deg: float, pivot: np.ndarray, shift: np.ndarray):
    return (points - pivot) @ rotation(deg).T + pivot + shift


DOME_BEHIND = 12.0  # mm: an outline meeting the condyle further behind LM1 is drawn as a dome
TMC_DEPARTURE_MM = 0.5  # p_tmc: where the condyle's outline has left LM1 by this much


def visible_departure(outline: np.ndarray, depart_mm: float = TMC_DEPARTURE_MM) -> np.ndarray:
    """The point of the femur ``outline`` (femur frame: LM1 is x = 0, the outline leaves it at
    the origin, running distally to the posterior condyle) where it first lies ``depart_mm``
    behind LM1. The outline leaves LM1 along a tangent: at the origin nothing in the image marks
    the condyle's start, while an independent reader (and three phantom families written apart
    from ours, with a corner there) marks where the contour visibly leaves the cortex line, on
    median 2.4 mm more distal (README, "Where p_tmc sits")."""
    start = int(np.argmin(np.hypot(outline[:, 0], outline[:, 1])))
    path = outline[start:]
    behind = -path[:, 0]
    past = np.flatnonzero(behind >= depart_mm)
    if len(past) == 0 or past[0] == 0:
        return path[0].copy()
    j = int(past[0])
    a, b = path[j - 1], path[j]
    t = (depart_mm - behind[j - 1]) / max(behind[j] - behind[j - 1], 1e-9)
    return a + float(np.clip(t, 0.0, 1.0)) * (b - a)


def build_femur(rng: np.random.Generator, k: float, cfg: PhantomConfig) -> dict:
    """Medial-condyle femur outline, lateral condyle, notch roof; returns a dict of parts."""
    shaft_w = k * rng.uniform(25.0, 30.0)
    bulge = k * rng.uniform(*cfg.condylar_offset_mm)
    rc = k * rng.uniform(18.0, 23.0)
    ap_depth = max(k * rng.uniform(56.0, 64.0), bulge + shaft_w + 2.0 * k)
    x_ant = ap_depth - bulge
    phi1 = rng.uniform(135.0, 155.0)
    q_drop = k * rng.uniform(4.0, 8.0)
    # Condyle profile: an ellipse, flatter distally than posteriorly.
    radii = rc * np.array([rng.uniform(1.0, 1.12), rng.uniform(0.86, 0.97)])
    cx = radii[0] - bulge
    if cx + radii[0] * np.cos(np.deg2rad(phi1)) < -DOME_BEHIND * k:
        # a large offset (real radiographs: ~25 mm): the outline would run back along a flat
        # shelf to the ellipse's flank; it joins it near the top instead, a dome behind p_tmc
        # (offsets of 7-11 mm, the first default, never come here: those phantoms are as before)
        behind = 0.15 * rc
        phi1 = float(np.rad2deg(np.arccos(np.clip((bulge - radii[0] - behind) / radii[0],
                                                  np.cos(np.deg2rad(155.0)),
                                                  np.cos(np.deg2rad(80.0))))))
    a1 = np.deg2rad(phi1)
    cy = -q_drop - radii[1] * np.sin(a1)
    centre = np.array([cx, cy])
    q = centre + radii * np.array([np.cos(a1), np.sin(a1)])
    q[0] = min(q[0], -0.5)
    tq = np.array([-radii[0] * np.sin(a1), radii[1] * np.cos(a1)])
    tq /= np.linalg.norm(tq)
    l1, l2 = 0.45 * q_drop, 0.35 * q_drop
    bez = cubic_bezier([0.0, 0.0], [0.0, -l1], q - l2 * tq, q, samples=10)
    phi2 = rng.uniform(335.0, 355.0)
    cond = arc(centre, radii, phi1, phi2, 4.0)
    bow = k * rng.uniform(0.5, 3.0)
    ant_ctrl = np.array(
        [
            cond[-1],
            [x_ant - 6.0 * k, cy + 0.1 * rc],
            [x_ant, cy + 0.7 * rc],
            [x_ant - 1.5 * k, cy + 1.35 * rc],
            [shaft_w + 0.55 * (x_ant - shaft_w), cy + 2.1 * rc],
            [shaft_w + 0.12 * (x_ant - shaft_w), cy + 3.0 * rc],
            [shaft_w, cy + 3.9 * rc],
        ]
    )
    ant = catmull_rom(ant_ctrl, samples=8)
    y6 = cy + 3.9 * rc
    ys = np.linspace(y6, SHAFT_TOP_MM, 24)[1:]
    xs = shaft_w + bow * np.sin(np.pi * (ys - y6) / (SHAFT_TOP_MM - y6))
    shaft_ant = np.stack([xs, ys], 1)
    outline = np.concatenate(
        [[[0.0, SHAFT_TOP_MM]], bez[:-1], cond[:-1], ant, shaft_ant]
    )  # counter-clockwise (y up): posterior shaft down, condyle, anterior side up
    # Lateral condyle: offset copy of the condylar circle, fading out proximally.
    lat_r = radii * rng.uniform(0.86, 0.97)
    lat_off = np.array(
        [rng.uniform(*cfg.lateral_offset_x_mm), rng.uniform(*cfg.lateral_offset_y_mm)]
    )
    lat_c = centre + k * lat_off
    lateral = arc(lat_c, lat_r, 0.0, 356.0, 6.0)
    # Blumensaat's line: from p_blum anterior-distal until shortly before the outline.
    # p_blum 4-10 mm (x k) distal of p_tmc, as it always was of the frame's origin: from the
    # visible p_tmc, so that the two stay as far apart as on the other families (a shift of
    # p_tmc alone left 15 % of the phantoms with LM2 and LM3 under 2 mm apart, 2 % crossed)
    p_tmc = visible_departure(outline)
    p_blum = np.array([k * rng.uniform(5.0, 11.0), p_tmc[1] - k * rng.uniform(4.0, 10.0)])
    ang = np.deg2rad(rng.uniform(30.0, 48.0))  # angle to the shaft axis
    d_blum = np.array([np.sin(ang), -np.cos(ang)])
    blum_len = 0.82 * ray_exit(outline, p_blum, d_blum)
    blum_end = p_blum + blum_len * d_blum
    # Intercondylar notch: the less dense wedge under the roof.
    notch_depth = rc * rng.uniform(0.55, 0.75)
    notch = catmull_rom(
        np.array(
            [
                p_blum,
                blum_end,
                blum_end + np.array([-0.1, -0.35]) * notch_depth,
                0.5 * (p_blum + blum_end) + np.array([-0.2, -1.0]) * notch_depth,
                p_blum + np.array([-0.05, -0.5]) * notch_depth,
            ]
        ),
        samples=6,
        closed=True,
    )
    return {
        "outline": outline,
        "p_tmc": p_tmc,
        "lateral": lateral,
        "centre": centre,
        "rc": rc,
        "x_ant": x_ant,
        "shaft_w": shaft_w,
        "p_blum": p_blum,
        "blum_end": blum_end,
        "notch": notch,
        "distal_y": cy - radii[1],
        "lat_top": lat_c[1] + lat_r[1],
        "lat_offset": k * lat_off,
        "ant": ant,
        "cond_top": cy + 1.35 * rc,
    }


def build_patella(
    rng: np.random.Generator, k: float, femur: dict, flexion: float, height: tuple = (25.0, 45.0)
):
    """Patella outline placed on the trochlea, sliding distally with flexion."""
    hp = k * rng.uniform(19.0, 23.0)
    tp = k * rng.uniform(9.0, 11.5)
    local = np.array(
        [
            [0.0, 1.0],
            [0.9, 0.6],
            [1.0, 0.0],
            [0.7, -0.65],
            [0.1, -1.0],
            [-0.7, -0.55],
            [-1.0, -0.05],
            [-0.85, 0.5],
            [-0.5, 0.9],
        ]
    ) * np.array([tp, hp])
    local = catmull_rom(local, samples=6, closed=True)
    beta = rng.uniform(*height) - 0.75 * flexion  # angle above the anterior horizontal
    radial = np.array([np.cos(np.deg2rad(beta)), np.sin(np.deg2rad(beta))])
    rho = ray_exit(femur["outline"], femur["centre"], radial)
    overlap = k * rng.uniform(2.0, 6.0)
    centre = femur["centre"] + (rho + tp - overlap) * radial
    # Patella x axis = radial direction (its articular surface faces the trochlea).
    rot = np.stack([radial, [-radial[1], radial[0]]], 1)
    return local @ rot.T + centre


def build_tibia_fibula(rng: np.random.Generator, k: float):
    """Tibia and fibula outlines in the tibia frame (origin plateau centre, x anterior, y up)."""
    ap = k * rng.uniform(44.0, 52.0)
    h = ap / 2
    slope = np.tan(np.deg2rad(rng.uniform(4.0, 11.0)))
    sw = k * rng.uniform(26.0, 32.0)
    sw_low = sw * 0.8
    xs = k * rng.uniform(-2.0, 4.0)
    spine = k * rng.uniform(4.0, 7.0)
    tub = k * rng.uniform(2.0, 5.0)

    def yp(x):
        return x * slope

    ctrl = np.array(
        [
            [-h, yp(-h)],
            [-h / 2, yp(-h / 2) - 1.0 * k],
            [-3.0 * k, yp(-3.0 * k) + 1.5 * k],
            [0.0, yp(0.0) + spine],
            [4.0 * k, yp(4.0 * k) + 1.0 * k],
            [h / 2, yp(h / 2) - 1.0 * k],
            [h, yp(h)],
            [h + 1.0 * k, -6.0 * k],
            [h - 1.0 * k, -15.0 * k],
            [h + tub, -28.0 * k],
            [h - 2.0 * k, -45.0 * k],
            [xs + sw / 2, -70.0 * k],
            [xs + sw / 2 - 0.1 * (sw - sw_low), -110.0 * k],
        ]
    )
    front = catmull_rom(ctrl, samples=6)
    back_ctrl = np.array(
        [
            [xs - sw / 2 + 0.1 * (sw - sw_low), -110.0 * k],
            [xs - sw / 2, -70.0 * k],
            [-h + 3.0 * k, -30.0 * k],
            [-h - 1.0 * k, -12.0 * k],
            [-h - 1.5 * k, -4.0 * k],
            [-h, yp(-h)],
        ]
    )
    back = catmull_rom(back_ctrl, samples=6)
    low = -SHAFT_TOP_MM
    tibia = np.concatenate(
        [
            front,
            [[xs + sw_low / 2, low], [xs - sw_low / 2, low]],
            back[:-1],
        ]
    )
    # Fibula: head behind the posterior tibia just below the plateau, shaft running down.
    hx = -h + k * rng.uniform(3.0, 8.0)
    hy = -k * rng.uniform(16.0, 22.0)  # apex 7-13 mm below the plateau
    fw = k * rng.uniform(8.5, 11.0)
    fib_ctrl = np.array(
        [
            [hx - 3.0 * k, hy + 9.0 * k],
            [hx + 5.0 * k, hy + 5.0 * k],
            [hx + 7.0 * k, hy - 4.0 * k],
            [hx + 3.0 * k, hy - 14.0 * k],
            [hx - 1.5 * k + fw / 2, hy - 40.0 * k],
        ]
    )
    fib_back = np.array(
        [
            [hx - 1.5 * k - fw / 2, hy - 40.0 * k],
            [hx - 5.0 * k, hy - 14.0 * k],
            [hx - 8.0 * k, hy - 2.0 * k],
            [hx - 7.0 * k, hy + 6.0 * k],
        ]
    )
    fibula = np.concatenate(
        [
            catmull_rom(fib_ctrl, samples=6),
            [[hx - 1.5 * k + fw / 2 - 2.0, low], [hx - 1.5 * k - fw / 2 - 2.0, low]],
            catmull_rom(fib_back, samples=6),
        ]
    )
    return tibia, fibula, {"ap": ap, "shaft_w": sw, "fib_w": fw}


def build_knee(
    rng: np.random.Generator,
    scale: float,
    flexion: float,
    cfg: PhantomConfig | None = None,
    adolescent: bool = False,
) -> KneeAnatomy:
    """Sample one knee: bone outlines and landmarks in femur-frame mm, tibia flexed about the
    medial condyle centre by ``flexion`` degrees (distal tibia moves posterior)."""
    cfg = cfg or PhantomConfig()
    k = scale
    fem = build_femur(rng, k, cfg)
    patella = build_patella(rng, k, fem, flexion, cfg.patella_height_deg)
    tibia_t, fibula_t, tinfo = build_tibia_fibula(rng, k)
    gap = k * rng.uniform(3.0, 6.0)
    origin = np.array([fem["centre"][0] + k * rng.uniform(2.0, 8.0), fem["distal_y"] - gap])
    rollback = np.array([k * 6.0 * flexion / 90.0, 0.0])
    pivot = fem["centre"]
    tibia = _transform(tibia_t + origin + rollback, -flexion, pivot, np.zeros(2))
    fibula = _transform(fibula_t + origin + rollback, -flexion, pivot, np.zeros(2))
    tib_axis = rotation(-flexion) @ np.array([0.0, -1.0])

    c_shaft = k * rng.uniform(3.5, 5.5)
    c_dist = k * rng.uniform(1.2, 2.0)
    rc = fem["rc"]
    marrow = rng.uniform(0.002, 0.005)
    canc = rng.uniform(0.008, 0.012)
    prof_y = np.array([-200.0, fem["distal_y"] + rc, 20.0 * k, 60.0 * k, 500.0])
    femur_main = Body(
        fem["outline"],
        0,
        fem["shaft_w"] / 2,
        c_shaft,
        profile=(
            prof_y,
            np.array([rc, rc, 0.8 * rc, fem["shaft_w"] / 2, fem["shaft_w"] / 2]),
            np.array([c_dist, c_dist, 0.5 * (c_dist + c_shaft), c_shaft, c_shaft]),
            np.ones(5),
            np.array([canc, canc, canc, marrow, marrow]),
        ),
    )
    lat_top = fem["lat_top"]
    femur_lat = Body(
        fem["lateral"],
        0,
        0.75 * rc,
        c_dist,
        profile=(
            np.array([-200.0, lat_top - 0.9 * rc, lat_top - 0.2 * rc, 500.0]),
            np.full(4, 0.75 * rc),
            np.full(4, c_dist),
            np.array([0.4, 0.4, 0.0, 0.0]),
            np.full(4, canc),
        ),
    )
    bodies = [
        femur_main,
        femur_lat,
        Body(patella, 1, k * 12.0, k * rng.uniform(1.5, 2.5), canc * 1.1),
        Body(tibia, 2, tinfo["shaft_w"] / 2, k * rng.uniform(2.0, 3.5), canc * 0.8),
        Body(fibula, 3, tinfo["fib_w"] / 2, k * rng.uniform(1.5, 2.5), canc * 0.8),
    ]
    # Soft tissue: one smooth envelope. Thin skin over the patella and the tibial crest, thick
    # quadriceps/hamstrings around the femur, the calf behind the tibia.
    h = tinfo["ap"] / 2
    sw = tinfo["shaft_w"]

    def tib(points):
        return _transform(np.asarray(points) + origin + rollback, -flexion, pivot, np.zeros(2))

    soft_k = k * rng.uniform(*cfg.soft_tissue_scale)
    thigh_c = k * rng.uniform(10.0, 22.0)
    thigh_a, thigh_p = soft_k * rng.uniform(40.0, 55.0), soft_k * rng.uniform(45.0, 70.0)
    pat_c = patella.mean(0)
    pat_front = pat_c + (pat_c - fem["centre"]) / np.linalg.norm(pat_c - fem["centre"]) * (
        k * rng.uniform(18.0, 24.0)
    )
    calf_p = soft_k * rng.uniform(45.0, 70.0)
    skin = soft_k * rng.uniform(8.0, 16.0)
    calf = tib(
        [
            [h + 1.0 * k + skin, -2.0 * k],
            [h + 5.0 * k + skin, -30.0 * k],
            [sw / 2 + skin, -SHAFT_TOP_MM],
            [-sw / 2 - calf_p * 0.8, -SHAFT_TOP_MM],
            [-h - calf_p, -90.0 * k],
            [-h - calf_p * 0.8, -20.0 * k],
        ]
    )
    envelope = np.array(
        [
            [thigh_c + thigh_a, SHAFT_TOP_MM],
            [thigh_c + thigh_a, 90.0 * k],
            pat_front,
            *calf,
            [-k * rng.uniform(40.0, 60.0), fem["distal_y"] + 25.0 * k],
            [thigh_c - thigh_p, 80.0 * k],
            [thigh_c - thigh_p, SHAFT_TOP_MM],
        ]
    )
    soft = catmull_rom(envelope, samples=10, closed=True)
    info = {
        "tibia_axis": tib_axis,
        "femur_centre": fem["centre"],
        "x_ant": fem["x_ant"],
        "distal_y": fem["distal_y"],
        "plateau": tib([[0.0, 0.0]])[0],
        "soft_radius_mm": float(np.clip(0.5 * (thigh_a + thigh_p), 35.0, 110.0)),
        "lines": [],  # (polyline mm, width mm, kind): sclerotic lines (+) and physes (-)
    }
    # Blumensaat's line of the second condyle (imperfect laterals: double roof line).
    if rng.random() < cfg.p_double_blumensaat:
        off = fem["lat_offset"]
        info["lines"].append((np.stack([fem["p_blum"], fem["blum_end"]]) + off, 1.0, "cortex"))
    # Trochlear groove floor: parallel to the anterior condyle contour, crossing it when
    # dysplastic (crossing sign).
    ant = fem["ant"]
    sel = ant[(ant[:, 1] > fem["centre"][1]) & (ant[:, 1] < fem["cond_top"] + 8.0 * k)]
    if len(sel) >= 3:
        dysplastic = rng.random() < cfg.p_dysplasia
        t = np.linspace(0.0, 1.0, len(sel))[:, None]
        d_top = k * (rng.uniform(-3.0, 0.5) if dysplastic else rng.uniform(3.0, 6.0))
        d_bot = k * rng.uniform(5.0, 9.0)
        depth = d_bot + (d_top - d_bot) * t
        groove = sel - np.concatenate([depth, np.zeros_like(depth)], 1)
        info["lines"].append((groove, 0.8, "cortex"))
        info["dysplasia"] = bool(dysplastic)
    # Open growth plates (adolescents): a wavy radiolucent band across femur and tibia.
    if adolescent:
        yf = fem["centre"][1] + fem["rc"] * rng.uniform(0.7, 1.1)
        xs = np.linspace(-4.0, fem["x_ant"] + 4.0, 12)
        wav = k * rng.uniform(1.0, 3.0) * np.sin(np.linspace(0, rng.uniform(2, 4) * np.pi, 12))
        info["lines"].append((np.stack([xs, yf + wav], 1), k * rng.uniform(1.0, 2.0), "physis"))
        yt = -k * rng.uniform(14.0, 20.0)
        xt = np.linspace(-h - 4.0, h + 6.0, 12)
        tw = k * rng.uniform(0.5, 2.0) * np.sin(np.linspace(0, rng.uniform(2, 4) * np.pi, 12))
        info["lines"].append((tib(np.stack([xt, yt + tw], 1)), k * rng.uniform(1.0, 2.0),
                              "physis"))  # fmt: skip
        info["open_physes"] = True
    # Osteophytes: small spurs at the joint margins, part of their bone.
    if rng.random() < cfg.p_osteophytes:
        spots = [
            (2, tib([[h, h * 0.1]]), np.array([1.0, 0.6])),
            (2, tib([[-h, -h * 0.1]]), np.array([-1.0, 0.6])),
            (0, fem["ant"][-20:-19], np.array([1.0, 0.3])),
            (1, patella[:1], patella[0] - patella.mean(0)),
        ]
        for i in rng.choice(len(spots), size=int(rng.integers(1, 4)), replace=False):
            bone, base, out = spots[int(i)]
            out = out / np.linalg.norm(out)
            if bone == 2:
                out = rotation(-flexion) @ out
            nrm = np.array([-out[1], out[0]])
            ln, wd = k * rng.uniform(2.0, 6.0), k * rng.uniform(2.0, 5.0)
            b0 = base[0] - 2.0 * out
            spur = np.stack([b0 - wd * nrm, b0 + wd * nrm, b0 + ln * out + 0.3 * wd * nrm])
            bodies.append(Body(spur, bone, max(wd, 2.0), 1.0, canc))
        info["osteophytes"] = True
    return KneeAnatomy(
        bodies=bodies,
        p_blum=fem["p_blum"],
        p_tmc=fem["p_tmc"],
        blum_end=fem["blum_end"],
        notch=fem["notch"],
        soft_tissue=[soft],
        femur_outline=fem["outline"],
        info=info,
    )
