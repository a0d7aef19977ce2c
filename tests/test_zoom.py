"""The second look: window frames map pixels exactly, the window shows the knee at the training
scale, and a small knee on a large canvas is planned through it end to end."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_tta import DOT_A, DOT_B, BlobNet, scene

from geometry.frame import PadResize, WindowResize
from planning.predict import NetworkMaps, predict_image
from planning.zoom import CONDYLE_RANGE, CONDYLE_TARGET, condyle_fraction, knee_window


def test_pad_is_numpy_pad_for_the_centred_square():
    rng = np.random.default_rng(0)
    for h, w in ((60, 80), (80, 60), (33, 33), (1, 7)):
        img = rng.random((h, w, 2)).astype(np.float32)
        f = PadResize.from_shape(h, w, 16)
        side = max(h, w)
        ref = np.pad(img, ((f.pad_top, side - h - f.pad_top), (f.pad_left, side - w - f.pad_left),
                           (0, 0)))
        np.testing.assert_array_equal(f.pad(img), ref)
        np.testing.assert_array_equal(f.invert_image(ref, cv2.INTER_NEAREST), img)


@pytest.mark.parametrize("centre", [(70.0, 10.0), (40.0, 30.0), (-5.0, 70.0), (200.0, 200.0)])
def test_window_is_a_crop_with_zeros_outside(centre):
    """At scale 1 the window is exactly the image's pixels in [x0, x0 + side) x [y0, y0 + side)
    (zeros outside), and ``invert_image`` puts them back (zeros where the window saw nothing)."""
    rng = np.random.default_rng(1)
    img = rng.random((60, 80)).astype(np.float32)
    w = WindowResize.around(60, 80, np.array(centre), 40, 40)
    x0, y0 = -w.pad_left, -w.pad_top
    assert (x0, y0) == (round(centre[0] + 0.5 - 20), round(centre[1] + 0.5 - 20))
    big = np.zeros((60 + 2 * 300, 80 + 2 * 300), np.float32)  # an independent crop
    big[300:360, 300:380] = img
    ref = big[300 + y0 : 340 + y0, 300 + x0 : 340 + x0]
    np.testing.assert_array_equal(w.apply(img), ref)
    back = w.invert_image(ref, cv2.INTER_NEAREST)
    seen = np.zeros_like(img, bool)
    seen[max(y0, 0) : max(y0 + 40, 0), max(x0, 0) : max(x0 + 40, 0)] = True
    np.testing.assert_array_equal(back[seen], img[seen])
    assert not back[~seen].any()
    pts = np.array([[12.25, 30.5], [79.0, 0.0]])
    np.testing.assert_allclose(w.to_network(pts), pts - [x0, y0])
    w2 = WindowResize.around(60, 80, np.array(centre), 40, 80)  # scale 2, half-pixel centres
    np.testing.assert_allclose(w2.to_network(pts), (pts - [x0, y0] + 0.5) * 2 - 0.5)
    np.testing.assert_allclose(w2.to_original(w2.to_network(pts)), pts)


def femur_image(side: int, width: float, centre: tuple[float, float]) -> np.ndarray:
    """A femur-like mask: a shaft going up from a wider condyle disc of diameter ``width``."""
    m = np.zeros((side, side), np.uint8)
    cx, cy = centre
    cv2.circle(m, (round(cx), round(cy)), round(width / 2), 1, -1)
    cv2.rectangle(m, (round(cx - width / 4), 0), (round(cx + width / 4), round(cy)), 1, -1)
    return m.astype(np.float32)


def maps_of(femur: np.ndarray, frame: PadResize) -> NetworkMaps:
    seg = np.zeros((4, frame.size, frame.size), np.float32)
    seg[0] = frame.apply(femur, cv2.INTER_LINEAR)
    empty = np.zeros((2, frame.size, frame.size), np.float32)
    return NetworkMaps(seg, empty, empty[:1], frame)


@pytest.mark.parametrize("width", [24.0, 40.0, 200.0, 280.0])
def test_window_shows_the_condyles_at_the_training_scale(width):
    side = 400
    femur = femur_image(side, width, (200.0, 255.0))
    frame = PadResize.from_shape(side, side, 128)
    first = maps_of(femur, frame)
    frac = condyle_fraction(first)
    assert frac == pytest.approx(width / side, rel=0.1)
    window = knee_window(first, (side, side))
    if CONDYLE_RANGE[0] <= frac <= CONDYLE_RANGE[1]:
        assert window is None
        return
    assert isinstance(window, WindowResize)
    assert window.side == pytest.approx(side * frac / CONDYLE_TARGET, abs=1.0)
    second = maps_of(femur, window)
    assert condyle_fraction(second) == pytest.approx(CONDYLE_TARGET, rel=0.1)
    # centred on the condyles (the disc's centre: half a condyle width above the distal end)
    centre = np.array([-window.pad_left, -window.pad_top]) + window.side / 2
    np.testing.assert_allclose(centre, (200.0, 255.0), atol=4.0)


def test_no_femur_no_window():
    frame = PadResize.from_shape(300, 200, 64)
    assert knee_window(maps_of(np.zeros((300, 200), np.float32), frame), (300, 200)) is None


def test_in_range_image_gets_one_pass():
    img = scene()
    np.testing.assert_array_equal(predict_image(BlobNet(), img, zoom=True).seg,
                                  predict_image(BlobNet(), img).seg)


def knee_scene() -> np.ndarray:
    """The stand-in scene with condyles: the bar widens at its distal end (a femur's shape, so
    that the second look takes it for one)."""
    img = scene()
    cond = np.zeros_like(img)
    cv2.ellipse(cond, (60, 100), (32, 12), 0, 0, 360, 1.0, -1)
    img = np.where((cond > 0) & (img == 0), np.float32(0.5), img)
    cv2.circle(img, DOT_A, 4, 1.0, -1)  # dots that survive the second look's 0.54x scale
    cv2.circle(img, DOT_B, 4, 0.85, -1)
    return img


def test_shapes_that_are_no_femur_get_no_second_look():
    """A bar without condyles (or the whole frame) is no femur to zoom to: one pass only."""
    canvas = np.zeros((512, 512), np.float32)
    canvas[60:188, 300:428] = scene()  # the plain bar, small: out of range, but not femur-like
    maps = predict_image(BlobNet(), canvas, zoom=True)
    assert maps.first_look is None and not isinstance(maps.frame, WindowResize)


def test_small_knee_on_a_large_canvas_is_planned_through_the_window(tmp_path):
    """The stand-in knee pasted into a 4x black canvas: the first pass sees it at 1/4 of the
    training scale; the plan comes from the second look, with the dots where they are."""
    from planning.plan import run_plan

    canvas = np.zeros((512, 512), np.float32)
    off = np.array([300, 60])
    canvas[off[1] : off[1] + 128, off[0] : off[0] + 128] = knee_scene()
    path = tmp_path / "canvas.png"
    cv2.imwrite(str(path), np.round(canvas * 65535).astype(np.uint16))
    zoomed = run_plan(path, BlobNet(), tmp_path / "z", tta=4, detect_sphere=False).report
    plain = run_plan(path, BlobNet(), tmp_path / "p", tta=0, detect_sphere=False,
                     zoom=False).report
    win = zoomed["settings"]["zoom_window"]
    assert plain["settings"]["zoom_window"] is None and win is not None
    assert win["side"] < 256 and win["x0"] <= off[0] + 40 and win["x0"] + win["side"] >= off[0] + 80
    for name, dot in (("p_blum", DOT_A), ("p_tmc", DOT_B)):
        got = np.array(zoomed["landmarks"][name]["px"])
        np.testing.assert_allclose(got, np.array(dot) + off, atol=1.0)
    assert zoomed["uncertainty"]["points"]["p_blum"]["spread"] < 1.5
    # the whole image's pass found the same dots, to its 4x coarser pixel: the looks agree
    looks = zoomed["uncertainty"]["look_shift_px"]
    assert set(looks) == {"p_blum", "p_tmc"} and max(looks.values()) < 4.0
    assert "looks_disagree" not in zoomed["review_codes"]
    assert plain["uncertainty"] is None or plain["uncertainty"]["look_shift_px"] is None


def test_overlay_draws_the_window(tmp_path):
    """The overlay outlines the second look's square (dashed, in WINDOW_COLOUR) and says so."""
    from planning.overlay import WINDOW_COLOUR, draw_plan

    img = scene()
    maps = predict_image(BlobNet(), img)
    from geometry.plan_geometry import plan_from_maps

    plan = plan_from_maps(maps.seg, maps.lm, maps.roi, frame=maps.frame)
    plain = draw_plan(img, plan)
    rgb = draw_plan(img, plan, window={"x0": 20, "y0": 30, "side": 60})
    assert rgb.shape[0] >= plain.shape[0]  # (its legend line may make the panel taller)
    assert WINDOW_COLOUR[2] - WINDOW_COLOUR[0] > 60 and WINDOW_COLOUR[0] == WINDOW_COLOUR[1]

    def lilac(a: np.ndarray) -> np.ndarray:  # the window's hue, anti-aliased onto black
        r, g, b = (a[:, :128, i].astype(int) for i in range(3))
        return (b - r > 25) & (r > 40) & (np.abs(r - g) < 15)

    ys, xs = np.nonzero(lilac(rgb))
    assert len(xs) > 60  # dashes: about half of the 240 px perimeter
    assert xs.min() >= 18 and xs.max() <= 81 and ys.min() >= 28 and ys.max() <= 91
    side = (np.abs(xs - 19.5) < 2) | (np.abs(xs - 79.5) < 2)
    assert side[np.abs(ys - 60) < 20].all()  # mid-height: only on the left and right edges
    assert not lilac(plain).any()


