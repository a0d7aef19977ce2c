"""Batch planning: many radiographs, one model load, a progress bar and a summary CSV.

``python -m planning.plan --image FOLDER/ (or 'GLOB') --ckpt MODEL`` plans every image (see
``expand_images``), writes each image's overlay and JSON as in single-image mode, and
``<out>/summary.csv`` with one row per image (``SUMMARY_FIELDS``). A bad image is reported on
stderr and in its CSV row (``status`` = failed, ``error``) and the others are still planned.
With ``workers > 1`` the images are shared among that many processes (spawned; each loads the
model once and runs one thread). In one process, each overlay's PNG encoding (~40 ms for a
1.2 kpx image, OpenCV releases the GIL) runs in a writer thread while the next image is planned.
"""

from __future__ import annotations

import csv
import glob
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.path_limits import replace_link
from geometry.pixel_spacing import SPHERE_MM
from planning.tables import csv_cell

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".jpg", ".jpeg")
GLOB_CHARS = set("*?[")
SUMMARY_FIELDS = (
    "image", "status", "schoettle_x_px", "schoettle_y_px", "schoettle_x_mm", "schoettle_y_mm",
    "spacing_source", "needs_review", "review_codes", "reasons", "seconds", "error", "report",
)  # fmt: skip


MODEL_UNUSABLE = "unusable model"  # how a row's error starts when the model, not the image, failed


def model_failed(rows: Iterable[dict[str, Any]]) -> bool:
    """Whether some image failed because of the model's own output (``ModelOutputError``)."""
    return any(str(r.get("error", "")).startswith(MODEL_UNUSABLE) for r in rows)


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a batch, with the rows of the images finished before it (``rows``), so
    that their summary can still be written."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__(f"interrupted after {len(rows)} images")
        self.rows = rows


class ImageListError(ValueError):
    """A folder of images that cannot be listed or entered; the message names it and says why.
    (Not ``planning.plan.PlanInputError``: under ``python -m planning.plan`` that module is
    ``__main__``, whose class another import of it does not share.)"""


def expand_images(spec: str) -> tuple[list[Path], bool]:
    """Image paths named by ``spec`` and whether it names several (a folder or a glob).

    A folder gives its entries with an image suffix (``IMAGE_SUFFIXES``, not recursive, sorted;
    any that is not a readable regular file fails in its own row) and its DICOM files named
    without one (``IM0001``, a UID: ``is_dicom_file``);
    a pattern with ``* ? [`` that is not itself an existing path gives its sorted matches of
    the same kinds (``passed_over`` names the files either leaves out);
    anything else is one path (checked later, when it is read).
    Raises ImageListError for a folder that cannot be listed or entered.
    """
    from datamodules.dataset_io import folder_entries, is_apple_double, stat_problem

    spec = os.path.expanduser(spec)  # (zsh leaves ``IMAGE=~/x`` unexpanded)
    path = Path(spec)
    st = stat_problem(path)  # a loop or a permission error is the single path's own error
    if not isinstance(st, str) and stat.S_ISDIR(st.st_mode):
        entries = folder_entries(path)
        if isinstance(entries, str):
            raise ImageListError(f"{path}: {entries}")
        # a pipe, a dangling link or a folder named *.png is listed (its row says what it is):
        # a folder (or a link to one) named x.png was skipped silently
        # (macOS metadata files, ._x.png, are no images: skipped in a folder or a glob)
        return sorted(p for p in entries if not is_apple_double(p) and _image_like(p)), True
    if GLOB_CHARS & set(spec) and isinstance(st, str):
        # (as in a folder: notes.txt matched by dir/* was a failed row there, passed over here)
        return sorted(Path(p) for p in glob.glob(spec) if not is_apple_double(p)
                      and _globbed(Path(p)) and _image_like(Path(p))), True
    return [path], False


def _image_like(path: Path) -> bool:
    """An image suffix (``IMAGE_SUFFIXES``) or a DICOM file named without one."""
    return path.suffix.lower() in IMAGE_SUFFIXES or is_dicom_file(path)


