"""A third, independent family of lateral knee radiograph phantoms ("ray-cast family").

Written for kneeplan's generalisation tests without reusing the project's generator
(``datamodules/phantoms``) or ``benchmarks/independent_phantoms.py`` (only the on-disk format
was taken from the project: images/, masks/<id>_<bone>.png, annotations/<id>.json, schema 1).

Anatomy: every bone is a set of 3-D primitives (elliptic tubes with knot-interpolated AP and
ML extents, ellipsoids), and the projection is computed ANALYTICALLY per pixel as the chord
length of a parallel ray through each primitive (x anterior, y distal, z medio-lateral).
Cortex = chord(outer) - chord(inner, shrunk by the local cortical thickness), so shafts show
the classic bright tangential cortical walls around a darker medullary canal and the
condyles a thin dense rim. Femur = shaft/metaphysis tube + trochlear ellipsoid (both cut
by the intercondylar notch, whose roof is Blumensaat's line) + medial and lateral condylar
ellipsoids, the lateral one offset (imperfect lateral) so two condylar contours appear.
Tibia (plateau with posterior slope, spines, second plateau line, tuberosity), fibula
(head + shaft), patella (asymmetric ellipse with distal pole) and a soft-tissue envelope
with subcutaneous fat, Hoffa's and popliteal fat pads; flexion 0-70 deg with roll-back and
patellar tracking around the trochlea.

Physics: two-energy Beer-Lambert (beam hardening: bone attenuates relatively more at the
low energy), heel effect, collimation with leakage, scatter = broad kernel x scatter-to-
primary ratio, detector MTF blur, Poisson-like quantum noise + electronic noise, then a
DR-style display chain: log, multi-scale (Laplacian band) contrast equalisation with
amplitude compression, dynamic range compression of the coarse residual, film-like
(H&D sigmoid) LUT; black or white electronic shutters; 16-bit or 8-bit output.

Landmarks are exact from the geometry: p_tmc is the intersection of the posterior shaft
cortex line (x = x_pc) with the circular posterior contour of the MEDIAL condyle (upper
intersection); p_blum is the posterior (proximal-posterior) end point of the Blumensaat
curve. cortex_line: 2-5 points on x = x_pc, proximal to distal, all within the image.

Run:  python benchmarks/raycast_phantoms.py --out data/raycast --n 60 --seed 303
(session 19, helper-written; README "A third, ray-cast phantom family")
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np

BONES = ("femur", "patella", "tibia", "fibula")
HARD = False  # --hard: poorer laterals, less shaft, more noise/scatter, fainter roof, more tilt

# linear attenuation coefficients in 1/mm at a low and a high effective energy
MU = {  # (low, high)
    "soft": (0.026, 0.018),
    "fat": (0.019, 0.014),
    "cortical": (0.140, 0.060),
    "cancellous": (0.075, 0.040),
    "marrow": (0.026, 0.018),
    "lead": (3.0, 1.5),
}


def rot(deg):
    r = math.radians(deg)
    return np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])


def smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


# ----------------------------------------------------------------------------- primitives
def chord_ellipsoid(X, Y, cx, cy, rx, ry, c, ang=0.0, rx_ant=None):
    """Chord length (mm) of z-rays through an ellipsoid, semi-axes rx, ry (in-plane, rotated by
    ``ang`` deg) and c (medio-lateral); ``rx_ant``: a longer semi-axis for dx > 0 (an egg)."""
    dx, dy = X - cx, Y - cy
    if ang:
        ca, sa = math.cos(math.radians(ang)), math.sin(math.radians(ang))
        dx, dy = ca * dx + sa * dy, -sa * dx + ca * dy
    if rx_ant is not None:
        rx = np.where(dx > 0, rx_ant, rx)
    r2 = (dx / rx) ** 2 + (dy / ry) ** 2
    return 2 * c * np.sqrt(np.clip(1 - r2, 0, None)), r2 < 1


def chord_tube(X, Y, knots, lo, hi, cml, shrink=None, y_end=None, cap=6.0):
    """Chord through an elliptic tube along y whose posterior/anterior boundaries ``lo``/``hi``
    and ML semi-axis ``cml`` are interpolated over ``knots`` (y); ``shrink(y)`` reduces all
    three (the inner, medullary surface); a rounded end below ``y_end``."""
    lo_y, hi_y, c_y = (np.interp(Y, knots, k) for k in (lo, hi, cml))
    if shrink is not None:
        t = shrink(Y)
        lo_y, hi_y, c_y = lo_y + t, hi_y - t, c_y - t
    half = np.maximum((hi_y - lo_y) / 2, 1e-3)
    r = (X - (lo_y + hi_y) / 2) / half
    r2 = r * r
    if y_end is not None:
        r2 = r2 + (np.clip(Y - y_end, 0, None) / cap) ** 2
    ok = (r2 < 1) & (c_y > 0) & (hi_y > lo_y)
    return np.where(ok, 2 * np.maximum(c_y, 0) * np.sqrt(np.clip(1 - r2, 0, None)), 0.0), ok


# ----------------------------------------------------------------------------- anatomy
def build(rng):
    u = rng.uniform
    A = {}
    # femur (mm; origin = medial condyle posterior circle centre; x anterior, y distal)
    Rm = u(19.5, 25.0)
    b = u(12.0, min(Rm - 3.0, 21.0))       # posterior condyle beyond the cortex line
    x_pc = -Rm + b                         # posterior shaft cortex line x = x_pc
    y_tmc = -math.sqrt(Rm ** 2 - x_pc ** 2)
    depth = u(55, 70)                      # condylar AP depth
    x_front = -Rm + depth
    Rt = u(16, 21)                         # trochlear (anterior condyle) ellipsoid
    tro = (x_front - Rt, u(-6, 2), Rt, Rt * u(0.9, 1.1), u(18, 24))
    shaft_d = u(27, 33)
    y_flare = y_tmc - u(35, 55)
    knots = np.array([-700, y_flare, y_flare * 0.55 + tro[1] * 0.45, tro[1], 40.0])
    flare = x_pc + shaft_d + 0.55 * (x_front - 4 - x_pc - shaft_d)
    hi = np.array([x_pc + shaft_d, x_pc + shaft_d, flare, x_front - u(3, 6), x_front - 8])
    lo = np.full(5, x_pc)
    cml = np.array([u(13, 15.5), u(14, 16), u(24, 30), u(34, 40), u(34, 40)])
    t_shaft, t_meta = u(4.0, 6.5), u(1.0, 1.8)
    y_canal = y_flare + u(0, 12)
    A.update(Rm=Rm, x_pc=x_pc, y_tmc=y_tmc, tro=tro, fem_knots=knots, fem_lo=lo, fem_hi=hi,
             fem_c=cml, t_shaft=t_shaft, t_meta=t_meta, y_canal=y_canal, depth=depth)
    A["med"] = (0.0, 0.0, Rm, Rm * u(1.0, 1.08), u(13, 16))
    Rl = Rm - (u(-1.5, 4.0) if HARD else u(0.3, 3.0))
    A["lat"] = ((u(-8, 8), u(-6, 5)) if HARD else (u(-2.5, 5.0), u(-3.5, 3.0))) + (
        Rl, Rl * u(0.97, 1.06), u(13, 16.5))
    A["med_ant"] = x_front - u(4, 9)              # anterior semi-axis: joins the trochlea
    A["lat_ant"] = A["med_ant"] - A["lat"][0] - u(0, 5)
    # Blumensaat line: posterior end P_b anterior-distal of p_tmc, runs anterior-distally
    Pb = np.array([x_pc + u(1.5, 5.0), y_tmc + u(4.5, 12.0)])
    beta = math.radians(u(30, 48))         # angle to the shaft axis
    d = np.array([math.sin(beta), math.cos(beta)])
    n = np.array([d[1], -d[0]])            # normal, pointing anterior-proximal
    L = u(24, 34)
    for _ in range(60):  # keep the anterior end 4 mm inside the femur
        E = Pb + L * d
        if femur_inside(A, E, margin=5.0):
            break
        L -= 0.5
    s = np.linspace(0, 1, 60)[:, None]
    bow = u(-1.5, 2.5)                     # slight hump toward the roof
    blum = Pb + s * L * d + (bow * 4 * s * (1 - s)) * n
    A.update(Pb=Pb, blum=blum, blum_dir=d, blum_len=L, beta=math.degrees(beta))
    # notch polygon (the side of the roof where only the two condyles exist)
    far = 200
    back = Pb + np.array([-1.0, -0.12]) * far
    ahead = blum[-1] + d * far
    A["notch"] = np.vstack([back, blum, ahead, ahead + np.array([-far, far]),
                            back + np.array([0, far])])
    # physeal scar
    A["physis"] = (tro[1] - u(12, 22), u(-10, 10)) if rng.random() < 0.6 else None
    # knee pose
    flex = u(0, 15) if rng.random() < 0.35 else u(15, 70)
    A["flex"] = flex
    slope = u(4, 12)
    gap = u(3.5, 6.5)
    roll = 6.0 * flex / 70 + u(-1.5, 1.5)
    v_off = (Rm + gap + roll * math.sin(math.radians(slope))) / math.cos(math.radians(slope))
    A.update(slope=slope, gap=gap, roll=roll, v_off=v_off)
    # tibia (frame: U anterior, V distal, plateau passes through (0, 0))
    P, Aa = u(23, 29), u(20, 27)
    hw = u(11, 13.5)
    sc = u(-6, 1)
    tub_v, tub = u(25, 38), u(3, 6.5)
    tk = np.array([-30, 0, 6, 18, tub_v, tub_v + 15, 75, 120, 700])
    tlo = np.array([-P, -P, -P + 0.5, -P + u(3, 6), -P + u(7, 11), sc - hw - 2, sc - hw,
                    sc - hw, sc - hw])
    thi = np.array([Aa, Aa, Aa - 0.5, Aa - u(1, 3), Aa + tub - 2.5, sc + hw + u(2, 5),
                    sc + hw + 1, sc + hw, sc + hw])
    tc = np.array([u(36, 42), u(36, 42), u(34, 40), u(30, 35), u(24, 28), u(18, 22), u(15, 18),
                   u(13, 15), u(13, 15)])
    A.update(tib_knots=tk, tib_lo=tlo, tib_hi=thi, tib_c=tc, tib_t=(u(1.0, 1.6), u(4, 6)),
             P=P, Aa=Aa, sc=sc, hw=hw)
    A["spines"] = [(u(-4, 1), u(0.5, 2), u(3.5, 5.5), u(4.5, 6.5), u(3, 5)),
                   (u(2, 7), u(1, 2.5), u(3.5, 5), u(4, 5.5), u(3, 5))]
    A["plateau2"] = (u(-3, 3), u(-2.5, 2.5), u(-3, 3))  # du, dv, extra slope deg
    fh = (-P + u(2, 8), u(16, 26), u(8, 10.5), u(10, 13), u(8, 10))
    A["fib_head"] = fh
    A["fib"] = (fh[0], fh[1], fh[0] + u(-1, 7), u(6, 7.5), u(4.5, 5.5), u(5, 7))
    # patella (tracks around the trochlea)
    qa, qp = u(8, 10.5), u(10, 12.5)
    pu, pd = u(18, 22), u(21, 27)
    gp = u(2, 4)
    phi = math.radians(u(-45, -18) + u(0.6, 0.85) * flex)
    tc_x, tc_y = tro[0], tro[1]
    rad = Rt + gp + qp
    A["pat"] = dict(cx=tc_x + rad * math.cos(phi), cy=tc_y + rad * math.sin(phi),
                    ang=math.degrees(phi), qa=qa, qp=qp, pu=pu, pd=pd, c=u(19, 24),
                    taper=u(0.35, 0.6))
    # soft tissue
    A["soft"] = dict(thigh_post=u(35, 75), thigh_ant=u(15, 40), thigh_c=u(55, 75),
                     knee_c=u(48, 62), leg_post=u(30, 80), leg_ant=u(6, 14),
                     leg_c=u(45, 58), fat=u(4, 14), post_knee=u(20, 40), ant_knee=u(6, 14))
    A["hoffa"] = (Aa - u(6, 12), -u(6, 14), u(7, 11), u(10, 15), u(14, 22))
    A["popl"] = (x_pc - u(12, 25), u(-30, 5), u(8, 15), u(20, 35), u(15, 25))
    A["fabella"] = ((-Rm - u(1, 5), u(-12, 0), u(2.5, 4), u(3, 5)) if rng.random() < 0.15
                    else None)
    return A


def femur_inside(A, p, margin=0.0):
    x, y = p
    for key in ("med", "lat"):
        cx, cy, rx, ry, _ = A[key]
        if x > cx:
            rx = A[key + "_ant"]
        if ((x - cx) / (rx - margin)) ** 2 + ((y - cy) / (ry - margin)) ** 2 < 1:
            return True
    cx, cy, rx, ry, _ = A["tro"]
    return ((x - cx) / (rx - margin)) ** 2 + ((y - cy) / (ry - margin)) ** 2 < 1


def to_tibia(A, X, Y):
    """Femur-frame mm -> tibia-frame (U, V)."""
    c, s = math.cos(math.radians(A["flex"])), math.sin(math.radians(A["flex"]))
    U = c * X + s * Y + A["roll"]
    V = -s * X + c * Y - A["v_off"]
    return U, V


def from_tibia(A, U, V):
    c, s = math.cos(math.radians(A["flex"])), math.sin(math.radians(A["flex"]))
    u_, v_ = np.asarray(U) - A["roll"], np.asarray(V) + A["v_off"]
    return c * u_ - s * v_, s * u_ + c * v_


# ----------------------------------------------------------------------------- pose / layout
class Pose:
    """anatomy mm -> pixel: px = M @ x + t with M = Rot(alpha) diag(mirror, 1) / s."""

    def __init__(self, mirror, alpha, s, t=(0, 0)):
        self.M = rot(alpha) @ np.diag([mirror, 1.0]) / s
        self.Mi = np.linalg.inv(self.M)
        self.t = np.asarray(t, float)
        self.mirror, self.alpha, self.s = mirror, alpha, s

    def px(self, p):
        return np.asarray(p, float) @ self.M.T + self.t

    def grid(self, h, w):
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        dx, dy = xs - self.t[0], ys - self.t[1]
        Mi = self.Mi
        return (Mi[0, 0] * dx + Mi[0, 1] * dy).astype(np.float32), \
               (Mi[1, 0] * dx + Mi[1, 1] * dy).astype(np.float32)

    def img_angle(self, v):
        q = self.M @ np.asarray(v, float)
        return math.degrees(math.atan2(q[1], q[0]))


def inside(p, w, h, m):
    p = np.atleast_2d(p)
    return bool(np.all((p[:, 0] >= m) & (p[:, 0] <= w - 1 - m)
                       & (p[:, 1] >= m) & (p[:, 1] <= h - 1 - m)))


def layout(rng, A):
    u = rng.uniform
    for _attempt in range(400):
        long_px = int(u(850, 1600))
        aspect = u(0.72, 1.0)
        short_px = int(long_px * aspect)
        h, w = (long_px, short_px) if rng.random() < 0.7 else (short_px, long_px)
        lo_s = max(0.10, (100.0 if HARD else 125.0) / min(h, w))
        hi_s = min(0.20, 300.0 / max(h, w))
        if lo_s > hi_s:
            continue
        s = u(lo_s, hi_s)
        mirror = -1.0 if rng.random() < 0.5 else 1.0
        # align the femur, the tibia or their bisector with the image vertical, +- tilt
        ref = rng.choice([0.0, A["flex"], A["flex"] / 2])
        alpha = -mirror * ref + (u(-35, 35) if HARD else u(-20, 20))
        pose = Pose(mirror, alpha, s)
        anchor = pose.px([(0.0, -5.0)])[0]
        pose.t = np.array([u(0.28, 0.72) * w, u(0.28, 0.72) * h]) - anchor
        lms = pose.px([A["Pb"], (A["x_pc"], A["y_tmc"])])
        keys = [(A["x_pc"], A["y_tmc"] - (22 if HARD else 35)), (0, A["Rm"]),
                (A["tro"][0] + A["tro"][2], A["tro"][1]), (-A["Rm"], 0)]
        tib = from_tibia(A, np.array([0.0, -A["P"], A["Aa"]]), np.array([15.0, 5.0, 5.0]))
        keys += list(zip(*tib, strict=True))
        if inside(lms, w, h, 0.08 * min(w, h)) and inside(pose.px(keys), w, h, 0.015 * min(w, h)):
            return h, w, s, pose
    raise RuntimeError("no layout")


# ----------------------------------------------------------------------------- textures
def voronoi_walls(rng, h, w, cell_px, angle_deg, stretch):
    """Trabecular network: walls of a Voronoi tessellation of random seeds, drawn on an
    isotropic canvas and warped (rotated, stretched along ``angle_deg``) onto the image."""
    side = int(math.hypot(h, w) / min(1.0, 1 / stretch) + 8)
    side = min(side, 2600)
    n = int(side * side / (cell_px ** 2))
    seeds = np.ones((side, side), np.uint8)
    ys = rng.integers(0, side, n)
    xs = rng.integers(0, side, n)
    seeds[ys, xs] = 0
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5,
                                                labelType=cv2.DIST_LABEL_CCOMP)
    walls = np.zeros((side, side), np.float32)
    walls[:, 1:] += labels[:, 1:] != labels[:, :-1]
    walls[1:, :] += labels[1:, :] != labels[:-1, :]
    walls = np.clip(walls, 0, 1)
    # random wall thickness/intensity modulation; some walls missing
    mod = cv2.GaussianBlur(rng.random((side // 8 + 1, side // 8 + 1)).astype(np.float32),
                           (0, 0), 1.0)
    mod = cv2.resize(mod, (side, side), interpolation=cv2.INTER_LINEAR)
    walls *= (mod > 0.35).astype(np.float32) * 0.5 + 0.5 * mod
    walls = cv2.GaussianBlur(walls, (0, 0), max(0.8, cell_px / 6))
    # warp: image pixel -> canvas: centre, rotate by -angle, squeeze along the axis
    a = math.radians(angle_deg)
    R = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    S = np.diag([1.0 / stretch, 1.0])  # along the axis (canvas x) cells get longer
    Mm = S @ R
    t = np.array([side / 2, side / 2]) - Mm @ np.array([w / 2, h / 2])
    M = np.hstack([Mm, t[:, None]]).astype(np.float32)
    out = cv2.warpAffine(walls, M, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REFLECT)
    out = (out - out.mean()) / (out.std() + 1e-6)
    return out


def polyfill(shape, pts_px, blur_px=0.0):
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(np.asarray(pts_px) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    m = m.astype(np.float32)
    return cv2.GaussianBlur(m, (0, 0), blur_px) if blur_px > 0 else m


def polyline(shape, pts_px, width_px, blur_px):
    m = np.zeros(shape, np.float32)
    cv2.polylines(m, [np.round(np.asarray(pts_px) * 16).astype(np.int32)], False, 1.0,
                  max(1, int(round(width_px))), cv2.LINE_AA, 4)
    return cv2.GaussianBlur(m, (0, 0), max(blur_px, 0.5))


# ----------------------------------------------------------------------------- rendering
def render(rng, sid):
    u = rng.uniform
    A = build(rng)
    h, w, s, pose = layout(rng, A)
    shape = (h, w)
    X, Y = pose.grid(h, w)
    U, V = to_tibia(A, X, Y)
    U, V = U.astype(np.float32), V.astype(np.float32)

    # ---- femur
    notch = polyfill(shape, pose.px(A["notch"]), 0.5 / s)
    x_pc = A["x_pc"]
    t_sh, t_me, y_can = A["t_shaft"], A["t_meta"], A["y_canal"]
    shaft_w = lambda yy: 1 / (1 + np.exp((yy - y_can) / 6.0))  # 1 in the diaphysis  # noqa
    thick = lambda yy: t_me + (t_sh - t_me) * shaft_w(yy)  # noqa: E731
    tube_o, tube_in = chord_tube(X, Y, A["fem_knots"], A["fem_lo"], A["fem_hi"], A["fem_c"],
                                 y_end=A["tro"][1] + 4, cap=8)
    tube_i, _ = chord_tube(X, Y, A["fem_knots"], A["fem_lo"], A["fem_hi"], A["fem_c"],
                           shrink=thick, y_end=A["tro"][1] + 4, cap=8 - t_me)
    cx, cy, rx, ry, c = A["tro"]
    tro_o, tro_in = chord_ellipsoid(X, Y, cx, cy, rx, ry, c)
    tro_i, _ = chord_ellipsoid(X, Y, cx, cy, rx - t_me, ry - t_me, c - t_me)
    cond_o, cond_i, cond_in = 0, 0, np.zeros(shape, bool)
    cond_rims = []
    for key in ("med", "lat"):
        cx, cy, rx, ry, c = A[key]
        ra = A[key + "_ant"]
        o, ins = chord_ellipsoid(X, Y, cx, cy, rx, ry, c, rx_ant=ra)
        tc = t_me * u(0.9, 1.3)
        i, _ = chord_ellipsoid(X, Y, cx, cy, rx - tc, ry - tc, c - tc, rx_ant=ra - tc)
        cond_o, cond_i, cond_in = cond_o + o, cond_i + i, cond_in | ins
        cond_rims.append(o - i)
    keep = 1 - notch
    Lo_mt = np.maximum(tube_o, tro_o) * keep
    Li_mt = np.maximum(tube_i, tro_i) * keep
    fem_o = np.maximum(Lo_mt, cond_o)
    fem_i = np.where(Lo_mt >= cond_o, Li_mt, cond_i)
    fem_mask = ((tube_in | tro_in) & (notch < 0.5)) | cond_in
    fem_cort = np.clip(fem_o - fem_i, 0, None)
    wsh = shaft_w(Y)
    fem_marrow = fem_i * wsh
    fem_canc = fem_i * (1 - wsh)
    # Blumensaat roof: a tangential cortical plate across the notch width
    notch_w = u(16, 24)
    roof = polyline(shape, pose.px(A["blum"]), u(0.7, 1.3) / s, u(0.25, 0.5) / s)
    fem_cort += roof * notch_w * (u(0.1, 0.35) if HARD else u(0.35, 0.7)) * cond_in
    if A["physis"] is not None:
        y0, tilt = A["physis"]
        xx = np.linspace(-80, 80, 80)
        yy = y0 + xx * math.tan(math.radians(tilt)) + 1.5 * np.sin(xx / u(4, 8))
        ph = polyline(shape, pose.px(np.stack([xx, yy], 1)), 0.8 / s, 0.6 / s)
        fem_cort += ph * u(1.5, 4.0) * (fem_o > 0)

    # ---- tibia
    t0, t1 = A["tib_t"]
    tib_sh = lambda vv: 1 / (1 + np.exp((60 - vv) / 8.0))  # noqa: E731
    tthick = lambda vv: t0 + (t1 - t0) * tib_sh(vv)  # noqa: E731
    sl = math.tan(math.radians(A["slope"]))
    Vp = V + sl * U  # distance below the plateau line (approx.)
    tib_o, tib_in = chord_tube(U, V, A["tib_knots"], A["tib_lo"], A["tib_hi"], A["tib_c"])
    tib_i, _ = chord_tube(U, V, A["tib_knots"], A["tib_lo"], A["tib_hi"], A["tib_c"],
                          shrink=tthick)
    top = np.clip(Vp / 2.0, 0, 1)
    top_i = np.clip((Vp - t0) / 2.0, 0, 1)
    tib_o, tib_i = tib_o * np.sqrt(top), tib_i * np.sqrt(top_i)
    tib_in &= Vp > 0
    for (su, sv, srx, sry, sc_) in A["spines"]:
        o, ins = chord_ellipsoid(U, V, su, sv - su * sl, srx, sry, sc_)
        i, _ = chord_ellipsoid(U, V, su, sv - su * sl, srx - t0, sry - t0, sc_ - t0)
        tib_o, tib_i = np.maximum(tib_o, o), np.maximum(tib_i, i)
        tib_in |= ins
    du, dv, dsl = A["plateau2"]
    pl2 = np.linspace(-A["P"] + 2, A["Aa"] - 2, 40)
    pl2v = -math.tan(math.radians(A["slope"] + dsl)) * (pl2 - du) + dv
    p2 = polyline(shape, pose.px(np.stack(from_tibia(A, pl2, pl2v), 1)), 0.8 / s, 0.4 / s)
    tsh = tib_sh(V)
    tib_cort = np.clip(tib_o - tib_i, 0, None) + p2 * u(3, 7) * tib_in
    tib_marrow, tib_canc = tib_i * tsh, tib_i * (1 - tsh)

    # ---- fibula
    fu, fv, frx, fry, fc = A["fib_head"]
    fh_o, fh_in = chord_ellipsoid(U, V, fu, fv, frx, fry, fc, ang=u(-25, 10))
    fh_i, _ = chord_ellipsoid(U, V, fu, fv, frx - 1.0, fry - 1.0, fc - 1.0)
    _, _, fu2, fhw, fhw2, fcs = A["fib"]
    fk = np.array([-100, fv, fv + 40, 700])
    fmid = np.interp(np.array([-100, fv, fv + 40, 700]), [fv, 700], [fu, fu2])
    fs_o, fs_in = chord_tube(U, V, fk, fmid - [fhw, fhw, fhw2, fhw2], fmid + [fhw, fhw, fhw2, fhw2],
                             [fcs, fcs, fcs * 0.8, fcs * 0.8])
    fs_i, _ = chord_tube(U, V, fk, fmid - [fhw, fhw, fhw2, fhw2], fmid + [fhw, fhw, fhw2, fhw2],
                         [fcs, fcs, fcs * 0.8, fcs * 0.8], shrink=lambda vv: 1.8 + 0 * vv)
    fs_o, fs_i, fs_in = fs_o * (fv < V), fs_i * (fv < V), fs_in & (fv < V)
    fib_o, fib_i = np.maximum(fh_o, fs_o), np.maximum(fh_i, fs_i)
    fib_in = fh_in | fs_in
    fib_cort = np.clip(fib_o - fib_i, 0, None)

    # ---- patella
    P_ = A["pat"]
    a = math.radians(P_["ang"])
    dx, dy = X - P_["cx"], Y - P_["cy"]
    q = math.cos(a) * dx + math.sin(a) * dy          # anterior (radial)
    p = -math.sin(a) * dx + math.cos(a) * dy         # distal (tangential)
    ps = np.where(p < 0, P_["pu"], P_["pd"])
    qs = np.where(q > 0, P_["qa"], P_["qp"])
    qs = qs * (1 - P_["taper"] * np.clip(p / P_["pd"], 0, 1) ** 2)
    ridge = np.where(q < 0, 1 + 0.25 * np.exp(-(p / (0.4 * P_["pu"])) ** 2), 1.0)
    r2 = (p / ps) ** 2 + (q / (qs * ridge)) ** 2
    pat_o = 2 * P_["c"] * np.sqrt(np.clip(1 - r2, 0, None))
    tpat = u(1.0, 1.8)
    r2i = (p / (ps - tpat)) ** 2 + (q / np.maximum(qs * ridge - tpat, 0.5)) ** 2
    pat_i = 2 * (P_["c"] - tpat) * np.sqrt(np.clip(1 - r2i, 0, None))
    pat_in = r2 < 1
    pat_cort = np.clip(pat_o - pat_i, 0, None)

    # ---- soft tissue
    S = A["soft"]
    Rm = A["Rm"]
    front_knee = max(P_["cx"] + P_["qa"] + 4, A["tro"][0] + A["tro"][2]) + S["ant_knee"]
    sk = np.array([-700, -60, 0, 60])
    th_lo = np.array([x_pc - S["thigh_post"], x_pc - S["thigh_post"] * 0.9,
                      -Rm - S["post_knee"], -Rm - S["post_knee"]])
    th_hi = np.array([x_pc + A["fem_hi"][0] - x_pc + S["thigh_ant"], front_knee + 3,
                      front_knee, front_knee])
    th_c = np.array([S["thigh_c"], S["knee_c"] * 1.05, S["knee_c"], S["knee_c"]])
    thigh_o, thigh_in = chord_tube(X, Y, sk, th_lo, th_hi, th_c, y_end=25, cap=40)
    thigh_i, _ = chord_tube(X, Y, sk, th_lo, th_hi, th_c, shrink=lambda yy: S["fat"] + 0 * yy,
                            y_end=25, cap=40 - S["fat"])
    lk = np.array([-60, 0, 40, 120, 700])
    l_lo = np.array([-A["P"] - S["post_knee"], -A["P"] - S["post_knee"] * 1.1,
                     -A["P"] - S["leg_post"], -A["P"] - S["leg_post"] * 1.05,
                     A["sc"] - A["hw"] - S["leg_post"] * 0.7])
    l_hi = np.array([A["Aa"] + 25, A["Aa"] + S["leg_ant"] + 4, A["tib_hi"][4] + S["leg_ant"],
                     A["sc"] + A["hw"] + S["leg_ant"], A["sc"] + A["hw"] + S["leg_ant"]])
    l_c = np.array([S["knee_c"], S["knee_c"], S["leg_c"], S["leg_c"], S["leg_c"] * 0.9])
    leg_o, leg_in = chord_tube(U, V, lk, l_lo, l_hi, l_c)
    leg_i, _ = chord_tube(U, V, lk, l_lo, l_hi, l_c, shrink=lambda vv: S["fat"] + 0 * vv)
    leg_o, leg_i, leg_in = leg_o * (V > -60), leg_i * (V > -60), leg_in & (V > -60)
    soft_o = np.maximum(thigh_o, leg_o)
    soft_i = np.maximum(thigh_i, leg_i)
    soft_o = cv2.GaussianBlur(soft_o, (0, 0), 3 / s)  # round the joins
    soft_i = np.minimum(cv2.GaussianBlur(soft_i, (0, 0), 3 / s), soft_o)
    fat = soft_o - soft_i
    for (fx, fy, frx_, fry_, fc_), frame in ((A["hoffa"], "t"), (A["popl"], "f")):
        XX, YY = (U, V) if frame == "t" else (X, Y)
        o, _ = chord_ellipsoid(XX, YY, fx, fy, frx_, fry_, fc_)
        o = cv2.GaussianBlur(o, (0, 0), 2 / s)
        fat += np.minimum(o, soft_i)
    if A["fabella"] is not None:
        fx, fy, frx_, fry_ = A["fabella"]
        fo, _ = chord_ellipsoid(X, Y, fx, fy, frx_, fry_, 4.0)
        fi, _ = chord_ellipsoid(X, Y, fx, fy, frx_ - 0.8, fry_ - 0.8, 3.2)
    else:
        fo = fi = 0.0

    # ---- textures
    fem_ang = pose.img_angle((0, 1))
    tib_ang = pose.img_angle(rot(A["flex"]) @ np.array([0.0, 1.0]))
    cell = u(0.55, 1.0) / s
    tex_f = voronoi_walls(rng, h, w, cell, fem_ang, u(1.3, 2.2))
    tex_t = voronoi_walls(rng, h, w, cell * u(0.9, 1.2), tib_ang, u(1.3, 2.2))
    amp = u(0.06, 0.16)
    canc_f = fem_canc * (1 + amp * tex_f)
    canc_t = (tib_canc + pat_i) * (1 + amp * tex_t)

    # ---- path lengths per material (mm)
    cort = fem_cort + tib_cort + fib_cort + pat_cort + np.maximum(fo - fi, 0)
    canc = canc_f + canc_t + fib_i + fi
    marrow = fem_marrow + tib_marrow
    bone = fem_o + tib_o + fib_o + pat_o + fo
    soft = np.clip(soft_o - bone - fat, 0, None)
    fat = np.clip(fat, 0, None)
    # lead side marker
    lead = np.zeros(shape, np.float32)
    if rng.random() < 0.5:
        lms_px = pose.px([A["Pb"], (x_pc, A["y_tmc"])])
        corners = np.array([(0.08 * w, 0.08 * h), (0.92 * w, 0.08 * h), (0.08 * w, 0.92 * h),
                            (0.92 * w, 0.92 * h)])
        far = corners[np.argmax(np.min(np.linalg.norm(corners[:, None] - lms_px[None], axis=2), 1))]
        sc_ = 10 / s / 22
        canvas = np.zeros(shape, np.uint8)
        corner = (int(far[0] - 12 * sc_), int(far[1] + 12 * sc_))
        cv2.putText(canvas, "R" if rng.random() < 0.5 else "L", corner,
                    cv2.FONT_HERSHEY_DUPLEX, sc_, 255, max(2, int(2.5 * sc_)), cv2.LINE_AA)
        lead = canvas.astype(np.float32) / 255 * 1.0

    # ---- two-energy Beer-Lambert
    spectrum = u(0.35, 0.65)  # weight of the low-energy bin (kVp)
    I = 0.0
    for e, wgt in ((0, spectrum), (1, 1 - spectrum)):
        mu_l = (MU["cortical"][e] * cort + MU["cancellous"][e] * canc + MU["marrow"][e] * marrow
                + MU["soft"][e] * soft + MU["fat"][e] * fat + MU["lead"][e] * lead)
        I = I + wgt * np.exp(-mu_l)
    I = I.astype(np.float32)
    # heel effect along a random image direction, collimation
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    th = u(0, 2 * math.pi)
    heel = 1 + u(0.03, 0.15) * ((xs / w - 0.5) * math.cos(th) + (ys / h - 0.5) * math.sin(th))
    field = np.ones(shape, np.float32)
    collimated = rng.random() < 0.6
    if collimated:
        lms_px = pose.px([A["Pb"], (x_pc, A["y_tmc"]), (x_pc, A["y_tmc"] - 35)])
        lo_b, hi_b = lms_px.min(0) - 0.12 * min(h, w), lms_px.max(0) + 0.12 * min(h, w)
        x0 = min(lo_b[0], u(0.0, 0.2) * w)
        x1 = max(hi_b[0], w * (1 - u(0.0, 0.2)))
        y0 = min(lo_b[1], u(0.0, 0.15) * h)
        y1 = max(hi_b[1], h * (1 - u(0.0, 0.15)))
        box = cv2.boxPoints((((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0, y1 - y0), u(-4, 4)))
        field = polyfill(shape, box, u(2, 6))
    prim = I * heel * (u(0.01, 0.04) + (1 - 0.02) * field)
    spr = u(0.5, 1.5) if HARD else u(0.15, 0.9)
    scatter = spr * cv2.GaussianBlur(prim, (0, 0), u(15, 35) / s) * (0.3 + 0.7 * field)
    sig = prim + scatter
    n0 = 10 ** (u(2.0, 3.2) if HARD else u(2.6, 4.0))  # quanta per pixel in the open field
    noise = rng.standard_normal(shape).astype(np.float32) * np.sqrt(np.clip(sig, 1e-5, None) / n0)
    det = cv2.GaussianBlur(sig + noise, (0, 0), u(0.5, 1.4))
    det += rng.standard_normal(shape).astype(np.float32) * u(0.0005, 0.003)
    raw = -np.log(np.clip(det, 1e-4, None))

    # ---- display processing: multi-scale contrast equalisation + film-like LUT
    sel = raw[(field > 0.5) & (soft_o > 20)]
    if sel.size < 1000:
        sel = raw[field > 0.5]
    lo_v, hi_v = np.percentile(sel, u(0.2, 2.0)), np.percentile(sel, u(99.5, 99.95))
    v = (raw - lo_v) / (hi_v - lo_v)
    levels = []
    cur = v
    sigma = 1.0
    for _k in range(7):
        nxt = cv2.GaussianBlur(cur, (0, 0), sigma)
        levels.append(cur - nxt)
        cur = nxt
        sigma *= 2
    p_exp = u(0.55, 0.85)
    rc = u(0.55, 0.9)
    out = cur * rc + (1 - rc) * float(np.median(cur[field > 0.5]))
    for k, band in enumerate(levels):
        gain = [u(0.6, 1.0), u(1.0, 1.6), u(1.3, 2.4), u(1.3, 2.4), u(1.1, 2.0), u(0.9, 1.6),
                u(0.7, 1.3)][k]
        sd = float(band.std()) + 1e-6
        out = out + gain * sd * np.sign(band) * np.abs(band / sd) ** p_exp
    sel2 = out[field > 0.5]
    lo2, hi2 = np.percentile(sel2, 0.5), np.percentile(sel2, 99.97)
    z = (out - lo2) / (hi2 - lo2)
    if rng.random() < 0.7:  # H&D-like sigmoid with toe and a mild shoulder (bone not burnt out)
        c0 = u(0.35, 0.55)
        g = u(3.0, 2.6 / (1 - c0))
        z = 1 / (1 + np.exp(-g * (z - c0)))
        z0, z1 = 1 / (1 + math.exp(g * c0)), 1 / (1 + math.exp(-g * (1 - c0)))
        z = (z - z0) / (z1 - z0)
    else:
        z = np.clip(z, 0, 1) ** u(0.7, 1.4)
    z = np.clip(z, 0, 1)
    if collimated:
        shutter = 0.0 if rng.random() < 0.6 else 1.0
        z = z * field + shutter * (1 - field)
    lo_o, hi_o = u(0.0, 0.05), u(0.85, 1.0)
    z = lo_o + (hi_o - lo_o) * z
    if rng.random() < 0.2:
        img = np.round(z * 255).astype(np.uint8)
    else:
        img = np.round(z * 65535).astype(np.uint16)

    masks = {"femur": fem_mask, "patella": pat_in, "tibia": tib_in, "fibula": fib_in}
    fin = field > 0.5
    masks = {k: (m & fin).astype(np.uint8) for k, m in masks.items()}

    # ---- annotation
    p_blum = pose.px(A["Pb"][None])[0]
    p_tmc = pose.px(np.array([[x_pc, A["y_tmc"]]]))[0]
    top = 6.0
    def exposed(d: float) -> bool:
        q = pose.px([(x_pc, A["y_tmc"] - d)])
        return inside(q, w, h, 0.02 * min(w, h)) and \
            field[tuple(np.round(q[0][::-1]).astype(int))] > 0.5

    while top < 200 and exposed(top + 1):
        top += 1
    ds = np.linspace(top, u(3, 8), int(rng.integers(2, 6)))
    cortex = pose.px([(x_pc, A["y_tmc"] - d_) for d_ in ds])
    forward = pose.px([(1, 0)])[0][0] > pose.px([(0, 0)])[0][0]
    facing = "right" if pose.img_angle((1, 0)) is not None and forward else "left"
    meta = {"generator": "benchmarks/raycast_phantoms.py (ray-cast family)",
            "flexion_deg": round(A["flex"], 2),
            "anterior_towards": facing, "mirrored": bool(pose.mirror < 0),
            "inplane_rotation_deg": round(float(pose.alpha), 2),
            "blumensaat_angle_to_shaft_deg": round(A["beta"], 2),
            "condyle_depth_mm": round(A["depth"], 2), "medial_condyle_radius_mm": round(A["Rm"], 2),
            "posterior_condyle_offset_mm": round(float(A["x_pc"] + A["Rm"]), 2),
            "detector_spacing_mm": round(s * A.get("mag", 1.0), 4),
            "lat_condyle_offset_mm": [round(A["lat"][0], 2), round(A["lat"][1], 2)],
            "bits": 8 if img.dtype == np.uint8 else 16, "collimated": bool(collimated)}
    ann = {"schema_version": 1, "id": sid, "image": f"{sid}.png",
           "pixel_spacing_mm": [float(s), float(s)], "side": None,
           "raters": [{"rater": "r1",
                       "landmarks": {"p_blum": [float(p_blum[0]), float(p_blum[1])],
                                     "p_tmc": [float(p_tmc[0]), float(p_tmc[1])]},
                       "cortex_line": [[float(a_), float(b_)] for a_, b_ in cortex]}],
           "schoettle_point": None, "meta": meta}
    return img, masks, ann


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=303)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--hard", action="store_true", help="harder variant (see HARD)")
    args = ap.parse_args(argv)
    global HARD
    HARD = args.hard
    for sub in ("images", "masks", "annotations"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(args.start, args.start + args.n):
        sid = f"rc{'h' if HARD else ''}{args.seed}_{i:03d}"
        rng = np.random.default_rng([args.seed, i, 77])
        img, masks, ann = render(rng, sid)
        mag = rng.uniform(1.05, 1.25)
        ann["meta"]["magnification"] = round(float(mag), 3)
        ann["meta"]["detector_spacing_mm"] = round(float(ann["pixel_spacing_mm"][0] * mag), 4)
        cv2.imwrite(str(args.out / "images" / f"{sid}.png"), img)
        for name, m in masks.items():
            cv2.imwrite(str(args.out / "masks" / f"{sid}_{name}.png"), m * 255)
        (args.out / "annotations" / f"{sid}.json").write_text(json.dumps(ann, indent=2) + "\n")
        meta = ann["meta"]
        print(f"{sid}: {img.shape[1]}x{img.shape[0]} {img.dtype} "
              f"s={ann['pixel_spacing_mm'][0]:.3f} flex={meta['flexion_deg']:.0f} "
              f"rot={meta['inplane_rotation_deg']:.0f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
