"""Real-world distractors of the physics style, drawn as path lengths (mm) on the coarse grid:
calibration rings, box markers and rulers, metal implants (screws, plates, suture anchors,
staples, K-wires), a bone tunnel, a splint, buttons and zips. None of them touches the masks."""

from __future__ import annotations

import cv2
import numpy as np

from datamodules.phantoms import extras
from datamodules.phantoms.physics import PathMaps

SUB = 16  # fixed-point factor of the OpenCV drawing calls (4 bits)


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(p[0] * SUB)), int(round(p[1] * SUB))


def _poly(layer: np.ndarray, pts: np.ndarray, value: float) -> None:
    cv2.fillPoly(layer, [np.round(np.asarray(pts) * SUB).astype(np.int32)], value, cv2.LINE_AA, 4)


def _rect(c: np.ndarray, d: np.ndarray, length: float, width: float) -> np.ndarray:
    n = np.array([-d[1], d[0]])
    return np.array([c - d * length / 2 - n * width / 2, c + d * length / 2 - n * width / 2,
                     c + d * length / 2 + n * width / 2, c - d * length / 2 + n * width / 2])


def _spot(rng: np.random.Generator, shape, field: np.ndarray, avoid: np.ndarray, gs: float,
          on: np.ndarray | None = None, clear_mm: float = 15.0) -> np.ndarray:
    """A grid point inside the field's bounding box (on ``on`` when given), ``clear_mm`` from
    every ``avoid`` point when possible."""
    x0, y0 = field.min(0)
    x1, y1 = field.max(0)
    cand = np.argwhere(on[:: 4, :: 4])[:, ::-1] * 4.0 if on is not None and on.any() else None
    c = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    for _ in range(20):
        if cand is not None:
            c = cand[int(rng.integers(len(cand)))].astype(np.float64)
        else:
            c = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
        if np.min(np.linalg.norm(avoid - c, axis=1)) * gs > clear_mm:
            break
    return c


def _direction(rng: np.random.Generator) -> np.ndarray:
    a = rng.uniform(0, np.pi)
    return np.array([np.cos(a), np.sin(a)])


def screw(rng, layer, c, gs) -> str:
    """Threaded screw with a head: steel chord ~ its diameter."""
    d = _direction(rng)
    n = np.array([-d[1], d[0]])
    length, dia = rng.uniform(20.0, 70.0) / gs, rng.uniform(3.5, 7.5) / gs
    t = np.linspace(-0.5, 0.5, 60)[:, None] * length
    pitch = rng.uniform(1.5, 3.0) / gs
    wave = 0.5 * dia * (0.8 + 0.2 * np.abs(np.sin(np.pi * t / pitch)))
    top = c + t * d + wave * n
    bot = c + t * d - wave * n
    _poly(layer, np.concatenate([top, bot[::-1]]), rng.uniform(0.6, 0.9) * dia * gs)
    head = c - d * length / 2
    cv2.circle(layer, _pt(head), int(0.9 * dia * SUB), dia * gs * 1.2, -1, cv2.LINE_AA, 4)
    return "screw"


def plate(rng, layer, c, gs) -> str:
    """Plate with screw holes and screws across it."""
    d = _direction(rng)
    length, wid = rng.uniform(50.0, 150.0) / gs, rng.uniform(10.0, 16.0) / gs
    tmp = np.zeros_like(layer)
    _poly(tmp, _rect(c, d, length, wid), rng.uniform(3.0, 6.0))
    for t in np.linspace(-0.4, 0.4, int(rng.integers(3, 8))):
        cv2.circle(tmp, _pt(c + t * length * d), int(0.3 * wid * SUB), 0.0, -1, cv2.LINE_AA, 4)
        if rng.random() < 0.7:
            n = np.array([-d[1], d[0]])
            _poly(tmp, _rect(c + t * length * d, n, rng.uniform(20, 45) / gs, 4.0 / gs), 4.5)
    layer += tmp
    return "plate"