def passed_over(spec: str) -> list[Path]:
    """The regular files of the folder or glob ``spec`` that ``expand_images`` leaves out (no
    image suffix and no DICOM; hidden files and macOS metadata not counted), so that a batch
    can say what it did not plan ([] for a single path)."""
    from datamodules.dataset_io import folder_entries, is_apple_double

    spec = os.path.expanduser(spec)
    path = Path(spec)
    if _is_folder(path):
        entries = folder_entries(path)
        found = [] if isinstance(entries, str) else entries
    elif GLOB_CHARS & set(spec) and not path.exists():
        found = [Path(p) for p in glob.glob(spec)]
    else:
        return []
    return sorted(p for p in found if not p.name.startswith(".") and not is_apple_double(p)
                  and _is_regular(p) and not _image_like(p))


def _is_regular(path: Path) -> bool:
    """A regular file (following links), False where it cannot be looked at."""
    try:
        return path.is_file()
    except OSError:
        return False


def subfolders(spec: str) -> list[Path]:
    """The folders inside the folder ``spec`` (sorted; hidden ones left out), which a folder's
    listing does not enter: said, so that a PACS export's nested series are not missed
    silently ([] when ``spec`` is not a readable folder)."""
    from datamodules.dataset_io import folder_entries

    path = Path(os.path.expanduser(spec))
    entries = folder_entries(path) if path.is_dir() else []
    if isinstance(entries, str):
        return []
    return sorted(p for p in entries if not p.name.startswith(".") and _is_folder(p))


def _is_folder(path: Path) -> bool:
    """``path.is_dir()``, False where it may not be looked at (Path.is_dir raises on that)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _globbed(path: Path) -> bool:
    """Whether a glob match is planned: a regular file, or one that may not be read (its row
    says so); not a folder, a pipe or a broken or looping link."""
    from datamodules.dataset_io import stat_problem

    st = stat_problem(path)
    if isinstance(st, str):
        return st.startswith("permission denied")
    return stat.S_ISREG(st.st_mode)


MEDIA_DIRECTORY_UID = re.compile(rb"1\.2\.840\.10008\.1\.3\.10(?![0-9.])")  # a DICOMDIR


def is_dicom_file(path: Path) -> bool:
    """Whether a folder entry without an image suffix is a DICOM file (PACS exports name them
    ``IM0001``, by a UID, or ``.IMA`` / ``.dicom``): a regular file with "DICM" at byte 128, as
    ``load_image`` tells (512 bytes read). One that cannot be read is not listed, like any
    other non-image file."""
    from datamodules.dataset_io import stat_problem

    if path.suffix.lower() in IMAGE_SUFFIXES:
        return False
    st = stat_problem(path)
    if isinstance(st, str) or not stat.S_ISREG(st.st_mode) or st.st_size < 132:
        return False  # (a pipe is never opened: the read would block)
    if path.name.upper() == "DICOMDIR":  # a CD's or export's index of the files, no image
        return False
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return False
    # the file meta's MediaStorageSOPClassUID: a directory (index) is not an image either
    return head[128:132] == b"DICM" and not MEDIA_DIRECTORY_UID.search(head)


MAX_REPORT_BYTES = 8 << 20  # an earlier plan's JSON report is read only to see whose it is


def output_stems(paths: list[Path], out_dir: Path | None = None) -> list[str]:
    """The name each image's ``<stem>_plan.png/.json`` takes: its stem, or, when two images
    share a stem (knee.png and knee.tif, or one name in two folders of a glob), the name with
    its suffix and a counter, so that no plan overwrites another. With ``out_dir``, a name
    whose plan there belongs to another image (a PACS export names every patient's file
    IM0001) also takes the next counter: a plan of the same image is replaced, another
    patient's never."""
    from planning.plan import plan_files

    count: dict[str, int] = {}
    for p in paths:
        count[p.stem] = count.get(p.stem, 0) + 1
    out, seen = [], set()
    for p in paths:
        stem = p.stem if count[p.stem] == 1 else f"{p.stem}{p.suffix.replace('.', '_')}"
        base, k = stem, 1
        while stem in seen or (out_dir is not None
                               and not _free_for(plan_files(Path(out_dir), stem), p)):
            k += 1
            stem = f"{base}-{k}"
        seen.add(stem)
        out.append(stem)
    return out


