"""Heat-map decoding against Gaussians placed at known, non-integer positions."""

import numpy as np
import pytest
import torch

from geometry.heatmaps import decode_heatmap


def gaussian(h: int, w: int, x0: float, y0: float, sigma: float = 6.0) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    return np.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * sigma**2))


CENTRES = [(30.37, 20.81), (40.5, 33.49), (21.9, 50.1), (55.23, 12.77)]


@pytest.mark.parametrize("method", ["quadratic", "soft_argmax"])
@pytest.mark.parametrize("centre", CENTRES)
def test_subpixel_decoding_within_a_tenth_pixel(method, centre):
    hm = gaussian(64, 80, *centre)
    pts, peaks = decode_heatmap(hm, method=method)
    assert pts.shape == (1, 2)
    assert np.hypot(*(pts[0] - centre)) < 0.1
    assert peaks[0] == pytest.approx(hm.max())


def test_quadratic_raw_values_also_within_a_tenth_pixel():
    hm = 0.8 * gaussian(64, 64, 31.3, 29.6)
    pts, _ = decode_heatmap(hm, method="quadratic", log=False)
    assert np.hypot(*(pts[0] - (31.3, 29.6))) < 0.1


def test_argmax_is_the_nearest_pixel_centre_per_channel():
    hm = np.stack([gaussian(40, 50, 10.2, 30.7), 0.5 * gaussian(40, 50, 44.6, 3.4)])
    pts, peaks = decode_heatmap(hm, method="argmax")
    np.testing.assert_array_equal(pts, [[10, 31], [45, 3]])
    np.testing.assert_allclose(peaks, [hm[0, 31, 10], hm[1, 3, 45]])


def test_torch_input_and_border_peak():
    hm = torch.zeros(2, 16, 16)
    hm[0, 0, 5] = 0.7  # on the border: quadratic falls back to the arg max
    hm[1, 8, 8] = 1.0  # lone spike: log refinement impossible, raw Hessian symmetric -> 0 offset
    pts, peaks = decode_heatmap(hm, method="quadratic")
    np.testing.assert_allclose(pts, [[5, 0], [8, 8]])
    np.testing.assert_allclose(peaks, [0.7, 1.0], rtol=1e-6)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="unknown method"):
        decode_heatmap(np.zeros((4, 4)), method="mean")
    with pytest.raises(ValueError, match="NaN"):
        decode_heatmap(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="shape"):
        decode_heatmap(np.zeros(4))
