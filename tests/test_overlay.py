"""The overlay a clinician reads: the verdict, the scale and the legend say what is drawn, in full,
beside the radiograph; the scale bar reads on any background; the JSON ellipses say their sigma."""

from __future__ import annotations

import numpy as np
import pytest

from geometry.lines import Line
from geometry.plan_geometry import Plan
from planning.overlay import (
    MAX_PANEL_REASONS,
    Style,
    _window_visible,
    draw_plan,
    panel_text,
    wrap_text,
)
from planning.report import ellipse


def _plan(schoettle: np.ndarray, spacing=(0.2, 0.2), lines: bool = True) -> Plan:
    """LM1 is x = 50 (when ``lines``), p_blum (90, 100), p_tmc (50, 140), image 200 x 160."""
    lm1 = Line(np.array([50.0, 0.0]), np.array([0.0, 1.0])) if lines else None
    return Plan(
        landmarks=np.array([[90.0, 100.0], [50.0, 140.0]]), landmarks_network=np.zeros((2, 2)),
        peaks=np.array([0.9, 0.8]), lm1=lm1, lm1_support=40, lm1_points=np.zeros((0, 2)),
        lm1_rms=0.1, roi_peak=0.95,
        lm2=lm1.perpendicular_through(np.array([50.0, 140.0])) if lines else None,
        lm3=lm1.perpendicular_through(np.array([90.0, 100.0])) if lines else None,
        schoettle=schoettle, radius_mm=4.0, radius_px=20.0, lm_separation=8.0, spacing=spacing,
        image_shape=(200, 160), femur_side=-1, blum_offset=8.0, tmc_offset=0.0,
    )  # fmt: skip


def _texts(items: list[tuple[str, tuple[int, int, int]]]) -> list[str]:
    return [t for t, _ in items]


def test_panel_states_verdict_scale_source_and_warnings():
    plan = _plan(np.array([70.0, 120.0]))
    status, _ = panel_text(plan, True, ["a; b", "c"], "PixelSpacing", ["lossy JPEG"], False, False)
    text = _texts(status)
    assert text[:3] == ["NEEDS REVIEW (2 reasons):", "- a; b", "- c"]
    assert "scale: 0.2 mm/px from DICOM PixelSpacing" in text
    assert "warning: lossy JPEG" in text
    ok, _ = panel_text(plan, True, [], "user", None, False, False)
    assert _texts(ok)[0] == "review: no reason found"
    unreviewed, _ = panel_text(plan, True, None, None, None, False, False)
    assert not any("review" in t.lower() for t in _texts(unreviewed))
    many = [f"reason {i}" for i in range(MAX_PANEL_REASONS + 3)]
    status, _ = panel_text(plan, True, many, None, None, False, False)
    assert "  (+3 more in the JSON report)" in _texts(status)
    aniso, _ = panel_text(_plan(np.array([70.0, 120.0]), spacing=(0.1, 0.2)), True, [], "user",
                          None, False, False)
    assert "scale: 0.1 (rows) x 0.2 (columns) mm/px from --spacing (given by the user)" in _texts(
        aniso)
    unknown, _ = panel_text(_plan(np.array([70.0, 120.0]), spacing=None), True, [], None, None,
                            False, False)
    assert any(t.startswith("scale unknown") for t in _texts(unknown))


def test_legend_lists_only_what_is_drawn():
    full = _texts(panel_text(_plan(np.array([70.0, 120.0])), True, [], None, None, True, True)[1])
    assert full == ["femur", "patella", "tibia", "fibula", "LM1 posterior cortex",
                    "LM2 / LM3 perpendiculars", "p_blum", "p_tmc",
                    "Schoettle point, 2.5 mm reference circle",
                    "dashed ellipses: 2-sigma TTA spread",
                    "dashed square: the network's second look"]  # fmt: skip
    none = _plan(np.full(2, np.nan), lines=False)
    status, legend = panel_text(none, False, ["x"], None, None, False, False)
    assert _texts(legend) == ["p_blum", "p_tmc"]
    assert "no Schoettle point could be constructed" in _texts(status)


@pytest.mark.parametrize(
    ("window", "visible"),
    [({"x0": 20, "y0": 30, "side": 100}, True),  # inside
     ({"x0": -583, "y0": -400, "side": 1929}, False),  # around the whole image
     ({"x0": 500, "y0": 0, "side": 50}, False),  # beside it
     ({"x0": -50, "y0": -50, "side": 120}, True)],  # crossing a corner
)  # fmt: skip
def test_second_look_square_only_where_it_can_be_seen(window, visible):
    assert _window_visible(window, 200, 160) is visible


def test_long_reasons_wrap_whole_within_the_panel():
    st = Style(300, 300)
    text = "the whole image and the zoomed second look disagree on p_blum by 22.4 mm"
    lines = wrap_text(text, 150, st)
    assert len(lines) > 1 and " ".join(lines) == text  # nothing cut, nothing lost
    assert all(st.text_size(line)[0] <= 150 for line in lines)


def test_every_reason_is_shown_in_full_beside_a_tiny_image():
    img = np.full((100, 90), 0.4, np.float32)
    plan = _plan(np.array([70.0, 80.0]))
    reasons = ["the whole image and the zoomed second look disagree on p_blum by 22.4 mm"] * 3
    plain = draw_plan(img, plan, reasons=[])
    rgb = draw_plan(img, plan, reasons=reasons)
    assert rgb.shape[0] > 100  # the panel needed more rows than the image has: canvas grew
    assert np.array_equal(rgb[:100, :90], plain[:100, :90])  # the radiograph is untouched
    assert (rgb[100:, :90] == rgb[-1, 0]).all()  # the growth below the image is plain panel


def test_scale_bar_has_a_dark_plate_on_a_white_image():
    img = np.ones((400, 400), np.float32)
    plan = _plan(np.full(2, np.nan), spacing=(0.2, 0.2), lines=False)
    rgb = draw_plan(img, plan)[:400, :400].astype(int)
    white = np.all(rgb >= 250, axis=-1)
    dark = np.all(rgb <= 10, axis=-1)
    # bottom left: a white bar (0.2 * 400 px * 0.2 mm/px = 16 mm -> a 10 mm bar = 50 px) on a
    # black plate: rows that start dark (the plate's margin) and hold a long white run
    def run(y: int) -> tuple[int, int]:
        """(start, end) of the first white run right of the plate's left edge in row y."""
        plate = int(np.argmax(dark[y]))
        start = plate + int(np.argmax(white[y, plate:]))
        return start, start + int(np.argmin(white[y, start:]))

    rows = [y for y in range(300, 400) if dark[y, :6].any() and np.diff(run(y))[0] >= 40]
    assert rows, "no bar on a plate"
    y = rows[len(rows) // 2]
    start, end = run(y)
    assert end - start == pytest.approx(50, abs=3)
    assert dark[y, start - 2] and dark[y, end + 1]  # black beside both ends
    below = max(rows) + 2
    assert dark[below, start:end].mean() > 0.9  # and below the bar


def test_json_ellipse_is_one_sigma_with_an_axis_angle_in_0_180():
    e = ellipse(np.diag([9.0, 4.0]))
    assert e == pytest.approx({"major": 3.0, "minor": 2.0, "angle_deg": 0.0, "sigma": 1})
    a = np.radians(150.0)  # major axis along 150 deg (the same axis as -30 deg)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    e = ellipse(r @ np.diag([16.0, 1.0]) @ r.T)
    assert e["angle_deg"] == pytest.approx(150.0) and e["major"] == pytest.approx(4.0)
    assert ellipse(np.diag([np.nan, 1.0])) is None
