"""Image in original pixels -> the network's maps in the network frame (pad + resize + forward).

The image is zero-padded (centred) to a square and resized to the predictor's input size with
``geometry.frame.PadResize``, exactly as in training; the returned ``NetworkMaps`` carries that
frame so every decoded point can be mapped back to original pixels.

A *predictor* (``Predictor`` protocol) has ``image_size``, ``codec`` and
``predict_maps(x: (B, 1, S, S) float32 numpy) -> dict of numpy`` with ``seg`` (probabilities),
``lm``, ``roi`` and optionally ``lm_prev`` (the second-to-last hourglass's landmark maps).
Two implementations: ``TorchPredictor`` (a checkpoint, through ``planning.model_io``; no
Lightning) and ``OnnxPredictor`` (an exported model through ONNX Runtime; no torch at all).
``load_predictor`` picks one by the file's suffix. Anything else with a torch-style
``predict_maps(tensor) -> dict of tensors`` (e.g. a ``KneePlanModule``) is wrapped on the fly.

Example:
    >>> predictor = load_predictor("runs/quick/last.ckpt")    # or "model.onnx"
    >>> maps = predict_image(predictor, image)                 # image: (H, W) float32 in [0, 1]
    >>> maps.seg.shape, maps.lm.shape, maps.roi.shape
    ((4, 128, 128), (2, 128, 128), (1, 128, 128))
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from datamodules.sample import TASKS
from geometry.frame import PadResize
from geometry.heatmaps import HeatmapCodec
from lightning_modules.model_limits import (
    INT_LIMITS,
    MAX_DESCRIPTION_BYTES,
    bounded_int,
    check_codec,
    check_codec_matches_network,
    check_file_size,
    read_model_file,
)
from planning.onnx_graph import check_onnx_graph

# exported model outputs, in this order, with their channels (lm_prev: the second-to-last
# hourglass's landmarks, optional)
OUTPUT_CHANNELS = {**TASKS, "lm_prev": TASKS["lm"]}
EXPORT_VERSION = 1  # layout of the description planning/export.py writes
OUTPUT_NAMES = tuple(OUTPUT_CHANNELS)
INPUT_NAME = "image"


SEG_TOLERANCE = 1e-3  # sigmoid probabilities, after float rounding
MAX_MAP_VALUE = 1e3  # heat-map targets lie in [0, 1]; trained outputs stay within a few units


class ModelOutputError(ValueError):
    """The model's own output is unusable for a valid input (wrong shape, NaN, or ONNX Runtime
    failing while it runs): the model file is at fault, not the image (``plan`` exits 2, as for a
    model it cannot load)."""


def check_maps(maps: dict[str, Any], batch: int, size: int) -> dict[str, np.ndarray]:
    """The network outputs as float32 arrays, each ``(batch, C_task, size, size)`` and finite
    (the input is: ``planning.plan.load_input`` refuses non-finite images); ModelOutputError
    otherwise (a heat-map of another size would decode landmarks off the image, and a NaN
    would be blamed on the image)."""
    out = {}
    for name, channels in OUTPUT_CHANNELS.items():
        if maps.get(name) is None:
            if name == "lm_prev":  # optional
                continue
            raise ModelOutputError(f"the model gave no {name!r} output")
        arr = np.asarray(maps[name], dtype=np.float32)
        want = (batch, channels, size, size)
        if arr.shape != want and not (name == "roi" and arr.shape == (batch, size, size)):
            raise ModelOutputError(f"the model's {name!r} output has shape {arr.shape}, expected "
                                   f"{want} for its {size} px input")
        if not np.isfinite(arr).all():
            raise ModelOutputError(f"the model's {name!r} output contains NaN or infinite values "
                                   "for a finite input image (non-finite or absurd weights)")
        lo, hi = float(arr.min()), float(arr.max())
        if name == "seg" and not (lo >= -SEG_TOLERANCE and hi <= 1 + SEG_TOLERANCE):
            raise ModelOutputError(f"the model's 'seg' output is not probabilities (values in "
                                   f"[{lo:.3g}, {hi:.3g}], expected [0, 1]: no sigmoid?)")
        if max(-lo, hi) > MAX_MAP_VALUE:
            raise ModelOutputError(f"the model's {name!r} output reaches {max(-lo, hi):.3g} "
                                   f"(targets lie in [0, 1]; beyond {MAX_MAP_VALUE:g} the weights "
                                   "are absurd)")
        out[name] = arr
    return out


@dataclass
class NetworkMaps:
    """The task outputs of one image in the (S, S) network frame.

    Args:
        seg: (4, S, S) bone probabilities in [0, 1] (multi-label, ``BONES`` order).
        lm: (2, S, S) landmark heat-maps (``LANDMARKS`` order).
        roi: (1, S, S) cortex-line ROI heat-map.
        frame: the pad + resize that took the original image to the network frame.
        lm_prev: (2, S, S) the second-to-last hourglass's landmark heat-maps, when the model
            gives them (used for the hourglass-agreement check), else None.
        first_look: the whole image's maps when these come from a second look through a
            window (``predict_image(zoom=True)``; used for the look-agreement check), else None.
        net_input: the (S, S) network-frame image these maps answer (TTA warps it, instead of
            resampling the original again).
    """

    seg: np.ndarray
    lm: np.ndarray
    roi: np.ndarray
    frame: PadResize
    lm_prev: np.ndarray | None = None
    first_look: NetworkMaps | None = None
    net_input: np.ndarray | None = None  # the (S, S) image the network saw (reused by TTA)


@runtime_checkable
class Predictor(Protocol):
    """What planning needs from a model (numpy in, numpy out)."""

    image_size: int
    codec: HeatmapCodec

    def predict_maps(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """(B, 1, S, S) float32 -> seg (probabilities), lm, roi [, lm_prev] as numpy arrays."""
        ...


class TorchPredictor:
    """A plain ``MultiTaskSHGN`` (from ``planning.model_io``) behind the ``Predictor`` protocol."""

    def __init__(self, net: Any, image_size: int, codec: HeatmapCodec, device: str = "cpu",
                 training_data: dict[str, Any] | None = None):
        self.net, self.image_size, self.codec, self.device = net, int(image_size), codec, device
        self.training_data = training_data or {}  # planning.model_io.training_data

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> TorchPredictor:
        """Load a checkpoint safely (no Lightning); see ``planning.model_io``."""
        from planning.model_io import load_checkpoint

        m = load_checkpoint(path, device=device)
        return cls(m.net, m.image_size, m.codec, device, m.data)

    def predict_maps(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Final (and second-to-last) hourglass maps of ``x`` (B, 1, S, S)."""
        import torch

        from lightning_modules.shgn import final_maps

        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            maps = final_maps(self.net, xt)
        return {k: v.float().cpu().numpy() for k, v in maps.items()}


