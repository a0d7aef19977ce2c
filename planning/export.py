"""``make export CKPT=...``: a checkpoint -> ``model.onnx`` (dynamic batch) + ``model.json``.

The graph takes ``image (B, 1, S, S)`` float32 and returns, in this order, ``seg`` (sigmoid
probabilities), ``lm``, ``roi`` of the last hourglass and ``lm_prev`` (the second-to-last
hourglass's landmark maps; only when the network has two or more hourglasses). The JSON beside
it holds what planning needs without torch: input size, heat-map codec, task order and channels,
output names. ``python -m planning.plan --ckpt model.onnx`` plans with ONNX Runtime.

Usage:
    python -m planning.export --ckpt PATH [--out model.onnx] [--opset 18] [--no-check]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from datamodules.dataset_io import real_path
from datamodules.decoder_messages import printable
from datamodules.one_line_parser import OneLineParser
from datamodules.path_limits import replace_link
from lightning_modules.shgn import final_maps
from planning.model_io import CheckpointError, LoadedModel, load_checkpoint
from planning.plan import path_argument
from planning.predict import (
    EXPORT_VERSION,
    INPUT_NAME,
    OUTPUT_NAMES,
    export_meta_path,
    graph_sha256,
)

DEFAULT_OPSET = 18
# Tested with torch 2.13 and onnxruntime 1.32: opset 9 exports Upsample and 10 a Resize with
# computed scales (both refused by the graph check before ONNX Runtime runs), 11-23 export and
# plan; torch refuses anything above 23.
OPSETS = range(11, 24)
# The torch vs ONNX Runtime check's limit on max |difference| / max(1, output scale) up to 256 px
# (the paper's size: 7e-5 measured on the tiny preset, trained or not; 64 px: 8e-6).
CHECK_TOLERANCE = 1e-4
CHECK_TOLERANCE_SIZE = 256


class _ExportNet(nn.Module):
    """The network with planning's outputs as a flat tuple (sigmoid inside the graph)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(final_maps(self.net, x).values())  # seg, lm, roi[, lm_prev]


def output_names(model: LoadedModel) -> list[str]:
    """Output names of the exported graph for this network."""
    return list(OUTPUT_NAMES[: 4 if model.net.num_stacks > 1 else 3])


