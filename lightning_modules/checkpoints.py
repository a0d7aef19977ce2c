"""Safe checkpoint writing during training: finite weights, atomic files.

Reading (``read_checkpoint``, ``CheckpointError``, ``check_architecture``) lives in the
Lightning-free :mod:`lightning_modules.checkpoint_file` and is re-exported here.

* :class:`FiniteModelCheckpoint` never writes, nor selects as best, a checkpoint whose weights
  or monitored value are NaN/inf.
* :class:`SameFolderCheckpointIO` writes a checkpoint to a hidden temporary file beside its
  target and renames it (Lightning's default goes through the system temp folder, where a
  killed run leaves its partial file); stale temporaries are removed by
  :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_warn

from lightning_modules.checkpoint_file import (
    CheckpointError,
    MissingCheckpointError,
    check_architecture,
    module_is_finite,
    nonfinite_tensors,
    read_checkpoint,
)

__all__ = [
    "CheckpointError", "FiniteModelCheckpoint", "MissingCheckpointError", "SameFolderCheckpointIO",
    "check_architecture", "module_is_finite", "nonfinite_tensors", "read_checkpoint",
    "remove_stale_temporaries",
]  # fmt: skip

TMP_GLOB = ".*.tmp"  # ``.<name>.<pid>.tmp``: never matches ``*.ckpt``


class FiniteModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that never writes or selects a checkpoint with non-finite weights.

    A NaN/inf monitored value is never an improvement either (Lightning would keep it as the
    first "best"). Skips are reported once per epoch as a warning.
    """

    @property
    def state_key(self) -> str:
        """Same key as a plain ``ModelCheckpoint`` (earlier checkpoints restore their state)."""
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def _finite(self, trainer) -> bool:
        ok = module_is_finite(trainer.lightning_module)
        ok = trainer.strategy.reduce_boolean_decision(ok, all=True)
        if not ok:
            rank_zero_warn(f"checkpoint not written at epoch {trainer.current_epoch}: the "
                           "network holds NaN or infinite weights")
        return ok

    def check_monitor_top_k(self, trainer, current: torch.Tensor | None = None) -> bool:
        if current is not None and not bool(torch.isfinite(torch.as_tensor(current)).all()):
            return False
        return self._finite(trainer) and super().check_monitor_top_k(trainer, current)

    def _save_none_monitor_checkpoint(self, trainer, monitor_candidates) -> None:
        if self._finite(trainer):
            super()._save_none_monitor_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        if self._finite(trainer):
            super()._save_last_checkpoint(trainer, monitor_candidates)


class SameFolderCheckpointIO(TorchCheckpointIO):
    """Write ``<dir>/.<name>.<pid>.tmp`` then rename it over ``<dir>/<name>`` (atomic, no
    file in the system temp folder); the temporary is removed when the write fails."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporaries left in ``folder`` by a killed run (``.<name>.<pid>.tmp``)."""
    folder = Path(folder)
    stale = sorted(folder.glob(TMP_GLOB)) if folder.is_dir() else []
    for p in stale:
        with contextlib.suppress(OSError):
            p.unlink()
    return stale
