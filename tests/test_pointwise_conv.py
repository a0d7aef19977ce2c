"""PointwiseConv2d equals nn.Conv2d(kernel_size=1): values, every gradient, state dict, ONNX."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.pointwise_conv import PointwiseConv2d


def _grads(conv: nn.Conv2d, x: torch.Tensor, fn) -> list[torch.Tensor]:
    """Output and gradients of a non-trivial loss w.r.t. input, weight and bias."""
    x = x.detach().clone().requires_grad_(True)
    for p in conv.parameters():
        p.grad = None
    y = fn(x)
    (y * torch.linspace(-1, 2, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    out = [y.detach(), x.grad]
    return out + [p.grad for p in conv.parameters()]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_equal_conv2d(bias, dtype):
    torch.manual_seed(0)
    conv = PointwiseConv2d(16, 4, bias=bias).to(dtype)
    x = torch.randn(3, 16, 9, 11, dtype=dtype)
    ours = _grads(conv, x, conv)
    ref = _grads(conv, x, lambda t: F.conv2d(t, conv.weight, conv.bias))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert len(ours) == (4 if bias else 3)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_gradcheck_double():
    """The hand-written backward against finite differences, for input, weight and bias."""
    from lightning_modules.pointwise_conv import _Pointwise

    torch.manual_seed(1)
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _Pointwise.apply(x, w, b, None), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: _Pointwise.apply(x, w, None, None), (x, w))
    # the sum with ``add`` is written into it: give each evaluation a fresh copy
    assert torch.autograd.gradcheck(
        lambda x, w, b, a: _Pointwise.apply(x, w, b, a.clone()), (x, w, b, a))


@pytest.mark.parametrize("bias", [True, False])
def test_add_equals_sum_and_is_written_into_add(bias):
    """``conv(x, add=a)`` = ``a + conv(x)`` with every gradient, the sum written into ``a``."""
    torch.manual_seed(3)
    conv = PointwiseConv2d(16, 4, bias=bias)
    x, a = torch.randn(2, 16, 10, 12), torch.randn(2, 4, 10, 12)
    ours = _grads(conv, x, lambda t: conv(t, add=a.clone()))
    ref = _grads(conv, x, lambda t: a + F.conv2d(t, conv.weight, conv.bias))
    for u, v in zip(ours, ref, strict=True):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)
    fresh = a.clone()
    out = conv(x, add=fresh)
    assert out.data_ptr() == fresh.data_ptr()
    # the gradient of ``add`` is the incoming gradient (a leaf that needs one)
    leaf = a.clone().requires_grad_(True)
    conv(x, add=leaf * 1.0).sum().backward()
    torch.testing.assert_close(leaf.grad, torch.ones_like(a))


def test_add_that_may_not_be_written_falls_back():
    """A view, a leaf that needs a gradient, or the input itself: ``add + conv(x)`` out of place."""
    torch.manual_seed(4)
    conv = PointwiseConv2d(4, 4)
    x = torch.randn(2, 4, 6, 6)
    ref = x + F.conv2d(x, conv.weight, conv.bias)
    with torch.no_grad():
        torch.testing.assert_close(conv(x, add=x), ref)  # was written while being read
    base = torch.randn(2, 4, 6, 6)
    kept = base.clone()
    torch.testing.assert_close(conv(x, add=base.view(2, 4, 6, 6)), base + ref - x)
    torch.testing.assert_close(base, kept)
    leaf = torch.randn(2, 4, 6, 6, requires_grad=True)
    conv(x, add=leaf).sum().backward()
    torch.testing.assert_close(leaf.grad, torch.ones_like(leaf))


def test_flops_counted_as_the_convolution():
    """torch's FLOP counter sees the products (the in-place sum runs as ``baddbmm(out=)``)."""
    from torch.utils.flop_counter import FlopCounterMode

    conv = PointwiseConv2d(16, 4)
    x, a = torch.randn(2, 16, 10, 12), torch.randn(2, 4, 10, 12)
    with FlopCounterMode(display=False) as plain:
        F.conv2d(x, conv.weight, conv.bias)
    for kwargs in ({}, {"add": a.clone()}):
        with FlopCounterMode(display=False) as ours:
            conv(x, **kwargs)
        assert ours.get_total_flops() == plain.get_total_flops() > 0


def test_fallbacks_non_contiguous_and_channels_last():
    torch.manual_seed(2)
    conv = PointwiseConv2d(8, 2)
    x = torch.randn(2, 8, 12, 10)
    for variant in (x.transpose(2, 3), x.contiguous(memory_format=torch.channels_last)):
        ref = F.conv2d(variant, conv.weight, conv.bias)
        torch.testing.assert_close(conv(variant), ref)
        a = torch.randn(ref.shape)
        torch.testing.assert_close(conv(variant, add=a.clone()), a + ref)


def test_autocast_falls_back_to_the_convolution():
    """Under CPU autocast the layer is the plain convolution (a bf16 bmm would hand fp32 inputs
    a bf16 gradient in the backward)."""
    conv = PointwiseConv2d(16, 4)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        ref = F.conv2d(x, conv.weight, conv.bias)
    y.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    torch.testing.assert_close(y, ref)


def test_state_dict_is_that_of_conv2d():
    conv, plain = PointwiseConv2d(16, 4), nn.Conv2d(16, 4, kernel_size=1)
    assert {k: v.shape for k, v in conv.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(1, 16, 5, 5)
    torch.testing.assert_close(conv(x), plain(x))


def test_no_grad_forward_equals_conv2d():
    conv = PointwiseConv2d(16, 16)
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias))