def anchor(rng, layer, c, gs) -> str:
    """Suture anchor: a small threaded cone."""
    d = _direction(rng)
    n = np.array([-d[1], d[0]])
    ln, wd = rng.uniform(8.0, 15.0) / gs, rng.uniform(3.0, 5.5) / gs
    _poly(layer, np.array([c - n * wd / 2, c + n * wd / 2, c + d * ln]), wd * gs * 0.8)
    return "anchor"


def staple(rng, layer, c, gs) -> str:
    """U-shaped staple."""
    d = _direction(rng)
    n = np.array([-d[1], d[0]])
    wd, ln = rng.uniform(8.0, 20.0) / gs, rng.uniform(8.0, 18.0) / gs
    a, b = c - n * wd / 2, c + n * wd / 2
    pts = np.array([a + d * ln, a, b, b + d * ln])
    th = max(1, int(round(rng.uniform(1.2, 2.0) / gs)))
    cv2.polylines(layer, [np.round(pts * SUB).astype(np.int32)], False, 1.8, th, cv2.LINE_AA, 4)
    return "staple"


def kwire(rng, layer, c, gs) -> str:
    """Long thin K-wire."""
    d = _direction(rng)
    ln = rng.uniform(50.0, 160.0) / gs
    dia = rng.uniform(1.2, 2.5)
    th = max(1, int(round(dia / gs)))
    cv2.line(layer, _pt(c - d * ln / 2), _pt(c + d * ln / 2), dia, th, cv2.LINE_AA, 4)
    return "kwire"


IMPLANTS = (screw, plate, anchor, staple, kwire)


def rings(rng, layer, c, gs) -> str:
    """Calibration ring (wire loop seen at an angle: an ellipse)."""
    r = rng.uniform(10.0, 25.0) / gs
    axes = (int(r * SUB), int(r * rng.uniform(0.2, 1.0) * SUB))
    th = max(1, int(round(rng.uniform(1.0, 2.5) / gs)))
    cv2.ellipse(layer, _pt(c), axes, rng.uniform(0, 180), 0, 360, 2.0, th, cv2.LINE_AA, 4)
    return "ring"


def box_marker(rng, layer, c, gs) -> str:
    """Box-shaped calibration marker: a metal frame with beads at known spacing."""
    d = _direction(rng)
    side = rng.uniform(20.0, 45.0) / gs
    box = _rect(c, d, side, side * rng.uniform(0.6, 1.0))
    th = max(1, int(round(rng.uniform(1.0, 2.5) / gs)))
    cv2.polylines(layer, [np.round(box * SUB).astype(np.int32)], True, 2.5, th, cv2.LINE_AA, 4)
    for p in box:
        cv2.circle(layer, _pt(p), int(rng.uniform(1.5, 3.0) / gs * SUB), 4.0, -1, cv2.LINE_AA, 4)
    return "box_marker"


def tunnel(rng, maps: PathMaps, c, gs) -> str:
    """Bone tunnel from earlier surgery: less bone along a drilled channel, sclerotic walls."""
    d = _direction(rng)
    ln, wd = rng.uniform(25.0, 50.0) / gs, rng.uniform(7.0, 11.0) / gs
    rect = _rect(c, d, ln, wd)
    hole = np.zeros_like(maps.cortex)
    _poly(hole, rect, 1.0)
    hole = cv2.GaussianBlur(hole, (0, 0), max(0.5, 0.5 / gs))
    maps.cancellous *= 1.0 - 0.7 * hole
    walls = np.zeros_like(hole)
    th = max(1, int(round(0.8 / gs)))
    for a, b in ((rect[0], rect[1]), (rect[3], rect[2])):
        cv2.line(walls, _pt(a), _pt(b), 1.0, th, cv2.LINE_AA, 4)
    maps.cortex += walls * np.float32(rng.uniform(2.0, 5.0))
    return "tunnel"


