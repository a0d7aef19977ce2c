"""KneePlanModule, validation metrics and load_module: checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from datamodules.datamodule import KneeDataModule
from lightning_modules.metrics import ValidationMetrics, heatmap_argmax, landmark_errors
from lightning_modules.module import KneePlanModule, load_module

TINY_MODEL = dict(image_size=64, num_stacks=2, depth=2, c1=4, c2=8, c_star=16,
                  net_kwargs={"skip_channels": 4, "refine_channels": 4})


def _frame(h, w, size, b=1):
    return {"orig_h": torch.full((b,), h), "orig_w": torch.full((b,), w),
            "pad_top": torch.zeros(b, dtype=torch.int64),
            "pad_left": torch.zeros(b, dtype=torch.int64),
            "size": torch.full((b,), size)}


def test_heatmap_argmax_matches_numpy():
    g = torch.Generator().manual_seed(0)
    hm = torch.rand(3, 2, 17, 23, generator=g)
    xy = heatmap_argmax(hm)
    for b in range(3):
        for c in range(2):
            r, col = np.unravel_index(np.argmax(hm[b, c].numpy()), (17, 23))
            assert xy[b, c].tolist() == [float(col), float(r)]


def test_landmark_errors_hand_computed():
    # 200 x 100 image in a 64 px network frame: scale = 64 / 200 = 0.32 network px per px
    pred = torch.tensor([[[10.0 + 3.2, 20.0], [5.0, 5.0 + 0.64]]])
    true = torch.tensor([[[10.0, 20.0], [5.0, 5.0]]])
    spacing = torch.tensor([[0.2, 0.5]])  # row_mm, col_mm
    e_px, e_orig, e_mm = landmark_errors(pred, true, _frame(200, 100, 64), spacing)
    np.testing.assert_allclose(e_px[0].numpy(), [3.2, 0.64], rtol=1e-6)
    np.testing.assert_allclose(e_orig[0].numpy(), [10.0, 2.0], rtol=1e-6)
    # 10 px along x at 0.5 mm/col = 5 mm; 2 px along y at 0.2 mm/row = 0.4 mm
    np.testing.assert_allclose(e_mm[0].numpy(), [5.0, 0.4], rtol=1e-6)
    _, _, unknown = landmark_errors(pred, true, _frame(200, 100, 64),
                                    torch.full((1, 2), float("nan")))
    assert torch.isnan(unknown).all()


def test_validation_metrics_against_numpy():
    g = torch.Generator().manual_seed(1)
    b, s = 3, 16
    logits = torch.randn(b, 4, s, s, generator=g)
    seg = (torch.rand(b, 4, s, s, generator=g) > 0.6).float()
    lm = torch.zeros(b, 2, s, s)
    true_xy = torch.tensor([[[3.0, 4.0], [8.0, 8.0]], [[1.0, 1.0], [2.0, 2.0]],
                            [[5.0, 5.0], [6.0, 6.0]]])
    pred_xy = torch.tensor([[[6, 8], [8, 8]], [[1, 1], [15, 15]], [[5, 5], [6, 10]]])
    for i in range(b):
        for k in range(2):
            lm[i, k, pred_xy[i, k, 1], pred_xy[i, k, 0]] = 1.0
    visible = torch.tensor([[True, True], [True, False], [True, True]])
    batch = {"seg": seg, "landmarks": true_xy, "lm_visible": visible,
             "frame": _frame(32, 16, s, b), "spacing": torch.tensor([[0.1, 0.1]] * b)}
    m = ValidationMetrics()
    m.update({"seg": logits[:2], "lm": lm[:2]}, {k: (v[:2] if torch.is_tensor(v) else
                                                     {a: t[:2] for a, t in v.items()})
                                                 for k, v in batch.items()})
    m.update({"seg": logits[2:], "lm": lm[2:]}, {k: (v[2:] if torch.is_tensor(v) else
                                                     {a: t[2:] for a, t in v.items()})
                                                 for k, v in batch.items()})
    out = m.compute()
    pred_mask = logits.numpy() > 0
    truth = seg.numpy() > 0.5
    for c, name in enumerate(("femur", "patella", "tibia", "fibula")):
        inter = np.logical_and(pred_mask[:, c], truth[:, c]).sum()
        union = np.logical_or(pred_mask[:, c], truth[:, c]).sum()
        assert out[f"val/iou/{name}"] == pytest.approx(inter / union, rel=1e-6)
    # p_blum errors 5, 0, 0 (all visible); p_tmc errors 0, (invisible), 4
    assert out["val/lm_err_px/p_blum"] == pytest.approx(5.0 / 3)
    assert out["val/lm_err_px/p_tmc"] == pytest.approx(2.0)
    assert out["val/lm_err_px"] == pytest.approx((5.0 / 3 + 2.0) / 2)
    # frame 32 x 16 -> side 32, scale 16 / 32 = 0.5: original px = 2 * network px; 0.1 mm/px
    assert out["val/lm_err_mm/p_tmc"] == pytest.approx(0.4, rel=1e-6)
    scored = [5.0, 0.0, 0.0, 0.0, 4.0]  # every visible landmark of every image, pooled
    assert out["val/lm_err_px_median"] == pytest.approx(float(np.median(scored)))
    assert out["val/lm_err_mm_median"] == pytest.approx(float(np.median(scored)) * 2 * 0.1)
    # An even count: images 0 and 2 give 5, 0 and 0, 4 -> numpy's median 2 (not the lower 0).
    m.reset()
    pick = torch.tensor([0, 2])
    m.update({"seg": logits[pick], "lm": lm[pick]},
             {k: (v[pick] if torch.is_tensor(v) else {a: t[pick] for a, t in v.items()})
              for k, v in batch.items()})
    assert m.compute()["val/lm_err_px_median"] == pytest.approx(np.median([5.0, 0.0, 0.0, 4.0]))
    m.reset()
    m.update({"seg": logits, "lm": lm}, {**batch, "spacing": torch.full((b, 2), math.nan)})
    assert math.isnan(m.compute()["val/lm_err_mm"])


def _tiny_datamodule(**kw) -> KneeDataModule:
    return KneeDataModule(num_train=6, num_val=2, size=64, min_side=96, max_side=128,
                          batch_size=2, sigma=2.0, cache_phantoms=True, **kw)


def test_manual_step_counts_batches_and_updates_both_parameter_sets(tmp_path):
    pl.seed_everything(0)
    module = KneePlanModule(**TINY_MODEL)
    net_before = [p.detach().clone() for p in module.net.parameters()]
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    trainer.fit(module, datamodule=_tiny_datamodule())
    # two optimisers step per batch, yet global_step counts batches and max_steps means batches
    assert trainer.global_step == 3
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 3
    opt_net, opt_gn = (o.optimizer if hasattr(o, "optimizer") else o for o in trainer.optimizers)
    net_ids = {id(p) for g in opt_net.param_groups for p in g["params"]}
    gn_ids = {id(p) for g in opt_gn.param_groups for p in g["params"]}
    assert gn_ids == {id(module.gradnorm.log_weights)} and not net_ids & gn_ids
    assert opt_net.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    assert opt_gn.param_groups[0]["lr"] == pytest.approx(0.025)
    # RMSProp state: one step per batch on each optimiser
    assert int(opt_gn.state[module.gradnorm.log_weights]["step"]) == 3
    first = next(iter(module.net.parameters()))
    assert int(opt_net.state[first]["step"]) == 3
    w = module.gradnorm.weights
    torch.testing.assert_close(w.sum(dim=1), torch.full((2,), 3.0))
    assert (w - 1).abs().max() > 1e-3  # the weights moved
    assert bool(module.gradnorm.initialised) and (module.gradnorm.initial_losses > 0).all()
    changed = [not torch.equal(a, b) for a, b in zip(net_before, module.net.parameters(),
                                                      strict=True)]
    assert all(changed)


def test_predict_maps_and_load_module_roundtrip(tmp_path):
    pl.seed_everything(0)
    module = KneePlanModule(**TINY_MODEL, beta=0.3)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    trainer.fit(module, datamodule=_tiny_datamodule())
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = load_module(ckpt)
    assert not loaded.training and loaded.image_size == 64
    assert loaded.hparams.beta == 0.3 and loaded.net.num_stacks == 2
    torch.testing.assert_close(loaded.gradnorm.weights, module.gradnorm.weights)
    x = torch.rand(2, 1, 64, 64)
    module.eval()
    a, b = module.predict_maps(x), loaded.predict_maps(x)
    assert a["seg"].shape == (2, 4, 64, 64) and a["lm"].shape == (2, 2, 64, 64)
    assert a["roi"].shape == (2, 1, 64, 64)
    assert float(a["seg"].min()) >= 0.0 and float(a["seg"].max()) <= 1.0
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_module(tmp_path / "missing.ckpt")


class _GradNormRecorder(pl.Callback):
    """Network gradient norm seen by the network optimiser (after clipping)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad.flatten() for p in pl_module.net.parameters() if p.grad is not None]
        self.norms.append(float(torch.cat(grads).norm()))


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_gradient_clipping_from_config(tmp_path, clip):
    pl.seed_everything(0)
    module = KneePlanModule(**TINY_MODEL, grad_clip_val=clip)
    rec = _GradNormRecorder()
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, callbacks=[rec],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    trainer.fit(module, datamodule=_tiny_datamodule())
    assert len(rec.norms) == 2  # only the network optimiser goes through Lightning's step
    if clip is None:
        assert min(rec.norms) > 1e-2
    else:
        assert max(rec.norms) <= clip * (1 + 1e-4)


