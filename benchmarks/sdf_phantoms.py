"""A fourth phantom family: lateral knee radiographs from signed-distance bone outlines and a
film/CR chain.

Written by a helper who never read the project's phantom generators (``datamodules/phantoms``,
``benchmarks/independent_phantoms.py``, ``benchmarks/raycast_phantoms.py``); only the dataset
format, the annotation writer and the Schoettle construction of the repository are used. Unlike
the built-in phantoms its condyles bulge 20-30 mm behind the posterior cortex line, as real
knees do (README "Known anatomy gap").

Anatomy (all in millimetres, built in bone-attached frames, x = anterior, y = distal):
  femur frame  origin = p_tmc on the posterior shaft cortex line x = 0.  The straight posterior
               cortex (x = 0) runs down to the point where it meets the posterior condyle circle
               (centre C behind the line, radius R): that corner IS p_tmc.  The condyle contour
               continues as a circle (flexion facet), a flatter G1-tangent arc (extension facet,
               radius R2), a trochlear circle (radius Rt, internally tangent) and a concave
               supratrochlear curve back to the anterior cortex x = W.  A second ("lateral") condyle
               outline is the same construction with an offset centre (imperfect lateral).
               Blumensaat's line starts at p_blum and runs anterior-distal at 33-42 deg to the
               shaft axis until it is 5-9 mm from the distal outline.
  tibia frame  origin = plateau point touching the distal femoral condyle in extension (joint gap
               3.5-6 mm along the sloped plateau's normal); plateau with posterior slope, tibial
               spines, tubercle; fibula head behind/below.  Flexion rotates the tibia rigidly
               about the posterior condyle circle's centre C (the plateau never enters it).
  patella      sits in the trochlear groove at the height given by the patellar tendon length
               (Insall-Salvati ratio 0.8-1.25) from its apex to the tibial tubercle.

Rendering: every outline becomes a binary raster, then a signed distance field (scipy's exact
Euclidean transform). Cortical shell brightness and cancellous fill are functions of the inside
distance; trabecular texture is multi-octave value noise attached to each bone frame (ridged,
anisotropic). Soft tissue from the SDF of a thigh/knee/calf union (saturating thickness, skin
line, subcutaneous fat, fat pads, tendons). Line integral -> transmitted exposure (heel effect,
scatter, focal blur) -> either film (H&D sigmoid, base fog, grain, optional scanner
streaks/dust/scratches) or CR (log, quantum noise, window, unsharp mask, tone curve).
Distractors: lead side marker, collimator edge, ruler strip, 25 mm steel calibration sphere,
fabella.

Run (writes DIR/images, DIR/masks, DIR/annotations; deterministic for a seed)::

    .venv/bin/python benchmarks/sdf_phantoms.py --out DIR --n 60 --seed 5
    .venv/bin/python -m datamodules.validate DIR
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from scipy.ndimage import distance_transform_edt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from datamodules.annotations import annotation_dict, write_annotation  # noqa: E402
from datamodules.sample import BONES, RaterAnnotation  # noqa: E402
from geometry.lines import Line  # noqa: E402
from geometry.schoettle import schoettle_point  # noqa: E402

cv2.setNumThreads(1)
D2R = math.pi / 180.0


# ----------------------------------------------------------------------------- small geometry
def rot(a: float) -> np.ndarray:
    """2x2 rotation by a radians (x right/anterior, y down/distal)."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s], [s, c]])


def arc(c, r, a0, a1, step_deg=1.5):
    """Points on a circle from angle a0 to a1 (degrees, either direction), inclusive."""
    n = max(2, int(abs(a1 - a0) / step_deg) + 1)
    a = np.linspace(a0, a1, n) * D2R
    return np.stack([c[0] + r * np.cos(a), c[1] + r * np.sin(a)], 1)


def catmull_rom(ctrl, n=12):
    """Centripetal-free uniform Catmull-Rom through ctrl[1:-1] (ctrl[0], ctrl[-1] set tangents)."""
    ctrl = np.asarray(ctrl, float)
    out = []
    for i in range(1, len(ctrl) - 2):
        p0, p1, p2, p3 = ctrl[i - 1], ctrl[i], ctrl[i + 1], ctrl[i + 2]
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    out.append(ctrl[-2][None])
    return np.concatenate(out, 0)


def chaikin_closed(p, it=3):
    p = np.asarray(p, float)
    for _ in range(it):
        q = np.roll(p, -1, 0)
        p = np.stack([0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q], 1).reshape(-1, 2)
    return p


def poly_sdist(poly, pt):
    """Signed distance (mm, + inside) of a point to a closed polygon."""
    c = np.asarray(poly, np.float32).reshape(-1, 1, 2)
    return cv2.pointPolygonTest(c, (float(pt[0]), float(pt[1])), True)


def smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


# ----------------------------------------------------------------------------- anatomy
def femur_outline(W, C, R, R2, Rt, alpha_t, J_drop, a_top_deg=10.0, y_top=-420.0):
    """Closed femur outline in the femur frame and its key points.

    Posterior cortex x=0 from y_top down to its intersection with circle (C, R) -> flexion arc to
    115 deg -> extension arc (C2, R2) to alpha_t -> trochlear arc (Tc, Rt) -> supratrochlear curve
    -> anterior cortex x=W.  Returns dict with 'poly' and geometry.
    """
    cx, cy = C
    y0 = cy - math.sqrt(R * R - cx * cx)           # proximal intersection with x=0
    th0 = math.degrees(math.atan2(y0 - cy, 0 - cx))  # in (-180, 0)
    d115 = np.array([math.cos(115 * D2R), math.sin(115 * D2R)])
    P = np.array(C) + R * d115
    C2 = P - R2 * d115
    dt = np.array([math.cos(alpha_t * D2R), math.sin(alpha_t * D2R)])
    Tc = C2 + (R2 - Rt) * dt
    A = Tc[0] + Rt
    a_top = -a_top_deg
    post = arc(C, R, th0, 115 - 360)
    ext = arc(C2, R2, 115, alpha_t, 1.0)
    tro = arc(Tc, Rt, alpha_t, a_top)
    end = tro[-1]
    J = np.array([W, end[1] - J_drop])
    m1 = np.array([end[0] - 0.35 * (end[0] - W), end[1] - 0.4 * J_drop])
    m2 = np.array([W + 0.2 * (end[0] - W), end[1] - 0.75 * J_drop])
    sup = catmull_rom([tro[-3], end, m1, m2, J, J + [0, -10]], 14)
    poly = np.concatenate([[[0.0, y_top]], [[0.0, y0]], post[1:], ext[1:], tro[1:], sup[1:],
                           [[W, y_top]]], 0)
    return dict(poly=poly, p_tmc=np.array([0.0, y0]), C=np.array(C, float), R=R, C2=C2, R2=R2,
                Tc=Tc, Rt=Rt, A=A, a_top=a_top, J=J, tro_end=end, P=P, bottom=C2 + [0, R2])


