"""Model files shared by the inference tests: a tiny checkpoint trained for one step with the
real training entry (Lightning's format, codec in its hyper-parameters), its ONNX export, and a
few phantom radiographs. Built once per test session (cached here, keyed by the session's
temporary root), so several test modules reuse them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_CACHE: dict[tuple[str, str], Path] = {}


def trained_tiny_checkpoint(tmp_path_factory) -> Path:
    """``last.ckpt`` of the tiny preset after one training step (sigma 2, 64 px, 2 stacks)."""
    key = (str(tmp_path_factory.getbasetemp()), "ckpt")
    if key not in _CACHE:
        from lightning_modules import train

        root = tmp_path_factory.mktemp("tiny_run")
        train.fit(["--config", str(REPO / "configs" / "tiny.yaml"), "--run.root", str(root),
                   "--trainer.max_epochs=1", "--data.num_train=2", "--data.num_val=1",
                   "--run.val_images=0"])
        _CACHE[key] = next(root.rglob("last.ckpt"))
    return _CACHE[key]


def exported_tiny_model(tmp_path_factory) -> Path:
    """``tiny.onnx`` (+ ``tiny.json``) exported from ``trained_tiny_checkpoint``."""
    key = (str(tmp_path_factory.getbasetemp()), "onnx")
    if key not in _CACHE:
        from planning.export import export_onnx

        out = tmp_path_factory.mktemp("export") / "tiny.onnx"
        export_onnx(trained_tiny_checkpoint(tmp_path_factory), out)
        _CACHE[key] = out
    return _CACHE[key]


def phantom_images(tmp_path_factory, n: int = 2) -> list[Path]:
    """``n`` small phantom radiographs in a dataset folder (so they carry annotation spacing)."""
    key = (str(tmp_path_factory.getbasetemp()), f"phantoms{n}")
    if key not in _CACHE:
        from datamodules.dataset_io import write_sample
        from datamodules.phantoms import PhantomConfig, generate_phantom

        root = tmp_path_factory.mktemp("infer_data")
        cfg = PhantomConfig(min_side=200, max_side=300)
        for seed in range(n):
            write_sample(root, generate_phantom(100 + seed, cfg))
        _CACHE[key] = root / "images"
    return sorted(_CACHE[key].glob("*.png"))


def plan_in_subprocess(image: Path | str, model: Path, out: Path, *extra: str) -> dict:
    """Run ``planning.plan.main`` in a fresh interpreter; its exit code and which heavy
    packages ended up imported."""
    code = (
        "import json, sys\n"
        "from planning.plan import main\n"
        f"rc = main({['--image', str(image), '--ckpt', str(model), '--out', str(out), *extra]!r})\n"
        "mods = set(sys.modules)\n"
        "heavy = {n: any(m == n or m.startswith(n + '.') for m in mods)\n"
        "         for n in ('torch', 'pytorch_lightning', 'lightning', 'lightning_fabric',\n"
        "                   'wandb', 'optuna', 'torchmetrics')}\n"
        "print('RESULT=' + json.dumps({'rc': rc, 'imported': heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=180)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT=")]
    assert line, proc.stdout + proc.stderr
    res = json.loads(line[-1][len("RESULT="):])
    res["stdout"], res["stderr"] = proc.stdout, proc.stderr
    return res


def untrained_tiny_checkpoint(path: Path) -> Path:
    """An untrained tiny checkpoint (64 px, one hourglass, seed 0) in Lightning's format at
    ``path``: no training needed. Its archive's folder is ``path``'s stem."""
    import pytorch_lightning as pl
    import torch

    from lightning_modules.module import KneePlanModule

    torch.manual_seed(0)
    m = KneePlanModule(image_size=64, num_stacks=1, depth=2, c1=4, c2=8, c_star=16,
                       net_kwargs={"skip_channels": 4, "refine_channels": 4})
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    return path


def refused_checkpoint(path: Path, words: str) -> str:
    """The one-line ``CheckpointError`` that ``read_checkpoint`` raises for ``path``: it names
    the file first, holds ``words``, and comes within 10 s (not after the work it guards)."""
    import time

    import pytest

    from lightning_modules.checkpoint_file import CheckpointError, read_checkpoint

    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{path}: ") and words in line, line
    assert time.perf_counter() - start < 10, "refused, but only after the work it guards"
    return line