class OnnxPredictor:
    """An exported model (``planning.export``) run by ONNX Runtime on the CPU; needs no torch."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        check_file_size(self.path)  # a folder or pipe named as such, before the description
        meta = read_export_meta(self.path)
        self.image_size = int(meta["input_size"])
        self.codec = HeatmapCodec.from_dict(meta["codec"])
        self.output_names = [str(n) for n in meta["outputs"]]
        data = read_model_file(self.path)  # read once: hashed, checked and run are the same bytes
        if meta.get("sha256") is not None and graph_sha256(data) != meta["sha256"]:
            raise ValueError(f"{self.path}: damaged: its SHA-256 differs from the one recorded "
                             f"in {export_meta_path(self.path).name} at export (a corrupted or "
                             "partial copy, or a different model); export or copy it again")
        # before ORT; the largest batch whose tensors fit MAX_LIVE_ELEMENTS (1..MAX_ONNX_BATCH)
        self.max_batch = check_onnx_graph(self.path, self.image_size, self.output_names, data)
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # FATAL only: an error is raised to us, not logged by ORT
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        try:  # from the checked bytes (which also refuses weights in external files)
            self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT's exception types derive from Exception
            if type(err).__module__.split(".")[0] != "onnxruntime":
                raise
            raise ValueError(f"{self.path}: ONNX Runtime cannot load it: {_first_line(err)}"
                             ) from None
        self.input_name = self.session.get_inputs()[0].name

    def predict_maps(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run the session on ``x`` (B, 1, S, S) float32; ModelOutputError when ONNX Runtime
        fails (the input is always a batch of the checked signature, so the graph is at fault:
        e.g. ``bad_alloc`` in a Resize, fifth fuzz round; it was blamed on the image)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        parts = []
        step = self.max_batch  # the batches the graph check priced, none larger
        for start in range(0, max(len(x), 1), step):
            feed = {self.input_name: x[start:start + step]}
            try:
                parts.append(self.session.run(self.output_names, feed))
            except Exception as err:  # noqa: BLE001 - ORT's exception types derive from Exception
                if type(err).__module__.split(".")[0] != "onnxruntime":
                    raise
                raise ModelOutputError(f"ONNX Runtime failed running it on a valid input: "
                                       f"{_first_line(err)}") from None
        outs = parts[0] if len(parts) == 1 else [np.concatenate(o) for o in zip(*parts,
                                                                                 strict=True)]
        return dict(zip(self.output_names, outs, strict=True))


class _TensorModulePredictor:
    """Wraps a torch-style ``predict_maps(tensor) -> dict of tensors`` (e.g. KneePlanModule)."""

    def __init__(self, module: Any):
        self.module = module
        self.image_size = int(module.image_size)
        codec = getattr(module, "codec", None)
        self.codec = codec or HeatmapCodec(self.image_size, self.image_size, 6.0)

    def predict_maps(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        try:
            device = next(self.module.parameters()).device
        except (StopIteration, AttributeError):
            device = torch.device("cpu")
        with torch.inference_mode():
            maps = self.module.predict_maps(torch.from_numpy(x).to(device))
        return {k: v.detach().float().cpu().numpy() for k, v in maps.items()}


# ONNX Runtime names the C++ source line and function before its message (red-team round 10:
# ~700-character lines): "/onnxruntime_src/.../model_load_utils.h:46 void onnxruntime::...(...) "
_ORT_SOURCE = re.compile(r"/onnxruntime_src/\S+:\d+ [^(]*\((?:[^()]|\([^()]*\))*\)\s*")


def _first_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message as one line of at most ``limit`` characters (its type if empty),
    without ONNX Runtime's C++ source locations."""
    text = _ORT_SOURCE.sub("", str(err)).strip()
    line = text.splitlines()[0].strip() if text else type(err).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


