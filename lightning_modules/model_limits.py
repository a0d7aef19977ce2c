"""What a model file may ask for: bounds on a checkpoint's or an export's description.

A checkpoint's hyper-parameters (and an export's JSON) decide how large a network is built and
to what side every image is resized before inference. A hostile or corrupt file could otherwise
ask for 3000 hourglasses (building them alone takes minutes) or a 10^6 px input (terabytes), or
be a compressed archive that expands to far more than its size. These checks run before anything
is built or allocated; each failure is a ``ValueError`` naming the file and the value. Plain
Python (no torch), so the ONNX planning path uses the same bounds.
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datamodules.decoder_messages import short_repr
from datamodules.real_numbers import real_value

# Generous for research (the paper network: 4 stacks, depth 4, widths <= 256, 256 px input) and
# small enough that building and running the network stays bounded.
MAX_MODEL_BYTES = 2 * 1024**3  # a checkpoint or ONNX file, and what a checkpoint unpacks to
MAX_DESCRIPTION_BYTES = 1024**2  # an export's JSON description
# The pickled structure of a checkpoint (everything but the tensors: hyper-parameters, config,
# loop state; ~0.1 MB for ours). Unpickled objects take ~10x their bytes, so this is kept small.
MAX_PICKLE_BYTES = 64 * 1024**2
INT_LIMITS: dict[str, tuple[int, int]] = {
    "num_stacks": (1, 32),
    "depth": (1, 10),
    "c1": (1, 4096),
    "c2": (1, 4096),
    "c_star": (1, 4096),
    "image_size": (8, 1024),  # the paper: 256; one 2048 px quick network took 7 GB, > 2 min
}
NET_KWARG_LIMITS: dict[str, tuple[int, int]] = {
    "head_channels": (1, 4096),
    "skip_channels": (1, 4096),
    "refine_channels": (1, 4096),
}
MAX_SIGMA = 256.0
# An exported graph (checked by ``planning.onnx_graph`` before ONNX Runtime runs it): the
# operators ``make export`` writes for every norm choice (plus a few shape-preserving ones other
# exporters emit), each with the attributes the check's shape rules model (anything else, e.g.
# Shape's start/end or Resize's axes, could make the real output differ); no control flow
# (Loop, Scan, If run without bound) and no custom domains.
ONNX_OPS: dict[str, frozenset[str]] = {
    "Constant": frozenset({"value"}), "Identity": frozenset(), "Relu": frozenset(),
    "Sigmoid": frozenset(), "Cast": frozenset({"to"}),
    "InstanceNormalization": frozenset({"epsilon"}),
    "BatchNormalization": frozenset({"epsilon", "momentum"}),
    "Shape": frozenset(), "Add": frozenset(), "Sub": frozenset(), "Mul": frozenset(),
    "Div": frozenset(),
    "Conv": frozenset({"strides", "pads", "dilations", "group", "kernel_shape"}),
    "MaxPool": frozenset({"kernel_shape", "strides", "pads", "dilations", "ceil_mode"}),
    "Resize": frozenset({"mode", "coordinate_transformation_mode", "nearest_mode",
                         "cubic_coeff_a", "exclude_outside", "extrapolation_value"}),
    "Reshape": frozenset(), "Concat": frozenset({"axis"}), "Unsqueeze": frozenset({"axes"}),
    "Squeeze": frozenset({"axes"}),
}  # fmt: skip
MAX_GRAPH_NODES = 100_000  # the paper network exports ~600
MAX_TENSOR_ELEMENTS = 2**24  # any tensor, per image (64 MB of float32; the paper network's
# largest: 2 M at 256 px, 12.7 M at 632 px where its FLOP reach the bound below; 16 skip
# channels at 1024 px: 2^24). 2^26 let one Resize and its copy hold 2.1 GB at batch 4
# (red-team round 10)
MAX_LIVE_ELEMENTS = 2**27  # tensors alive at once in one ONNX Runtime run (512 MB of float32):
# ONNX Runtime frees a tensor after its last reader; K branches of one large tensor are K
# copies. The graph check refuses a graph over it at batch 1 and otherwise tells the predictor
# the largest batch (up to MAX_ONNX_BATCH) within it (paper network at 256 px: 6.6 M an image)
MAX_ONNX_BATCH = 4  # images per ONNX Runtime run at most; the graph check prices every batch
# up to it (a graph whose shapes grow with the batch, e.g. B^8, passed at batch 1 and took
# 4.3 GB at 4)
RESIZE_OPERATIONS = 200  # a nearest or linear Resize output, in the convolutions' operations
# (ONNX Runtime, one thread: 42 GFLOP/s of Conv, 256 M linear outputs/s; cubic: 6 M/s, refused)
# all node outputs at batch 1 together, a bound on work and on memory even if every tensor
# stayed alive (8 GB of float32); the paper network at 256 px: 2.3e8
MAX_TOTAL_ELEMENTS = 2**31
# a node computed from constants alone (folded by ONNX Runtime at load and kept) may output
# more values than its largest input only up to this (ours: shape vectors of 4 values)
MAX_FOLDED_ELEMENTS = 2**16
MAX_GRAPH_FLOP = 2 * 10**11  # convolutions and pooling at batch 1 (the paper network: 3.1e10
# at 256 px, 1.2e11 at 512); a plan runs it up to ~10 times (TTA, a second look)


def _at(source: str | Path) -> str:
    """``"source: "`` as a message prefix; empty when there is no source to name."""
    return f"{source}: " if str(source) else ""


def bounded_int(source: str | Path, name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in ``[lo, hi]``, else ValueError naming ``source`` and ``name``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
    if not ok and isinstance(value, float) and value.is_integer() and lo <= value <= hi:
        ok, value = True, int(value)
    if not ok:
        raise ValueError(f"{_at(source)}{name}={short_repr(value)} is not a whole number in "
                         f"[{lo}, {hi}]")
    return int(value)


def check_file_size(path: str | Path, limit: int | None = None) -> None:
    """ValueError when ``path`` is not a regular file (a folder, a pipe that would block the
    reader for ever, a device) or is larger than ``limit`` bytes (default ``MAX_MODEL_BYTES``)."""
    limit = MAX_MODEL_BYTES if limit is None else limit
    p = Path(path)
    if p.exists() and not p.is_file():
        kind = "a folder" if p.is_dir() else "not a regular file (a pipe or device)"
        raise ValueError(f"{path} is {kind}, not a model file")
    if problem := file_size_problem(path, p.stat().st_size, limit):
        raise ValueError(problem)


def file_size_problem(path: str | Path, size: int, limit: int | None = None) -> str | None:
    """The one-line refusal of a model file of ``size`` bytes above ``limit`` (default
    ``MAX_MODEL_BYTES``), or None."""
    limit = MAX_MODEL_BYTES if limit is None else limit
    if size <= limit:
        return None
    return (f"{path}: {size / 1024**2:.0f} MB is larger than the {limit / 1024**2:.0f} MB a model "
            "file may have")


def read_model_file(path: str | Path, limit: int | None = None) -> bytes:
    """The whole file, read through one descriptor, at most ``limit`` bytes (default
    ``MAX_MODEL_BYTES``); ValueError naming the file otherwise.

    What a reader checks and what it then loads must be the same bytes: a file replaced between
    the two (a swap in a shared folder, a link moved) could otherwise pass the checks as one file
    and load as another. Opened non-blocking, so a pipe put in the file's place is refused at
    once instead of blocking the reader; the size is checked on the open file.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:  # the type on the raw descriptor: wrapping a folder's raises and would leak it
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ValueError(f"{path} is a folder, not a model file")
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path}: not a regular file (a pipe or device?)")
        if problem := file_size_problem(path, info.st_size, limit):
            raise ValueError(problem)
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb") as f:
        data = f.read(info.st_size + 1)  # one byte more: a file still growing is refused
    if len(data) != info.st_size:
        raise ValueError(f"{path}: changed while it was read ({info.st_size} bytes, then "
                         f"{len(data)}{'+' if len(data) > info.st_size else ''}): copy it again "
                         "once it is complete")
    return data