def test_window_resampling_matches_the_padded_square():
    """``apply`` (area weights on the window's overlap with the image) equals OpenCV's
    INTER_AREA of the materialised zero-padded window, shrinking or enlarging, on unblurred
    noise (a box-then-bilinear version was 22 % softer and let zeros bleed in at the edges);
    ``invert_image`` equals INTER_LINEAR of the map grown to the window, then cropped."""
    rng = np.random.default_rng(3)
    img = rng.random((90, 120)).astype(np.float32)
    for centre, side, size in (((50.0, 40.0), 150, 64), ((30.0, 70.0), 48, 64),
                               ((60.0, 45.0), 120, 32), ((10.0, 80.0), 97, 41)):
        w = WindowResize.around(90, 120, np.array(centre), side, size)
        square = WindowResize.pad(w, img)  # the whole window, materialised (small here)
        ref = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
        np.testing.assert_allclose(w.apply(img), ref, atol=1e-5)
        maps = rng.random((size, size)).astype(np.float32)
        up = cv2.resize(maps, (w.side, w.side), interpolation=cv2.INTER_LINEAR)
        rows, cols, sq_rows, sq_cols = w._overlap()
        got = w.invert_image(maps)
        np.testing.assert_allclose(got[rows, cols], up[sq_rows, sq_cols], atol=1e-4)


