"""Lightning-free model loading: a checkpoint -> the plain ``MultiTaskSHGN`` and its heat-map codec.

Planning and evaluation need only the network's weights, its hyper-parameters and the heat-map
codec; importing ``pytorch_lightning`` for that costs seconds. This module reads a Lightning
checkpoint with ``torch.load(weights_only=True)`` (no arbitrary unpickling: a file that needs
other globals is refused), rebuilds ``lightning_modules.shgn.MultiTaskSHGN`` from the saved
hyper-parameters and loads the ``net.*`` weights. It imports torch and ``lightning_modules.shgn``
(plain torch) only; never Lightning, W&B or Optuna.

Codec: ``hyper_parameters["heatmap_codec"]`` (saved by ``KneePlanModule``); for older checkpoints
the DataModule's saved ``size`` / ``sigma``, then the run's YAML config, then the DataModule's
default sigma (6 px) at the network's input size.

Example:
    >>> model = load_checkpoint("runs/quick/20260101-120000/checkpoints/last.ckpt")
    >>> model.image_size, model.codec.sigma, model.net.num_stacks
    (128, 5.0, 2)
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from geometry.heatmaps import HeatmapCodec
from lightning_modules.shgn import DEFAULT_TASKS, MultiTaskSHGN

DEFAULT_SIGMA = 6.0  # KneeDataModule's default, used when a checkpoint records none
_NET_PREFIX = "net."
# Lightning pickles the *type* of its hyper-parameter container; a plain dict stands in for it
# (this names a class, it runs no code) so that weights_only loading accepts real checkpoints.
_LIGHTNING_TYPES = ("lightning_fabric.utilities.data.AttributeDict",
                    "pytorch_lightning.utilities.parsing.AttributeDict")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


class _AttributeDict(dict):
    """Stand-in for Lightning's AttributeDict when unpickling (never instantiated with code)."""


@dataclass
class LoadedModel:
    """The rebuilt network (eval mode), its input side, codec and hyper-parameters."""

    net: MultiTaskSHGN
    image_size: int
    codec: HeatmapCodec
    hparams: dict[str, Any]
    path: Path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a kneeplan checkpoint, refusing anything else."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    safe = [(_AttributeDict, name) for name in _LIGHTNING_TYPES]
    try:
        with torch.serialization.safe_globals(safe):
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found is None:
            raise CheckpointError(f"{p}: not a readable checkpoint ({_first_line(err)})") from err
        raise CheckpointError(
            f"{p}: refused: it needs the Python object {found.group(1)} to load, which a "
            "kneeplan checkpoint never does (not ours, or not safe to unpickle)"
        ) from err
    except Exception as err:  # truncated, not a torch file, ...
        raise CheckpointError(f"{p}: not a readable checkpoint ({_first_line(err)})") from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{p}: not a kneeplan checkpoint (no state_dict)")
    if not isinstance(ckpt.get("hyper_parameters"), dict):
        raise CheckpointError(f"{p}: not a kneeplan checkpoint (no hyper_parameters)")
    return ckpt


def _first_line(err: BaseException) -> str:
    """First meaningful line of an error, for one-line messages."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    msg = lines[-1] if lines and "Weights only load failed" in lines[0] else (lines or [""])[0]
    return f"{type(err).__name__}: {msg[:160]}"


def build_network(hparams: dict[str, Any]) -> MultiTaskSHGN:
    """``MultiTaskSHGN`` from ``KneePlanModule``'s hyper-parameters (same names and defaults)."""
    return MultiTaskSHGN(
        in_channels=1,
        stem_channels=int(hparams.get("c1", 64)),
        stem_residual_channels=int(hparams.get("c2", 128)),
        hourglass_channels=int(hparams.get("c_star", 256)),
        num_stacks=int(hparams.get("num_stacks", 4)),
        depth=int(hparams.get("depth", 4)),
        tasks=dict(DEFAULT_TASKS),
        norm=str(hparams.get("norm", "instance")),
        **dict(hparams.get("net_kwargs") or {}),
    )


def checkpoint_codec(ckpt: dict[str, Any]) -> HeatmapCodec:
    """The heat-map codec a checkpoint was trained with (see the module docstring)."""
    hp = ckpt["hyper_parameters"]
    size = int(hp.get("image_size", 256))
    if hp.get("heatmap_codec"):
        return HeatmapCodec.from_dict(hp["heatmap_codec"])
    data = ckpt.get("datamodule_hyper_parameters")
    if isinstance(data, dict) and data.get("sigma") is not None:
        s = int(data.get("size", size))
        return HeatmapCodec(s, s, float(data["sigma"]))
    sigma = _config_sigma(ckpt.get("kneeplan_config"))
    return HeatmapCodec(size, size, DEFAULT_SIGMA if sigma is None else sigma)


def _config_sigma(config_yaml: Any) -> float | None:
    """``data.sigma`` of the run's YAML config stored in the checkpoint, None if absent."""
    if not isinstance(config_yaml, str):
        return None
    import yaml

    try:
        cfg = yaml.safe_load(config_yaml)
        sigma = cfg["data"]["sigma"]
    except (yaml.YAMLError, KeyError, TypeError):
        return None
    return None if sigma is None else float(sigma)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the network (eval mode, on ``device``) and codec from a checkpoint alone."""
    p = Path(path)
    ckpt = read_checkpoint(p)
    hp = dict(ckpt["hyper_parameters"])
    try:
        weights = {k[len(_NET_PREFIX):]: v for k, v in ckpt["state_dict"].items()
                   if k.startswith(_NET_PREFIX)}
        with torch.device("meta"):  # no random initialisation of weights about to be replaced
            net = build_network(hp)
        net.load_state_dict(weights, strict=True, assign=True)
        if any(t.is_meta for t in (*net.parameters(), *net.buffers())):  # non-persistent buffers
            net = build_network(hp)
            net.load_state_dict(weights, strict=True)
    except (RuntimeError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{p}: the weights do not match this version of the network "
                              f"({first[:200]})") from err
    net.eval().to(device)
    return LoadedModel(net, int(hp.get("image_size", 256)), checkpoint_codec(ckpt), hp, p)
