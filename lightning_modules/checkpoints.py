"""Safe checkpoint reading and writing: ``weights_only`` loads, finite weights, atomic files.

* :func:`read_checkpoint` loads a ``.ckpt`` with ``torch.load(weights_only=True)`` (tensors and
  plain containers only: a pickled object that would run code is refused, never executed) and
  turns every way a file can be wrong (missing, empty, a FIFO, random bytes, truncated, a plain
  ``state_dict``, non-finite weights) into one :class:`CheckpointError` line naming the file.
* :func:`check_architecture` compares a checkpoint's ``state_dict`` with a module's.
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
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_warn

TMP_GLOB = ".*.tmp"  # ``.<name>.<pid>.tmp``: never matches ``*.ckpt``


class CheckpointError(ValueError):
    """A checkpoint that cannot or must not be used; the message is one line naming the file."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (also a FileNotFoundError)."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0][:160] if text else type(err).__name__


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    require_lightning: bool = True) -> dict[str, Any]:
    """Load ``path`` with ``weights_only=True``; raise :class:`CheckpointError` on any problem.

    ``require_lightning``: the file must be a Lightning checkpoint (``state_dict`` and
    ``hyper_parameters``), not a bare ``state_dict``. Non-finite weights are refused too.
    """
    path = Path(path)
    if not path.exists():
        raise MissingCheckpointError(f"{path}: no such checkpoint file (does not exist)")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file (a pipe or device?)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint file is empty (0 bytes)")
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({_first_line(err)})") from None
    if not is_zip:  # torch.save writes a zip archive; its directory sits at the very end
        raise CheckpointError(f"{path}: not a readable checkpoint: truncated, or not a file "
                              "written by torch.save (no complete zip archive)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        msg = _first_line(err)
        if "Weights only load failed" in msg or "Unsupported global" in str(err):
            raise CheckpointError(
                f"{path}: refused: the checkpoint holds Python objects that could run code "
                "(not loadable with weights_only=True); only tensors and plain values are "
                "accepted") from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({msg})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError,
            IndexError, TypeError, AttributeError) as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint, truncated or not a torch file "
            f"({_first_line(err)})") from None
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(ckpt).__name__})")
    if require_lightning and not ("state_dict" in ckpt and "hyper_parameters" in ckpt):
        what = "a plain state_dict" if ckpt and all(
            isinstance(v, torch.Tensor) for v in ckpt.values()) else "a dict"
        raise CheckpointError(
            f"{path}: {what} without 'state_dict' and 'hyper_parameters': not a kneeplan "
            "training checkpoint")
    state = ckpt.get("state_dict", ckpt)
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} of {len(state)} weight tensors hold NaN or infinity "
            f"(e.g. {bad[0]}): the training that wrote it diverged")
    return dict(ckpt)


def nonfinite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding a NaN or an infinity."""
    return [k for k, v in state.items() if isinstance(v, torch.Tensor)
            and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def module_is_finite(module: torch.nn.Module) -> bool:
    """True when every floating parameter and buffer of ``module`` is finite."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def check_architecture(path: str | Path, state: Mapping[str, Any],
                       module: torch.nn.Module) -> None:
    """Raise :class:`CheckpointError` when ``state`` does not fit ``module`` (names and shapes)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and isinstance(state[k], torch.Tensor)
              and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or shapes:
        detail = (f"{len(missing)} missing, {len(extra)} unexpected, {len(shapes)} of another "
                  f"shape" + (f", e.g. {(missing + extra + shapes)[0]}"))
        raise CheckpointError(
            f"{path}: written for another network architecture than the configured one "
            f"({detail})")


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