def tibia_outline(g):
    s, pp, pa, Wt, xs = g["slope"], g["pp"], g["pa"], g["Wt"], g["xs"]
    ty = lambda x: -math.tan(s) * x  # noqa: E731
    Pp = np.array([-pp, ty(-pp)])
    Pa = np.array([pa, ty(pa)])
    post = catmull_rom([[xs - 0.4 * Wt, 460], [xs - 0.4 * Wt, 400], [xs - 0.43 * Wt, 200],
                        [xs - Wt / 2, 80], [xs - Wt / 2 - 1, Pp[1] + 42], [-pp + 4, Pp[1] + 25],
                        [-pp - 0.6, Pp[1] + 12], [-pp - 0.9, Pp[1] + 5], Pp,
                        Pp + [4, -4 * math.tan(s)]], 10)
    # plateau from posterior to anterior, with spines
    xp = np.linspace(-pp, pa, 120)
    yp = np.array([ty(x) for x in xp])
    for xc, h, wdt in g["spines"]:
        yp -= h * np.exp(-0.5 * ((xp - xc) / wdt) ** 2)
    yp += g["concav"] * np.sin(np.clip((xp + pp) / (pp + 6), 0, 1) * math.pi)  # medial concavity
    plat = np.stack([xp, yp], 1)
    tub = g["tub"]
    ant = catmull_rom([Pa + [-3, 3 * math.tan(s)], Pa, [pa + 0.8, Pa[1] + 2.5],
                       [pa + 0.2, Pa[1] + 9], [pa - 1.2, Pa[1] + 18], [pa - 0.8, Pa[1] + 26],
                       [pa + tub, Pa[1] + 33],
                       [pa - 1.0, Pa[1] + 45], [xs + Wt / 2 + 1, Pa[1] + 64], [xs + Wt / 2, 100],
                       [xs + 0.43 * Wt, 200], [xs + 0.4 * Wt, 400], [xs + 0.4 * Wt, 460]], 10)
    poly = chaikin_closed(np.concatenate([post, plat[1:-1], ant], 0), 3)
    return dict(poly=poly, Pp=Pp, Pa=Pa, tubercle=np.array([pa + tub, Pa[1] + 33]), plat=plat,
                insertion=np.array([pa - 1.0, Pa[1] + g["ins"]]))


def fibula_outline(g, tib):
    Pp = tib["Pp"]
    hx, hy = -g["pp"] + g["fib_dx"], Pp[1] + g["fib_dy"]
    wf, xs, Wt = g["fib_w"], g["xs"], g["Wt"]
    sx = xs - 0.3 * Wt  # shaft centre far down
    pts = [[hx - 6, hy - 13], [hx - 11.5, hy - 5], [hx - 11, hy + 5], [hx - 6.5, hy + 17],
           [sx - wf / 2 - 1, 150], [sx - wf / 2, 300], [sx - wf / 2, 460], [sx + wf / 2, 460],
           [sx + wf / 2, 300], [sx + wf / 2 + 0.5, 150], [hx + 5, hy + 18], [hx + 10.5, hy + 6],
           [hx + 9, hy - 5], [hx + 2, hy - 9.5]]
    return dict(poly=chaikin_closed(pts, 3), head=np.array([hx, hy]))


def patella_outline(T, L):
    pts = [(0.05, -0.5), (0.35, -0.42), (0.5, -0.15), (0.48, 0.12), (0.33, 0.36), (0.08, 0.5),
           (-0.12, 0.38), (-0.38, 0.22), (-0.5, 0.0), (-0.45, -0.25), (-0.28, -0.45)]
    p = np.array([[u * T, v * L] for u, v in pts])
    return chaikin_closed(p, 3)