def test_training_step_uses_fused_gradnorm_backward(tmp_path, monkeypatch):
    """The module takes GradNorm's norms from the network's taps in its one backward
    (``backward_fused``), not from the separate per-task gradients (``backward_weights``)."""
    from lightning_modules.gradnorm import GradNorm

    def refuse(*args, **kwargs):
        raise AssertionError("training_step used the per-task path")

    calls = []
    fused = GradNorm.backward_fused

    def counting(self, *args, **kwargs):
        calls.append(1)
        return fused(self, *args, **kwargs)

    monkeypatch.setattr(GradNorm, "backward_weights", refuse, raising=False)
    monkeypatch.setattr(GradNorm, "backward_fused", counting)
    pl.seed_everything(0)
    module = KneePlanModule(**TINY_MODEL)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    trainer.fit(module, datamodule=_tiny_datamodule())
    assert len(calls) == 2
    assert (module.gradnorm.weights - 1).abs().max() > 1e-3


def test_a_bone_absent_everywhere_has_no_iou_not_zero():
    """No fibula in any mask and none predicted: its IoU is undefined (NaN, as make evaluate's
    geometry.segmentation_metrics says), and the mean is over the other bones. Before, 0."""
    s = 8
    seg = torch.zeros(1, 4, s, s)
    seg[0, :3, 2:6, 2:6] = 1.0  # femur, patella, tibia present; fibula absent
    logits = torch.where(seg > 0, 10.0, -10.0)
    logits[0, 1, 2:6, 2:4] = -10.0  # patella: half found -> IoU 0.5
    batch = {"seg": seg, "landmarks": torch.tensor([[[3.0, 3.0], [4.0, 4.0]]]),
             "lm_visible": torch.tensor([[True, True]]), "frame": _frame(s, s, s),
             "spacing": torch.tensor([[0.1, 0.1]])}
    m = ValidationMetrics()
    m.update({"seg": logits, "lm": torch.rand(1, 2, s, s)}, batch)
    out = m.compute()
    assert math.isnan(out["val/iou/fibula"])
    assert out["val/iou/femur"] == pytest.approx(1.0)
    assert out["val/iou/patella"] == pytest.approx(0.5)
    assert out["val/iou_mean"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
