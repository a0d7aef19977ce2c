"""Multi-task stacked hourglass network: size, shapes, gradients, GradNorm's W^l, overfitting."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch
from shgn_reference import reference_forward

from lightning_modules.inference_ops import add_upsampled_nearest, max_pool2
from lightning_modules.instance_norm import InstanceNorm2d, norm_relu
from lightning_modules.losses import MultiTaskLoss
from lightning_modules.shgn import MultiTaskSHGN

PAPER_PARAMS = 12_991_720  # documented in the lightning_modules.shgn module docstring
TINY = dict(stem_channels=8, stem_residual_channels=16, hourglass_channels=32, depth=2)


def bottleneck_params(i: int, o: int) -> int:
    m = o // 2
    norms = 2 * i + 2 * m + 2 * m
    convs = i * m + 9 * m * m + m * o + o
    return norms + convs + (i * o if i != o else 0)


def hourglass_params(depth: int, c: int) -> int:
    inner = hourglass_params(depth - 1, c) if depth > 1 else bottleneck_params(c, c)
    return 3 * bottleneck_params(c, c) + inner


def count_from_layout(cin=1, c1=64, c2=128, cs=256, stacks=4, depth=4, tasks=None,
                      head=128, skip=16, refine=16) -> int:
    """Parameter count derived by hand from the layout in the shgn module docstring."""
    tasks = tasks or {"seg": 4, "lm": 2, "roi": 1}
    stem = 49 * cin * c1 + 2 * c1 + bottleneck_params(c1, c2) + bottleneck_params(c2, c2)
    stem += bottleneck_params(c2, cs)
    skips = 9 * cin * skip + 2 * skip + 2 * c2 + c2 * skip
    heads = sum(
        2 * cs + cs * head + 2 * head + head * ct + ct  # coarse predictor at S/4
        + 9 * (ct + skip) * refine + 2 * refine  # refinement at S/2 (3x3 conv, norm)
        + skip * refine + refine + refine * ct + ct  # full-resolution 1x1 mix
        for ct in tasks.values()
    )
    reinject = cs * cs + cs + sum(ct * cs for ct in tasks.values())
    per_stack = hourglass_params(depth, cs) + bottleneck_params(cs, cs) + heads
    return stem + skips + stacks * per_stack + (stacks - 1) * reinject


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_paper_configuration_size_and_output_shapes() -> None:
    torch.manual_seed(0)
    net = MultiTaskSHGN()
    print(f"\npaper MultiTaskSHGN: {n_params(net):,} parameters")
    assert n_params(net) == PAPER_PARAMS == count_from_layout()
    assert net.num_stacks == 4 and net.task_names == ["seg", "lm", "roi"]
    with torch.no_grad():
        out = net(torch.rand(2, 1, 256, 256))
    assert len(out.stacks) == 4
    for preds in out.stacks:
        assert {k: tuple(v.shape) for k, v in preds.items()} == {
            "seg": (2, 4, 256, 256), "lm": (2, 2, 256, 256), "roi": (2, 1, 256, 256)
        }
        assert all(torch.isfinite(v).all() for v in preds.values())
    assert out.final is out.stacks[-1]


def test_configurable_tasks_widths_and_count() -> None:
    tasks = {"a": 3, "b": 1}
    net = MultiTaskSHGN(in_channels=2, num_stacks=3, tasks=tasks, head_channels=12,
                        skip_channels=4, refine_channels=6, **TINY)
    expected = count_from_layout(cin=2, c1=8, c2=16, cs=32, stacks=3, depth=2, tasks=tasks,
                                 head=12, skip=4, refine=6)
    assert n_params(net) == expected
    out = net(torch.rand(1, 2, 128, 64))
    assert [tuple(s["a"].shape) for s in out.stacks] == [(1, 3, 128, 64)] * 3
    assert tuple(out.final["b"].shape) == (1, 1, 128, 64)


def test_input_size_must_fit_depth() -> None:
    net = MultiTaskSHGN(stem_channels=8, stem_residual_channels=16, hourglass_channels=32,
                        num_stacks=1, depth=4)
    with pytest.raises(ValueError, match="depth 4"):
        net(torch.zeros(1, 1, 64, 64))  # bottom would be 1x1: instance norm cannot run
    with pytest.raises(ValueError, match="expected input"):
        net(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match="norm"):
        MultiTaskSHGN(norm="layer")


def test_every_parameter_gets_a_gradient_from_all_outputs() -> None:
    torch.manual_seed(0)
    net = MultiTaskSHGN(num_stacks=2, **TINY)
    out = net(torch.rand(2, 1, 64, 64))
    gen = torch.Generator().manual_seed(1)
    total = sum((v * torch.randn(v.shape, generator=gen)).sum()
                for preds in out.stacks for v in preds.values())
    total.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, f"parameters without gradient: {missing}"


def test_shared_params_are_last_shared_unit_and_reach_only_own_heads() -> None:
    torch.manual_seed(0)
    net = MultiTaskSHGN(num_stacks=3, **TINY)
    names = {id(p): n for n, p in net.named_parameters()}
    for l in range(3):
        (w,) = net.shared_params(l)
        assert names[id(w)] == f"stacks.{l}.shared.expand.2.weight"
        assert w is net.shared_layer(l).last_conv.weight
    out = net(torch.rand(1, 1, 64, 64))
    for l in range(3):
        for task, pred in out.stacks[l].items():
            grads = torch.autograd.grad(pred.square().mean(), [net.shared_params(m)[0]
                                        for m in range(3)], retain_graph=True, allow_unused=True)
            for m, g in enumerate(grads):
                if m > l:  # a later hourglass's layer cannot influence hourglass l's output
                    assert g is None, (l, task, m)
                else:
                    assert g is not None and g.abs().sum() > 0, (l, task, m)
    with pytest.raises(IndexError):
        net.shared_params(3)


def make_overfit_batch(size: int = 64) -> dict[str, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")

    def disc(cx: float, cy: float, r: float) -> torch.Tensor:
        return (((xx - cx) ** 2 + (yy - cy) ** 2) <= r * r).float()

    def gauss(cx: float, cy: float) -> torch.Tensor:
        return torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 3.0**2))

    seg = torch.stack([torch.stack([disc(20, 22, 14), disc(34, 18, 9), disc(30, 44, 14),
                                    disc(44, 48, 8)]),
                       torch.stack([disc(40, 30, 16), disc(22, 20, 8), disc(28, 46, 12),
                                    disc(16, 50, 7)])])
    lm = torch.stack([torch.stack([gauss(12, 30), gauss(40, 12)]),
                      torch.stack([gauss(50, 36), gauss(20, 40)])])
    roi = torch.stack([gauss(24, 10)[None], gauss(46, 54)[None]])
    image = (0.3 * seg.sum(1, keepdim=True)).clamp(0, 1)
    return {"image": image, "seg": seg, "lm": lm, "roi": roi}


def test_tiny_network_overfits_tiny_batch() -> None:
    torch.manual_seed(0)
    net = MultiTaskSHGN(num_stacks=2, **TINY)
    crit = MultiTaskLoss(beta=0.6)
    batch = make_overfit_batch()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    history = []
    for _ in range(150):
        opt.zero_grad()
        loss = crit(net(batch["image"]), batch).sum()
        loss.backward()
        opt.step()
        history.append(loss.item())
        if history[-1] < history[0] / 10:
            break
    elapsed = time.perf_counter() - t0
    print(f"\noverfit: loss {history[0]:.4f} -> {history[-1]:.4f} in {len(history)} steps, "
          f"{elapsed:.1f} s")
    assert math.isfinite(history[-1])
    assert history[-1] < history[0] / 10


@pytest.mark.parametrize(("shape", "factor"), [((2, 3, 5, 7), 2), ((1, 2, 4, 3), 4),
                                               ((1, 1, 1, 1), 2), ((2, 1, 1, 2), 4)])
def test_upsample_bilinear_matches_interpolate_values_and_gradient(shape, factor) -> None:
    """The fast adjoint equals upsample_bilinear2d's own backward (float64, incl. 1-px edges)."""
    from lightning_modules.fast_upsample import upsample_bilinear

    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, dtype=torch.float64, generator=g, requires_grad=True)
    ref = torch.nn.functional.interpolate(x, scale_factor=float(factor), mode="bilinear",
                                          align_corners=False)
    out = upsample_bilinear(x, factor)
    assert out.shape == ref.shape
    assert torch.equal(out, ref)
    grad_out = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    (want,) = torch.autograd.grad(ref, x, grad_out)
    (got,) = torch.autograd.grad(out, x, grad_out)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    # float32 as in training
    x32 = x.detach().float().requires_grad_()
    ref32 = torch.nn.functional.interpolate(x32, scale_factor=float(factor), mode="bilinear",
                                            align_corners=False)
    (want32,) = torch.autograd.grad(ref32, x32, grad_out.float())
    (got32,) = torch.autograd.grad(upsample_bilinear(x32, factor), x32, grad_out.float())
    assert torch.allclose(got32, want32, rtol=1e-6, atol=1e-6)
    small = torch.randn(1, 2, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: upsample_bilinear(t, factor), (small,))


