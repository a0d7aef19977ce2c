"""PadResize: exact inverse, hand-computed forward map, image round trips, mapped lines."""

import numpy as np
import pytest

from geometry.frame import PadResize
from geometry.lines import Line


@pytest.mark.parametrize("shape", [(600, 800), (801, 300), (256, 256), (97, 1003)])
def test_point_round_trip_is_exact(shape):
    f = PadResize.from_shape(*shape, 256)
    pts = np.random.default_rng(0).uniform(-5, max(shape) + 5, (50, 2))
    np.testing.assert_allclose(f.to_original(f.to_network(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(f.to_network(f.to_original(pts)), pts, atol=1e-9)


def test_forward_map_by_hand():
    # 600 x 800 (h x w): pad 100 rows on top, side 800, scale 256 / 800 = 0.32.
    f = PadResize.from_shape(600, 800, 256)
    assert (f.pad_top, f.pad_left, f.side) == (100, 0, 800)
    # x' = (10 + 0 + 0.5) * 0.32 - 0.5 = 2.86; y' = (20 + 100 + 0.5) * 0.32 - 0.5 = 38.06
    np.testing.assert_allclose(f.to_network([[10.0, 20.0]]), [[2.86, 38.06]])
    # the outer pixel edges map onto the network's outer edges
    np.testing.assert_allclose(f.to_network([[-0.5, -100.5]]), [[-0.5, -0.5]])
    np.testing.assert_allclose(f.to_network([[799.5, 699.5]]), [[255.5, 255.5]])


def test_image_centroid_follows_the_point_map():
    # A bright blob's intensity centroid moves with the point map (apply, then invert_image).
    f = PadResize.from_shape(300, 500, 128)
    ys, xs = np.mgrid[0:300, 0:500]
    img = np.exp(-((xs - 321.3) ** 2 + (ys - 140.7) ** 2) / (2 * 25.0**2)).astype(np.float32)
    net = f.apply(img)
    yy, xx = np.mgrid[0:128, 0:128]
    c_net = np.array([(net * xx).sum(), (net * yy).sum()]) / net.sum()
    np.testing.assert_allclose(c_net, f.to_network([[321.3, 140.7]])[0], atol=0.05)
    back = f.invert_image(net)
    assert back.shape == (300, 500)
    c_back = np.array([(back * xs).sum(), (back * ys).sum()]) / back.sum()
    np.testing.assert_allclose(c_back, [321.3, 140.7], atol=0.3)


def test_mask_round_trip_keeps_the_mask():
    f = PadResize.from_shape(200, 120, 256)
    mask = np.zeros((200, 120), np.float32)
    mask[40:160, 30:90] = 1
    back = f.invert_image(f.apply(mask, interpolation=0)) >= 0.5
    assert (back != (mask > 0)).mean() < 0.01


def test_line_maps_through_the_frame():
    f = PadResize.from_shape(400, 300, 256)
    p, q = np.array([10.0, 20.0]), np.array([200.0, 350.0])
    net = Line.through(p, q).map(f.to_network)
    back = net.map(f.to_original)
    assert back.distance(np.stack([p, q])).max() < 1e-9
    # the network-frame line passes through the mapped points
    assert net.distance(f.to_network(np.stack([p, q]))).max() < 1e-9