def _free_for(files: tuple[Path, Path], image: Path) -> bool:
    """Whether a plan of ``image`` may be written as ``files`` (overlay, report): neither
    exists, or the report is a plan of this same image: the same bytes (``image.sha256``), or
    for a report without a digest the same absolute path. An overlay without its report, an
    unreadable report, or one of another image, a relative path (its working folder is not
    known) or a file re-used for another patient (a PACS export's IM0001 each day): not."""
    from datamodules.annotations import AnnotationError, load_json
    from datamodules.dataset_io import real_path

    overlay, report = files
    # (a link there is replaced by the file, never written through: path_limits.replace_link)
    if not _regular(report) and not _regular(overlay):
        return True
    try:
        recorded = load_json(report, MAX_REPORT_BYTES, "a plan report")["image"]
        if isinstance(recorded.get("sha256"), str):
            return recorded["sha256"] == file_sha256(image)
        path = recorded["path"]
        return (isinstance(path, str) and Path(path).is_absolute()
                and real_path(Path(path)) == real_path(image))
    except (AnnotationError, OSError, ValueError, TypeError, KeyError, AttributeError):
        return False


def _regular(path: Path) -> bool:
    """Whether ``path`` exists and is not a symbolic link. A path that cannot be looked at (a
    name too long, a folder that may not be searched) is not a plan to keep: the output checks
    name that problem (taken as existing, every name was taken and ``output_stems`` never
    ended)."""
    try:
        return path.exists() and not path.is_symlink()
    except OSError:
        return False


def renamed_plans(paths: list[Path], stems: list[str], out_dir: Path) -> list[str]:
    """One line per image whose plan takes another name than its own stem because a plan of
    another image holds that name in ``out_dir`` (said, never silent)."""
    from planning.plan import plan_files

    plain = output_stems(paths)
    return [f"{plan_files(out_dir, a)[1]} is the plan of another image (or its overlay a "
            f"file of another): the plan of {p} is written as {b}_plan.json / .png"
            for p, a, b in zip(paths, plain, stems, strict=True) if a != b]


def output_files(stems: list[str], out_dir: Path) -> list[Path]:
    """Every file the plans named ``stems`` (``output_stems``) write into ``out_dir``
    (overlays and reports)."""
    from planning.plan import plan_files

    return [f for stem in stems for f in plan_files(out_dir, stem)]


def overwritten_inputs(paths: list[Path], out_dir: Path) -> list[Path]:
    """Inputs that a plan's output would overwrite (``--out`` is their folder and one is named
    like another's ``<stem>_plan.png``, e.g. an earlier run's overlay)."""
    from datamodules.dataset_io import real_path  # (Path.resolve raises on a symlink loop)

    inputs = {real_path(p) for p in paths}
    # (the images' own names, before any is moved aside for another image's earlier plan: an
    # input named like a plan is refused, not planned beside it)
    files = output_files(output_stems(paths), out_dir)
    return [real_path(f) for f in files if real_path(f) in inputs]


@dataclass
class PlanOptions:
    """Per-image settings of ``planning.plan.run_plan``."""

    out_dir: Path
    decode: str = "argmax"
    line_fit: str = "lstsq"
    user_spacing: list[float] | None = None
    detect_sphere: bool = True
    checkpoint: str | None = None
    tta: int = 8
    review_config: Any = None
    zoom: bool = True
    sphere_mm: float = SPHERE_MM  # the calibration sphere's diameter
    model_sha256: str | None = None  # recorded in each report: which model made the plan


def plan_one(path: Path, predictor: Any, opts: PlanOptions, stem: str | None = None
             ) -> dict[str, Any]:
    """Plan one image; a summary row, with ``status`` failed and ``error`` when it could not.
    ``stem``: the outputs' name (default: the image's stem)."""
    row, _ = _plan_one(path, predictor, opts, stem=stem)
    return row


