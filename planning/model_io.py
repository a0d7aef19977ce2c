"""Lightning-free model loading: a checkpoint -> the plain ``MultiTaskSHGN`` and its heat-map codec.

Planning and evaluation need only the network's weights, its hyper-parameters and the heat-map
codec; importing ``pytorch_lightning`` for that costs seconds. This module reads a Lightning
checkpoint with the one reader, ``lightning_modules.checkpoint_file.read_checkpoint``
(``torch.load(weights_only=True)``: a file that needs other globals is refused), rebuilds
``lightning_modules.shgn.MultiTaskSHGN`` from the saved hyper-parameters and loads the ``net.*``
weights. It imports torch and ``lightning_modules.shgn``
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

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from datamodules.decoder_messages import short_repr
from datamodules.real_numbers import real_value
from geometry.heatmaps import HeatmapCodec
from lightning_modules.checkpoint_file import (
    CheckpointError,
    mistyped_weights,
    read_checkpoint,
)
from lightning_modules.model_cost import build_network, compute_problem, conv_cost, conv_flop
from lightning_modules.model_limits import check_codec, check_codec_matches_network
from lightning_modules.shgn import MultiTaskSHGN
from lightning_modules.training_state import (
    ARCHITECTURE_KEYS,
    MAX_RECORDED_IDS,
    TRAINING_IDS_KEY,
    comparable,
)

__all__ = ["CheckpointError", "LoadedModel", "build_network", "checkpoint_codec",
           "conv_cost", "conv_flop", "load_checkpoint", "read_checkpoint"]

DEFAULT_SIGMA = 6.0  # KneeDataModule's default, used when a checkpoint records none
_NET_PREFIX = "net."


@dataclass
class LoadedModel:
    """The rebuilt network (eval mode), its input side, codec and hyper-parameters."""

    net: MultiTaskSHGN
    image_size: int
    codec: HeatmapCodec
    hparams: dict[str, Any]
    path: Path
    data: dict[str, Any] = field(default_factory=dict)  # training_data(): where it trained


def checkpoint_codec(ckpt: dict[str, Any]) -> HeatmapCodec:
    """The heat-map codec a checkpoint was trained with (see the module docstring)."""
    hp = ckpt["hyper_parameters"]
    size = int(hp.get("image_size", 256))
    data = ckpt.get("datamodule_hyper_parameters")
    if hp.get("heatmap_codec"):  # (compared with the run's other records by records_problem)
        return HeatmapCodec.from_dict(hp["heatmap_codec"])
    if isinstance(data, dict) and data.get("sigma") is not None:
        s = data.get("size", size)
        codec = {"input_size": s, "heatmap_size": s, "sigma": data["sigma"]}
    else:
        sigma = _config_sigma(ckpt.get("kneeplan_config"))
        codec = {"input_size": size, "heatmap_size": size,
                 "sigma": DEFAULT_SIGMA if sigma is None else sigma}
    check_codec("", codec)  # the same bounds as a saved codec's
    return HeatmapCodec.from_dict(codec)


def _stored_config(config_yaml: Any) -> dict[str, Any] | None:
    """The run's YAML config stored in the checkpoint as a mapping, None if absent (or if the
    text is larger than any config file we read: ``datamodules.config_file``). Raises
    ``ValueError`` for a text the config files' parser refuses."""
    from datamodules.config_file import MAX_CONFIG_BYTES, ConfigFileError, parse_yaml

    if not isinstance(config_yaml, str) or len(config_yaml) > MAX_CONFIG_BYTES:
        return None
    try:  # the config files' own guarded parser: PyYAML alone spent 32 s on a base-60 integer
        cfg = parse_yaml(config_yaml, "its stored config (kneeplan_config)", "stored config")
    except ConfigFileError as err:
        raise ValueError(str(err)) from None
    return cfg if isinstance(cfg, dict) else None