def graph_sha256(data: bytes) -> str:
    """Hex SHA-256 of an exported graph's bytes (recorded at export, checked before planning)."""
    return hashlib.sha256(data).hexdigest()


def export_meta_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.json`` (what planning needs besides the graph)."""
    return Path(onnx_path).with_suffix(".json")


def read_export_meta(onnx_path: str | Path) -> dict[str, Any]:
    """The JSON written beside an exported model; ValueError naming the file when bad."""
    meta_path = export_meta_path(onnx_path)
    if not meta_path.exists() and not meta_path.is_symlink():
        raise ValueError(f"{meta_path}: missing: an exported model needs the description that "
                         f"make export writes beside {Path(onnx_path).name} (copy both files)")
    try:
        meta = json.loads(read_model_file(meta_path, MAX_DESCRIPTION_BYTES))
        if not isinstance(meta, dict) or meta.get("format") != "kneeplan-onnx":
            raise ValueError("not a kneeplan export description")
        version = meta.get("version", EXPORT_VERSION)
        if type(version) is not int or version != EXPORT_VERSION:  # a later layout (or `true`)
            raise ValueError(f"description version {meta.get('version')!r:.20}; this kneeplan "
                             f"reads version {EXPORT_VERSION} (export the checkpoint again)")
        for key in ("input_size", "codec", "outputs", "tasks"):
            if key not in meta:
                raise ValueError(f"missing {key!r}")
        bounded_int("", "input_size", meta["input_size"], *INT_LIMITS["image_size"])
        check_codec("", meta["codec"])
        if meta["codec"].get("input_size") != meta["input_size"]:
            raise ValueError(f"its heat-map codec is for {meta['codec'].get('input_size')} px "
                             f"inputs, the model for {meta['input_size']} px (inconsistent)")
        check_codec_matches_network("", meta["codec"])
        sha = meta.get("sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64
                                    and all(c in "0123456789abcdef" for c in sha)):
            raise ValueError("'sha256' must be 64 lower-case hex digits")
        outs = meta["outputs"]
        if not (isinstance(outs, list) and 0 < len(outs) <= 64
                and all(isinstance(o, str) for o in outs)):
            raise ValueError("'outputs' must be a list of up to 64 names")
        missing = [n for n in OUTPUT_NAMES[:3] if n not in outs]
        if missing:
            raise ValueError(f"'outputs' lacks {', '.join(missing)} (planning needs seg, lm, roi)")
        tasks = meta["tasks"]
        if not (isinstance(tasks, list) and len(tasks) <= 64
                and all(isinstance(t, str) for t in tasks)):
            raise ValueError("'tasks' must be a list of up to 64 names")
        channels = meta.get("task_channels", TASKS)  # planning reads seg, lm, roi by name
        if not isinstance(channels, dict):
            raise ValueError("'task_channels' must map task names to channel counts")
        for task, count in TASKS.items():
            if channels.get(task) != count:
                raise ValueError(f"'task_channels' gives {task} {channels.get(task)!r:.20} "
                                 f"channels; planning needs {count}")
    except (OSError, ValueError, RecursionError) as err:
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise ValueError(f"{meta_path}: cannot use the exported model's description ({first})"
                         ) from None
    return meta


def as_predictor(model: Any) -> Any:
    """``model`` itself when it takes numpy (our predictors), else a tensor-module wrapper."""
    if isinstance(model, TorchPredictor | OnnxPredictor | _TensorModulePredictor):
        return model
    if getattr(model, "takes_numpy", False):
        return model
    return _TensorModulePredictor(model)


def load_predictor(path: str | Path, device: str = "cpu", threads: int | None = None) -> Any:
    """An ``OnnxPredictor`` for ``*.onnx``, else a ``TorchPredictor`` from a checkpoint."""
    if Path(path).suffix.lower() == ".onnx":
        return OnnxPredictor(path, threads=threads)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return TorchPredictor.from_checkpoint(path, device=device)


def network_input(
    image: np.ndarray, size: int, frame: PadResize | None = None
) -> tuple[np.ndarray, PadResize]:
    """Pad (centred) and resize an (H, W) image to (size, size) as in training, or through
    ``frame`` (e.g. a ``WindowResize`` of a second look)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or min(img.shape) < 1:
        raise ValueError(f"expected a non-empty (H, W) image, got shape {img.shape}")
    frame = frame or PadResize.from_shape(img.shape[0], img.shape[1], size)
    return frame.apply(img).astype(np.float32), frame