def splint(rng, layer, field, gs) -> str:
    """A splint: a long radiolucent-ish plastic strip across the field with denser straps."""
    x0, y0 = field.min(0)
    x1, y1 = field.max(0)
    c = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
    d = _direction(rng)
    ln = 2.0 * max(x1 - x0, y1 - y0)
    _poly(layer, _rect(c, d, ln, rng.uniform(25.0, 50.0) / gs), rng.uniform(8.0, 30.0))
    n = np.array([-d[1], d[0]])
    for t in rng.uniform(-0.3, 0.3, size=int(rng.integers(1, 4))):
        _poly(layer, _rect(c + t * ln * d, n, 150.0 / gs, rng.uniform(20, 40) / gs),
              rng.uniform(3.0, 8.0))  # fmt: skip
    return "splint"


def buttons(rng, metal, plastic, field, gs) -> str:
    """Buttons (plastic discs with holes) or a zip (a row of small metal teeth)."""
    x0, y0 = field.min(0)
    x1, y1 = field.max(0)
    c = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
    if rng.random() < 0.5:
        for i in range(int(rng.integers(1, 4))):
            p = c + i * np.array([0.0, rng.uniform(15.0, 25.0) / gs])
            r = rng.uniform(5.0, 10.0) / gs
            cv2.circle(plastic, _pt(p), int(r * SUB), rng.uniform(3.0, 6.0), -1, cv2.LINE_AA, 4)
            for j in range(4):
                q = p + 0.3 * r * np.array([np.cos(j * np.pi / 2), np.sin(j * np.pi / 2)])
                cv2.circle(plastic, _pt(q), int(0.12 * r * SUB), 0.0, -1, cv2.LINE_AA, 4)
        return "buttons"
    d = _direction(rng)
    n = np.array([-d[1], d[0]])
    step = rng.uniform(1.5, 3.0) / gs
    for i in range(int(rng.uniform(40.0, 120.0) / gs / step)):
        p = c + i * step * d + (i % 2 - 0.5) * 2.0 / gs * n
        _poly(metal, _rect(p, n, 4.0 / gs, 0.6 * step), 0.5)
    return "zip"


def add_all(rng: np.random.Generator, cfg, maps: PathMaps, gs: float, field: np.ndarray,
            avoid: np.ndarray, bone: np.ndarray, meta: dict) -> None:
    """Draw each enabled distractor (probabilities in ``cfg``) into ``maps``; record in meta."""
    shape = maps.metal.shape
    if rng.random() < cfg.p_rings:
        meta["rings"] = rings(rng, maps.metal, _spot(rng, shape, field, avoid, gs), gs)
    if rng.random() < cfg.p_box_marker:
        meta["box_marker"] = box_marker(rng, maps.metal, _spot(rng, shape, field, avoid, gs), gs)
    if rng.random() < cfg.p_ruler:
        layer = np.zeros_like(maps.metal)
        x0, y0 = field.min(0)
        x1, y1 = field.max(0)
        extras.ruler(rng, layer, gs, np.array([x0, y0, x1, y1]))
        maps.metal += layer * np.float32(2.0)
        meta["ruler"] = True
    if rng.random() < cfg.p_metal:
        kinds = []
        for _ in range(int(rng.integers(1, 4))):
            fn = IMPLANTS[int(rng.integers(len(IMPLANTS)))]
            kinds.append(fn(rng, maps.metal, _spot(rng, shape, field, avoid, gs, bone), gs))
        meta["metal"] = kinds
    if rng.random() < cfg.p_tunnel:
        meta["tunnel"] = tunnel(rng, maps, _spot(rng, shape, field, avoid, gs, bone, 20.0), gs)
    if rng.random() < cfg.p_splint:
        meta["splint"] = splint(rng, maps.plastic, field, gs)
    if rng.random() < cfg.p_buttons:
        meta["buttons"] = buttons(rng, maps.metal, maps.plastic, field, gs)
