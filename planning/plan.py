"""``make plan``: one radiograph (DICOM, PNG, TIFF or JPEG) and a checkpoint in; an overlay PNG at
the original resolution and a JSON report out.

Usage:
    python -m planning.plan --image PATH|FOLDER|'GLOB' --ckpt MODEL.ckpt|MODEL.onnx [--out DIR]
        [--decode quadratic] [--line-fit robust] [--spacing MM | --spacing ROW_MM COL_MM]
        [--no-sphere] [--workers N]

The model is a checkpoint (rebuilt without Lightning, ``planning.model_io``) or a model exported
by ``make export`` (run by ONNX Runtime; that path does not import torch). A folder or a glob
plans every image with one model load (``planning.batch``): progress on stderr, one row per
image in ``<out>/summary.csv``, a bad image reported and skipped (exit status 1 if any failed).

Pixel spacing: ``geometry.pixel_spacing.resolve_pixel_spacing`` decides (the one precedence
order: ``--spacing``; the annotation JSON when the image sits in a dataset folder
(``ROOT/images/<id>.png`` with ``ROOT/annotations/<id>.json``); DICOM ``PixelSpacing``; a 30 mm
calibration sphere; DICOM ``ImagerPixelSpacing``; else unknown: the plan is in pixels, without
the 2.5 mm circle, and flagged). The predicted femur gives an anatomical scale estimate that
rejects a sphere of the wrong size and flags a spacing that disagrees with it.

Outputs ``<out>/<stem>_plan.png`` and ``<out>/<stem>_plan.json`` (default ``out``: ``plans/``).
A bad input (missing, empty, unreadable, not an image, blank) prints one line saying what is
wrong and exits with status 1 (2 for a usage problem such as a missing checkpoint); never a
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.one_line_parser import OneLineParser
from datamodules.pixel_limit import MIN_SIDE_PX
from geometry.heatmaps import DECODE_METHODS
from geometry.lines import LINE_FIT_METHODS
from geometry.pixel_spacing import SPHERE_MM


class PlanInputError(ValueError):
    """An input that cannot be planned; the message says which file and why."""


def annotation_spacing(image_path: Path, warn: bool = True) -> tuple[float, float] | None:
    """Spacing from ``ROOT/annotations/<id>.json`` when the image is ``ROOT/images/<id>.*`` and
    the annotation does not name another image file (``x.dcm`` beside ``x.png`` shares the
    stem, not the spacing); ``warn``: say on stderr when that file is unusable."""
    if image_path.parent.name != "images":
        return None
    import errno
    import stat

    from datamodules.annotations import AnnotationError, read_annotation
    from datamodules.dataset_io import stat_problem

    ann = image_path.parent.parent / "annotations" / f"{image_path.stem}.json"
    try:
        os.lstat(ann)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return None  # no annotation: not a dataset image, nothing to say
    except ValueError:
        return None
    try:
        if isinstance(st := stat_problem(ann), str):  # a loop, a broken link, no access:
            problem = ("broken symlink (its target is missing)" if st == "no such file"
                       else st)  # said like an oversized file
            raise AnnotationError(f"{ann}: {problem}")
        if not stat.S_ISREG(st.st_mode):  # a pipe would block the reader; /dev/zero never ends
            raise AnnotationError(f"{ann}: not a regular file (a pipe or device)")
        return read_annotation(ann, image_name=image_path.name)["spacing_mm"]
    except AnnotationError as err:
        if warn:
            from datamodules.decoder_messages import printable

            print(f"plan: warning: ignoring annotation spacing: {printable(str(err))}",
                  file=sys.stderr)
        return None


def resolve_plan_spacing(
    loaded: Any,
    image_path: Path,
    femur_mask: np.ndarray | None,
    user_spacing: Sequence[float] | None = None,
    detect_sphere: bool = True,
    sphere_candidates: Sequence[Any] | None = None,
    sphere_mm: float = SPHERE_MM,
) -> Any:
    """``SpacingResolution`` of one image: its file, its annotation, the user and the anatomy
    (``sphere_candidates``: the sphere search's result when it already ran; ``sphere_mm``: the
    calibration sphere's diameter)."""
    from geometry.anatomy_scale import estimate_scale
    from geometry.pixel_spacing import resolve_pixel_spacing

    anatomy = estimate_scale(femur_mask) if femur_mask is not None else None
    try:
        return resolve_pixel_spacing(
            loaded.image, user=list(user_spacing) if user_spacing else None,
            annotation=annotation_spacing(image_path), detect_sphere=detect_sphere,
            anatomy=anatomy, sphere_candidates=sphere_candidates, sphere_diameter_mm=sphere_mm,
            **loaded.spacing_inputs(),
        )  # fmt: skip
    except ValueError as err:
        raise PlanInputError(str(err)) from err


def sphere_search_needed(
    loaded: Any, image_path: Path, user_spacing: Sequence[float] | None = None
) -> bool:
    """Whether the calibration-sphere search will be asked for this image (the precedence of
    ``geometry.pixel_spacing`` over its file, annotation and the user's value)."""
    from geometry.pixel_spacing import sphere_search_needed as needed

    return needed(user=list(user_spacing) if user_spacing else None,
                  annotation=annotation_spacing(image_path, warn=False),
                  **loaded.spacing_inputs())  # fmt: skip


_LAST_INPUT: dict[tuple, Any] = {}  # main() checks the image before loading the model


def load_input(path: Path) -> Any:
    """Read the image, raising PlanInputError with a clear message on any problem."""
    import stat

    from datamodules.dataset_io import os_problem, real_path, stat_problem
    from datamodules.image_io import ImageReadError, load_image

    path = Path(path)
    # one stat, never raising: a symlink loop or a folder that may not be entered is this
    # image's error line (Path.resolve raised RuntimeError, exists() PermissionError)
    st = stat_problem(path)
    if isinstance(st, str):
        raise PlanInputError(f"{path}: {st}")
    key = (str(real_path(path)), st.st_mtime_ns, st.st_size)
    if key in _LAST_INPUT:  # the same unchanged file read a moment ago (main's early check)
        return _LAST_INPUT[key]
    if stat.S_ISDIR(st.st_mode):
        raise PlanInputError(f"{path}: is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise PlanInputError(f"{path}: not a regular file (a pipe or device)")
    if st.st_size == 0:
        raise PlanInputError(f"{path}: the file is empty (0 bytes)")
    try:
        loaded = load_image(path)
    except ImageReadError as err:
        raise PlanInputError(str(err)) from err
    except OSError as err:
        if err.errno is not None:  # opening it failed (no read permission): said as in stat's
            raise PlanInputError(f"{path}: {os_problem(err)}") from err
        raise PlanInputError(f"{path}: cannot read the image ({type(err).__name__}: {err})"
                             ) from err
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


@dataclass
class PlanOutputs:
    """Paths written and the report dict."""

    overlay: Path
    report_path: Path
    report: dict[str, Any]
    pending: Any = None  # what ``overlay_writer`` returned (batch mode: the write's Future)


LOSSY_WARNING = (
    "lossy {kind} input: compression blurs the cortex edges and adds block artefacts; "
    "use the original DICOM or a lossless PNG/TIFF where possible"
)


def dicom_header(loaded: Any) -> dict[str, str]:
    """What a DICOM input says it shows (``modality``, ``body_part``; {} for other formats)."""
    meta = getattr(loaded, "meta", None) or {}
    return {k: str(meta[k]) for k in ("modality", "body_part") if meta.get(k)}


def input_warnings(loaded: Any) -> list[str]:
    """Warnings about the input file that do not by themselves flag the plan."""
    fmt = str((getattr(loaded, "meta", None) or {}).get("format", ""))
    kind = fmt if fmt in ("WebP", "AVIF/HEIF", "JPEG 2000") else (
        "DICOM (lossy compression)" if fmt == "dicom" else "JPEG")
    lossy = [LOSSY_WARNING.format(kind=kind)] if getattr(loaded, "lossy", False) else []
    return lossy + list(getattr(loaded, "notes", []) or [])


def run_plan(
    image_path: str | Path,
    module: Any,
    out_dir: str | Path,
    decode: str = "argmax",
    line_fit: str = "lstsq",
    user_spacing: Sequence[float] | None = None,
    detect_sphere: bool = True,
    checkpoint: str | Path | None = None,
    tta: int = 8,
    review_config: Any = None,
    sphere_search: Any = None,
    zoom: bool = True,
    overlay_writer: Callable[[Path, np.ndarray], Any] | None = None,
    out_stem: str | None = None,
    search_server: Any = None,
    sphere_mm: float = SPHERE_MM,
    model_sha256: str | None = None,
) -> PlanOutputs:
    """Plan one image with a loaded module; write the overlay PNG and the JSON report.

    ``tta`` test-time augmentations (< 2: none) measure the model's own uncertainty; the verdict
    is ``planning.review.review`` (thresholds ``review_config``, default configs/review.yaml).
    ``sphere_search``: a ``planning.sphere_search`` search the caller already started for this
    image (else one starts here when the spacing needs it: in ``search_server``'s process, a
    ``planning.sphere_search.SearchServer``, or in a thread); ``sphere_mm``: its diameter;
    ``model_sha256``: the model file's digest, recorded in the report (which model made it).
    Raises PlanInputError for a bad image (the message names the file and the problem).
    """
    from geometry.plan_geometry import masks_to_original, plan_from_maps
    from planning.output_paths import out_names_problem
    from planning.overlay import draw_plan
    from planning.predict import as_predictor, predict_image
    from planning.report import build_report, write_report
    from planning.review import ReviewConfig, ReviewContext, review
    from planning.tta import TTAConfig, augmented_maps, hourglass_only, tta_uncertainty

    review_config = review_config or ReviewConfig.load()
    path = Path(image_path)
    if problem := out_names_problem(Path(out_dir), [p.name for p in plan_files(
            Path(out_dir), out_stem or path.stem)]):
        raise PlanInputError(f"{path}: {problem}")
    loaded = load_input(path)
    image = np.asarray(loaded.image, dtype=np.float32)
    if user_spacing:  # a bad --spacing is a usage error: say so before running the network
        resolve_plan_spacing(loaded, path, None, user_spacing, detect_sphere=False)
    predictor = as_predictor(module)
    codec = getattr(predictor, "codec", None)
    tta_cfg = TTAConfig(count=tta)
    # The sphere search needs only the image: it runs beside the network passes, which need
    # no spacing (planning/sphere_search.py).
    search = None
    if detect_sphere and sphere_search_needed(loaded, path, user_spacing):
        from planning.sphere_search import start_sphere_search

        search = sphere_search or (search_server.start(image) if search_server is not None
                                   else start_sphere_search(image))
    try:
        maps = predict_image(predictor, image, zoom=zoom, review_config=review_config)
        masks = masks_to_original(maps.seg, maps.frame)
        aug = (augmented_maps(predictor, image, tta_cfg, frame=maps.frame,
                              net_input=maps.net_input) if tta >= 2 else None)
        cands = search.result() if search is not None else None
    finally:
        if search is not None:  # (a caller's search is closed again by the caller: harmless)
            search.close()
    sp = resolve_plan_spacing(loaded, path, masks[0], user_spacing, detect_sphere, cands,
                              sphere_mm)
    spacing = None if sp.spacing is None else sp.spacing.as_tuple()
    plan = plan_from_maps(
        maps.seg, maps.lm, maps.roi, frame=maps.frame, spacing=spacing, decode=decode,
        line_fit=line_fit, codec=codec,
    )  # fmt: skip
    unc = hourglass_only(maps, decode, codec)
    if aug is not None:
        unc = tta_uncertainty(predictor, image, maps, spacing=spacing, config=tta_cfg,
                              decode=decode, line_fit=line_fit, augmented=aug)  # fmt: skip
    context = ReviewContext(
        masks=masks, image=image, spacing_reasons=sp.reasons,
        scale=sp.anatomy, uncertainty=unc,
        config=review_config, tta_count=tta, header=dicom_header(loaded),
    )  # fmt: skip
    if aug is not None:  # with the plan's stability: does it lean on metal near its points?
        from planning.blank_out import with_blank_shift
        from planning.metal_out import with_metal_shift
        from planning.second_knee import with_second_knee

        context = with_metal_shift(context, plan, predictor, decode, line_fit, zoom, codec)
        context = with_blank_shift(context, plan, predictor, decode, line_fit, zoom, codec)
        context = with_second_knee(context, maps, predictor)
        unc = context.uncertainty
    reasons = review(plan, context)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # (batch mode: a stem unique when two images share one)
    overlay_path, report_path = plan_files(out, out_stem or path.stem)
    window = zoom_window(maps.frame)
    warnings = input_warnings(loaded)
    rgb = draw_plan(image, plan, masks, title=path.name, reasons=reasons, uncertainty=unc,
                    window=window, spacing_source=sp.source_detail, warnings=warnings,
                    second_knee=context.second_knee)
    pending = (overlay_writer or write_overlay)(overlay_path, rgb)
    report = build_report(
        plan,
        image_path=path,
        image_shape=image.shape,
        spacing_source=sp.source,
        checkpoint=checkpoint,
        overlay_path=overlay_path,
        seg_prob=maps.seg,
        settings={"decode": decode, "line_fit": line_fit, "network_size": maps.frame.size,
                  "tta": tta, "zoom_window": window, "sphere_mm": sphere_mm,
                  "review_config": review_config.description()},
        sphere=sp.sphere,
        reasons=reasons,
        uncertainty=unc,
        evidence=context.evidence(),
        warnings=warnings,
        second_knee=context.second_knee,
        model_sha256=model_sha256,
        image_sha256=_image_digest(path),
    )  # fmt: skip
    report["spacing"].update({k: v for k, v in sp.as_dict().items() if k not in report["spacing"]})
    write_report(report_path, report)
    return PlanOutputs(overlay_path, report_path, report, pending)


def _image_digest(path: Path) -> str | None:
    """SHA-256 of the input file (None when it cannot be read again: the plan stands)."""
    from planning.batch import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return None


def plan_files(out_dir: Path, stem: str) -> tuple[Path, Path]:
    """The overlay PNG and the JSON report a plan named ``stem`` writes into ``out_dir``."""
    return out_dir / f"{stem}_plan.png", out_dir / f"{stem}_plan.json"


def error_line(err: BaseException) -> str:
    """An unforeseen exception as one line: its type and its message's first line (at most 300
    characters)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__


def zoom_window(frame: Any) -> dict[str, int] | None:
    """The second look's window (x0, y0, side in original pixels), None without one."""
    if not hasattr(frame, "window"):
        return None
    return {"x0": -frame.pad_left, "y0": -frame.pad_top, "side": frame.window}


def write_overlay(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB overlay as PNG; OSError naming the file when it cannot. ``rgb`` is turned
    into BGR in place when it is contiguous (no caller uses it after: a copy of a 36 MP
    overlay is 255 MB)."""
    import cv2

    from datamodules.image_io import write_image

    if rgb.flags.c_contiguous and rgb.dtype == np.uint8:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR, dst=rgb)
    else:
        bgr = np.ascontiguousarray(rgb[..., ::-1])
    write_image(path, bgr)  # (replaces a link)


MAX_TTA = 64  # test-time augmentations per image (each one more network pass)
MAX_PARALLEL = 64  # --workers / --threads: beyond this, threads thrash and runtimes fail
# (--threads 100000 crashed torch and took 7 GB in ONNX Runtime)


def path_argument(text: str | Path) -> Path:
    """argparse type of a path flag: an empty string (an unset shell variable) is an error, not
    the current folder (``Path('')`` is ``.``). A leading ``~`` is the home folder (zsh leaves it
    unexpanded in ``make plan CKPT=~/x``)."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("empty path")
    return Path(os.path.expanduser(text))  # (Path.expanduser raises for ~nosuchuser, no HOME)


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m planning.plan``."""
    p = OneLineParser(
        prog="python -m planning.plan",
        description="Schoettle-point plan for lateral knee radiographs (DICOM, PNG, TIFF, JPEG).",
    )
    p.add_argument("--image", required=True,
                   help="radiograph (.dcm, .png, .tif, .jpg), a folder of them, or a quoted glob")
    p.add_argument("--ckpt", type=path_argument, required=True,
                   help="trained checkpoint (.ckpt) or exported model (.onnx, make export)")
    p.add_argument("--out", type=path_argument, default=Path("plans"),
                   help="output folder (plans/)")
    p.add_argument("--decode", choices=DECODE_METHODS, default="argmax")
    p.add_argument("--line-fit", choices=LINE_FIT_METHODS, default="lstsq")
    p.add_argument(
        "--spacing", type=float, nargs="+", metavar="MM",
        help="pixel spacing in mm: one value (square pixels) or ROW_MM COL_MM",
    )  # fmt: skip
    p.add_argument("--no-sphere", action="store_true", help="skip calibration-sphere detection")
    p.add_argument("--sphere-mm", type=float, default=SPHERE_MM, metavar="MM",
                   help="diameter of the calibration sphere in the images (default: 30, the "
                        "paper's; 25 mm balls are common too)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda); checkpoints only")
    p.add_argument("--tta", type=int, default=8,
                   help="test-time augmentations for the uncertainty check (0: off)")
    p.add_argument("--review-config", type=Path, help="review thresholds (configs/review.yaml)")
    p.add_argument("--no-zoom", action="store_true",
                   help="no second look when the knee is far from the training scale "
                        "(planning/zoom.py)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads of the network (torch or ONNX Runtime); 1, the "
                        "default, is fastest for the small networks on a few shared cores")
    p.add_argument("--workers", type=int, default=1,
                   help="batch mode: worker processes (each loads the model once)")
    p.add_argument("--summary", type=path_argument,
                   help="batch mode: summary CSV (<out>/summary.csv)")
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
        from datamodules.decoder_messages import printable

        shown = printable(str(path))
        text = str(err).replace(str(path), shown).strip()  # one line per path
        first = text.splitlines()[0] if text else type(err).__name__
        where = "" if shown in first else f"{shown}: "
        _error(f"cannot load model {where}{first}")
        return None


def _error(message: str) -> None:
    """``plan: error: <message>`` on stderr as one line (a file name may hold a newline)."""
    from datamodules.decoder_messages import printable

    print(f"plan: error: {printable(message)}", file=sys.stderr)


def _note(message: str) -> None:
    """A note on stderr (one line; the program goes on)."""
    from datamodules.decoder_messages import printable

    print(f"plan: note: {printable(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code. Errors are one clear line on stderr.

    Exit codes: 0 all planned; 1 a bad image (batch mode: at least one image failed);
    2 a usage problem (bad arguments, missing or unusable model); 130 Ctrl-C (one line, no
    traceback; a batch first writes the summary of the images it finished).
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("plan: interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    """``main`` without its Ctrl-C answer."""
    args = build_parser().parse_args(argv)
    from datamodules.pixel_limit import env_problem

    if problem := env_problem():
        _error(problem)
        return 2
    if args.spacing is not None and len(args.spacing) not in (1, 2):
        _error("--spacing takes one value or two (ROW_MM COL_MM)")
        return 2
    if args.spacing is not None:  # checked once here, not once per image of a batch
        from geometry.pixel_spacing import PixelSpacing

        try:
            PixelSpacing.from_value(args.spacing, "user", "--spacing")
        except (TypeError, ValueError) as err:
            _error(f"--spacing: {err}")
            return 2  # a bad argument (README, exit codes), like --tta and --sphere-mm
    if not 0 <= args.tta <= MAX_TTA:
        _error(f"--tta must be 0..{MAX_TTA} (0: off)")
        return 2
    from geometry.pixel_spacing import check_sphere_diameter

    try:
        check_sphere_diameter(args.sphere_mm)
    except ValueError as err:
        _error(f"--sphere-mm: {err}")
        return 2
    from planning.devices import device_problem

    # an exported model runs on ONNX Runtime's CPU provider (no torch): the name only
    onnx = args.ckpt.suffix.lower() == ".onnx"
    if problem := device_problem(args.device, check_available=not onnx):
        _error(problem)
        return 2
    if not (1 <= args.workers <= MAX_PARALLEL and 1 <= args.threads <= MAX_PARALLEL):
        _error(f"--workers and --threads must be 1..{MAX_PARALLEL}")
        return 2
    if args.progress_every < 1:
        _error(f"--progress-every must be at least 1, got {args.progress_every}")
        return 2
    if not args.image.strip():
        _error("--image is empty: give an image file, a folder or a quoted glob")
        return 2
    from lightning_modules.model_limits import model_file_problem

    if problem := model_file_problem(args.ckpt):  # missing, a folder, a pipe, too large
        _error(problem)
        return 2
    try:
        args.review = _review_config(args.review_config)
    except ValueError as err:
        _error(str(err))
        return 2
    from planning.batch import IMAGE_SUFFIXES, ImageListError, expand_images

    try:
        images, many = expand_images(args.image)
    except ImageListError as err:  # a folder that cannot be listed or entered
        _error(str(err))
        return 1
    if many:
        if images and (inner := _subfolders_text(args.image)):
            _note(f"{args.image}: {inner} not searched: give each folder, or a quoted glob "
                  f"such as '{Path(args.image) / '*' / '*'}'")
        if images and (other := _passed_over_text(args.image)):
            _note(f"{args.image}: {other} passed over (not an image type: "
                  f"{', '.join(IMAGE_SUFFIXES)}, or DICOM)")
        return _main_batch(args, images)
    try:
        loaded = load_input(images[0])  # fail fast on a bad image, before loading the model
    except PlanInputError as err:
        _error(str(err))
        return 1
    from planning.batch import model_digest, output_stems, renamed_plans
    from planning.output_paths import out_folder_problem, out_names_problem

    # (the folder is made only when a plan is written: a model refused below leaves none)
    if problem := out_folder_problem(args.out, create=False):
        _error(problem)
        return 2  # a usage error, before the network runs
    stem = output_stems(images, args.out)[0]  # another image's earlier plan is kept
    if problem := out_names_problem(args.out, [p.name for p in plan_files(args.out, stem)]):
        _error(f"--out {args.out}: {problem}")
        return 2
    for note in renamed_plans(images, [stem], args.out):
        _note(note)
    from planning.predict import ModelOutputError

    search = None
    if not args.no_sphere and sphere_search_needed(loaded, images[0], args.spacing):
        from planning.sphere_search import start_sphere_search

        # its own process: it runs on another core while this one imports torch
        search = start_sphere_search(np.asarray(loaded.image, np.float32), own_process=True)
    try:
        digest = model_digest(args.ckpt)  # (while the search runs)
    except OSError:
        digest = None  # the loader below names the problem
    try:
        module = _load_or_explain(args.ckpt, args.device, args.threads)
        if module is None:
            return 2
        res = run_plan(
            images[0], module, args.out, decode=args.decode, line_fit=args.line_fit,
            user_spacing=args.spacing, detect_sphere=not args.no_sphere, checkpoint=args.ckpt,
            tta=args.tta, review_config=args.review, sphere_search=search, zoom=not args.no_zoom,
            sphere_mm=args.sphere_mm, out_stem=stem, model_sha256=digest,
        )  # fmt: skip
    except PlanInputError as err:
        _error(str(err))
        return 1
    except ModelOutputError as err:  # the model's fault, whatever the image
        _error(f"unusable model {args.ckpt}: {err} ({images[0]})")
        return 2
    except (OSError, ValueError, RuntimeError) as err:
        _error(f"planning {images[0]} failed: {err}")
        return 1
    except Exception as err:  # noqa: BLE001 (an unforeseen failure is still one line)
        _error(f"planning {images[0]} failed: {error_line(err)}")
        return 1
    finally:
        if search is not None:
            search.close()
    rep = res.report
    sp = rep["schoettle_point"]
    where = f"({sp['px'][0]:.1f}, {sp['px'][1]:.1f})" if sp["px"] else "not constructible"
    mm = f" = ({sp['mm'][0]:.2f}, {sp['mm'][1]:.2f}) mm" if sp["mm"] else ""
    print(f"Schoettle point (px): {where}{mm}")
    print(f"spacing: {rep['spacing']['source']}")
    if rep["needs_review"]:
        print("NEEDS REVIEW:")
        for reason in rep["review_reasons"]:
            print(f"  - {reason}")
    else:
        print(f"review: {rep['verdict']}")
    for warning in rep.get("warnings", []):
        print(f"warning: {warning}")
    print(f"overlay: {res.overlay}\nreport:  {res.report_path}")
    return 0


def _passed_over_text(spec: str) -> str:
    """"N file(s) (a, b, c, ...)" that the folder or glob ``spec`` holds but are no images."""
    from planning.batch import passed_over

    return _names_text(passed_over(spec), "file(s)")


def _names_text(paths: list[Path], what: str) -> str:
    """"N <what> (a, b, c, ...)" ('' when ``paths`` is empty)."""
    if not paths:
        return ""
    names = ", ".join(p.name for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
    return f"{len(paths)} {what} ({names})"


def _subfolders_text(spec: str) -> str:
    """"N subfolder(s) (a, b, c, ...)" of the folder ``spec`` ('' when none)."""
    from planning.batch import subfolders

    return _names_text(subfolders(spec), "subfolder(s)")


def _review_config(path: Path | None) -> Any:
    from planning.review import ReviewConfig

    return ReviewConfig.load(path)


def _output_problem(out: Path, summary: Path, images: list[Path], stems: list[str]
                    ) -> str | None:
    """Why the batch's outputs (the plans named ``stems``) cannot be written where asked (None:
    they can). Nothing is created: a model refused next leaves no empty folder behind."""
    from planning.batch import output_files
    from planning.output_paths import out_folder_problem

    if problem := out_folder_problem(out, create=False):  # a file, a name too long, read-only
        return problem
    try:
        if summary.is_dir():
            return f"--summary {summary} is a folder"
        if summary.exists() and not summary.is_file():  # a pipe would block the writer for ever
            return f"--summary {summary} is not a regular file (a pipe or device)"
    except OSError as err:  # a name too long, a folder that may not be searched
        return f"--summary {summary}: cannot write there ({err.strerror or err})"
    from datamodules.dataset_io import real_path  # (Path.resolve raises on a symlink loop)

    taken = {real_path(p) for p in [*images, *output_files(stems, out)]}
    if real_path(summary) in taken:
        return f"--summary {summary} would overwrite an input image or a plan"
    return out_folder_problem(summary.parent, f"--summary {summary}: its folder", create=False)


def _main_batch(args: argparse.Namespace, images: list[Path]) -> int:
    """Batch mode of ``main``: every image of a folder or glob, one summary CSV."""
    import time

    from planning.batch import (
        IMAGE_SUFFIXES,
        BatchInterrupted,
        PlanOptions,
        model_failed,
        output_stems,
        overwritten_inputs,
        plan_many,
        renamed_plans,
        write_summary,
    )

    if not images:
        inner = Path(os.path.expanduser(args.image)) / "images"
        hint = f": a dataset folder? its images are in {inner}" if inner.is_dir() else ""
        if not hint and (subs := _subfolders_text(args.image)):  # a PACS export's series
            hint = (f"; it holds {subs}: give one, or a quoted glob such as "
                    f"'{Path(args.image) / '*' / '*'}'")
        if not hint and (other := _passed_over_text(args.image)):
            hint = f" (only {other} of other types)"
        _error(f"{args.image}: no image files ({', '.join(IMAGE_SUFFIXES)}) found{hint}")
        return 1
    clash = overwritten_inputs(images, args.out)
    if clash:
        _error(f"--out {args.out}: the plans would overwrite input {clash[0]} (an "
               "earlier run's output among the images?): choose another --out")
        return 2
    summary_path = args.summary or args.out / "summary.csv"
    # (once: each pass reads the earlier plans' reports that share a name)
    stems = output_stems(images, args.out)
    problem = _output_problem(args.out, summary_path, images, stems)
    if problem:  # before any image is planned, not after all of them
        _error(problem)
        return 2
    t0 = time.perf_counter()
    cores = os.cpu_count() or 1
    if args.workers > cores:  # each worker holds a model (~300 MB): more than cores only thrash
        print(f"plan: note: --workers {args.workers} > {cores} CPU cores: using {cores}",
              file=sys.stderr)
    workers = min(args.workers, len(images), cores)
    # loaded here also for workers > 1: a model the loader refuses is one line, not a
    # traceback from every worker process; the workers then load only these bytes (digest
    # taken before this check, so a file changed after it is refused by every worker)
    from planning.batch import model_digest

    try:  # (also recorded in every report: which model made the plan)
        digest = model_digest(args.ckpt)
    except OSError:
        digest = None  # the loader below names the problem
    predictor = _load_or_explain(args.ckpt, args.device, args.threads)
    if predictor is None:
        return 2
    if workers > 1:
        predictor = None
    opts = PlanOptions(args.out, args.decode, args.line_fit, args.spacing, not args.no_sphere,
                       str(args.ckpt), args.tta, args.review, zoom=not args.no_zoom,
                       sphere_mm=args.sphere_mm, model_sha256=digest)
    for note in renamed_plans(images, stems, args.out):
        _note(note)
    try:
        rows = plan_many(images, opts, predictor=predictor, model_path=args.ckpt,
                         workers=workers, device=args.device,
                         progress_every=args.progress_every, model_sha256=digest, stems=stems)
    except BatchInterrupted as stop:
        done = (write_summary(summary_path, stop.rows, plans_dir=args.out) if stop.rows
                else None)
        print(f"plan: interrupted after {len(stop.rows)} of {len(images)} images"
              + (f"; their summary: {done}" if done else ""), file=sys.stderr)
        return 130
    summary = write_summary(summary_path, rows, plans_dir=args.out)  # (earlier batches' too)
    failed = sum(r["status"] != "ok" for r in rows)
    if model_failed(rows):
        _error(f"unusable model {args.ckpt}: its output for a valid image is unusable (see the "
               f"errors above); summary: {summary}")
        return 2
    review = sum(r["needs_review"] is True for r in rows)
    print(f"planned {len(rows) - failed}/{len(rows)} images in {time.perf_counter() - t0:.1f} s "
          f"({failed} failed, {review} need review); summary: {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