def test_upsample_bilinear_unused_output_sends_no_gradient() -> None:
    """An output that gets no gradient must not send zeros back (GradNorm relies on it)."""
    from lightning_modules.fast_upsample import upsample_bilinear

    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    used, unused = x * 2, x * 3
    loss = upsample_bilinear(used, 2).sum() + 0 * unused.sum()
    (gx,) = torch.autograd.grad(loss, x)
    assert torch.allclose(gx, torch.full_like(x, 8.0))  # 4 outputs per input, each weight sum 1
    with pytest.raises(ValueError, match="even factor"):
        upsample_bilinear(x, 3)


def test_gradnorm_taps_carry_all_paths_from_w_to_own_output_only() -> None:
    """Each head's taps reach only its own output, and the gradient of that output w.r.t.
    ``W^l`` is the sum of the gradients through the taps (GradNorm's fused path relies on it)."""
    torch.manual_seed(0)
    net = MultiTaskSHGN(num_stacks=2, **TINY)
    out = net(torch.rand(1, 1, 64, 64))
    taps = out.gradnorm_taps(net.task_names)
    assert taps is not None and len(taps) == 2 and all(len(row) == 3 for row in taps)
    assert out.gradnorm_taps(["seg", "nope"]) is None
    gen = torch.Generator().manual_seed(1)
    for l in range(2):
        (w,) = net.shared_params(l)
        for t, task in enumerate(net.task_names):
            for m in range(2):
                for other, pred in out.stacks[m].items():
                    grads = torch.autograd.grad(pred.sum(), list(taps[l][t]), retain_graph=True,
                                                allow_unused=True)
                    own = (m, other) == (l, task)
                    assert all((g is not None and g.abs().sum() > 0) if own else g is None
                               for g in grads), (l, task, m, other)
            pred = out.stacks[l][task]
            seed = torch.randn(pred.shape, generator=gen)
            (direct,) = torch.autograd.grad(pred, [w], grad_outputs=seed, retain_graph=True)
            at_taps = torch.autograd.grad(pred, list(taps[l][t]), grad_outputs=seed,
                                          retain_graph=True)
            via_taps = sum(torch.autograd.grad(p, [w], grad_outputs=g, retain_graph=True)[0]
                           for p, g in zip(taps[l][t], at_taps, strict=True))
            assert (via_taps - direct).norm() <= 1e-5 * direct.norm(), (l, task)