def _plan_one(path: Path, predictor: Any, opts: PlanOptions, writer: Any = None,
              stem: str | None = None, search_server: Any = None
              ) -> tuple[dict[str, Any], Future | None]:
    """``plan_one`` with ``run_plan``'s ``overlay_writer`` and ``search_server``; also returns
    the pending write."""
    from planning.plan import PlanInputError, error_line, run_plan
    from planning.predict import ModelOutputError

    pending = None
    row: dict[str, Any] = dict.fromkeys(SUMMARY_FIELDS, "")
    row["image"] = str(path)
    t0 = time.perf_counter()
    try:
        res = run_plan(
            path, predictor, opts.out_dir, decode=opts.decode, line_fit=opts.line_fit,
            user_spacing=opts.user_spacing, detect_sphere=opts.detect_sphere,
            checkpoint=opts.checkpoint, tta=opts.tta, review_config=opts.review_config,
            zoom=opts.zoom, overlay_writer=writer, out_stem=stem, search_server=search_server,
            sphere_mm=opts.sphere_mm, model_sha256=opts.model_sha256,
        )  # fmt: skip
    except PlanInputError as err:
        row.update(status="failed", error=str(err))
    except ModelOutputError as err:  # the model's fault: main exits 2 (model_failed)
        row.update(status="failed", error=f"{MODEL_UNUSABLE} {opts.checkpoint}: {err} ({path})")
    except Exception as err:  # noqa: BLE001 (one image's failure, whatever it is, is its row)
        row.update(status="failed", error=f"{path}: planning failed: {error_line(err)}")
    else:
        from planning.review import codes_cell, reasons_cell

        rep = res.report
        sp = rep["schoettle_point"]
        px, mm = sp.get("px") or ["", ""], sp.get("mm") or ["", ""]
        row.update(
            status="ok", schoettle_x_px=px[0], schoettle_y_px=px[1], schoettle_x_mm=mm[0],
            schoettle_y_mm=mm[1], spacing_source=rep["spacing"]["source"],
            needs_review=bool(rep["needs_review"]),
            review_codes=codes_cell(rep["review_codes"]),
            reasons=reasons_cell(rep["review_reasons"]),
            report=str(res.report_path),
        )  # fmt: skip
        pending = res.pending
    row["seconds"] = round(time.perf_counter() - t0, 4)
    return row, pending


def _settle(row: dict[str, Any], pending: Future | None) -> dict[str, Any]:
    """Wait for a row's overlay write; a failed write fails the row (its JSON, which names
    the missing overlay, is removed with it)."""
    if pending is not None:
        try:
            pending.result()
        except Exception as err:  # noqa: BLE001 (any encoder or disk failure fails the row)
            row.update(status="failed", error=str(err) or type(err).__name__)
            if row.get("report"):
                Path(row["report"]).unlink(missing_ok=True)
                row["report"] = ""
    return row


class Progress:
    """Batch progress with a failure count; bar or plain lines as ``datamodules.progress``
    decides (a terminal, or ``KNEEPLAN_PROGRESS``), so logs never fill with redraws."""

    def __init__(self, total: int, every: int = 10, stream: Any = None):
        from datamodules.progress import use_bar

        self.total, self.every, self.done, self.failed = total, max(1, every), 0, 0
        self.stream = stream or sys.stderr
        self.bar = None
        self.t0 = time.perf_counter()
        if use_bar(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="image", file=self.stream, dynamic_ncols=True)

    def update(self, ok: bool) -> None:
        """Count one finished image."""
        from datamodules.progress import progress_line

        self.done += 1
        self.failed += not ok
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(failed=self.failed)
        elif self.done % self.every == 0 or self.done == self.total:
            line = progress_line("plan", self.done, self.total, time.perf_counter() - self.t0)
            print(f"{line} ({self.failed} failed)", file=self.stream, flush=True)

    def close(self) -> None:
        """Finish the bar."""
        if self.bar is not None:
            self.bar.close()


_WORKER: dict[str, Any] = {}