def model_file_problem(path: str | Path) -> str | None:
    """Why ``path`` (``--ckpt``) cannot be a model file, before it is opened (None: it may be
    one): missing (a dangling or looping link named as such), a folder, a pipe, too large."""
    p = Path(path)
    try:  # (a folder on the way that may not be searched raises, not answers False)
        if not p.exists():
            link = " (a symbolic link to nothing, or a loop)" if p.is_symlink() else ""
            return f"checkpoint {path} does not exist{link}"
        check_file_size(p)
    except OSError as err:
        return f"{path}: cannot read ({err.strerror or err})"
    except ValueError as err:
        return str(err)
    return None


def check_archive(path: str | Path, limit: int | None = None,
                  archive: zipfile.ZipFile | None = None) -> int:
    """The bytes the zip archive ``path`` (a ``torch.save`` file; ``archive``: the same archive
    already open, ``path`` then only names it) unpacks to; ValueError when more than ``limit``
    (default ``MAX_MODEL_BYTES``) or more than 100 000 entries (a decompression bomb)."""
    limit = MAX_MODEL_BYTES if limit is None else limit
    if archive is None:
        with zipfile.ZipFile(path) as opened:
            infos = opened.infolist()
    else:
        infos = archive.infolist()
    total = sum(i.file_size for i in infos)
    if len(infos) > 100_000 or total > limit:
        raise ValueError(f"{path}: the archive unpacks to {total / 1024**2:.0f} MB in {len(infos)}"
                         f" entries, more than the {limit / 1024**2:.0f} MB a model may have")
    pickled = sum(i.file_size for i in infos if i.filename.endswith(".pkl"))
    if pickled > MAX_PICKLE_BYTES:
        raise ValueError(f"{path}: {pickled / 1024**2:.0f} MB of pickled structure besides the "
                         f"tensors, more than the {MAX_PICKLE_BYTES / 1024**2:.0f} MB a model "
                         "may have")
    return total


