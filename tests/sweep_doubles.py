"""Test doubles of ``lightning_modules.train.fit`` for sweep tests: a trial that trains nothing
(metrics straight from the sampled beta and alpha) and one that must never run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace


def opts(args):
    """``--key=value`` training arguments as a dict."""
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def instant_fit(args, callbacks=None):
    """No training: metrics straight from the sampled (beta, alpha)."""
    o = opts(args)
    value = (float(o["model.beta"]) - 0.6) ** 2 + (float(o["model.alpha"]) - 1.0) ** 2
    return SimpleNamespace(
        trainer=SimpleNamespace(current_epoch=1),
        run_dir=Path(o["run.root"]) / o["run.name"],
        metrics={"val/lm_err_mm_median": value, "val/lm_err_px_median": 10 * value,
                 "val/iou_mean": 0.5, "val/loss": 1.0})


def never_fit(args, callbacks=None):
    raise AssertionError("a trial ran although the sweep should have been refused")