def predict_images(
    module: Any, images: Sequence[np.ndarray], batch_size: int = 4,
    frames: Sequence[PadResize | None] | None = None,
) -> list[NetworkMaps]:
    """Run a predictor on original-resolution images, in batches.

    Args:
        module: a ``Predictor`` (``load_predictor``) or a module with a torch-style
            ``predict_maps`` and ``image_size`` (wrapped by ``as_predictor``).
        images: (H_i, W_i) float32 images in [0, 1]; sizes may differ.
        batch_size: images per forward pass.
        frames: per image, the frame into the network (None: pad to the centred square).
    """
    predictor = as_predictor(module)
    size = int(predictor.image_size)
    frames = list(frames) if frames is not None else [None] * len(images)
    out: list[NetworkMaps] = []
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        chunk = [network_input(img, size, fr)
                 for img, fr in zip(images[start:stop], frames[start:stop], strict=True)]
        maps = check_maps(predictor.predict_maps(np.stack([c[0] for c in chunk])[:, None]),
                          len(chunk), size)
        seg, lm, roi = maps["seg"], maps["lm"], maps["roi"]
        prev = maps.get("lm_prev")
        for i, (x, frame) in enumerate(chunk):
            out.append(NetworkMaps(seg[i], lm[i], roi[i].reshape(1, size, size), frame,
                                   None if prev is None else np.asarray(prev[i], np.float32),
                                   net_input=x))
    return out


def predict_image(
    module: Any, image: np.ndarray, zoom: bool = False, review_config: Any = None
) -> NetworkMaps:
    """``predict_images`` for one image. ``zoom``: when the first pass shows the knee far from
    the training scale, a second look through ``planning.zoom.knee_window`` (its maps are
    returned; their ``frame`` is that window); ``review_config``: the review's thresholds,
    whose femur bounds decide whether there is a knee to zoom to (None: configs/review.yaml)."""
    maps = predict_images(module, [image], batch_size=1)[0]
    if zoom:
        from planning import zoom as zoom_mod

        first = maps
        for _ in range(zoom_mod.MAX_LOOKS):
            window = zoom_mod.knee_window(maps, np.shape(image), review_config)
            if window is None:
                break
            looked = predict_images(module, [image], batch_size=1, frames=[window])[0]
            if not np.any(np.asarray(looked.seg[0]) >= 0.5):
                break  # the window shows no femur: keep what was seen before
            maps = looked
            maps.first_look = first
    return maps