def test_forward_and_gradients_equal_the_frozen_reference() -> None:
    """With autograd (training) the network's outputs equal the first version's forward
    (tests/shgn_reference.py, plain ``F.instance_norm``) to float32 rounding (group norm's kernel
    sums in another order: 6.2e-6 of the largest output, measured). Its parameter gradients are
    compared with the reference's in float64: float32 through two hourglasses of norms is only
    good to ~1e-3 of the largest gradient, so the network must be as close to float64 as the
    plain float32 ops are (measured: 8.4e-4 vs 1.3e-3). The reference reads the parameters by
    their state-dict names: names and shapes are unchanged."""
    torch.manual_seed(0)
    net = MultiTaskSHGN(num_stacks=2, **TINY)
    x = torch.rand(2, 1, 64, 64)
    gen = torch.Generator().manual_seed(1)
    out, ref = net(x).stacks, reference_forward(net, x)
    seeds = [{k: torch.randn(v.shape, generator=gen) for k, v in s.items()} for s in ref]
    for l, preds in enumerate(ref):
        for k, want in preds.items():
            torch.testing.assert_close(out[l][k], want, rtol=0,
                                       atol=2e-5 * float(want.detach().abs().max()))

    def grads(model: MultiTaskSHGN, stacks: list) -> list[torch.Tensor]:
        total = sum((v * seeds[l][k].to(v.dtype)).sum()
                    for l, s in enumerate(stacks) for k, v in s.items())
        return [g.double() for g in torch.autograd.grad(total, list(model.parameters()))]

    net64 = copy.deepcopy(net).double()
    exact = grads(net64, reference_forward(net64, x.double()))
    scale = max(float(b.abs().max()) for b in exact)  # biases cancelled by a norm get ~0 +- noise

    def error(got: list[torch.Tensor]) -> float:
        return max(float((a - b).abs().max()) for a, b in zip(got, exact, strict=True)) / scale

    err_net, err_plain = error(grads(net, out)), error(grads(net, ref))
    assert err_net <= max(1.5 * err_plain, 1e-5) and err_net < 3e-3, (err_net, err_plain)