def export_onnx(ckpt: str | Path, out: str | Path, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Write ``out`` (ONNX, dynamic batch) and its JSON description; return the description."""
    model = load_checkpoint(ckpt)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_link(out)
    names = output_names(model)
    s = model.image_size
    x = torch.zeros(2, 1, s, s)
    wrapper = _ExportNet(model.net).eval()
    with torch.inference_mode(), warnings.catch_warnings():
        # tracer notes about the input-size checks and instance norm (always per-image stats)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (x,), str(out), input_names=[INPUT_NAME], output_names=names,
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}},
            opset_version=opset, dynamo=False,
        )  # fmt: skip
    from planning.batch import file_sha256

    meta = {
        "format": "kneeplan-onnx",
        "version": EXPORT_VERSION,
        "input_name": INPUT_NAME,
        "input_size": s,
        "codec": model.codec.to_dict(),
        "tasks": model.net.task_names,
        "task_channels": dict(model.net.tasks),
        "outputs": names,
        "seg": "sigmoid probabilities",
        "opset": opset,
        "checkpoint": Path(ckpt).name,
        # which run it came from (every run's best is best-epochNNN.ckpt) and its exact bytes
        "checkpoint_path": str(real_path(Path(ckpt))),
        "checkpoint_sha256": file_sha256(ckpt),
        # planning refuses a graph that no longer matches (bit rot, a partial copy)
        "sha256": graph_sha256(out.read_bytes()),
    }
    replace_link(export_meta_path(out)).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def max_difference(ckpt: str | Path, onnx_path: str | Path, batch: int = 2, seed: int = 0
                   ) -> float:
    """Largest |torch - ONNX Runtime| over every output on random input (uniform [0, 1]), each
    output's difference divided by max(1, its largest |value|) (float32 rounding grows with it;
    heat-maps of a trained model peak near 1, where this is the absolute difference)."""
    from planning.predict import OnnxPredictor, TorchPredictor

    torch_pred = TorchPredictor.from_checkpoint(ckpt)
    onnx_pred = OnnxPredictor(onnx_path)
    s = torch_pred.image_size
    x = np.random.default_rng(seed).random((batch, 1, s, s), dtype=np.float32)
    a, b = torch_pred.predict_maps(x), onnx_pred.predict_maps(x)
    diffs = [float(np.abs(a[k] - b[k]).max() / max(1.0, float(np.abs(a[k]).max())))
             for k in onnx_pred.output_names]
    return math.nan if any(math.isnan(d) for d in diffs) else max(diffs)  # max() skips a NaN


def check_tolerance(image_size: int) -> float:
    """The limit of :func:`max_difference` for a network taking ``image_size`` px.

    Up to 256 px it is ``CHECK_TOLERANCE``. Above, it grows with the side cubed: each instance
    norm's statistics (and each convolution feeding them) sum S² float32 values, which torch and
    ONNX Runtime add in different orders, so their rounding differs by an amount growing with S²
    (linearly in the terms summed, at worst), and the maximum is taken over S² outputs. Measured
    on the tiny preset (seed 0 and 1, trained one step or untrained): 7e-5 at 256 px, 3.2e-4 at
    512, 1.5e-3 at 1024 (x4.5-4.8 per doubling, ~S^2.2): a 1024 px network was refused at a
    fixed 1e-4. S³ (x8 per doubling: 8e-4 at 512, 6.4e-3 at 1024) leaves 2.5-4x headroom and
    stays far below what a wrong operator does to the maps.
    """
    return CHECK_TOLERANCE * max(1.0, image_size / CHECK_TOLERANCE_SIZE) ** 3


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m planning.export``."""
    p = OneLineParser(prog="python -m planning.export",
                      description="Export a checkpoint to ONNX for planning.")
    p.add_argument("--ckpt", type=path_argument, required=True, help="trained checkpoint (.ckpt)")
    p.add_argument("--out", type=path_argument,
                   help="output .onnx (default: beside the checkpoint)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--no-check", action="store_true",
                   help="skip the torch vs ONNX Runtime comparison on random input")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; errors are one line on stderr, exit 2 (a bad checkpoint or output path, an
    export that disagrees with torch: nothing is written then)."""
    args = build_parser().parse_args(argv)
    if args.ckpt.name in ("", ".", ".."):  # '.', '..': not a checkpoint file
        print(f"export: error: --ckpt {str(args.ckpt)!r} does not name a checkpoint file",
              file=sys.stderr)
        return 2
    out = args.out or args.ckpt.with_suffix(".onnx")
    if out.suffix.lower() != ".onnx":
        print(f"export: error: {out}: the output must end in .onnx", file=sys.stderr)
        return 2
    if args.opset not in OPSETS:
        print(f"export: error: --opset {args.opset}: choose {OPSETS.start}..{OPSETS.stop - 1} "
              f"(default {DEFAULT_OPSET})", file=sys.stderr)
        return 2
    from planning.output_paths import out_file_problem

    if problem := out_file_problem(out, [export_meta_path(out)]):  # before anything is read
        print(f"export: error: {printable(problem)}", file=sys.stderr)
        return 2
    # written in a temporary folder beside ``out`` and moved into place only once the check
    # passed: a failed check left a.onnx and a.json, which plan then accepted
    made = [d for d in (out.parent, *out.parent.parents) if not d.exists()]
    tmp: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out.parent))
        staged = tmp / out.name  # (the same name: its length was checked above)
        meta = export_onnx(args.ckpt, staged, args.opset)
        if problem := _check_problem(args, staged, out, meta["input_size"]):
            print(f"export: error: {printable(str(out))}: {problem}; nothing written",
                  file=sys.stderr)
            return 2
        os.replace(export_meta_path(staged), export_meta_path(out))  # (a link is replaced,
        os.replace(staged, out)  # never written through)
    except CheckpointError as err:
        print(f"export: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a parent that is a file, a read-only or virtual folder, ...
        print(f"export: error: {err.filename or out}: cannot write the export "
              f"({err.strerror or type(err).__name__})", file=sys.stderr)
        return 2
    finally:
        _remove_staging(tmp, made)
    print(f"wrote {out} and {export_meta_path(out)} (input {meta['input_size']} px, "
          f"outputs {', '.join(meta['outputs'])}, opset {meta['opset']})")
    return 0


def _check_problem(args: argparse.Namespace, staged: Path, out: Path, image_size: int
                   ) -> str | None:
    """Why the graph ``staged`` (to become ``out``) must not be used (it disagrees with the
    checkpoint, or ONNX Runtime refuses or fails on it), or None; prints the comparison. None
    with ``--no-check``."""
    if args.no_check:
        return None
    limit = check_tolerance(image_size)
    try:
        diff = max_difference(args.ckpt, staged)
    except ValueError as err:  # ONNX Runtime refusing the graph, NaN or out-of-range outputs
        why = str(err).replace(str(staged), str(out))  # (the temporary name means nothing)
        return f"the exported model cannot be checked ({printable(why)[:200]})"
    print(f"torch vs ONNX Runtime on random input: max |difference| = {diff:.2e} "
          f"(relative to max(1, output scale); limit {limit:.1e} at {image_size} px)")
    if not diff <= limit:  # (NaN too)
        return (f"the exported model disagrees with torch (max |difference| {diff:.2e} > "
                f"{limit:.1e} at {image_size} px)")
    return None


STAGING_PREFIX = ".export-"  # + the exporting process's id + "-" + tempfile's 8 characters
_STAGING_NAME = re.compile(r"\.export-(\d{1,10})-[a-z0-9_]{8}")
_STAGING_FILES = re.compile(r".+\.(onnx|json)")  # what an export stages
STALE_AFTER_S = 3600.0  # and untouched this long: an export takes seconds to minutes


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging folders in ``folder`` left by an export killed before its ``finally``
    (SIGKILL, power loss), and return them: folders (not links) named as ``mkdtemp`` names
    ours, of a process id that no longer runs here, untouched for ``STALE_AFTER_S`` (a folder
    shared with another machine or container, whose processes this one cannot see), holding
    only ``.onnx``/``.json`` files. POSIX only (``os.kill(pid, 0)`` asks)."""
    if os.name != "posix":
        return []
    removed = []
    for entry in folder.glob(f"{STAGING_PREFIX}*"):
        named = _STAGING_NAME.fullmatch(entry.name)
        if named is None or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            os.kill(int(named.group(1)), 0)
            continue  # running (ours, or an export beside this one)
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, ValueError):
            continue  # another user's process, or not a process id
        try:
            inside = list(entry.iterdir())
            fresh = time.time() - entry.stat().st_mtime < STALE_AFTER_S
        except OSError:
            continue
        if fresh or not all(p.is_file() and not p.is_symlink() and _STAGING_FILES.fullmatch(p.name)
                            for p in inside):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _remove_staging(tmp: Path | None, made: list[Path]) -> None:
    """Remove the temporary folder ``tmp`` (what is left in it was not moved into place) and
    the folders in ``made`` (created for the output) that stayed empty."""
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    for d in made:  # deepest first
        try:
            d.rmdir()
        except OSError:  # not empty (the export is in it), or never made
            break


if __name__ == "__main__":
    raise SystemExit(main())
