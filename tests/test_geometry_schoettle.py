"""Schoettle construction: hand-computed cases to 1e-6, tangency, sides, degeneracies."""

import numpy as np
import pytest

from geometry.lines import Line
from geometry.schoettle import schoettle_point


def test_vertical_lm1_by_hand():
    lm1 = Line(np.zeros(2), np.array([0.0, 1.0]))  # x = 0; normal (-1, 0)
    res = schoettle_point(lm1, [0.5, 10.0], [4.0, 30.0])
    # feet (0, 10) and (0, 30): r = 10, centre (0, 20) moved 10 toward +x (p_blum's side)
    np.testing.assert_allclose(res.point, [10.0, 20.0], atol=1e-12)
    assert res.radius == pytest.approx(10.0, abs=1e-12)
    np.testing.assert_allclose(res.foot_tmc, [0.0, 10.0], atol=1e-12)
    np.testing.assert_allclose(res.foot_blum, [0.0, 30.0], atol=1e-12)
    assert res.blum_distance == pytest.approx(-4.0)
    assert not res.is_degenerate


@pytest.mark.parametrize(("s_blum", "expected"), [(7.0, (99.2, 65.6)), (-7.0, (115.2, 53.6))])
def test_oblique_lm1_by_hand(s_blum, expected):
    # LM1 through (100, 50), direction (0.6, 0.8), normal (-0.8, 0.6). Points given as
    # P0 + t d + s n: p_tmc (t=2, s=0.3), p_blum (t=22, s=+-7). r = 10, centre t=12, s=+-10:
    # (100 + 7.2 -+ 8, 50 + 9.6 +- 6).
    p0, d, n = np.array([100.0, 50.0]), np.array([0.6, 0.8]), np.array([-0.8, 0.6])
    p_tmc = p0 + 2 * d + 0.3 * n
    p_blum = p0 + 22 * d + s_blum * n
    for direction in (d, -d):  # the orientation of LM1 must not matter
        res = schoettle_point(Line(p0 + 5 * d, direction), p_tmc, p_blum)
        np.testing.assert_allclose(res.point, expected, atol=1e-6)
        assert res.radius == pytest.approx(10.0, abs=1e-6)


def test_tangency_and_side_on_random_cases():
    rng = np.random.default_rng(1)
    for _ in range(200):
        lm1 = Line(rng.uniform(-100, 100, 2), rng.normal(size=2))
        p_tmc, p_blum = rng.uniform(-100, 100, (2, 2))
        res = schoettle_point(lm1, p_tmc, p_blum)
        r = res.radius
        for line in (lm1, res.lm2, res.lm3):
            assert float(line.distance(res.point)) == pytest.approx(r, rel=1e-9, abs=1e-9)
        # LM2 and LM3 pass through the landmarks and are perpendicular to LM1
        assert float(res.lm2.distance(p_tmc)) < 1e-9 and float(res.lm3.distance(p_blum)) < 1e-9
        assert abs(res.lm2.direction @ lm1.direction) < 1e-12
        # the centre lies on p_blum's side of LM1 and between LM2 and LM3
        assert np.sign(lm1.signed_distance(res.point)) == np.sign(lm1.signed_distance(p_blum))
        assert float(res.lm2.distance(res.lm3.point)) == pytest.approx(2 * r, rel=1e-9)


def test_degenerate_cases_are_flagged():
    lm1 = Line(np.zeros(2), np.array([0.0, 1.0]))
    on_line = schoettle_point(lm1, [1.0, 0.0], [0.0, 5.0])
    assert "blum_on_lm1" in on_line.degenerate and np.all(np.isnan(on_line.point))
    same_foot = schoettle_point(lm1, [1.0, 3.0], [2.0, 3.0])
    assert "lm2_lm3_coincide" in same_foot.degenerate and same_foot.radius == 0.0
    np.testing.assert_allclose(same_foot.point, [0.0, 3.0])
