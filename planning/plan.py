"""``make plan``: one radiograph (DICOM, PNG or TIFF) and a checkpoint in; an overlay PNG at the
original resolution and a JSON report out.

Usage:
    python -m planning.plan --image PATH|FOLDER|'GLOB' --ckpt MODEL.ckpt|MODEL.onnx [--out DIR]
        [--decode quadratic] [--line-fit robust] [--spacing MM | --spacing ROW_MM COL_MM]
        [--no-sphere] [--workers N]

The model is a checkpoint (rebuilt without Lightning, ``planning.model_io``) or a model exported
by ``make export`` (run by ONNX Runtime; that path does not import torch). A folder or a glob
plans every image with one model load (``planning.batch``): progress on stderr, one row per
image in ``<out>/summary.csv``, a bad image reported and skipped (exit status 1 if any failed).

Pixel spacing (first available wins, see ``geometry.spacing.resolve_spacing``): ``--spacing``
given by the user; the annotation JSON when the image sits in a dataset folder
(``ROOT/images/<id>.png`` with ``ROOT/annotations/<id>.json``); DICOM ``PixelSpacing``; a
detected 30 mm calibration sphere; DICOM ``ImagerPixelSpacing``; else unknown (the plan is then
in pixels, without the 2.5 mm circle, and flagged for review).

Outputs ``<out>/<stem>_plan.png`` and ``<out>/<stem>_plan.json`` (default ``out``: ``plans/``).
A bad input (missing, empty, unreadable, not an image, blank) prints one line saying what is
wrong and exits with status 1 (2 for a usage problem such as a missing checkpoint); never a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from geometry.heatmaps import DECODE_METHODS
from geometry.lines import LINE_FIT_METHODS

MIN_SIDE_PX = 32


class PlanInputError(ValueError):
    """An input that cannot be planned; the message says which file and why."""


@dataclass
class SpacingInfo:
    """Chosen spacing, its source, and the sphere detection when one was run."""

    spacing: tuple[float, float] | None
    source: str | None
    sphere: dict[str, Any] | None = None


def annotation_spacing(image_path: Path) -> tuple[float, float] | None:
    """Spacing from ``ROOT/annotations/<id>.json`` when the image is ``ROOT/images/<id>.*``."""
    if image_path.parent.name != "images":
        return None
    ann = image_path.parent.parent / "annotations" / f"{image_path.stem}.json"
    if not ann.is_file():
        return None
    from datamodules.annotations import AnnotationError, read_annotation

    try:
        return read_annotation(ann)["spacing_mm"]
    except AnnotationError as err:
        print(f"plan: warning: ignoring annotation spacing: {err}", file=sys.stderr)
        return None


def find_spacing(
    image: np.ndarray,
    image_path: Path,
    file_spacing: tuple[float, float] | None,
    file_source: str | None,
    user_spacing: Sequence[float] | None = None,
    detect_sphere: bool = True,
) -> SpacingInfo:
    """Resolve the pixel spacing of one image (see the module docstring for the order)."""
    from geometry.spacing import detect_calibration_sphere, resolve_spacing

    if user_spacing:
        vals = [float(v) for v in user_spacing]
        row, col = (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])
        if not (row > 0 and col > 0 and np.isfinite([row, col]).all()):
            raise PlanInputError(f"--spacing must be positive, got {user_spacing}")
        return SpacingInfo((row, col), "user")
    ann = annotation_spacing(image_path)
    sphere = None
    if ann is None and file_source != "PixelSpacing" and detect_sphere:
        sphere = detect_calibration_sphere(image)
    tag = file_source if file_source in ("PixelSpacing", "ImagerPixelSpacing") else "PixelSpacing"
    spacing, source = resolve_spacing(
        dicom_spacing=file_spacing, annotation_spacing=ann, sphere=sphere, dicom_tag=tag
    )
    sphere_info = None
    if sphere is not None:
        sphere_info = {
            "center_px": [float(v) for v in sphere.center],
            "radius_px": float(sphere.radius_px),
            "mm_per_px": float(sphere.mm_per_px),
            "score": float(sphere.score),
        }
    return SpacingInfo(spacing, source, sphere_info)


_LAST_INPUT: dict[tuple, Any] = {}  # main() checks the image before loading the model


def load_input(path: Path) -> Any:
    """Read the image, raising PlanInputError with a clear message on any problem."""
    from datamodules.image_io import ImageReadError, load_image

    path = Path(path)
    key = (str(path.resolve()), *_stat_key(path))
    if key in _LAST_INPUT:  # the same unchanged file read a moment ago (main's early check)
        return _LAST_INPUT[key]
    if not path.exists():
        raise PlanInputError(f"{path}: no such file")
    if path.is_dir():
        raise PlanInputError(f"{path}: is a folder, not an image file")
    if path.stat().st_size == 0:
        raise PlanInputError(f"{path}: the file is empty (0 bytes)")
    try:
        loaded = load_image(path)
    except ImageReadError as err:
        raise PlanInputError(str(err)) from err
    except Exception as err:  # any decoder failure is a bad input, not a crash
        why = f"{type(err).__name__}: {err}"
        raise PlanInputError(f"{path}: cannot read the image ({why})") from err
    img = np.asarray(loaded.image)
    if img.ndim != 2 or min(img.shape) < MIN_SIDE_PX:
        raise PlanInputError(
            f"{path}: image of shape {img.shape} is too small (need at least "
            f"{MIN_SIDE_PX} x {MIN_SIDE_PX} px)"
        )
    if not np.all(np.isfinite(img)):
        raise PlanInputError(f"{path}: image contains NaN or infinite values")
    if float(img.max() - img.min()) < 1e-6:
        raise PlanInputError(f"{path}: image is blank (constant intensity {float(img.min()):.3g})")
    _LAST_INPUT.clear()
    _LAST_INPUT[key] = loaded
    return loaded


def _stat_key(path: Path) -> tuple[int, int]:
    """(mtime_ns, size) of a file, (-1, -1) when it cannot be stat'ed."""
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_mtime_ns, st.st_size)