def model_digest(path: str | Path) -> str:
    """SHA-256 of a model file's bytes (as ``sha256sum`` prints it); beside an ``.onnx`` with
    its JSON description (codec and output names live there): SHA-256 of the two files'
    digests."""
    import hashlib

    from planning.predict import export_meta_path

    files = [Path(path)]
    if Path(path).suffix.lower() == ".onnx" and export_meta_path(path).is_file():
        files.append(export_meta_path(path))
    digests = [file_sha256(name) for name in files]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256(b"".join(bytes.fromhex(d) for d in digests)).hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (real path, mtime ns, size) -> SHA-256


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex, as ``sha256sum`` prints it); remembered while the file
    is unchanged, so an image hashed to name its plan is not read again for its report.
    Raises OSError."""
    import hashlib

    from datamodules.dataset_io import real_path

    st = os.stat(path)
    key = (str(real_path(Path(path))), st.st_mtime_ns, st.st_size)
    if key not in _DIGESTS:
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if len(_DIGESTS) > 10_000:
            _DIGESTS.clear()
        _DIGESTS[key] = digest
    return _DIGESTS[key]


def _start_worker(model_path: str, device: str, sha256: str) -> None:
    """A worker process's initializer: Ctrl-C is the main process's to answer, so the worker
    ignores it (it failed its image and went on to the next one) and the images in flight
    finish while the main process cancels the rest; then ``_init_worker``. (Apart from it:
    called in a test's own process, it would leave that process deaf to Ctrl-C.)"""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(model_path, device, sha256)


def _init_worker(model_path: str, device: str, sha256: str) -> None:
    """Load the model the main process checked: the same bytes (a file rewritten meanwhile,
    e.g. ``last.ckpt`` by a running training, or a link swapped, is refused), and any failure
    kept as the worker's one-line answer (an initializer that raises breaks the whole pool with
    a traceback per worker)."""
    from datamodules.decoder_messages import printable
    from planning.predict import load_predictor

    try:
        if model_digest(model_path) != sha256:
            raise ValueError(f"{model_path} changed after it was checked (its bytes differ): "
                             "plan again once it is stable")
        _WORKER["predictor"] = load_predictor(model_path, device=device, threads=1)
    except Exception as err:  # noqa: BLE001 - any load failure is the worker's answer
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _WORKER["error"] = printable(first)[:300]


def _worker_plan(path: Path, opts: PlanOptions, stem: str) -> dict[str, Any]:
    if "error" in _WORKER:  # the model, not the image: main exits 2 (model_failed)
        row = dict.fromkeys(SUMMARY_FIELDS, "")
        row.update(image=str(path), status="failed",
                   error=f"{MODEL_UNUSABLE} {opts.checkpoint}: {_WORKER['error']} ({path})")
        return row
    return plan_one(path, _WORKER["predictor"], opts, stem)


def plan_many(
    paths: list[Path],
    opts: PlanOptions,
    predictor: Any = None,
    model_path: str | Path | None = None,
    workers: int = 1,
    device: str = "cpu",
    progress_every: int = 10,
    on_error: Callable[[str], None] | None = None,
    model_sha256: str | None = None,
    stems: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Plan ``paths`` (in order of the returned rows) with one loaded ``predictor``, or with
    ``workers`` processes that each load ``model_path`` (only if its ``model_digest`` is still
    ``model_sha256``); failures are rows, never raised. ``stems``: the plans' names when the
    caller has them (``output_stems(paths, opts.out_dir)``)."""
    from datamodules.decoder_messages import printable

    report = on_error or (lambda msg: print(f"plan: error: {printable(msg)}", file=sys.stderr,
                                            flush=True))
    progress = Progress(len(paths), progress_every)
    rows: list[dict[str, Any] | None] = [None] * len(paths)
    stems = stems if stems is not None else output_stems(paths, opts.out_dir)

    def finish(i: int, row: dict[str, Any]) -> None:
        rows[i] = row
        if row["status"] != "ok":
            report(row["error"])
        progress.update(row["status"] == "ok")

    try:
        if workers <= 1:
            if predictor is None:
                raise ValueError("plan_many: give a predictor (or workers > 1 and model_path)")
            from planning.plan import write_overlay
            from planning.sphere_search import SearchServer

            with ThreadPoolExecutor(1, thread_name_prefix="overlay") as io, SearchServer() as ss:
                held: tuple[int, dict[str, Any], Future | None] | None = None
                for i, path in enumerate(paths):
                    try:
                        row, pending = _plan_one(path, predictor, opts,
                                                 lambda p, rgb: io.submit(write_overlay, p, rgb),
                                                 stems[i], ss)
                    except KeyboardInterrupt:  # the previous image is done: its row counts
                        if held is not None:
                            finish(held[0], _settle(*held[1:]))
                        raise
                    if held is not None:  # the previous overlay was written meanwhile
                        finish(held[0], _settle(*held[1:]))
                        held = None
                    if pending is None:  # nothing to wait for (a failed image): report it now
                        finish(i, row)
                    else:
                        held = (i, row, pending)
                if held is not None:
                    finish(held[0], _settle(*held[1:]))
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            from concurrent.futures.process import BrokenProcessPool

            # the workers load exactly the checked bytes (digest taken before the main check)
            sha256 = model_sha256 or model_digest(str(model_path))
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker,
                                     initargs=(str(model_path), device, sha256)) as pool:
                futures = {pool.submit(_worker_plan, p, opts, stems[i]): i
                           for i, p in enumerate(paths)}

                def collect(fut: Future) -> None:
                    i = futures[fut]
                    try:
                        finish(i, fut.result())
                    except BrokenProcessPool as err:  # a worker died (killed, out of memory)
                        row = dict.fromkeys(SUMMARY_FIELDS, "")
                        row.update(image=str(paths[i]), status="failed",
                                   error=f"{paths[i]}: a worker process died ({err})")
                        finish(i, row)

                try:
                    for fut in as_completed(futures):
                        collect(fut)
                except KeyboardInterrupt:  # the queued images are not started; those in flight
                    for fut in futures:  # finish (the workers ignore Ctrl-C) and count
                        fut.cancel()
                    for fut in futures:
                        if not fut.cancelled() and rows[futures[fut]] is None:
                            collect(fut)
                    raise
    except KeyboardInterrupt:
        raise BatchInterrupted([r for r in rows if r is not None]) from None
    finally:
        progress.close()
    return [r for r in rows if r is not None]


MAX_SUMMARY_BYTES = 64 << 20  # an earlier summary read back to keep its rows (~300 bytes a row)


def earlier_rows(path: Path, rows: Sequence[dict[str, Any]], plans_dir: Path
                 ) -> list[dict[str, str]]:
    """The rows of an earlier summary at ``path`` that still stand beside ``rows``: whose plan
    report (by file name: the folder may have been named otherwise, or from another working
    folder) is still in ``plans_dir`` and not one of ``rows``' (a plan made again); a failed
    row while no image of its name is in ``rows``. [] when there is none, or it is not one of
    ours (other columns, too large)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_SUMMARY_BYTES:
            return []
        with path.open(newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != SUMMARY_FIELDS:
                return []
            old = list(reader)
    except (OSError, csv.Error):
        return []
    images = {Path(str(r.get("image", ""))).name for r in rows}
    reports = {Path(str(r["report"])).name for r in rows if r.get("report")}

    def stands(r: dict[str, str]) -> bool:
        if r["status"] != "ok" or not r["report"]:
            return Path(r["image"]).name not in images
        name = Path(r["report"]).name
        return name not in reports and (plans_dir / name).is_file()

    return [r for r in old if stands(r)]


def write_summary(path: Path, rows: Iterable[dict[str, Any]], plans_dir: Path | None = None
                  ) -> Path:
    """Write the summary CSV (``SUMMARY_FIELDS``, one row per image); with ``plans_dir`` (the
    folder the plans are in) after the rows of an earlier summary there that still stand
    (``earlier_rows``), so that the summary of a folder planned in several batches lists all
    its plans."""
    rows = list(rows)
    if plans_dir is not None:
        rows = [*earlier_rows(path, rows, plans_dir), *rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    # a file name that is not UTF-8 (a lone surrogate) is written escaped, not refused
    with replace_link(path).open("w", newline="", encoding="utf-8",
                                 errors="backslashreplace") as f:
        writer = csv.DictWriter(f, fieldnames=list(SUMMARY_FIELDS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_cell(row.get(k, "")) for k in SUMMARY_FIELDS})
    return path
