"""Bootstrap median CI, mean +- std, and point/line errors in mm."""

import numpy as np
import pytest

from geometry.lines import Line
from geometry.point_metrics import line_error, point_error
from geometry.stats import mean_std, median_ci


def test_median_ci_is_stable_and_sane():
    rng = np.random.default_rng(0)
    x = rng.lognormal(0.3, 0.5, 38)
    m, lo, hi = median_ci(x)
    assert (m, lo, hi) == median_ci(x.copy(), seed=0)  # same seed -> identical
    assert m == np.median(x) and lo < m < hi
    assert median_ci(x, seed=1) != (m, lo, hi)  # the seed does matter ...
    assert median_ci(x, seed=1)[1] == pytest.approx(lo, abs=0.05)  # ... but only a little
    big = rng.lognormal(0.3, 0.5, 1000)
    _, blo, bhi = median_ci(big, n_boot=2000)
    assert bhi - blo < (hi - lo) / 2  # narrows with n
    _, lo95, hi95 = median_ci(x, level=0.95)
    assert lo95 <= lo and hi95 >= hi


def test_median_ci_against_a_direct_bootstrap():
    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, np.nan])
    finite = x[np.isfinite(x)]
    rng = np.random.default_rng(7)
    meds = np.median(finite[rng.integers(0, 8, (500, 8))], axis=1)
    expected = (np.median(finite), *np.percentile(meds, [10, 90]))
    assert median_ci(x, n_boot=500, seed=7) == pytest.approx(expected)
    assert all(np.isnan(median_ci([np.nan])))
    assert median_ci([2.0]) == (2.0, 2.0, 2.0)


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0, np.nan]) == pytest.approx((2.0, 1.0))
    m, s = mean_std([4.0])
    assert m == 4.0 and np.isnan(s)


def test_point_and_line_errors_in_mm():
    assert point_error([3.0, 4.0], [0.0, 0.0]) == pytest.approx(5.0)
    # 3 columns at 0.2 mm and 4 rows at 0.3 mm: hypot(0.6, 1.2)
    err = point_error([[3.0, 4.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]], (0.3, 0.2))
    np.testing.assert_allclose(err, [np.hypot(0.6, 1.2), 0.0])
    lm1 = Line.through([10.0, 0.0], [10.0, 50.0])
    pts = np.array([[12.0, 5.0], [11.0, 20.0], [7.0, 40.0]])  # first and last only: 2, 3 cols
    assert line_error(lm1, pts, (1.0, 0.5)) == pytest.approx((1.0 + 1.5) / 2)
    assert np.isnan(line_error(None, pts))
