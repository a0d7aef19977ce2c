"""HeatmapCodec: encoding against an independent numpy Gaussian, decoding against analytic
sub-pixel positions, frames at a heat-map stride, and the owners that use it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datamodules.targets import landmark_heatmaps
from geometry.heatmaps import HeatmapCodec


def numpy_gaussian(side: int, x0: float, y0: float, sigma: float) -> np.ndarray:
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float64)
    return np.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2.0 * sigma**2))


def test_encode_matches_numpy_gaussian_and_zeroes_invisible_points():
    codec = HeatmapCodec(64, 64, 2.5)
    pts = np.array([[20.3, 41.7], [5.0, 6.0], [np.nan, 3.0]])
    maps = codec.encode(pts, np.array([True, False, True]))
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32
    np.testing.assert_allclose(maps[0], numpy_gaussian(64, 20.3, 41.7, 2.5), atol=1e-6)
    assert not maps[1].any() and not maps[2].any()  # invisible; not finite
    # datamodules.targets encodes through the same codec
    np.testing.assert_array_equal(landmark_heatmaps(pts[:1], [True], 64, 2.5), maps[:1])


def test_encode_at_stride_two_puts_the_centre_in_heatmap_pixels():
    codec = HeatmapCodec(128, 64, 2.0)
    maps = codec.encode(np.array([[20.5, 40.0]]))
    # pixel centres on integers: x_hm = (x + 0.5) / 2 - 0.5 -> 10.0, 19.75 (by hand)
    np.testing.assert_allclose(maps[0], numpy_gaussian(64, 10.0, 19.75, 2.0), atol=1e-6)
    np.testing.assert_allclose(codec.to_input(codec.to_heatmap([[3.2, 7.9]])), [[3.2, 7.9]])


@pytest.mark.parametrize("sigma", [2.0, 5.0, 6.0])
@pytest.mark.parametrize("centre", [(30.37, 20.81), (40.5, 33.49), (21.9, 50.1)])
def test_quadratic_decode_is_exact_for_a_gaussian(sigma, centre):
    codec = HeatmapCodec(72, 72, sigma)
    pts, peaks = codec.decode(numpy_gaussian(72, *centre, sigma)[None], "quadratic")
    # the log of a Gaussian is exactly quadratic: one Newton step lands on the centre
    np.testing.assert_allclose(pts[0], centre, atol=1e-6)
    assert peaks[0] == pytest.approx(numpy_gaussian(72, *centre, sigma).max())


def test_soft_argmax_uses_a_three_sigma_window():
    sigma, centre = 5.0, (33.3, 30.6)
    hm = numpy_gaussian(80, *centre, sigma)
    codec = HeatmapCodec(80, 80, sigma)
    assert codec.window == 15
    pts, _ = codec.decode(hm[None], "soft-argmax")
    # independent computation: weighted mean over the 31 x 31 window about the arg max (33, 31)
    ys, xs = np.mgrid[16:47, 18:49]
    w = hm[16:47, 18:49]
    expected = [(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()]
    np.testing.assert_allclose(pts[0], expected, atol=1e-9)
    assert np.hypot(*(pts[0] - centre)) < 0.05


def test_argmax_decode_and_round_trip_at_stride_two():
    codec = HeatmapCodec(128, 64, 2.0)
    p = np.array([[50.2, 71.9], [10.0, 100.4]])
    maps = codec.encode(p)
    pts, _ = codec.decode(maps, "argmax")
    # heat-map arg max at round((x + 0.5) / 2 - 0.5), mapped back by (i + 0.5) * 2 - 0.5
    hm = np.round((p + 0.5) / 2 - 0.5)
    np.testing.assert_allclose(pts, (hm + 0.5) * 2 - 0.5)
    q, _ = codec.decode(maps, "quadratic")
    np.testing.assert_allclose(q, p, atol=1e-3)


def test_batched_and_torch_input_give_the_same_points():
    codec = HeatmapCodec(48, 48, 3.0)
    maps = np.stack([codec.encode([[10.2, 20.7], [30.0, 5.5]]),
                     codec.encode([[40.9, 40.1], [2.2, 44.0]])])
    pts, peaks = codec.decode(maps, "quadratic")
    assert pts.shape == (2, 2, 2) and peaks.shape == (2, 2)
    np.testing.assert_allclose(pts[1, 0], [40.9, 40.1], atol=1e-3)
    tpts, _ = codec.decode(torch.from_numpy(maps), "quadratic")
    np.testing.assert_array_equal(tpts, pts)


def test_dict_round_trip_and_validation():
    codec = HeatmapCodec(128, 128, 5.0)
    d = json.loads(json.dumps(codec.to_dict()))
    assert d == {"input_size": 128, "heatmap_size": 128, "sigma": 5.0}
    assert HeatmapCodec.from_dict(d) == codec
    with pytest.raises(ValueError, match="bad codec"):
        HeatmapCodec.from_dict({"input_size": 128})
    with pytest.raises(ValueError, match="sigma"):
        HeatmapCodec(64, 64, 0.0)
    with pytest.raises(ValueError, match="unknown method"):
        codec.decode(np.zeros((1, 8, 8)), "mean")


def test_oracle_draws_the_codec_sigma():
    from datamodules.phantoms import PhantomConfig, generate_phantom
    from planning.oracle import oracle_maps

    sample = generate_phantom(3, PhantomConfig(min_side=160, max_side=220).clean())
    codec = HeatmapCodec(64, 64, 2.0)
    maps = oracle_maps(sample, codec=codec)
    assert maps.lm.shape == (2, 64, 64) and maps.frame.size == 64
    pts, _ = codec.decode(maps.lm, "quadratic")
    for c in range(2):  # each map is the sigma-2 Gaussian about its own centre
        np.testing.assert_allclose(maps.lm[c], numpy_gaussian(64, *pts[c], 2.0), atol=1e-4)


def test_validation_metrics_decode_through_the_codec():
    from lightning_modules.metrics import ValidationMetrics

    codec = HeatmapCodec(128, 64, 2.0)  # heat-maps at half the input size
    true = np.array([[[20.5, 40.5], [100.5, 60.5]]])  # land on heat-map pixel centres
    batch = {
        "seg": torch.zeros(1, 4, 8, 8), "landmarks": torch.tensor(true, dtype=torch.float32),
        "lm_visible": torch.ones(1, 2, dtype=torch.bool), "spacing": torch.tensor([[0.5, 0.5]]),
        "frame": {k: torch.tensor([v]) for k, v in
                  {"orig_h": 128, "orig_w": 128, "size": 128}.items()},
    }  # fmt: skip
    final = {"seg": torch.zeros(1, 4, 8, 8), "lm": torch.from_numpy(codec.encode(true[0]))[None]}
    with_codec = ValidationMetrics(codec=codec)
    with_codec.update(final, batch)
    assert with_codec.compute()["val/lm_err_px"] == pytest.approx(0.0, abs=1e-6)
    naive = ValidationMetrics()  # would read heat-map pixels as input pixels
    naive.update(final, batch)
    assert naive.compute()["val/lm_err_px"] > 10