def _section(cfg: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """``cfg[name]`` when it is a mapping, else empty."""
    value = cfg.get(name) if isinstance(cfg, dict) else None
    return value if isinstance(value, dict) else {}


def _config_sigma(config_yaml: Any) -> float | None:
    """``data.sigma`` of the run's YAML config stored in the checkpoint, None if absent."""
    sigma = _section(_stored_config(config_yaml), "data").get("sigma")
    return real_value(sigma)  # an integer of hundreds of digits is inf: refused by the bounds


def _agree(a: Any, b: Any) -> bool:
    """Equal as real numbers (16 and 16.0), else as the resume check compares settings (lists
    as tuples, an empty mapping as None)."""
    x, y = real_value(a), real_value(b)
    if x is not None and y is not None:
        return math.isclose(x, y, rel_tol=1e-6)
    return comparable(a) == comparable(b)


def records_problem(ckpt: dict[str, Any], codec: HeatmapCodec) -> str | None:
    """Why a checkpoint's records contradict the hyper-parameters that build its network and
    codec (the stored config's ``model.*``, ``data.size`` and ``data.sigma``, the DataModule's
    ``size`` and ``sigma``), or None. A record that is absent is not compared; a DataModule
    size or sigma that is not a number is a problem."""
    hp = ckpt["hyper_parameters"]
    try:
        cfg = _stored_config(ckpt.get("kneeplan_config"))
    except ValueError:
        cfg = None  # unreadable: nothing to compare with (a codec is what plans)
    model, data = _section(cfg, "model"), _section(cfg, "data")
    # what builds the network (image_size: against data.size below), recorded twice by one run:
    # a difference is an edit (red-team round 10: image_size 256 or norm "group" in the
    # hyper-parameters alone planned 3-10 mm off, without a word)
    for key in (k for k in ARCHITECTURE_KEYS if k != "image_size"):
        if key in hp and model.get(key) is not None and not _agree(hp[key], model[key]):
            return (f"its hyper-parameters say {key} {short_repr(hp[key])}, its stored config "
                    f"says {short_repr(model[key])} (one training run wrote both: the file was "
                    "edited)")
    dm = ckpt.get("datamodule_hyper_parameters")
    dm = dm if isinstance(dm, dict) else {}
    for key, ours in (("size", codec.input_size), ("sigma", codec.sigma)):
        for where, value in (("its DataModule", dm.get(key)), ("its stored config",
                                                                data.get(key))):
            if value is None:
                continue
            if real_value(value) is None:
                return f"{where} records {key} {short_repr(value)}, not a number"
            if not _agree(value, ours):
                what = (f"heat-map codec has sigma {ours:g}" if key == "sigma"
                        else f"network takes {ours} px inputs")
                said = "was trained with" if where == "its DataModule" else "says"
                return (f"its {what}, {where} {said} {key} {real_value(value):g} "
                        "(inconsistent hyper-parameters: the file was edited)")
    return None


def _float32_weights(path: Path, weights: dict[str, Any], net: torch.nn.Module
                     ) -> dict[str, Any]:
    """Floating weights as float32 (half/double checkpoints are common and plan the same);
    integer, bool or complex ones where ``net`` has floating weights are refused (sparse ones
    already are, by ``read_checkpoint``)."""
    wrong = mistyped_weights(weights, net.state_dict())
    if wrong:
        raise CheckpointError(f"{path}: weight {wrong[0][:80]!r} holds "
                              f"{str(weights[wrong[0]].dtype).replace('torch.', '')} values: not "
                              "a network (its weights are real floating-point numbers)")
    out = {name: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
           for name, t in weights.items()}
    for name, t in out.items():  # a finite double beyond float32's range (1e300) becomes inf
        if (isinstance(t, torch.Tensor) and t.is_floating_point() and weights[name].dtype !=
                torch.float32 and not bool(torch.isfinite(t).all())):
            raise CheckpointError(f"{path}: weight {name[:80]!r} holds values beyond float32's "
                                  "range (+-3.4e38): they become inf in the network")
    return out


def check_compute(path: str | Path, net: torch.nn.Module, hparams: dict[str, Any],
                  size: int) -> None:
    """Refuse a network that cannot take ``size`` px inputs, or whose convolutions need more
    than ``MAX_GRAPH_FLOP`` or compute more than ``MAX_TOTAL_ELEMENTS`` values for one image
    (the bounds an exported graph has; ``lightning_modules.model_cost``, which training checks
    too)."""
    if problem := compute_problem(net, hparams, size):
        raise CheckpointError(f"{path}: {problem}")


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
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{p}: cannot build its network ({first[:200]})") from err
    if ckpt["state_dict"] and not weights:  # e.g. another project's, or saved around `net`
        first = str(next(iter(ckpt["state_dict"])))
        raise CheckpointError(f"{p}: holds no {_NET_PREFIX}* weights (the first is named "
                              f"{first[:80]!r}): not a checkpoint of a kneeplan network")
    weights = _float32_weights(p, weights, net)
    check_compute(p, net, hp, int(hp.get("image_size", 256)))
    try:
        net.load_state_dict(weights, strict=True, assign=True)
        if any(t.is_meta for t in (*net.parameters(), *net.buffers())):  # non-persistent buffers
            net = build_network(hp)
            net.load_state_dict(weights, strict=True)
    except (RuntimeError, TypeError, ValueError) as err:
        # torch's first line says only "Error(s) in loading state_dict ..."; the next says what
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        what = (lines[1] if len(lines) > 1 and lines[0].startswith("Error(s)") else
                lines[0] if lines else type(err).__name__)
        raise CheckpointError(f"{p}: the weights do not match this version of the network "
                              f"({what[:200]})") from err
    try:
        codec = checkpoint_codec(ckpt)
    except ValueError as err:
        raise CheckpointError(f"{p}: {err}") from None
    size = int(hp.get("image_size", 256))
    if codec.input_size != size:
        raise CheckpointError(f"{p}: its heat-map codec is for {codec.input_size} px inputs, its "
                              f"network for {size} px (inconsistent hyper-parameters)")
    if problem := records_problem(ckpt, codec):
        raise CheckpointError(f"{p}: {problem}")
    try:
        check_codec_matches_network(p, codec.to_dict())
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    net.eval().to(device)
    return LoadedModel(net, int(hp.get("image_size", 256)), codec, hp, p, training_data(ckpt))


def training_data(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The data settings a checkpoint trained with (``data_root``, ``split_file``,
    ``val_fraction``, ``seed``; plain values only, anything else dropped) and, where recorded,
    its training images' ``ids``: which images of a folder were its training images."""
    data = ckpt.get("datamodule_hyper_parameters")
    if not isinstance(data, dict):
        return {}
    kinds = {"data_root": str, "split_file": str, "val_fraction": int | float, "seed": int}
    out = {k: data[k] for k, kind in kinds.items()
           if isinstance(data.get(k), kind) and not isinstance(data.get(k), bool)
           and len(str(data[k])) <= 4096}
    ids = ckpt.get(TRAINING_IDS_KEY)
    if (isinstance(ids, list) and len(ids) <= MAX_RECORDED_IDS
            and all(isinstance(i, str) and len(i) <= 1024 for i in ids)):
        out["ids"] = ids
    return out
