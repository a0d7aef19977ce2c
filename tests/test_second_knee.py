"""The second-knee search: windows tile the image as computed by hand, a drawn second knee is
found where it was drawn, and a lone knee, a femur without a tibia or a knee of another scale
are not called one; windows that show what the plan's maps show cost no network pass."""

from __future__ import annotations

import numpy as np
import pytest

from geometry.frame import PadResize, WindowResize
from planning.predict import predict_images
from planning.second_knee import MAX_WINDOWS, second_knee, tiling, window_centres

# the stub network reads bones from these grey levels; every blend at an outline (the network
# input is an area-resampled window) lies between two of them, so no femur's rim reads as tibia
FEMUR, TIBIA, SOFT = 1.0, 0.25, 0.5


class GreyNet:
    """A stand-in network: femur where the image is above 0.9, tibia where it lies in
    (0.2, 0.3); counts the images it is given."""

    image_size = 64
    codec = None
    takes_numpy = True

    def __init__(self) -> None:
        self.seen = 0

    def predict_maps(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.seen += len(x)
        img = x[:, 0]
        zero = np.zeros_like(img)
        seg = np.stack([img > 0.9, zero, (img > 0.2) & (img < 0.3), zero], 1).astype(np.float32)
        return {"seg": seg, "lm": np.zeros((len(x), 2) + img.shape[1:], np.float32),
                "roi": np.zeros((len(x), 1) + img.shape[1:], np.float32)}  # fmt: skip


def draw_knee(img: np.ndarray, x: float, scale: float = 1.0, tibia: bool = True) -> None:
    """A femur (a shaft 24 px wide down to condyles 44 px wide, centred at (x, 125)) and a
    tibia below it, all lengths times ``scale``."""
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    c = 125 * scale
    shaft = (np.abs(xs - x) <= 12 * scale) & (ys <= c)
    condyles = (xs - x) ** 2 + (ys - c) ** 2 <= (22 * scale) ** 2
    img[shaft | condyles] = FEMUR
    if tibia:
        img[(np.abs(xs - x) <= 20 * scale) & (ys >= c + 28 * scale)
            & (ys <= c + 80 * scale)] = TIBIA  # fmt: skip


def femur(shape: tuple[int, int], x: float, scale: float = 1.0) -> np.ndarray:
    """The femur of the knee ``draw_knee`` draws at ``x``, (H, W) bool."""
    one = np.zeros(shape, np.float32)
    draw_knee(one, x, scale, tibia=False)
    return one > 0


def planned_maps(net: GreyNet, img: np.ndarray, x: float = 120.0):
    """The plan's maps: a window at the training scale around the knee at ``x`` (as the second
    look gives) and that knee's femur in original pixels."""
    frame = WindowResize.around(*img.shape, np.array([x, 125.0]), 44 / 0.27, net.image_size)
    return predict_images(net, [img], frames=[frame])[0], femur(img.shape, x)


def test_window_centres_by_hand():
    # 100 px in windows of 40: (100 - 40) / 20 = 3 steps -> 4 windows, first and last flush
    np.testing.assert_allclose(window_centres(100, 40), [19.5, 39.5, 59.5, 79.5])
    assert window_centres(30, 40) == [14.5]  # fits: one centred window
    for length, side in ((100, 40), (481, 163.0), (1000, 70.0)):
        cs = np.array(window_centres(length, side))
        assert cs[0] - side / 2 == pytest.approx(-0.5) and cs[-1] + side / 2 == pytest.approx(
            length - 0.5)  # the first and the last window end at the image's edges
        assert np.all(np.diff(cs) <= side / 2 + 1e-9)  # half a window's overlap at least


def test_tiling_caps_the_windows():
    side, centres = tiling(300, 480, 163.0)  # (300 - 163) / 81.5 -> 2 steps, 3 rows
    assert side == 163.0 and len(centres) == 5 * 3
    side, centres = tiling(4000, 6000, 100.0)  # 77 x 119 windows of 100 px: enlarged
    assert len(centres) <= MAX_WINDOWS and side > 100.0
    assert len(window_centres(4000, side / 1.25)) * len(window_centres(6000, side / 1.25)) \
        > MAX_WINDOWS  # one step smaller would not have fitted


def test_second_knee_found_where_drawn():
    img = np.full((300, 480), SOFT, np.float32)
    draw_knee(img, 120.0)
    draw_knee(img, 360.0)
    net = GreyNet()
    maps, femur = planned_maps(net, img)
    found = second_knee(net, img, maps, femur)
    assert found is not None
    # its condyles: the circle's centre lies 22 px (half their width) up from the distal end
    assert np.hypot(found.centre[0] - 360.0, found.centre[1] - 125.0) < 8.0
    assert found.condyle_width_px == pytest.approx(44.0, rel=0.15)
    assert found.apart == pytest.approx(240.0 / 44.0, rel=0.15)


@pytest.mark.parametrize("second", ["none", "no_tibia", "half_size"])
def test_no_second_knee(second):
    img = np.full((300, 480), SOFT, np.float32)
    draw_knee(img, 120.0)
    if second == "no_tibia":  # a femur-like shape alone is not a knee
        draw_knee(img, 360.0, tibia=False)
    elif second == "half_size":  # a knee of half the scale: not the same film's other knee
        draw_knee(img, 360.0, scale=0.5)
    net = GreyNet()
    maps, femur = planned_maps(net, img)
    assert second_knee(net, img, maps, femur) is None


def test_half_size_knee_is_femur_like_alone():
    """(The half-size knee above is refused for its scale, not because it is no knee: planned
    by itself it is found as a second knee of the small one.)"""
    img = np.full((300, 480), SOFT, np.float32)
    draw_knee(img, 120.0, scale=0.5)
    draw_knee(img, 360.0, scale=0.5)
    net = GreyNet()
    frame = WindowResize.around(300, 480, np.array([120.0, 62.5]), 22 / 0.27, net.image_size)
    maps = predict_images(net, [img], frames=[frame])[0]
    assert second_knee(net, img, maps, femur(img.shape, 120.0, 0.5)) is not None


@pytest.mark.parametrize(("side", "run"), [(163, False), (420, True)])
def test_a_window_the_plan_already_saw_costs_no_network_pass(side, run):
    """A knee that fills a square image at the training scale (condyles 44 px of 163): the one
    window the tiling asks for is the square the plan's own maps show, so no network pass is
    made; on a 420 px square (condyles 10 % of it) the windows (about 4 x 3) are run."""
    img = np.full((min(side, 300), side), SOFT, np.float32)
    x = side / 2 if side < 420 else 120.0
    draw_knee(img, x)
    net = GreyNet()
    maps = predict_images(net, [img], frames=[PadResize.from_shape(*img.shape, 64)])[0]
    net.seen = 0
    second_knee(net, img, maps, femur(img.shape, x))
    assert (net.seen >= 9) if run else (net.seen == 0)


def test_femur_pieces_touching_the_planned_femur_are_dropped():
    """The planned femur seen again through a window is not a second knee: pieces touching it
    are dropped (here the planned femur is taken to reach into the second knee's femur)."""
    img = np.full((300, 480), SOFT, np.float32)
    draw_knee(img, 120.0)
    draw_knee(img, 360.0)
    net = GreyNet()
    maps, planned = planned_maps(net, img)
    assert second_knee(net, img, maps, planned) is not None
    assert second_knee(net, img, maps, planned | femur(img.shape, 360.0)) is None


@pytest.mark.parametrize(("x", "whole"), [(440.0, True), (462.0, False)])
def test_a_knee_cut_by_the_image_edge_is_not_counted(x, whole):
    """Its condyles (44 px wide) must lie whole in the image: centre >= 22 px inside it."""
    img = np.full((300, 480), SOFT, np.float32)
    draw_knee(img, 120.0)
    draw_knee(img, x)
    net = GreyNet()
    maps, planned = planned_maps(net, img)
    assert (second_knee(net, img, maps, planned) is not None) == whole


class OneLookNet(GreyNet):
    """Sees femurs only in batches of several windows (the tiling), not in the single window the
    confirmation centres on a candidate: a stand-in for a shape that a window's position made.
    (The tiling below runs 12-15 windows in batches of four, none alone.)"""

    def predict_maps(self, x: np.ndarray) -> dict[str, np.ndarray]:
        maps = super().predict_maps(x)
        if len(x) == 1:
            maps["seg"][:, 0] = 0.0
        return maps


def test_a_knee_not_seen_again_when_centred_is_not_counted():
    img = np.full((300, 480), SOFT, np.float32)
    draw_knee(img, 120.0)
    draw_knee(img, 360.0)
    maps, planned = planned_maps(GreyNet(), img)
    net = OneLookNet()
    assert second_knee(net, img, maps, planned) is None
    assert second_knee(GreyNet(), img, maps, planned) is not None


def test_the_planned_knee_itself_is_not_a_second_knee():
    """Were the planned femur's pieces not dropped (here: an empty planned mask), the windows
    would find the planned knee itself: less than 1.5 condyle widths from itself, it is none."""
    img = np.full((300, 480), SOFT, np.float32)
    draw_knee(img, 120.0)
    net = GreyNet()
    maps, _ = planned_maps(net, img)
    assert second_knee(net, img, maps, np.zeros(img.shape, bool)) is None


def test_report_and_overlay_show_the_second_knee():
    from test_overlay import _plan

    from planning.overlay import panel_text
    from planning.report import build_report
    from planning.second_knee import SecondKnee

    knee = SecondKnee((300.21, 120.0), 44.04, 4.217)
    assert knee.as_dict() == {"centre_px": [300.2, 120.0], "condyle_width_px": 44.0,
                              "apart_condyle_widths": 4.22}
    plan = _plan(np.array([70.0, 120.0]))
    kw = {"image_path": "x.png", "image_shape": (200, 160), "spacing_source": None,
          "checkpoint": None, "overlay_path": None}
    assert build_report(plan, **kw, second_knee=knee)["second_knee"] == knee.as_dict()
    assert build_report(plan, **kw)["second_knee"] is None
    _, legend = panel_text(plan, True, [], None, None, False, False, True)
    assert any("second knee" in text for text, _ in legend)
    _, legend = panel_text(plan, True, [], None, None, False, False)
    assert not any("second knee" in text for text, _ in legend)


class ShiftedLookNet(GreyNet):
    """The confirmation's single window sees the bones ``shift`` network px to the right (the
    tiling's windows run in batches of four): a candidate found again elsewhere."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift

    def predict_maps(self, x: np.ndarray) -> dict[str, np.ndarray]:
        maps = super().predict_maps(x)
        if len(x) == 1:
            maps["seg"] = np.roll(maps["seg"], self.shift, axis=3)
        return maps


@pytest.mark.parametrize(("shift", "found"), [(3, True), (14, False)])
def test_a_candidate_must_be_found_again_where_it_was(shift, found):
    """The confirmation window (about 163 px at 64 px: 2.5 px per network px) sees the knee
    7.5 px away (under half its 44 px condyles: the same knee) or 35 px away (not)."""
    img = np.full((300, 480), SOFT, np.float32)
    draw_knee(img, 120.0)
    draw_knee(img, 360.0)
    maps, planned = planned_maps(GreyNet(), img)
    assert (second_knee(ShiftedLookNet(shift), img, maps, planned) is not None) == found