def check_codec(source: str | Path, codec: Any) -> None:
    """Bounds of a saved heat-map codec description (sizes and sigma)."""
    if not isinstance(codec, Mapping):
        raise ValueError(f"{_at(source)}the heat-map codec is not a mapping "
                         f"({type(codec).__name__})")
    for key in ("input_size", "heatmap_size"):
        bounded_int(source, f"codec {key}", codec.get(key), 1, INT_LIMITS["image_size"][1])
    sigma = codec.get("sigma")
    if (x := real_value(sigma)) is None or not 0 < x <= MAX_SIGMA:
        raise ValueError(f"{_at(source)}codec sigma={short_repr(sigma)} is not a number in "
                         f"(0, {MAX_SIGMA:g}]")


def check_codec_matches_network(source: str | Path, codec: Mapping[str, Any]) -> None:
    """This network outputs its heat-maps at its input size: a codec saying otherwise would
    decode every landmark off the image (after ``check_codec`` and the input-size check)."""
    if codec.get("heatmap_size") != codec.get("input_size"):
        raise ValueError(f"{_at(source)}codec heatmap_size={codec.get('heatmap_size')} differs "
                         f"from its input_size={codec.get('input_size')}: this network outputs "
                         "heat-maps at its input size, so landmarks would be decoded off the image")


def check_hyper_parameters(source: str | Path, hp: Mapping[str, Any]) -> None:
    """Bounds of the network-shaping hyper-parameters a checkpoint holds (absent keys keep their
    defaults); ValueError naming ``source`` and the first bad value."""
    for name, (lo, hi) in INT_LIMITS.items():
        if name in hp:
            bounded_int(source, name, hp[name], lo, hi)
    kwargs = hp.get("net_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{_at(source)}net_kwargs is not a mapping ({type(kwargs).__name__})")
    for name, value in kwargs.items():
        if name not in NET_KWARG_LIMITS:
            raise ValueError(f"{_at(source)}net_kwargs has an unknown key {short_repr(name)} "
                             f"(known: {', '.join(sorted(NET_KWARG_LIMITS))})")
        if value is not None:
            bounded_int(source, f"net_kwargs.{name}", value, *NET_KWARG_LIMITS[name])
    if hp.get("heatmap_codec"):
        check_codec(source, hp["heatmap_codec"])