def test_a_huge_window_costs_the_memory_of_the_image():
    """A strip zoomed out 4x: its window is ~36 kpx square (5 GB as float32), the frame maps
    never hold more than the image (run in a fresh process: its peak memory is read)."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import resource, numpy as np\n"
        "from geometry.frame import WindowResize\n"
        "img = np.random.default_rng(0).random((64, 8940)).astype(np.float32)\n"
        "w = WindowResize.around(64, 8940, np.array([4470.0, 32.0]), 35760, 128)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "x = w.apply(img)\n"
        "back = w.invert_image(np.ones((128, 128), np.float32))\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "assert x.shape == (128, 128) and back.shape == (64, 8940) and back.all()\n"
        "print(grown // 1024)\n"
    )
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip()) < 200  # MB (the window alone would be 5000)


def test_what_counts_as_a_femur_is_the_users_review_config(tmp_path):
    """The zoom's femur bounds are the review's: a user's --review-config that asks for a longer
    shaft than this femur has turns the second look off, as it makes the review flag it."""
    from dataclasses import replace

    from planning.review import ReviewConfig

    side = 400
    frame = PadResize.from_shape(side, side, 128)
    first = maps_of(femur_image(side, 24.0, (200.0, 255.0)), frame)  # small: out of range
    cfg = ReviewConfig.load()
    assert isinstance(knee_window(first, (side, side), cfg), WindowResize)
    assert knee_window(first, (side, side), replace(cfg, min_elongation=50.0)) is None
