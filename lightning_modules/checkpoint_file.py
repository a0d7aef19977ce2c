"""Reading checkpoints safely, without Lightning: one reader for training, planning and export.

:func:`read_checkpoint` loads a ``.ckpt`` with ``torch.load(weights_only=True)`` (tensors and
plain containers only: a pickled object that would run code is refused, never executed) and
turns every way a file can be wrong (missing, empty, a FIFO, random bytes, truncated, a plain
``state_dict``, non-finite weights, a file or hyper-parameters beyond
``lightning_modules.model_limits``) into one :class:`CheckpointError` line naming the file.
:func:`check_architecture` compares a checkpoint's ``state_dict`` with a module's. Imports torch
only, so the Lightning-free planning path (``planning.model_io``) uses the same reader as
training (``lightning_modules.checkpoints``).
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lightning_modules.model_limits import check_archive, check_file_size, check_hyper_parameters

# Lightning pickles the *type* of its hyper-parameter container in some versions; a plain dict
# stands in for it (this names a class, it runs no code) so that weights_only loading accepts it.
_LIGHTNING_TYPES = ("lightning_fabric.utilities.data.AttributeDict",
                    "pytorch_lightning.utilities.parsing.AttributeDict")


class _AttributeDict(dict):
    """Stand-in for Lightning's AttributeDict when unpickling (never instantiated with code)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot or must not be used; the message is one line naming the file."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (also a FileNotFoundError)."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0][:160] if text else type(err).__name__


def _damaged_member(path: Path) -> str | None:
    """The first archive member whose CRC-32 does not match its data, or None.

    torch.save records a CRC-32 per member but ``torch.load`` does not check it: a flipped byte
    in a weight record (bit rot, an interrupted copy) loaded silently as a slightly different
    network (found by fuzzing checkpoints). Reading the archive once costs ~0.02 s for the quick
    network's 3 MB and is bounded by the file-size limit.
    """
    with zipfile.ZipFile(path) as archive:
        return archive.testzip()


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
    try:  # before anything is unpacked: a huge file or a decompression bomb is refused
        check_file_size(path)
        check_archive(path)
        damaged = _damaged_member(path)
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, RuntimeError,
            NotImplementedError) as err:  # also encrypted or oddly compressed members
        raise CheckpointError(f"{path}: cannot read the zip archive "
                              f"({_first_line(err)})") from None
    except ValueError as err:  # the limits' own one-line message, naming the file
        raise CheckpointError(str(err)) from None
    if damaged:
        raise CheckpointError(f"{path}: damaged: {damaged[:80]!r} fails its CRC-32 check (a "
                              "corrupted or partial copy); copy the checkpoint again")
    safe = [(_AttributeDict, name) for name in _LIGHTNING_TYPES]
    try:
        # torch warns on deprecated contents (quantized or typed storages): the checks below
        # say what is wrong in one line, so its multi-line warnings would only add noise
        with torch.serialization.safe_globals(safe), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        msg = _first_line(err)
        if "Weights only load failed" in msg or "Unsupported global" in str(err):
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refused: the checkpoint holds Python objects that could run code"
                f"{what} (not loadable with weights_only=True); only tensors and plain values "
                "are accepted") from None
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
            f"{path}: not a kneeplan checkpoint ({what} without 'state_dict' and "
            "'hyper_parameters')")
    if require_lightning and not isinstance(ckpt["hyper_parameters"], Mapping):
        raise CheckpointError(f"{path}: not a kneeplan checkpoint ('hyper_parameters' is not a "
                              "dict)")
    if require_lightning:
        try:  # before a network is built from them: bounded size, time and memory
            check_hyper_parameters(path, ckpt["hyper_parameters"])
        except ValueError as err:
            raise CheckpointError(f"{err} (refused: outside what a kneeplan model may ask for)"
                                  ) from None
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: its state_dict is a {type(state).__name__}, not a "
                              "mapping of weight names to tensors")
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.layout != torch.strided:
            raise CheckpointError(f"{path}: weight {str(name)[:80]!r} is a "
                                  f"{str(value.layout).replace('torch.', '')} tensor, not a "
                                  "dense one")
        if isinstance(value, torch.Tensor) and value.is_quantized:
            raise CheckpointError(f"{path}: weight {str(name)[:80]!r} is quantized "
                                  f"({str(value.dtype).replace('torch.', '')}): not supported, "
                                  "save the float weights")
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