@dataclass
class PlanOutputs:
    """Paths written and the report dict."""

    overlay: Path
    report_path: Path
    report: dict[str, Any]


def run_plan(
    image_path: str | Path,
    module: Any,
    out_dir: str | Path,
    decode: str = "argmax",
    line_fit: str = "lstsq",
    user_spacing: Sequence[float] | None = None,
    detect_sphere: bool = True,
    checkpoint: str | Path | None = None,
) -> PlanOutputs:
    """Plan one image with a loaded module; write the overlay PNG and the JSON report.

    Raises PlanInputError for a bad image (the message names the file and the problem).
    """
    from geometry.plan_geometry import plan_from_maps
    from planning.checks import plausibility_reasons
    from planning.evaluate import original_masks
    from planning.overlay import draw_plan
    from planning.predict import predict_image
    from planning.report import build_report, write_report

    path = Path(image_path)
    loaded = load_input(path)
    image = np.asarray(loaded.image, dtype=np.float32)
    sp = find_spacing(
        image, path, loaded.spacing_mm, loaded.spacing_source, user_spacing, detect_sphere
    )
    maps = predict_image(module, image)
    plan = plan_from_maps(
        maps.seg, maps.lm, maps.roi, frame=maps.frame, spacing=sp.spacing, decode=decode,
        line_fit=line_fit, codec=getattr(module, "codec", None),
    )  # fmt: skip
    if sp.spacing is None:
        plan.review_reasons.append(
            "pixel spacing unknown (no DICOM spacing, annotation or calibration sphere): "
            "distances in pixels, no 2.5 mm circle"
        )
    masks = original_masks(maps)
    plan.review_reasons.extend(plausibility_reasons(plan, masks[0]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    overlay_path = out / f"{path.stem}_plan.png"
    report_path = out / f"{path.stem}_plan.json"
    rgb = draw_plan(image, plan, masks, title=path.name)
    if not cv2.imwrite(str(overlay_path), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"{overlay_path}: OpenCV could not write the overlay")
    report = build_report(
        plan,
        image_path=path,
        image_shape=image.shape,
        spacing_source=sp.source,
        checkpoint=checkpoint,
        overlay_path=overlay_path,
        seg_prob=maps.seg,
        settings={"decode": decode, "line_fit": line_fit, "network_size": maps.frame.size},
        sphere=sp.sphere,
    )
    write_report(report_path, report)
    return PlanOutputs(overlay_path, report_path, report)


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m planning.plan``."""
    p = argparse.ArgumentParser(
        prog="python -m planning.plan",
        description="Schoettle-point plan for lateral knee radiographs (DICOM, PNG, TIFF).",
    )
    p.add_argument("--image", required=True,
                   help="radiograph (.dcm, .png, .tif), a folder of them, or a quoted glob")
    p.add_argument("--ckpt", type=Path, required=True,
                   help="trained checkpoint (.ckpt) or exported model (.onnx, make export)")
    p.add_argument("--out", type=Path, default=Path("plans"), help="output folder (plans/)")
    p.add_argument("--decode", choices=DECODE_METHODS, default="argmax")
    p.add_argument("--line-fit", choices=LINE_FIT_METHODS, default="lstsq")
    p.add_argument(
        "--spacing", type=float, nargs="+", metavar="MM",
        help="pixel spacing in mm: one value (square pixels) or ROW_MM COL_MM",
    )  # fmt: skip
    p.add_argument("--no-sphere", action="store_true", help="skip calibration-sphere detection")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda); checkpoints only")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads of the network (torch or ONNX Runtime); 1, the "
                        "default, is fastest for the small networks on a few shared cores")
    p.add_argument("--workers", type=int, default=1,
                   help="batch mode: worker processes (each loads the model once)")
    p.add_argument("--summary", type=Path, help="batch mode: summary CSV (<out>/summary.csv)")
    p.add_argument("--progress-every", type=int, default=10, metavar="N",
                   help="batch mode without a terminal: one progress line per N images")
    return p


def load_model(path: Path, device: str = "cpu", threads: int | None = None) -> Any:
    """The predictor for a checkpoint or an exported ``.onnx`` (``planning.predict``)."""
    from planning.predict import load_predictor

    return load_predictor(path, device=device, threads=threads)


def _load_or_explain(path: Path, device: str, threads: int | None = None) -> Any:
    """``load_model``, or None after printing one line saying why the model is unusable."""
    try:
        return load_model(path, device, threads)
    except Exception as err:  # a broken model file is a usage error, not a crash
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = "" if str(path) in first else f"{path}: "
        print(f"plan: error: cannot load model {where}{first}", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code. Errors are one clear line on stderr.

    Exit codes: 0 all planned; 1 a bad image (batch mode: at least one image failed);
    2 a usage problem (bad arguments, missing or unusable model).
    """
    args = build_parser().parse_args(argv)
    if args.spacing is not None and len(args.spacing) not in (1, 2):
        print("plan: error: --spacing takes one value or two (ROW_MM COL_MM)", file=sys.stderr)
        return 2
    if args.workers < 1 or args.threads < 1:
        print("plan: error: --workers and --threads must be >= 1", file=sys.stderr)
        return 2
    if not args.ckpt.is_file():
        print(f"plan: error: checkpoint {args.ckpt} does not exist", file=sys.stderr)
        return 2
    from planning.batch import expand_images

    images, many = expand_images(args.image)
    if many:
        return _main_batch(args, images)
    if args.ckpt.suffix.lower() != ".onnx":  # an exported model loads in well under a second
        try:
            load_input(images[0])  # fail fast on a bad image, before importing torch
        except PlanInputError as err:
            print(f"plan: error: {err}", file=sys.stderr)
            return 1
    module = _load_or_explain(args.ckpt, args.device, args.threads)
    if module is None:
        return 2
    try:
        res = run_plan(
            images[0], module, args.out, decode=args.decode, line_fit=args.line_fit,
            user_spacing=args.spacing, detect_sphere=not args.no_sphere, checkpoint=args.ckpt,
        )  # fmt: skip
    except PlanInputError as err:
        print(f"plan: error: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError, RuntimeError) as err:
        print(f"plan: error: planning {images[0]} failed: {err}", file=sys.stderr)
        return 1
    rep = res.report
    sp = rep["schoettle_point"]
    where = f"{sp['px']}" if sp["px"] else "not constructible"
    mm = f" = {sp['mm']} mm" if sp["mm"] else ""
    print(f"Schoettle point (px): {where}{mm}")
    print(f"spacing: {rep['spacing']['source']}")
    if rep["needs_review"]:
        print("NEEDS REVIEW:")
        for reason in rep["review_reasons"]:
            print(f"  - {reason}")
    print(f"overlay: {res.overlay}\nreport:  {res.report_path}")
    return 0


def _main_batch(args: argparse.Namespace, images: list[Path]) -> int:
    """Batch mode of ``main``: every image of a folder or glob, one summary CSV."""
    import time

    from planning.batch import PlanOptions, plan_many, write_summary

    if not images:
        print(f"plan: error: {args.image}: no image files (.png, .tif, .tiff, .dcm) found",
              file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    workers = min(args.workers, len(images))
    predictor = None
    if workers == 1:
        predictor = _load_or_explain(args.ckpt, args.device, args.threads)
        if predictor is None:
            return 2
    opts = PlanOptions(args.out, args.decode, args.line_fit, args.spacing, not args.no_sphere,
                       str(args.ckpt))
    rows = plan_many(images, opts, predictor=predictor, model_path=args.ckpt, workers=workers,
                     device=args.device, progress_every=args.progress_every)
    summary = write_summary(args.summary or args.out / "summary.csv", rows)
    failed = sum(r["status"] != "ok" for r in rows)
    review = sum(r["needs_review"] is True for r in rows)
    print(f"planned {len(rows) - failed}/{len(rows)} images in {time.perf_counter() - t0:.1f} s "
          f"({failed} failed, {review} need review); summary: {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