@pytest.mark.parametrize("paper", [False, True])
def test_inference_path_equals_the_frozen_reference(paper: bool) -> None:
    """Without autograd the speed tricks run; the outputs stay those of the reference to float32
    rounding (measured: 1.4e-4 at |out| ~3 in the paper setting, as far from float64 as the plain
    ops are)."""
    torch.manual_seed(0)
    net = MultiTaskSHGN() if paper else MultiTaskSHGN(num_stacks=2, **TINY)
    with torch.no_grad():  # random affine norm parameters, so the norms are exercised fully
        for m in net.modules():
            if isinstance(m, InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.rand(1 if paper else 2, 1, 256 if paper else 64, 256 if paper else 64)
    with torch.no_grad():
        out, ref = net.eval()(x).stacks, reference_forward(net, x)
    for l, preds in enumerate(ref):
        for k, want in preds.items():
            torch.testing.assert_close(out[l][k], want, rtol=0, atol=1e-3 * want.abs().max())


def test_fast_kernels_equal_plain_ops() -> None:
    """max_pool2 and add_upsampled_nearest are exact; instance norm (+ ReLU) by the group-norm
    kernel equals ``relu(F.instance_norm)`` in float64 (incl. a large mean and tiny spread), at
    inference and, values and gradients, under autograd."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, 6, generator=g)
    low = torch.randn(2, 5, 4, 3, generator=g)
    with torch.no_grad():
        assert torch.equal(max_pool2(x), torch.nn.functional.max_pool2d(x, 2, 2))
        want = x + torch.nn.functional.interpolate(low, scale_factor=2.0, mode="nearest")
        assert torch.equal(add_upsampled_nearest(x.clone(), low), want)
        norm = InstanceNorm2d(5).double()
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.uniform_(-1, 1, generator=g)
        z = 3.0 + 0.01 * torch.randn(2, 5, 8, 6, generator=g, dtype=torch.float64)
        plain = torch.nn.functional.instance_norm(z, weight=norm.weight, bias=norm.bias)
        torch.testing.assert_close(norm(z), plain, rtol=0, atol=1e-9)
        torch.testing.assert_close(norm_relu(norm, z), plain.relu(), rtol=0, atol=1e-9)
        assert not norm_relu(norm, z).requires_grad
    # with autograd (training): values and gradients of x, weight and bias equal the plain op's
    zg = z.clone().requires_grad_()
    up = torch.randn(z.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(norm_relu(norm, zg), (zg, norm.weight, norm.bias), up)
    ref = torch.nn.functional.instance_norm(zg, weight=norm.weight, bias=norm.bias).relu()
    want = torch.autograd.grad(ref, (zg, norm.weight, norm.bias), up)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


@pytest.mark.slow
def test_onnx_export_dynamic_batch_matches_torch(tmp_path) -> None:
    """The network exports (plain ops under export) with a dynamic batch; ONNX Runtime agrees."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = MultiTaskSHGN(num_stacks=2, **TINY).eval()

    class Final(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(self.net(x).final.values())

    path = tmp_path / "shgn.onnx"
    torch.onnx.export(Final(), (torch.rand(2, 1, 64, 64),), str(path), input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    x = torch.rand(3, 1, 64, 64)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})
    with torch.no_grad():
        want = Final()(x)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(torch.from_numpy(a), b, rtol=0, atol=1e-4)


@pytest.mark.parametrize("stacks", [1, 2, 3])
def test_final_maps_are_the_full_forwards_maps(stacks):
    """Inference computes only what planning reads, and gets exactly the full forward's values."""
    from lightning_modules.shgn import final_maps

    torch.manual_seed(stacks)
    net = MultiTaskSHGN(num_stacks=stacks, **TINY).eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        full = net(x).stacks
        got = final_maps(net, x)
    want = {"seg": torch.sigmoid(full[-1]["seg"]), "lm": full[-1]["lm"], "roi": full[-1]["roi"]}
    if stacks > 1:
        want["lm_prev"] = full[-2]["lm"]
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_unread_refinements_are_not_computed():
    """The first hourglass's seg and roi heads (never read at inference) skip their refinement
    at S; its lm head (``lm_prev``) and every coarse map (re-injected) still run."""
    from lightning_modules.shgn import final_maps

    net = MultiTaskSHGN(num_stacks=2, **TINY).eval()
    calls: dict[str, int] = {}
    for l, stack in enumerate(net.stacks):
        for name, head in stack.heads.items():
            for part in ("coarse", "refine_full"):
                key = f"{l}.{name}.{part}"
                calls[key] = 0
                getattr(head, part).register_forward_hook(
                    lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
    with torch.no_grad():
        final_maps(net, torch.rand(1, 1, 64, 64))
    assert calls["0.seg.refine_full"] == calls["0.roi.refine_full"] == 0
    assert calls["0.lm.refine_full"] == 1 and calls["0.seg.coarse"] == 1
    assert all(calls[f"1.{t}.refine_full"] == 1 for t in ("seg", "lm", "roi"))
    with torch.no_grad():
        out = net(torch.rand(1, 1, 64, 64), outputs={0: ("lm",), -1: ("seg",)}).stacks
    assert set(out[0]) == {"lm"} and set(out[1]) == {"seg"}
    with pytest.raises(IndexError, match="hourglass 2"):
        net(torch.rand(1, 1, 64, 64), outputs={2: ("lm",)})