# ----------------------------------------------------------------------------- noise
def value_noise(h, w, rng, cell):
    gh, gw = max(2, int(h / cell) + 3), max(2, int(w / cell) + 3)
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    big = cv2.resize(g, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    oy, ox = rng.integers(0, int(cell) + 1, 2)
    return big[oy:oy + h, ox:ox + w]


def fractal(h, w, rng, cell0, octaves=5, persist=0.55, ridged=False):
    out = np.zeros((h, w), np.float32)
    amp, cell, tot = 1.0, float(cell0), 0.0
    for _ in range(octaves):
        if cell < 1.2:
            break
        n = value_noise(h, w, rng, cell)
        if ridged:
            n = 1.0 - 2.0 * np.abs(n) / 1.2
        out += amp * n
        tot += amp
        amp *= persist
        cell /= 2.0
    out /= tot
    return (out - out.mean()) / (out.std() + 1e-6)


def bone_texture(rng, ext_x, ext_y, res=0.35):
    """Texture grid in a bone frame: trabecular (ridged, stretched along y) + blobs."""
    h, w = int((ext_y[1] - ext_y[0]) / res), int((ext_x[1] - ext_x[0]) / res)
    stretch = rng.uniform(1.3, 2.2)
    hs = int(h / stretch) + 2
    ridge = fractal(hs, w, rng, rng.uniform(1.5, 3.0) / res, 3, 0.6, ridged=True)
    ridge = cv2.resize(ridge, (w, h), interpolation=cv2.INTER_LINEAR)
    blobs = fractal(h, w, rng, rng.uniform(6, 12) / res, 3, 0.5)
    t = 0.75 * ridge + 0.25 * blobs
    return (t / (t.std() + 1e-6)).astype(np.float32), ext_x[0], ext_y[0], res


def sample_tex(tex, fx, fy):
    t, x0, y0, res = tex
    mx = ((fx - x0) / res).astype(np.float32)
    my = ((fy - y0) / res).astype(np.float32)
    return cv2.remap(t, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


# ----------------------------------------------------------------------------- raster helpers
class Canvas:
    def __init__(self, h, w, sp):
        self.h, self.w, self.sp = h, w, sp
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        self.u, self.v = xs * sp, ys * sp  # mm, pixel centres at integers

    def mask(self, poly_px):
        m = np.zeros((self.h, self.w), np.uint8)
        pts = np.round(np.asarray(poly_px) * 16).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(m, [pts], 1, lineType=cv2.LINE_8, shift=4)
        return m

    def inside_dist(self, m):
        """Inside distance in mm (0 outside), exact Euclidean (scipy). OpenCV 5.1's precise
        transform was tried first: its float output changed in the last bits with the output
        buffer's address alignment, so one seed gave 16-bit images differing by 1 in a few pixels
        from run to run."""
        return (distance_transform_edt(m) * self.sp).astype(np.float32)

    def frame(self, M, t):
        """Frame coordinates of every pixel for world = M @ p + t (world in mm)."""
        Mi = np.linalg.inv(M)
        du, dv = self.u - t[0], self.v - t[1]
        return (Mi[0, 0] * du + Mi[0, 1] * dv).astype(np.float32), \
               (Mi[1, 0] * du + Mi[1, 1] * dv).astype(np.float32)


def line_glow(cv, a, b, width_mm, pts=None):
    """exp(-d^2/2w^2) of the distance to segment a-b (or polyline pts), world mm; computed in the
    polyline's bounding box only."""
    if pts is None:
        pts = np.array([a, b])
    pts = np.asarray(pts, float)
    out = np.zeros((cv.h, cv.w), np.float32)
    m = 4 * width_mm
    c0 = int(max(0, math.floor((pts[:, 0].min() - m) / cv.sp)))
    c1 = int(min(cv.w, math.ceil((pts[:, 0].max() + m) / cv.sp) + 1))
    r0 = int(max(0, math.floor((pts[:, 1].min() - m) / cv.sp)))
    r1 = int(min(cv.h, math.ceil((pts[:, 1].max() + m) / cv.sp) + 1))
    if c1 <= c0 or r1 <= r0:
        return out
    U, V = cv.u[r0:r1, c0:c1], cv.v[r0:r1, c0:c1]
    d2 = np.full(U.shape, 1e9, np.float32)
    for p, q in zip(pts[:-1], pts[1:], strict=True):
        pq = q - p
        L2 = float(pq @ pq) + 1e-12
        t = np.clip(((U - p[0]) * pq[0] + (V - p[1]) * pq[1]) / L2, 0, 1)
        dx = U - (p[0] + t * pq[0])
        dy = V - (p[1] + t * pq[1])
        d2 = np.minimum(d2, dx * dx + dy * dy)
    out[r0:r1, c0:c1] = np.exp(-0.5 * d2 / (width_mm ** 2))
    return out


def soft_mask(cv, poly_world, sigma_mm):
    m = cv.mask(poly_world / cv.sp).astype(np.float32)
    s = max(0.5, sigma_mm / cv.sp)
    return cv2.GaussianBlur(m, (0, 0), s)


# ----------------------------------------------------------------------------- one image
def sample_geometry(rng):
    for _ in range(200):
        W = rng.uniform(25, 32)
        R = rng.uniform(18.5, 24.5)
        pco = rng.uniform(max(20.0, R + 1.5), 30.0)
        cx = R - pco
        cy = math.sqrt(R * R - cx * cx)
        depth = rng.uniform(55, 70)
        Rt = rng.uniform(16, 22)
        alpha_t = rng.uniform(35, 55)
        ca = math.cos(alpha_t * D2R)
        c115 = math.cos(115 * D2R)
        A_target = cx - R + depth
        # A = cx + R c115 - R2 c115 + (R2-Rt) ca + Rt
        R2 = (A_target - cx - R * c115 + Rt * ca - Rt) / (-c115 + ca)
        if not (1.35 * R <= R2 <= 3.2 * R):
            continue
        if not (2.0 <= A_target - W <= 12.0):
            continue
        return dict(W=W, R=R, pco=pco, C=(cx, cy), depth=depth, Rt=Rt, alpha_t=alpha_t, R2=R2)
    raise RuntimeError("no femur geometry")


def build_case(rng):
    g = sample_geometry(rng)
    J_drop = rng.uniform(30, 55)
    a_top = rng.uniform(3, 18)
    fa = femur_outline(g["W"], g["C"], g["R"], g["R2"], g["Rt"], g["alpha_t"], J_drop, a_top)
    # second (lateral) condyle: offset centre, slightly smaller radius
    for _ in range(50):
        mag = rng.uniform(0, 6) if rng.random() < 0.85 else 0.0
        ang = rng.uniform(0, 2 * math.pi)
        off = mag * np.array([math.cos(ang), math.sin(ang)])
        Rl = g["R"] - rng.uniform(0, 1.5)
        cxl = g["C"][0] + off[0]
        if -(Rl - 3) <= cxl <= -1.5:
            break
    else:
        off, Rl = np.zeros(2), g["R"]
    cyl = g["C"][1] + off[1]
    fb = femur_outline(g["W"], (cxl, cyl), Rl, g["R2"] - rng.uniform(0, 3), g["Rt"],
                       g["alpha_t"], J_drop + off[1], a_top)
    # Blumensaat
    xb, yb = rng.uniform(1.0, 6.0), rng.uniform(3.5, 11.0)
    p_blum = np.array([xb, yb])
    ab = rng.uniform(33, 42) * D2R
    bdir = np.array([math.sin(ab), math.cos(ab)])
    d_end = rng.uniform(5, 9)
    t = 12.0
    while t < 42 and poly_sdist(fa["poly"], p_blum + t * bdir) > d_end:
        t += 0.25
    E = p_blum + t * bdir
    sag = rng.uniform(-0.5, 1.5)
    nrm = np.array([-bdir[1], bdir[0]])  # posterior-distal side for this frame
    tt = np.linspace(0, 1, 20)[:, None]
    blum = p_blum + tt * (E - p_blum) + (4 * tt * (1 - tt)) * sag * nrm
    # tibia
    tg = dict(slope=rng.uniform(3, 12) * D2R, pp=rng.uniform(19, 25), pa=rng.uniform(22, 28),
              Wt=rng.uniform(25, 31), xs=rng.uniform(-5, 1), tub=rng.uniform(0.5, 4.0),
              concav=rng.uniform(-0.8, 0.4), fib_dx=rng.uniform(2, 7), fib_dy=rng.uniform(19, 27),
              fib_w=rng.uniform(10, 14), ins=rng.uniform(18, 26))
    sx1 = rng.uniform(-5, 0)
    tg["spines"] = [(sx1, rng.uniform(2.5, 5.5), rng.uniform(2.5, 3.8)),
                    (sx1 + rng.uniform(3, 6), rng.uniform(2, 5), rng.uniform(2.5, 3.8))]
    tib = tibia_outline(tg)
    fib = fibula_outline(tg, tib)
    flex = (rng.uniform(0, 25) if rng.random() < 0.6 else rng.uniform(0, 60)) * D2R
    gap = rng.uniform(3.5, 6.0)
    # extension pose: the sloped plateau touches the distal condyle (joint gap along its normal);
    # flexion rotates the tibia rigidly about the flexion-facet centre C (posterior circle)
    u0 = np.array([math.tan(tg["slope"]), 1.0])
    u0 /= np.linalg.norm(u0)
    poly = fa["poly"]
    sel = poly[:, 1] > fa["p_tmc"][1] + 5
    sup = poly[sel][np.argmax(poly[sel] @ u0)]
    T0 = sup + gap * u0
    Rtf = rot(flex)                       # tibia frame -> femur frame rotation
    Tt = fa["C"] + Rtf @ (T0 - fa["C"])   # femur-frame position of the tibia origin
    # patella: contact angle on the trochlear circle chosen from the tendon length
    Tp, Lp = rng.uniform(20, 25), rng.uniform(35, 45)
    isr = rng.uniform(0.8, 1.25)
    pf_gap = rng.uniform(1.5, 4.0)
    tub_f = Rtf @ tib["insertion"] + Tt
    best = None
    fdeg = flex / D2R
    # patellar sagittal tilt follows knee flexion (lower pole rotates posteriorly, ~0.65x)
    tilt = (0.65 * fdeg - rng.uniform(0, 10) + rng.normal(0, 3)) * D2R
    for al in np.arange(-40 + 0.4 * fdeg, 0.75 * fdeg + 1e-6, 1.0):
        a = al * D2R
        ud = np.array([math.cos(a), math.sin(a)])
        vd = np.array([-math.sin(tilt), math.cos(tilt)])
        udp = np.array([math.cos(tilt), math.sin(tilt)])
        Pc = fa["Tc"] + (fa["Rt"] + pf_gap + 0.5 * Tp) * ud
        apex = Pc + 0.08 * Tp * udp + 0.5 * Lp * vd
        err = abs(np.linalg.norm(apex - tub_f) - isr * Lp)
        if best is None or err < best[0]:
            best = (err, a, Pc, tilt)
    _, pa_ang, Pc, tilt = best
    Mp = rot(tilt)
    pat_local = patella_outline(Tp, Lp)
    pat = pat_local @ Mp.T + Pc
    # push the patella out of the femur (keep a patellofemoral joint space)
    ud = np.array([math.cos(pa_ang), math.sin(pa_ang)])
    for _ in range(12):
        pen = max(poly_sdist(poly, p) for p in pat[::2])
        if abs(pen + pf_gap) < 0.2:
            break
        Pc = Pc + ud * (pen + pf_gap)
        pat = pat_local @ Mp.T + Pc
    return dict(g=g, fa=fa, fb=fb, off=off, p_blum=p_blum, E=E, blum=blum, tg=tg, tib=tib,
                fib=fib, flex=flex, gap=gap, Rtf=Rtf, Tt=Tt, Tp=Tp, Lp=Lp, Pc=Pc, Mp=Mp,
                pat=pat, pat_local=pat_local, tub_f=tub_f, isr=isr, pat_ang=pa_ang)


def render(rng, case, sid):
    g, fa, fb = case["g"], case["fa"], case["fb"]
    # ---------------- image frame
    sp = float(rng.uniform(0.1, 0.25))
    for _ in range(100):
        fov_lo, fov_hi = max(145.0, 600 * sp), min(270.0, 1600 * sp)
        if fov_lo > fov_hi:
            sp = float(rng.uniform(0.1, 0.25))
            continue
        fov = rng.uniform(fov_lo, fov_hi)
        aspect = rng.uniform(0.78, 1.28)
        H = int(np.clip(round(fov / sp), 600, 1600))
        Wd = int(np.clip(round(fov * aspect / sp), 600, 1600))
        theta = rng.uniform(-30, 30) * D2R
        mirror = -1.0 if rng.random() < 0.5 else 1.0
        Mf = rot(theta) @ np.diag([mirror, 1.0])
        off_frac = (rng.uniform(-0.18, 0.18, 2) if rng.random() < 0.4
                    else rng.uniform(-0.05, 0.05, 2))
        K = np.array([5.0, 20.0])  # femur-frame anchor near the condyles
        centre = np.array([Wd * sp / 2, H * sp / 2]) * (1 + off_frac)
        t = centre - Mf @ K
        # bind this placement's frame now (the lambda is also used after the loop)
        to_px = lambda p, Mf=Mf, t=t, sp=sp: (np.asarray(p) @ Mf.T + t) / sp  # noqa: E731
        ok = True
        for p in (case["p_blum"], fa["p_tmc"]):
            q = to_px(p)
            if not (15 / sp <= q[0] <= Wd - 1 - 15 / sp and 15 / sp <= q[1] <= H - 1 - 15 / sp):
                ok = False
        # visible posterior cortex above p_tmc
        ys = np.arange(-2.0, -400, -0.5)
        q = to_px(np.stack([np.zeros_like(ys), ys], 1))
        inside = (q[:, 0] >= 1) & (q[:, 0] <= Wd - 2) & (q[:, 1] >= 1) & (q[:, 1] <= H - 2)
        first_out = np.argmin(inside) if not inside.all() else len(ys)
        vis = -ys[max(first_out - 1, 0)]
        if vis < 42:
            ok = False
        # patella and tibial plateau mostly inside
        for p in (case["Pc"], case["Tt"]):
            qq = to_px(p)
            if not (0 <= qq[0] < Wd and 0 <= qq[1] < H):
                ok = False
        if ok:
            break
    else:
        raise RuntimeError("no placement")
    cv = Canvas(H, Wd, sp)
    Mt = Mf @ case["Rtf"]
    tt = Mf @ case["Tt"] + t
    world_f = lambda p: np.asarray(p) @ Mf.T + t  # noqa: E731
    world_t = lambda p: np.asarray(p) @ Mt.T + tt  # noqa: E731
    ant_dir = Mf @ np.array([1.0, 0.0])

    # ---------------- masks and SDFs
    polys = dict(femA=world_f(fa["poly"]), femB=world_f(fb["poly"]),
                 tibia=world_t(case["tib"]["poly"]), fibula=world_t(case["fib"]["poly"]),
                 patella=world_f(case["pat"]))
    m = {k: cv.mask(v / sp) for k, v in polys.items()}
    masks = dict(femur=np.maximum(m["femA"], m["femB"]), patella=m["patella"], tibia=m["tibia"],
                 fibula=m["fibula"])
    dist = {k: cv.inside_dist(v) for k, v in m.items()}
    fxf, fyf = cv.frame(Mf, t)
    txf, tyf = cv.frame(Mt, tt)

    # ---------------- bones
    Ac = rng.uniform(0.55, 0.95)     # cortical shell strength
    As = rng.uniform(0.35, 0.7)      # cancellous strength
    L = np.zeros((H, Wd), np.float32)

    def shell(d, tc, base):
        r = np.sqrt(np.clip(d / tc, 0, 1)) * np.exp(-np.maximum(d - tc, 0) / (0.3 * tc + 0.5))
        return r + base * (1 - np.exp(-d / tc))

    tex_f = bone_texture(rng, (-60, 60), (-140, 80))
    tf = sample_tex(tex_f, fxf, fyf)
    sharp_tex = rng.uniform(0.08, 0.22)
    shaftw = smoothstep(-8, -45, fyf)           # 1 in the shaft, 0 in the epiphysis
    tc_f = (1.1 + 0.6 * rng.random()) + (rng.uniform(3.0, 5.0) - 1.4) * shaftw
    base_f = 0.12 + 0.13 * shaftw
    spw_f = 1.0 - 0.93 * shaftw
    for k, wgt in (("femA", 0.5), ("femB", 0.5)):
        d = dist[k]
        L += wgt * (Ac * 2.0 * shell(d, tc_f, base_f)
                    + As * 2.0 * spw_f * (1 - np.exp(-d / 3.0)) * (1 + sharp_tex * tf))
    # notch: less bone behind/below Blumensaat's roof
    E, pb = case["E"], case["p_blum"]
    C, R = fa["C"], fa["R"]
    notch = np.array([pb, E, E + [1, 0.6 * (fa["bottom"][1] - E[1])], fa["bottom"] + [-2, -3],
                      C + R * np.array([math.cos(140 * D2R), math.sin(140 * D2R)]) * 0.8,
                      C + [-0.3 * R, -0.35 * R]])
    nm = soft_mask(cv, world_f(notch), 2.5)
    L -= nm * As * rng.uniform(0.4, 0.75) * (m["femA"] > 0)
    # Blumensaat line and trochlear groove line
    inside_f = np.clip(dist["femA"] / 1.0, 0, 1)
    L += rng.uniform(0.6, 1.1) * line_glow(cv, None, None, rng.uniform(0.4, 0.65),
                                           world_f(case["blum"])) * inside_f
    Tc, Rt = fa["Tc"], fa["Rt"]
    depth = rng.uniform(4, 7)
    S = fa["tro_end"] + np.array([-depth - 1.0, -rng.uniform(6, 14)])
    Q = Tc + (Rt - depth) * 1.05 * np.array([math.cos(25 * D2R), math.sin(25 * D2R)])
    tb = np.linspace(0, 1, 24)[:, None]
    troch = (1 - tb) ** 2 * S + 2 * tb * (1 - tb) * Q + tb ** 2 * E
    L += rng.uniform(0.15, 0.4) * line_glow(cv, None, None, rng.uniform(0.4, 0.7),
                                            world_f(troch)) * inside_f
    # physeal scars
    yph = rng.uniform(-8, 2)
    wave = yph + 2.0 * np.sin(fxf / rng.uniform(6, 12) + rng.uniform(0, 6)) + 0.12 * (fxf - 10)
    L += (rng.uniform(0.05, 0.2) * np.exp(-0.5 * ((fyf - wave) / 0.6) ** 2)
          * np.clip(dist["femA"] / 2, 0, 1))
    # tibia
    tex_t = bone_texture(rng, (-60, 60), (-30, 160))
    tt_tex = sample_tex(tex_t, txf, tyf)
    shaft_t = smoothstep(35, 80, tyf)
    tc_t = 1.0 + 0.6 * rng.random() + (rng.uniform(3.5, 6) - 1.2) * shaft_t
    d = dist["tibia"]
    L += Ac * shell(d, tc_t, 0.12 + 0.13 * shaft_t) * 1.9 + \
        As * 1.9 * (1 - 0.93 * shaft_t) * (1 - np.exp(-d / 3.0)) * (1 + sharp_tex * tt_tex)
    plat = case["tib"]["plat"]
    ps = plat[10:-18] + [0, rng.uniform(1.0, 3.0)]
    L += (rng.uniform(0.15, 0.4) * line_glow(cv, None, None, 0.45, world_t(ps))
          * np.clip(d / 1.0, 0, 1))
    yphy = rng.uniform(14, 22)
    L += (rng.uniform(0.04, 0.15) * np.exp(-0.5 * ((tyf - yphy - 0.1 * txf) / 0.6) ** 2)
          * np.clip(d / 2, 0, 1))
    # fibula
    d = dist["fibula"]
    shaft_fi = smoothstep(case["fib"]["head"][1] + 15, case["fib"]["head"][1] + 45, tyf)
    L += Ac * 0.9 * shell(d, 1.0 + 2.0 * shaft_fi, 0.3 * shaft_fi) + \
        As * 0.8 * (1 - 0.7 * shaft_fi) * (1 - np.exp(-d / 2.5)) * (1 + sharp_tex * tt_tex)
    # patella
    Mp_w = Mf @ case["Mp"]
    tp_w = Mf @ case["Pc"] + t
    pxf, pyf = cv.frame(Mp_w, tp_w)
    tex_p = bone_texture(rng, (-20, 20), (-30, 30), 0.3)
    ptex = sample_tex(tex_p, pxf, pyf)
    d = dist["patella"]
    post_w = smoothstep(0.05 * case["Tp"], -0.3 * case["Tp"], pxf)  # subchondral plate behind
    L += Ac * 1.4 * shell(d, 1.2 + 1.3 * post_w, 0.1) + \
        As * 1.3 * (1 - np.exp(-d / 3.0)) * (1 + sharp_tex * ptex)
    # fabella (sesamoid, not a labelled bone)
    if rng.random() < 0.12:
        fc = np.array([C[0] - R - rng.uniform(-2, 6), C[1] - rng.uniform(0, 10)])
        fpoly = world_f(chaikin_closed(fc + np.array([[-4, -5], [4, -5], [5, 4], [-4, 5]])
                                       * rng.uniform(0.8, 1.2), 3))
        fm = cv.mask(fpoly / sp)
        fd = cv.inside_dist(fm)
        L += Ac * shell(fd, 1.0, 0.4) * 1.5

    # ---------------- soft tissue
    W, A = g["W"], fa["A"]
    ta, tp = rng.uniform(22, 50), rng.uniform(40, 80)
    kp = rng.uniform(18, 40)
    thigh = world_f(np.array([[W + ta, -420], [W + 0.9 * ta, -120], [W + 0.6 * ta, -40],
                              [A + 4, 10], [C[0] - R - kp, C[1] + 10],
                              [-0.8 * tp - 5, -60], [-tp, -200], [-tp, -420]]))
    tg, tib = case["tg"], case["tib"]
    xs, Wt = tg["xs"], tg["Wt"]
    gc = rng.uniform(45, 90)
    calf = world_t(np.array([[tib["Pa"][0] + 6, tib["Pa"][1] - 5],
                             [tib["tubercle"][0] + 6, tib["tubercle"][1]],
                             [xs + Wt / 2 + 7, 120], [xs + Wt / 2 + 6, 460],
                             [xs - Wt / 2 - 0.75 * gc, 460], [xs - Wt / 2 - gc, 130],
                             [xs - Wt / 2 - 0.8 * gc, 60],
                             [tib["Pp"][0] - rng.uniform(15, 35), tib["Pp"][1] - 5]]))
    patw = polys["patella"]
    pc_w = patw.mean(0)
    hullpts = np.concatenate([pc_w + (patw - pc_w) * (1 + 7.0 / (0.5 * case["Tp"])),
                              world_f(np.array([[C[0] - R - kp, C[1] + 5],
                                                [C[0] - R - kp * 0.8, C[1] - 20]])),
                              world_t(np.array([[tib["Pp"][0] - 25, tib["Pp"][1] + 15],
                                                [tib["tubercle"][0] + 6,
                                                 tib["tubercle"][1] + 5]]))])
    hull = cv2.convexHull(hullpts.astype(np.float32)).reshape(-1, 2)
    body = np.maximum.reduce([cv.mask(thigh / sp), cv.mask(calf / sp),
                              cv.mask(hull / sp)]).astype(np.float32)
    body = (cv2.GaussianBlur(body, (0, 0), 6.0 / sp) > 0.5).astype(np.uint8)
    ds = cv.inside_dist(body)
    a_s = rng.uniform(1.6, 2.6)
    lam = rng.uniform(10, 22)
    Ls = a_s * (1 - np.exp(-ds / lam))
    Ls += rng.uniform(0.04, 0.12) * np.exp(-ds / 0.8) * (ds > 0)                  # skin line
    fatw = rng.uniform(3, 12)
    # subcutaneous fat
    Ls -= rng.uniform(0.04, 0.15) * np.exp(-0.5 * ((ds - 1.5 - fatw / 2) / (fatw / 2.5)) ** 2)
    # fat pads (darker) and tendons (denser)
    apex_w = world_f(case["Pc"] + case["Mp"] @ np.array([0.08 * case["Tp"], 0.5 * case["Lp"]]))
    sup_pole = world_f(case["Pc"] + case["Mp"] @ np.array([0.05 * case["Tp"], -0.5 * case["Lp"]]))
    tub_w = world_t(tib["insertion"])
    Pa_w = world_t(tib["Pa"])
    troch_low = world_f(Tc + Rt * np.array([math.cos(60 * D2R), math.sin(60 * D2R)]))
    hoffa = np.array([apex_w, tub_w - ant_dir * 5, Pa_w + ant_dir * 1, troch_low + ant_dir * 2])
    Ls -= rng.uniform(0.08, 0.25) * soft_mask(cv, hoffa, 3.0)
    prefem = np.array([sup_pole - ant_dir * 3, world_f([W + 3, fa["J"][1] - 30]),
                       world_f([W + 12, fa["J"][1] - 40]), sup_pole + ant_dir * 6])
    Ls -= rng.uniform(0.05, 0.2) * soft_mask(cv, prefem, 3.0)
    popl = world_f(np.array([[C[0] - R - 4, C[1] - 30], [C[0] - R - kp * 0.8, C[1] - 25],
                             [C[0] - R - kp * 0.8, C[1] + 20], [C[0] - R - 3, C[1] + 25]]))
    Ls -= rng.uniform(0.05, 0.2) * soft_mask(cv, popl, 4.0)
    Ls += rng.uniform(0.03, 0.1) * line_glow(cv, None, None, 2.5, np.array([apex_w, tub_w]))
    quad_top = world_f([W + 0.45 * ta, -90])
    Ls += rng.uniform(0.02, 0.08) * line_glow(cv, None, None, 3.0, np.array([sup_pole, quad_top]))
    Ls *= (body > 0) | (ds > 0)
    L = L * (1.0 + 0.0) + Ls
    bone_any = np.maximum.reduce(list(masks.values()))

    meta_d = {}
    # ---------------- distractors (added to the line integral)
    bone_dt = cv2.distanceTransform((1 - bone_any).astype(np.uint8), cv2.DIST_L2, 5) * sp
    # collimator (unexposed outside), kept off the bones
    colli = np.ones((H, Wd), np.float32)
    if rng.random() < 0.3:
        for _ in range(20):
            a = rng.uniform(0, 2 * math.pi)
            n = np.array([math.cos(a), math.sin(a)])
            proj = (cv.u - cv.u.mean()) * n[0] + (cv.v - cv.v.mean()) * n[1]
            c0 = np.percentile(proj, rng.uniform(75, 95))
            if not np.any(bone_any[proj > c0 - 3]):
                colli = 1 - smoothstep(c0 - 1.0, c0 + 1.0, proj)
                meta_d["collimator"] = True
                break
    side = "left" if rng.random() < 0.5 else "right"
    if rng.random() < 0.45:
        letter = "L" if side == "left" else "R"
        size_mm = rng.uniform(8, 14)
        for _ in range(30):
            x0, y0 = rng.uniform(0.05, 0.85) * Wd, rng.uniform(0.08, 0.9) * H
            yi, xi = int(min(y0, H - 1)), int(min(x0, Wd - 1))
            if bone_dt[yi, xi] > 25 and colli[yi, xi] > 0.99:
                break
        else:
            letter = None
    else:
        letter = None
    if letter is not None:
        lm = np.zeros((H, Wd), np.uint8)
        scale = size_mm / sp / 22.0
        cv2.putText(lm, letter, (int(x0), int(y0)), cv2.FONT_HERSHEY_SIMPLEX, scale, 1,
                    max(1, int(round(size_mm / 7 / sp))), cv2.LINE_AA)
        L += rng.uniform(1.5, 4.0) * cv2.GaussianBlur(lm.astype(np.float32), (0, 0), 0.6)
        meta_d["side_marker"] = letter
    if rng.random() < 0.3:
        # ruler strip along one edge: plastic strip with lead ticks every mm
        edge = rng.integers(0, 4)
        horiz = edge in (0, 1)
        wstrip = rng.uniform(10, 16) / sp
        rl = np.zeros((H, Wd), np.float32)
        ticks = np.zeros((H, Wd), np.float32)
        n_along = Wd if horiz else H
        pos0 = rng.uniform(2, 30) / sp
        if horiz:
            y0 = (int(rng.uniform(2, 12) / sp) if edge == 0
                  else int(H - rng.uniform(2, 12) / sp - wstrip))
            rl[y0:int(y0 + wstrip), :] = 1
            for k in range(int(n_along * sp) + 1):
                xk = int(pos0 + k / sp)
                if xk >= Wd:
                    break
                ln = wstrip * (0.6 if k % 10 == 0 else 0.4 if k % 5 == 0 else 0.25)
                ticks[y0:int(y0 + ln), xk:xk + max(1, int(0.25 / sp))] = 1
        else:
            x0 = (int(rng.uniform(2, 12) / sp) if edge == 2
                  else int(Wd - rng.uniform(2, 12) / sp - wstrip))
            rl[:, x0:int(x0 + wstrip)] = 1
            for k in range(int(n_along * sp) + 1):
                yk = int(pos0 + k / sp)
                if yk >= H:
                    break
                ln = wstrip * (0.6 if k % 10 == 0 else 0.4 if k % 5 == 0 else 0.25)
                ticks[yk:yk + max(1, int(0.25 / sp)), x0:int(x0 + ln)] = 1
        L += (rng.uniform(0.05, 0.2) * rl
              + rng.uniform(1.0, 3.0) * cv2.GaussianBlur(ticks, (0, 0), 0.5))
        meta_d["ruler"] = True
    if rng.random() < 0.3:
        r_mm = 12.5
        for _ in range(60):
            cxs, cys = (rng.uniform(r_mm + 3, Wd * sp - r_mm - 3),
                        rng.uniform(r_mm + 3, H * sp - r_mm - 3))
            if bone_dt[int(cys / sp), int(cxs / sp)] > r_mm + 10 and \
                    colli[int(cys / sp), int(cxs / sp)] > 0.99 and \
                    colli[int(np.clip((cys - r_mm - 2) / sp, 0, H - 1)), int(cxs / sp)] > 0.99 and \
                    colli[int(np.clip((cys + r_mm + 2) / sp, 0, H - 1)), int(cxs / sp)] > 0.99 and \
                    colli[int(cys / sp),
                          int(np.clip((cxs - r_mm - 2) / sp, 0, Wd - 1))] > 0.99 and \
                    colli[int(cys / sp),
                          int(np.clip((cxs + r_mm + 2) / sp, 0, Wd - 1))] > 0.99:
                dd = np.sqrt((cv.u - cxs) ** 2 + (cv.v - cys) ** 2)
                L += rng.uniform(0.15, 0.35) * 2 * np.sqrt(np.clip(r_mm ** 2 - dd ** 2, 0, None))
                meta_d["sphere"] = {"diameter_mm": 25.0, "centre_px": [cxs / sp, cys / sp],
                                    "radius_px": r_mm / sp}
                break
    # ---------------- exposure
    blur_px = rng.uniform(0.12, 0.45) / sp
    Lb = cv2.GaussianBlur(L, (0, 0), blur_px)
    heel = 1 + rng.uniform(-0.18, 0.18) * ((cv.u - cv.u.mean()) * math.cos(rng.uniform(0, 6.3))
                                          + (cv.v - cv.v.mean()) * 0.3) / (0.5 * max(H, Wd) * sp)
    Ep = np.exp(-Lb) * heel
    ssig = rng.uniform(15, 40) / sp
    small = cv2.resize(Ep, (max(8, Wd // 8), max(8, H // 8)), interpolation=cv2.INTER_AREA)
    scat = cv2.resize(cv2.GaussianBlur(small, (0, 0), ssig / 8), (Wd, H),
                      interpolation=cv2.INTER_LINEAR)
    E_tot = Ep + rng.uniform(0.05, 0.5) * scat
    E_tot = E_tot * (0.02 + 0.98 * colli)
    body_px = (body > 0) & (colli > 0.5)
    logE = np.log10(np.maximum(E_tot, 1e-6))
    film = rng.random() < 0.55
    if film:
        Dfog = rng.uniform(0.15, 0.3)
        Dmax = rng.uniform(2.8, 3.6)
        lo, hi = np.percentile(logE[body_px], [2, 98]) if body_px.any() else (-1.5, -0.5)
        logE0 = lo + rng.uniform(0.3, 0.75) * (hi - lo)
        k = rng.uniform(2.5, 6.0) / max(hi - lo, 0.2) * 0.8
        D = Dfog + (Dmax - Dfog) / (1 + np.exp(-k * (logE - logE0)))
        grain = cv2.GaussianBlur(rng.standard_normal((H, Wd)).astype(np.float32), (0, 0),
                                 rng.uniform(0.5, 1.2))
        D = D + rng.uniform(0.015, 0.05) * grain * np.sqrt(D) * 2
        scanned = rng.random() < 0.6
        Dlo = rng.uniform(0.0, Dfog)
        Dhi = rng.uniform(max(2.2, Dmax - 0.8), Dmax + 0.3)
        v = np.clip((Dhi - D) / (Dhi - Dlo), 0, 1) ** rng.uniform(0.8, 1.3)
        if scanned:
            axis = rng.integers(0, 2)
            n_al = Wd if axis == 0 else H
            gain = 1 + 0.012 * fractal(1, n_al, rng, 40, 3)[0] * rng.uniform(0.3, 1.5)
            for _ in range(rng.integers(0, 5)):
                j = rng.integers(0, n_al)
                gain[j:j + rng.integers(1, 4)] *= 1 + rng.uniform(-0.05, 0.05)
            v = v * (gain[None, :] if axis == 0 else gain[:, None])
            for _ in range(rng.integers(3, 40)):       # dust (blocks the scanner's light: dark)
                cxd, cyd = rng.integers(0, Wd), rng.integers(0, H)
                cv2.circle(v, (int(cxd), int(cyd)), int(rng.integers(1, 4)),
                           float(rng.uniform(0.0, 0.3)), -1)
            for _ in range(rng.integers(0, 3)):        # hair / fibre
                p0 = np.array([rng.integers(0, Wd), rng.integers(0, H)], float)
                pts = [p0]
                ang = rng.uniform(0, 6.3)
                for _ in range(12):
                    ang += rng.normal(0, 0.3)
                    pts.append(pts[-1] + 6 * np.array([math.cos(ang), math.sin(ang)]))
                cv2.polylines(v, [np.array(pts, np.int32)], False, float(rng.uniform(0.0, 0.3)),
                              1, cv2.LINE_AA)
            for _ in range(rng.integers(0, 2)):        # scratch in the emulsion: bright
                p0 = rng.integers(0, [Wd, H])
                p1 = p0 + rng.integers(-300, 300, 2)
                cv2.line(v, tuple(int(a) for a in p0), tuple(int(a) for a in p1), 1.0, 1,
                         cv2.LINE_AA)
        meta_d["chain"] = "film_scanned" if scanned else "film"
    else:
        N0 = rng.uniform(300, 3000)
        En = E_tot + (rng.standard_normal((H, Wd)).astype(np.float32)
                      * np.sqrt(np.maximum(E_tot, 1e-4) / N0))
        s = np.log(np.maximum(En, 1e-4))
        ref = body_px if body_px.any() else np.ones_like(body_px)
        lo = np.percentile(s[ref], rng.uniform(0.2, 3))
        hi = np.percentile(s, rng.uniform(97, 99.9)) + rng.uniform(-0.2, 0.3)
        v = 1 - np.clip((s - lo) / max(hi - lo, 1e-3), 0, 1)
        amt = rng.uniform(0, 1.5)
        v = v + amt * (v - cv2.GaussianBlur(v, (0, 0), rng.uniform(2, 8) / sp))
        gam = rng.uniform(0.7, 1.5)
        v = np.clip(v, 0, 1) ** gam
        cs = rng.uniform(2, 5.5)
        v = 1 / (1 + np.exp(-cs * (v - 0.5)))
        v = (v - v.min()) / (v.max() - v.min() + 1e-6)
        if "collimator" in meta_d and rng.random() < 0.5:
            v = v * (colli > 0.5)          # electronic shutter: black outside
        meta_d["chain"] = "cr"
    v = np.clip(v, 0, 1).astype(np.float32)
    lo, hi = np.percentile(v, [0.05, 99.95])
    if hi - lo < 0.5:
        v = np.clip((v - lo) / max(hi - lo, 1e-3), 0, 1)
    bits = 16 if rng.random() < 0.4 else 8
    img = (v * 65535 + 0.5).astype(np.uint16) if bits == 16 else (v * 255 + 0.5).astype(np.uint8)

    # ---------------- annotation (exact from the construction)
    p_blum_px = to_px(case["p_blum"])
    p_tmc_px = to_px(fa["p_tmc"])
    y_start = -min(vis - 1.0, rng.uniform(60, 110))
    # end above both condyles' junctions (the offset lateral condyle may bulge over x=0 higher up)
    y_end = min(-2.0, float(fb["p_tmc"][1]) - 2.0)
    y_start = min(y_start, y_end - 25.0)
    ys = np.linspace(y_start, y_end, 7)
    cortex = to_px(np.stack([np.zeros_like(ys), ys], 1))
    lm1 = Line.through(cortex[0], cortex[-1])
    anterior = float(np.sign(lm1.normal @ ant_dir))
    sp_res = schoettle_point(lm1, p_tmc_px, p_blum_px, anterior=anterior)
    meta = dict(family="sdf", flexion_deg=round(case["flex"] / D2R, 2),
                rotation_deg=round(theta / D2R, 2), mirrored=bool(mirror < 0),
                condyle_offset_mm=[round(float(x), 2) for x in case["off"]],
                shaft_width_mm=round(g["W"], 2), ap_depth_mm=round(g["depth"], 2),
                posterior_condylar_offset_mm=round(g["pco"], 2), condyle_radius_mm=round(g["R"], 2),
                tibial_slope_deg=round(case["tg"]["slope"] / D2R, 2),
                patella_len_mm=round(case["Lp"], 2),
                patella_thick_mm=round(case["Tp"], 2), insall_salvati=round(case["isr"], 3),
                bits=bits, schoettle_radius_px=round(float(sp_res.radius), 3), **meta_d)
    rater = RaterAnnotation(np.array([p_blum_px, p_tmc_px]), cortex, "construction")
    ann = annotation_dict(sid, f"{sid}.png", [rater], spacing_mm=(sp, sp), side=side,
                          schoettle_point=sp_res.point, meta=meta)
    return img, masks, ann


def _count(text: str) -> int:
    """A whole number >= 0 (argparse type)."""
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _write_png(path: Path, img: np.ndarray) -> None:
    """cv2.imwrite that fails loudly (it returns False on a write it could not make)."""
    if not cv2.imwrite(str(path), img):
        raise OSError(f"{path}: could not be written")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=_count, default=10)
    ap.add_argument("--seed", type=_count, default=0)
    ap.add_argument("--start", type=_count, default=0, help="first index (ids sdf_<index>)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    try:
        for sub in ("images", "masks", "annotations"):
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as err:  # an --out under a file, unwritable: one line
        print(f"sdf_phantoms: error: {out}: {err.strerror or err}", file=sys.stderr)
        return 2
    t0 = time.time()
    for i in range(a.start, a.start + a.n):
        rng = np.random.default_rng([a.seed, i])
        sid = f"sdf_{i:05d}"
        for _attempt in range(10):
            try:
                case = build_case(rng)
                img, masks, ann = render(rng, case, sid)
                break
            except RuntimeError:
                continue
        else:
            raise RuntimeError(f"{sid}: could not build a case")
        try:
            _write_png(out / "images" / f"{sid}.png", img)
            for b in BONES:
                _write_png(out / "masks" / f"{sid}_{b}.png", (masks[b] > 0).astype(np.uint8) * 255)
            write_annotation(out / "annotations" / f"{sid}.json", ann)
        except OSError as err:
            print(f"sdf_phantoms: error: {err}", file=sys.stderr)
            return 2
        done = i - a.start + 1
        if done % 10 == 0 or done == a.n:
            el = time.time() - t0
            print(f"{done}/{a.n} images, {el / done:.2f} s/image", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
