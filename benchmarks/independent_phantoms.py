"""An independent phantom family for robustness checks: lateral knee radiographs in a style the
project's own generator (``datamodules/phantoms``) never produces.

It was written without reading that generator, from the dataset format in README.md and the
anatomy of Kordon et al. (MICCAI 2019): a trained model can be evaluated on these images to see
whether it learnt knees or one generator's look. Geometry is built in millimetres in a femur
frame (x anterior, y distal, origin on the shaft axis at the level of the most distal condyle
point) from centripetal Catmull-Rom splines and superellipses; rendering is a crude projection
model (soft-tissue path length, bone path ~ sqrt(depth), a cortical shell profile, oriented
band-pass trabecular noise), then exposure, quantum noise, detector blur and a display chain
(log or linear, window, gamma, unsharp mask), with optional ruler, lead marker, burned-in text
and collimator shutters.

Landmarks (exact, from the construction): ``p_tmc`` is where the straight posterior femoral
cortex meets the round posterior contour of the (medial, outline-forming) condyle; ``p_blum`` is
the posterior end of the bright Blumensaat line drawn inside the condyles; ``cortex_line`` lies on
the posterior shaft cortex, proximal to distal.

Run (writes DIR/images, DIR/masks, DIR/annotations; deterministic for a seed)::

    .venv/bin/python benchmarks/independent_phantoms.py --out DIR --n 40 --seed 0
    .venv/bin/python -m datamodules.validate DIR
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datamodules.annotations import annotation_dict, write_annotation  # noqa: E402
from datamodules.sample import BONES, RaterAnnotation  # noqa: E402

S_LEN = 420.0  # shaft length in mm: always leaves the image
WORDS = ("LAT", "KNEE", "STANDING", "PORTABLE", "kV 63", "mAs 6.3", "CR", "HOSP 7", "ID 0417")


def spline(pts, closed=True, n=10):
    """Centripetal Catmull-Rom through ``pts`` (no overshoot on uneven spacing)."""
    p = np.asarray(pts, float)
    p = np.vstack([p[-1], p, p[0], p[1]]) if closed else np.vstack([2 * p[0] - p[1], p,
                                                                     2 * p[-1] - p[-2]])
    out = []
    for i in range(len(p) - 3):
        p0, p1, p2, p3 = p[i:i + 4]
        t1 = np.linalg.norm(p1 - p0) ** 0.5 + 1e-6
        t2 = t1 + np.linalg.norm(p2 - p1) ** 0.5 + 1e-6
        t3 = t2 + np.linalg.norm(p3 - p2) ** 0.5 + 1e-6
        t = np.linspace(t1, t2, n, endpoint=False)[:, None]
        a1 = (t1 - t) / t1 * p0 + t / t1 * p1
        a2 = (t2 - t) / (t2 - t1) * p1 + (t - t1) / (t2 - t1) * p2
        a3 = (t3 - t) / (t3 - t2) * p2 + (t - t2) / (t3 - t2) * p3
        b1 = (t2 - t) / t2 * a1 + t / t2 * a2
        b2 = (t3 - t) / (t3 - t1) * a2 + (t - t1) / (t3 - t1) * a3
        out.append((t2 - t) / (t2 - t1) * b1 + (t - t1) / (t2 - t1) * b2)
    if not closed:
        out.append(p[-2][None])
    return np.vstack(out)


def superellipse(a, c, n, k=72):
    th = np.linspace(0, 2 * np.pi, k, endpoint=False)
    co, si = np.cos(th), np.sin(th)
    return np.stack([a * np.sign(co) * np.abs(co) ** (2 / n),
                     c * np.sign(si) * np.abs(si) ** (2 / n)], 1)


def rot(deg):
    r = math.radians(deg)
    return np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])


def rotate_about(pts, centre, deg):
    return (np.asarray(pts, float) - centre) @ rot(deg).T + centre


def build_anatomy(rng):
    """All outlines in the femur frame (mm), tibia and patella already posed for the flexion."""
    u = rng.uniform
    depth, w, b, e = u(55, 70), u(13, 16.5), u(14, 21), u(0, 2.5)
    t = float(np.clip(depth - 2 * w - b, 6, 16))  # anterior (trochlear) flare
    rp = u(max(18, b + 1), max(b + 4, 25))
    cx, cy = -w - b + rp, -e - rp
    y_tmc = cy - math.sqrt(rp ** 2 - (rp - b) ** 2)
    x_d = cx + u(1, 7)
    rd = w + t - x_d
    p_tmc = np.array([-w, y_tmc])
    jit = lambda q, s=0.4: np.asarray(q) + rng.normal(0, s, np.shape(q))  # noqa: E731
    th0 = math.atan2(y_tmc - cy, -w - cx)
    post = [(cx + rp * math.cos(a), cy + rp * math.sin(a))
            for a in np.linspace(th0, -2 * np.pi + math.radians(112), 9)[1:]]
    dist = [(x_d + rd * math.cos(a), -rd + rd * math.sin(a))
            for a in np.radians(np.linspace(97, -5, 9))]
    bow = u(-3, 3)
    ant_up = [(w + bow * math.sin(math.pi * (y + S_LEN) / S_LEN), y)
              for y in np.linspace(-rd - 95, -S_LEN, 8)[:-1]]
    femur = np.vstack([[(w, -S_LEN), (-w, -S_LEN)],
                       [(-w, y) for y in np.linspace(-S_LEN, y_tmc, 12)[1:-1]],
                       [(-w, y_tmc - 2.5), (-w, y_tmc - 0.8), p_tmc],
                       jit(post), jit(dist),
                       jit([(w + t * 0.85, -rd - 14), (w + t * 0.55, -rd - 30),
                            (w + t * 0.25, -rd - 46), (w + u(0.3, 1.5), -rd - 64),
                            (w, -rd - 80)]), ant_up])
    # Blumensaat's line: posterior end just anterior-distal of p_tmc, running anterior-distally
    p_blum = np.array([-w + u(0.8, 5), y_tmc + u(3, 11)])
    ang, length = math.radians(u(30, 45)), u(24, 34)
    direction = np.array([math.sin(ang), math.cos(ang)])
    while np.linalg.norm(p_blum + length * direction - (x_d, -rd)) > rd - 4 and length > 12:
        length -= 1.0
    end = p_blum + length * direction
    mid = (p_blum + end) / 2 + u(-2, 1.5) * np.array([direction[1], -direction[0]])
    ss = np.linspace(0, 1, 40)[:, None]
    blum = (1 - ss) ** 2 * p_blum + 2 * ss * (1 - ss) * mid + ss ** 2 * end
    notch = np.vstack([blum, [(end[0], -(end[0] - x_d) ** 2 / (2 * rd) - 2),
                              (cx - 0.4 * rp, cy + 0.8 * rp), (p_blum[0] - 1, p_blum[1] + 9)]])
    lat_c, lat_r = np.array([cx + u(-1, 4), cy + u(-3, 3)]), rp - u(0.5, 3)
    lat_arc = [lat_c + lat_r * np.array([math.cos(a), math.sin(a)])
               for a in np.radians(np.linspace(60, 250, 40))]
    flex = u(10, 60) if rng.random() < 0.5 else u(0, 10)
    # tibia (own frame = femur frame in extension), then rotated about the condyle centre
    g, beta = u(3.5, 7), math.radians(u(3, 12))
    x_post, x_ant = -w - b + u(1, 6), w + t - u(3, 9)
    yp = lambda x: g + (x_d - x) * math.tan(beta)  # noqa: E731
    wt, x_ts = u(11.5, 15), (x_post + x_ant) / 2 + u(-3, 3)
    s0, hs, sw = x_d + u(-1, 5), u(2.5, 5), u(2.5, 4)
    xs = np.linspace(x_post, x_ant, 17)[1:-1]
    spines = hs * np.exp(-((xs - s0 + sw) / sw) ** 2) + u(0.6, 1) * hs * np.exp(
        -((xs - s0 - sw) / sw) ** 2)
    tub_x, tub_y = x_ant + u(-2, 2), g + u(28, 40)
    tibia = np.vstack([[(x_post - 0.5, yp(x_post) + 4), (x_post + 1.5, yp(x_post) + 0.6)],
                       np.stack([xs, [yp(x) for x in xs] - spines], 1),
                       [(x_ant - 1.5, yp(x_ant) + 0.4), (x_ant + 0.5, yp(x_ant) + 3.5),
                        (x_ant - u(1.5, 3.5), g + 13), (tub_x, tub_y), (tub_x - 4, tub_y + 18),
                        (x_ts + wt + 4, g + 85), (x_ts + wt + 1, g + 120), (x_ts + wt, g + S_LEN),
                        (x_ts - wt, g + S_LEN), (x_ts - wt, g + 120), (x_ts - wt - 1.5, g + 80),
                        (x_post + u(4, 8), yp(x_post) + 38), (x_post + u(0, 2), yp(x_post) + 14)]])
    fx, fy = x_post + u(5, 14), yp(x_post) + u(16, 26)
    hw, hh, fw = u(7, 10.5), u(8, 12), u(3.5, 5.5)
    fsx = x_ts - wt + u(-3, 5)
    nx = fx + 0.35 * (fsx - fx)
    fibula = [(fx - hw * 0.45, fy - hh - u(2, 5)), (fx + hw * 0.6, fy - hh * 0.8), (fx + hw, fy),
              (fx + hw * 0.7, fy + hh * 0.9), (nx + fw + 1, fy + hh + 18), (fsx + fw, g + 150),
              (fsx + fw, g + S_LEN), (fsx - fw, g + S_LEN), (fsx - fw, g + 150),
              (nx - fw - 1, fy + hh + 18), (fx - hw * 0.9, fy + hh * 0.5),
              (fx - hw, fy - hh * 0.3)]
    leg = [(tub_x + u(4, 9), g + 10), (x_ts + wt + u(4, 10), g + S_LEN),
           (x_ts - wt - u(50, 90), g + S_LEN), (x_post - u(20, 40), g + 15)]
    centre = np.array([cx, cy])
    # roll-back: after the rotation, slide the tibia along its axis until the plateau (spines
    # excluded) comes within the joint gap of the femoral condyles
    xl = np.linspace(x_post, x_ant, 40)
    plateau = rotate_about(np.stack([xl, [yp(x) for x in xl]], 1), centre, flex)
    axis, fem = rot(flex) @ (0.0, 1.0), spline(femur, n=6)
    fem = fem[fem[:, 1] > y_tmc - 5]
    slide = 30.0
    while slide > -30 and np.min(np.linalg.norm(
            (plateau + (slide - 0.25) * axis)[:, None] - fem[None], axis=2)) >= g:
        slide -= 0.25
    tibia, fibula, leg = (rotate_about(spline(q) if q is not leg else q, centre, flex)
                          + slide * axis for q in (tibia, fibula, leg))
    tib_mid, fib_head = rotate_about([(x_d, g + 10), (fx, fy)], centre, flex) + slide * axis
    # patella: a superellipse with a posterior ridge and a tapered distal pole
    tp, lp = u(16, 22), u(36, 50)
    pat = superellipse(tp / 2, lp / 2, u(2.1, 3.2))
    ridge, taper = u(2.5, 5), u(0.3, 0.55)
    pat[:, 0] -= ridge * np.clip(1 - ((pat[:, 1] + 0.1 * lp) / (lp / 2)) ** 2, 0, 1) * (
        pat[:, 0] < 0)
    pat[:, 0] *= np.where(pat[:, 0] > 0, u(0.75, 0.95), 1)  # flatter anterior surface
    pat[:, 0] *= 1 - taper * np.clip(pat[:, 1] / (lp / 2), 0, 1) ** 2
    front = femur[(femur[:, 0] > 0) & (femur[:, 1] > -rd - 80) & (femur[:, 1] < -rd)]
    y_pat = -rd - u(8, 22)  # patella height in extension: alta to baja
    x_pat = np.interp(y_pat, front[::-1, 1], front[::-1, 0]) + tp / 2 + ridge + u(1.5, 4.5)
    pat = pat @ rot(-u(-5, 12)).T + (x_pat, y_pat)
    patella = rotate_about(spline(pat[::3]), np.array([x_d, -rd]), 0.65 * flex)
    at, pt = u(18, 45), u(45, 95)
    thigh = [(w + at, -S_LEN), (w + at * 0.8, -rd - 30), (-w - pt * 0.8, -rd - 30),
             (-w - pt, -S_LEN)]
    front, back = patella[:, 0].max() + u(4, 10), cx - rp - u(20, 40)
    knee = superellipse((front - back) / 2, u(45, 60), 2.4) + ((front + back) / 2, -rd * 0.7)
    fabella = None
    if rng.random() < 0.2:
        fabella = superellipse(u(2.5, 4), u(3, 5), 2.3) + (cx - rp - u(2, 6), cy - u(0, 10))
    return dict(femur=spline(femur, n=6), patella=patella, tibia=tibia, fibula=fibula,
                p_tmc=p_tmc, p_blum=p_blum, blum=blum, notch=notch, lat_arc=np.array(lat_arc),
                lat_c=lat_c, lat_r=lat_r, soft=[np.array(thigh), knee, leg], fabella=fabella,
                flex=flex, centre=centre, y_tmc=y_tmc, w=w, g=g, slide=slide,
                keys=np.array([(cx - rp, cy), (x_d, 0.0), (w + t, -rd),
                               patella.mean(0), tib_mid, fib_head]),
                physis=(u(-rd - 18, -rd - 4), u(-8, 8)) if rng.random() < 0.5 else None,
                blum_angle=math.degrees(ang), depth=2 * w + t + b)


class Pose:
    """Femur-frame mm -> pixel: mirror, in-plane rotation, scale 1 / spacing, shift."""

    def __init__(self, mirror, alpha, spacing, shift):
        self.m, self.r, self.s, self.t = mirror, rot(alpha), spacing, np.asarray(shift, float)

    def px(self, pts):
        p = np.asarray(pts, float) * (self.m, 1.0)
        return p @ self.r.T / self.s + self.t

    def mm(self, xs, ys):
        """Femur-frame coordinates of pixel grids."""
        dx, dy = (xs - self.t[0]) * self.s, (ys - self.t[1]) * self.s
        r = self.r
        return self.m * (r[0, 0] * dx + r[1, 0] * dy), r[0, 1] * dx + r[1, 1] * dy

    def angle(self, v):
        v = self.r @ (np.asarray(v, float) * (self.m, 1.0))
        return math.atan2(v[1], v[0])


def fill(shape, pts):
    out = np.zeros(shape, np.uint8)
    cv2.fillPoly(out, [np.round(np.asarray(pts) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return out


def texture(shape, rng, spacing, axis, period, aniso):
    """Band-pass noise with stripes along ``axis`` (radians in pixel space), squashed by tanh."""
    h, w = shape
    f = np.fft.rfft2(rng.standard_normal(shape).astype(np.float32))
    fy, fx = np.fft.fftfreq(h)[:, None] / spacing, np.fft.rfftfreq(w)[None, :] / spacing
    fr = np.hypot(fx, fy) + 1e-6
    band = np.exp(-np.log(fr * period) ** 2 / 0.5)
    orient = np.abs(np.sin(np.arctan2(fy, fx) - axis)) ** aniso
    tex = np.fft.irfft2(f * band * orient, s=shape).astype(np.float32)
    return np.tanh(1.6 * tex / (tex.std() + 1e-9))


def shell(dist_mm, thk):
    """Projected cortical shell: zero on the edge, peak 1 at depth ``thk``, decaying inside."""
    r = dist_mm / thk
    return r * np.exp(1 - r)


def layout(rng, an):
    """Image size, spacing and a pose that keeps every landmark well inside the image."""
    u = rng.uniform
    long_px = int(u(700, 1600))
    short_px = int(long_px * u(0.68, 0.9))
    h, w = (long_px, short_px) if rng.random() < 0.75 else (short_px, long_px)
    spacing = u(max(0.12, 130 / long_px), min(0.25, 330 / long_px))  # field 130-330 mm
    mirror, alpha = (-1.0 if rng.random() < 0.5 else 1.0), u(-20, 20)
    cortex = [(-an["w"], an["y_tmc"] - d) for d in (4, 35)]
    for attempt in range(200):
        if attempt and attempt % 40 == 0:
            spacing = min(spacing * 1.12, 0.3)
        pose = Pose(mirror, alpha, spacing, (0, 0))
        anchor = pose.px([(an["keys"][0][0] + 10, -25)])[0]
        pose.t = np.array([u(0.3, 0.7) * w, u(0.3, 0.68) * h]) - anchor
        lm = pose.px([an["p_blum"], an["p_tmc"]])
        other = pose.px(np.vstack([an["keys"], cortex]))
        if inside(lm, w, h, 0.07 * min(w, h)) and inside(other, w, h, 0.02 * min(w, h)):
            return h, w, spacing, pose
    raise RuntimeError("no layout found")


def inside(p, w, h, margin):
    p = np.asarray(p)
    return bool(np.all((p >= margin) & (p <= (w - 1 - margin, h - 1 - margin))))


def draw_line(shape, pts, width_px, blur_px):
    canvas = np.zeros(shape, np.float32)
    cv2.polylines(canvas, [np.round(pts * 16).astype(np.int32)], False, 1.0,
                  max(1, int(round(width_px))), cv2.LINE_AA, 4)
    return cv2.GaussianBlur(canvas, (0, 0), max(blur_px, 0.3))


def render(rng, sample_id):
    u = rng.uniform
    an = build_anatomy(rng)
    h, w, s, pose = layout(rng, an)
    shape = (h, w)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xf, yf = pose.mm(xs, ys)
    # collimator field: a (slightly tilted) rectangle that keeps every annotated point inside
    field = np.ones(shape, np.float32)
    lms = pose.px([an["p_blum"], an["p_tmc"]])  # LANDMARKS order
    cortex = cortex_points(rng, an, pose, w, h)
    if rng.random() < 0.45:
        pts = np.vstack([lms, cortex, np.clip(pose.px(an["keys"]), 0, (w - 1, h - 1))])
        lo, hi = pts.min(0) - 0.05 * min(h, w), pts.max(0) + 0.05 * min(h, w)
        x0, y0 = min(lo[0], u(0, 0.15) * w), min(lo[1], u(0, 0.12) * h)
        x1, y1 = max(hi[0], w - u(0, 0.15) * w), max(hi[1], h - u(0, 0.12) * h)
        box = cv2.boxPoints((((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0, y1 - y0), u(-3, 3)))
        field = cv2.GaussianBlur(fill(shape, box).astype(np.float32), (0, 0), u(1, 4))
    masks = {name: fill(shape, pose.px(an[name])) for name in BONES}
    # attenuation: soft tissue path + bones (sqrt depth profile, trabecular noise, cortex shell)
    soft = np.zeros(shape, np.uint8)
    for q in an["soft"]:
        soft |= fill(shape, pose.px(spline(q, n=8)))
    soft = (cv2.GaussianBlur(soft.astype(np.float32), (0, 0), 6 / s) > 0.5).astype(np.uint8)
    d_soft = cv2.distanceTransform(soft, cv2.DIST_L2, 5) * s
    mu = (u(0.005, 0.009) * 2 * np.sqrt(np.minimum(d_soft, 45) * 45)).astype(np.float32)
    fem_axis, tib_axis = pose.angle((0, 1)), pose.angle(rot(an["flex"]) @ (0, 1))
    tex_f = texture(shape, rng, s, fem_axis, u(0.8, 2.0), u(2, 8))
    tex_i = texture(shape, rng, s, fem_axis, u(0.7, 1.6), u(0, 1.5))
    tex_t = texture(shape, rng, s, tib_axis, u(0.8, 2.0), u(2, 8))
    cy_, r_ = an["centre"][1], rot(an["flex"])  # tibia-frame y of each pixel
    yt = (xf - an["centre"][0]) * r_[0, 1] + (yf - cy_) * r_[1, 1] + cy_ - an["slide"]
    shaft_f = 1 / (1 + np.exp((yf - an["y_tmc"] + 30) / 10))  # 1 up the shaft, 0 in condyles
    shaft_t = 1 / (1 + np.exp((an["g"] + 60 - yt) / 10))  # 1 down the shaft, 0 at the plateau
    amp, dc = u(0.08, 0.35), u(5, 12)
    plan = {"femur": (u(0.45, 0.8), tex_f * shaft_f + tex_i * (1 - shaft_f),
                      u(0.6, 1.2) + u(1, 3.5) * shaft_f, u(0.5, 1.0) + u(0.5, 1.0) * shaft_f),
            "tibia": (u(0.45, 0.8), tex_t, u(0.6, 1.2) + u(1, 3) * shaft_t,
                      u(0.5, 1.0) + u(0.5, 1.0) * shaft_t),
            "patella": (u(0.4, 0.7), tex_i, u(0.8, 1.6), u(0.4, 0.9)),
            "fibula": (u(0.2, 0.45), tex_t, u(1.0, 2.0), u(0.3, 0.6))}
    for name, (dens, tex, thk, cort) in plan.items():
        dist = cv2.distanceTransform(masks[name], cv2.DIST_L2, 5) * s
        canal = 1 - 0.35 * (shaft_f if name == "femur" else shaft_t if name == "tibia" else 0)
        bone = dens * np.sqrt(np.clip(dist / dc, 0, 1)) * canal * (1 + amp * tex)
        mu += (bone + cort * shell(dist, thk) * (dist > 0)) * 0.9
    fmask = masks["femur"].astype(np.float32)
    notch = cv2.GaussianBlur(fill(shape, pose.px(an["notch"])).astype(np.float32), (0, 0), 2 / s)
    mu -= u(0.08, 0.25) * notch * fmask
    mu += u(0.45, 1.0) * fmask * draw_line(shape, pose.px(an["blum"]), 0.6 / s, u(0.2, 0.45) / s)
    lat = draw_line(shape, pose.px(an["lat_arc"]), 0.5 / s, u(0.3, 0.7) / s)
    mu += fmask * (u(0.3, 0.8) * lat + u(0.02, 0.1) * fill(
        shape, pose.px(an["lat_c"] + superellipse(an["lat_r"], an["lat_r"], 2))))
    if an["physis"] is not None:
        y0, slope = an["physis"]
        xx = np.linspace(-60, 60, 50)
        wave = np.stack([xx, y0 + xx * math.tan(math.radians(slope)) + np.sin(xx / 4) * 1.2], 1)
        mu += u(0.15, 0.4) * fmask * draw_line(shape, pose.px(wave), 0.8 / s, 0.6 / s)
    if an["fabella"] is not None:
        fab = fill(shape, pose.px(an["fabella"]))
        mu += 0.5 * shell(cv2.distanceTransform(fab, cv2.DIST_L2, 3) * s, 0.8) + 0.3 * fab
    add_hardware(rng, mu, lms, s, an, pose)
    # exposure, collimation, blur, quantum noise, display chain
    k = u(0.7, 1.4)
    heel = 1 + u(-0.15, 0.15) * (np.cos(u(0, 6.3)) * xs / w + np.sin(u(0, 6.3)) * ys / h)
    leak = u(0.01, 0.08)  # dose behind the shutters
    trans = np.exp(-k * mu) * heel * (leak + (1 - leak) * field)
    trans = cv2.GaussianBlur(trans.astype(np.float32), (0, 0), u(0.4, 1.6))
    n0 = 10 ** u(2.3, 3.8)
    grain = rng.standard_normal(shape).astype(np.float32)
    if rng.random() < 0.5:
        grain = cv2.GaussianBlur(grain, (0, 0), u(0.5, 1.0))
        grain /= grain.std()
    trans = trans + np.sqrt(np.clip(trans, 1e-6, None) / n0) * grain
    v = -np.log(np.clip(trans, 1e-4, None)) if rng.random() < 0.7 else 1 - trans
    sel = v[field > 0.5]
    lo, hi = np.percentile(sel, u(0.1, 1.5)), np.percentile(sel, u(99.3, 99.95))
    v = np.clip((v - lo) / (hi - lo), 0, 1) ** u(0.6, 1.5)
    if rng.random() < 0.5:
        v = np.clip(v + u(0.3, 1.2) * (v - cv2.GaussianBlur(v, (0, 0), u(2, 8) / s)), 0, 1)
    if rng.random() < 0.3:
        c = u(4, 9)
        v = 1 / (1 + np.exp(-c * (v - 0.5)))
        v = (v - v.min()) / (v.max() - v.min())
    if rng.random() < 0.4:
        burn_text(rng, v, lms)
    img = np.round((u(0, 0.04) + v * u(0.55, 0.96)) * 65535).astype(np.uint16)
    for name in BONES:
        masks[name] &= (field > 0.5).astype(np.uint8)
    meta = {"generator": "benchmarks/independent_phantoms.py", "flexion_deg": an["flex"],
            "anterior": "right" if pose.px([(1, 0)])[0][0] > pose.px([(0, 0)])[0][0] else "left",
            "mirrored": pose.m < 0, "blumensaat_angle_deg": an["blum_angle"],
            "condyle_depth_mm": an["depth"]}
    ann = annotation_dict(sample_id, f"{sample_id}.png",
                          [RaterAnnotation(lms, cortex, "r1")], (s, s), None, None, meta)
    return img, masks, ann


def cortex_points(rng, an, pose, w, h):
    """2-5 points on the posterior shaft cortex from the highest visible level to near p_tmc."""
    top = 4.0
    while top < 160 and inside(pose.px([(-an["w"], an["y_tmc"] - top - 1)]), w, h, 0.02 * w):
        top += 1
    ds = np.linspace(top, rng.uniform(3, 8), int(rng.integers(2, 6)))
    return pose.px([(-an["w"], an["y_tmc"] - d) for d in ds])


def far_corner(lms, w, h, rank=0):
    """The image corner farthest (``rank`` 0) or second farthest (1) from the landmarks."""
    corners = np.array([(0.05 * w, 0.06 * h), (0.95 * w, 0.06 * h), (0.05 * w, 0.94 * h),
                        (0.95 * w, 0.94 * h)])
    return corners[np.argsort(-np.linalg.norm(corners[:, None] - lms[None], axis=2).min(1))[rank]]


def add_hardware(rng, mu, lms, s, an, pose):
    """Radiopaque ruler and lead side marker, in the attenuation map (they get the noise)."""
    h, w = mu.shape
    if rng.random() < 0.35:
        width, sr = int(rng.uniform(9, 14) / s), s * rng.uniform(0.9, 1.1)
        right = rng.random() < 0.5
        x0 = w - width - int(rng.uniform(0.01, 0.04) * w) if right else int(rng.uniform(0.01,
                                                                                       0.04) * w)
        if np.all(np.abs(lms[:, 0] - (x0 + width / 2)) > width + 0.05 * w):
            mu[:, x0:x0 + width] += 0.15
            for i, y in enumerate(np.arange(rng.uniform(5, 40), h - 5, 1 / sr)):
                size = 5 if i % 10 == 0 else 3.5 if i % 5 == 0 else 2
                xa = x0 + width - 1 if right else x0
                xb = xa - int(size / s) if right else xa + int(size / s)
                cv2.line(mu, (xa, int(y)), (xb, int(y)), 1.5, max(1, int(0.3 / s)))
    if rng.random() < 0.5:
        cx, cy = far_corner(lms, w, h)
        scale = 8 / s / 22
        text = "L" if rng.random() < 0.5 else "R"
        canvas = np.zeros(mu.shape, np.uint8)
        cv2.putText(canvas, text, (int(cx - 10 * scale), int(cy + 10 * scale)),
                    cv2.FONT_HERSHEY_SIMPLEX, scale, 255, max(2, int(2 * scale)), cv2.LINE_AA)
        mu += canvas.astype(np.float32) * (3.0 / 255)


def burn_text(rng, v, lms):
    """Burned-in annotation text (display space, after the noise: pure white or black)."""
    h, w = v.shape
    cx, cy = far_corner(lms, w, h, 1)  # the lead marker takes the farthest corner
    text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 3)), replace=False))
    scale = min(h, w) / 900 * rng.uniform(0.7, 1.3)
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_PLAIN, scale, 1)
    x = int(np.clip(cx - tw / 2, 2, max(2, w - tw - 2)))
    canvas = np.zeros(v.shape, np.uint8)
    cv2.putText(canvas, text, (x, int(cy)), cv2.FONT_HERSHEY_PLAIN, scale, 255,
                max(1, int(scale)), cv2.LINE_AA)
    a = canvas.astype(np.float32) / 255
    v[:] = v * (1 - a) + a * (1.0 if rng.random() < 0.8 else 0.0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for sub in ("images", "masks", "annotations"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(args.n):
        sample_id = f"indep_s{args.seed}_{i:04d}"
        img, masks, ann = render(np.random.default_rng([args.seed, i]), sample_id)
        cv2.imwrite(str(args.out / "images" / f"{sample_id}.png"), img)
        for name, m in masks.items():
            cv2.imwrite(str(args.out / "masks" / f"{sample_id}_{name}.png"), m * 255)
        write_annotation(args.out / "annotations" / f"{sample_id}.json", ann)
        print(f"{sample_id}: {img.shape[1]}x{img.shape[0]} px, "
              f"{ann['pixel_spacing_mm'][0]:.3f} mm/px, flexion {ann['meta']['flexion_deg']:.0f}")


if __name__ == "__main__":
    main()
