"""The versioned annotation JSON (``annotations/<id>.json``): parse, check and write.

Schema version 1 (documented with a full example in README.md):

    {"schema_version": 1, "id": "knee_0001", "image": "knee_0001.png",
     "pixel_spacing_mm": [0.14, 0.14] | null, "side": "left" | "right" | null,
     "raters": [{"rater": "r1", "landmarks": {"p_blum": [x, y], "p_tmc": [x, y]},
                 "cortex_line": [[x, y], [x, y], ...]}],
     "schoettle_point": [x, y] | null, "meta": {...}}

Coordinates are (x, y) = (column, row) in original-image pixels, pixel centres on integers.
"""

from __future__ import annotations

import json
import math
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.decoder_messages import printable
from datamodules.path_limits import replace_link
from datamodules.real_numbers import real_value
from datamodules.sample import LANDMARKS, RaterAnnotation

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = (1,)


class AnnotationError(ValueError):
    """An annotation file that cannot be used; the message names the file and the field."""

    def __str__(self) -> str:
        return printable(super().__str__())  # one line, even for a file name with a newline


MAX_SPACING_MM = 1000.0  # one metre per pixel: anything above is a typo or an overflow
MAX_JSON_BYTES = 10_000_000
MAX_CORTEX_POINTS = 10_000  # a traced polyline may be dense; 1 000 000 (9.9 MB) took 15 s
MAX_RATERS = 64  # raters of one image (each one's points are checked)
MIN_SPAN_PX = 2.0  # landmarks, or all cortex points, closer than this: a degenerate label
# A point more than this many longer sides outside its image (or, with no image known, beyond
# MAX_COORD_PX) is an error, not a warning: at 1e30 px the line fit lost the image entirely (an
# all-zero ROI target), at 1e300 its SVD failed (red-team round 10); a real line leaves the image
# by a fraction of it.
FAR_SIDES = 100.0
MAX_COORD_PX = 1e9
# the schema's keys: anything else is a typo (``"pixel_spacing"`` would silently lose the
# spacing) and is refused; free-form extras belong under ``meta``
TOP_KEYS = ("schema_version", "id", "image", "pixel_spacing_mm", "side", "raters",
            "schoettle_point", "meta")
RATER_KEYS = ("rater", "landmarks", "cortex_line")


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 100
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 10


def brief_repr(value: Any) -> str:
    """``repr(value)`` cut to about 100 characters: a message quotes the user's value, but a
    10 MB id or list must not become a 10 MB error line."""
    return _REPR.repr(value)


@dataclass
class AnnotationCheck:
    """Every problem found in one annotation dict (messages without the file name)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def is_number(value: Any) -> bool:
    """A JSON number: int or float, not a bool and not a numeric string."""
    return real_value(value) is not None


def _as_float(value: int | float) -> float:
    """``float(value)`` for a JSON number, +-inf for an integer too large for a float."""
    x = real_value(value)
    assert x is not None, "callers check is_number first"
    return x


def check_spacing(value: Any) -> tuple[float, float]:
    """``(row_mm, col_mm)`` from one number or a pair; raises ValueError saying what is wrong.

    Each value must be a finite number in (0, ``MAX_SPACING_MM``] mm (booleans and strings are
    not numbers).
    """
    pair = [value, value] if is_number(value) else value
    if not isinstance(pair, list | tuple) or len(pair) != 2 or not all(map(is_number, pair)):
        raise ValueError("pixel spacing must be a number or [row_mm, col_mm], got "
                         f"{brief_repr(value)}")
    row, col = _as_float(pair[0]), _as_float(pair[1])
    if not all(math.isfinite(v) and 0 < v <= MAX_SPACING_MM for v in (row, col)):
        raise ValueError(f"pixel spacing must be positive and at most {MAX_SPACING_MM:g} mm, "
                         f"got {brief_repr(value)}")
    return row, col


def _point_problem(value: Any, shape: tuple[int, int] | None) -> tuple[str | None, bool]:
    """(problem or None, whether it is only "outside the image") for one [x, y]."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return f"expected [x, y], got {_short(value)}", False
    if not all(is_number(v) for v in value):
        return f"not a pair of numbers: {_short(value)}", False
    x, y = _as_float(value[0]), _as_float(value[1])
    if not (math.isfinite(x) and math.isfinite(y)):
        return (f"NaN or infinite coordinate {_short(value)} (or one too large for a "
                "float)"), False
    if shape is None:
        if max(abs(x), abs(y)) > MAX_COORD_PX:
            return (f"({x:g}, {y:g}) lies beyond {MAX_COORD_PX:g} px (a unit or exponent "
                    "slip?)"), False
        return None, False
    h, w = shape
    if -0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5:
        return None, False
    far = FAR_SIDES * max(shape)
    if not (-far <= x <= w + far and -far <= y <= h + far):
        return (f"({x:g}, {y:g}) lies outside the {w}x{h} (W x H) image, far beyond it (more "
                f"than {FAR_SIDES:g} x its longer side: a unit or exponent slip?)"), False
    return f"({x:g}, {y:g}) lies outside the {w}x{h} (W x H) image", True


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if _shallow(value) else f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shallow(value: Any, depth: int = 4) -> bool:
    """True when ``value`` nests no deeper than ``depth`` (safe to print)."""
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, list | tuple | dict):
            if d >= depth:
                return False
            stack += [(x, d + 1) for x in (v.values() if isinstance(v, dict) else v)]
    return True


def check_annotation(
    data: Any, sample_id: str | None = None, image_name: str | None = None,
    shape: tuple[int, int] | None = None, has_file_spacing: bool = True,
) -> AnnotationCheck:
    """THE schema checker: every problem of one loaded annotation (the validator lists them all,
    the reader refuses on the first). ``shape`` (H, W) checks points against the image; a
    landmark or Schoettle point outside is an error, a cortex point outside only a warning
    (an error beyond ``FAR_SIDES`` longer sides)."""
    out = AnnotationCheck()
    err = out.errors.append
    if not isinstance(data, dict):
        err("top level must be a JSON object")
        return out
    _check_keys(data, TOP_KEYS, "", "; extras belong under 'meta'", out)
    version = data.get("schema_version")
    if not (is_number(version) and version in SUPPORTED_VERSIONS):
        err(f"unknown schema_version {_short(version)} (supported: {SUPPORTED_VERSIONS})")
    ann_id = data.get("id")
    if not isinstance(ann_id, str) or not ann_id:
        err("missing or empty 'id'")
    elif sample_id is not None and ann_id != sample_id:
        err(f"'id' is {brief_repr(ann_id)}, expected {brief_repr(sample_id)} (the file name)")
    image = data.get("image")
    if image is not None and not isinstance(image, str):
        err(f"'image' must be a file name, got {_short(image)}")
    elif image_name is not None and image not in (None, image_name):
        err(f"'image' is {brief_repr(image)}, but the image is {brief_repr(image_name)}")
    spacing = data.get("pixel_spacing_mm")
    if spacing is None:
        if not has_file_spacing:
            out.warnings.append("no pixel spacing (neither in the annotation nor the image "
                                "file): errors cannot be given in mm")
    else:
        try:
            row, col = check_spacing(spacing)
        except ValueError as e:
            err(f"pixel_spacing_mm: {e}")
        else:
            from geometry.pixel_spacing import MAX_MM, MIN_MM

            if not (MIN_MM <= row <= MAX_MM and MIN_MM <= col <= MAX_MM):
                # the one resolver ignores such a value: training would silently fall back to
                # the DICOM tags or to no spacing at all
                err(f"pixel_spacing_mm: {_short(spacing)} mm per pixel is outside the plausible "
                    f"range {MIN_MM:g}..{MAX_MM:g} of a radiograph (a unit error?)")
    side = data.get("side")
    if side is not None and side not in ("left", "right"):
        err(f"'side' must be \"left\", \"right\" or null, got {_short(side)}")
    meta = data.get("meta")
    if meta is not None and not isinstance(meta, dict):
        err(f"'meta' must be an object, got {_short(meta)}")
    raters = data.get("raters")
    if not isinstance(raters, list) or not raters:
        err("'raters' must be a non-empty list")
        raters = []
    if len(raters) > MAX_RATERS:
        err(f"'raters' holds {len(raters)} raters (at most {MAX_RATERS})")
        raters = raters[:MAX_RATERS]
    for i, rater in enumerate(raters):
        _check_rater(rater, f"raters[{i}]", shape, out)
    names = [r.get("rater") for r in raters if isinstance(r, dict)]
    if len(raters) > 1 and (None in names or len(set(map(str, names))) != len(names)):
        err(f"several raters need distinct 'rater' ids, got {_short(names)}")
    sp_point = data.get("schoettle_point")
    if sp_point is not None:
        problem, _ = _point_problem(sp_point, shape)  # a truth point: inside, like landmarks
        if problem:
            err(f"schoettle_point: {problem}")
    return out


def _check_rater(rater: Any, where: str, shape: tuple[int, int] | None,
                 out: AnnotationCheck) -> None:
    if not isinstance(rater, dict):
        out.errors.append(f"{where}: must be an object")
        return
    _check_keys(rater, RATER_KEYS, f"{where}: ", "", out)
    name = rater.get("rater")
    if name is not None and not isinstance(name, str):
        out.errors.append(f"{where}: 'rater' must be a string, got {_short(name)}")
    lms = rater.get("landmarks")
    if not isinstance(lms, dict):
        what = "missing 'landmarks'" if lms is None else (
            f"'landmarks' must be an object {{\"p_blum\": [x, y], ...}}, got {_short(lms)}")
        out.errors.append(f"{where}: {what}")
    else:
        _check_keys(lms, LANDMARKS, f"{where}.landmarks: ", "", out, "landmark")
        placed = []
        for lm in LANDMARKS:
            if lm not in lms:
                out.errors.append(f"{where}: missing landmark {lm}")
                continue
            problem, _ = _point_problem(lms[lm], shape)
            if problem:
                out.errors.append(f"{where}.landmarks.{lm}: {problem}")
            else:
                placed.append(np.asarray(lms[lm], np.float64))
        if len(placed) == 2 and np.hypot(*(placed[0] - placed[1])) < MIN_SPAN_PX:
            out.errors.append(f"{where}: landmarks {' and '.join(LANDMARKS)} coincide (within "
                              f"{MIN_SPAN_PX:g} px: no Schoettle construction)")
    line = rater.get("cortex_line")
    if not isinstance(line, list) or len(line) < 2:
        n = len(line) if isinstance(line, list) else 0
        out.errors.append(f"{where}: 'cortex_line' needs at least two points, got {n}")
    if not isinstance(line, list):
        return
    if len(line) > MAX_CORTEX_POINTS:
        out.errors.append(f"{where}: 'cortex_line' holds {len(line)} points (at most "
                          f"{MAX_CORTEX_POINTS}: a line needs a few)")
        return
    good = []
    for j, p in enumerate(line):
        problem, outside = _point_problem(p, shape)
        if problem and outside:
            out.warnings.append(f"{where}.cortex_line[{j}]: {problem}")
        elif problem:
            out.errors.append(f"{where}.cortex_line[{j}]: {problem}")
            continue
        good.append((float(p[0]), float(p[1])))
    if len(good) == len(line) >= 2:
        pts = np.array(good)
        span = float(np.hypot(*np.ptp(pts, axis=0)))  # their bounding box's diagonal
        if span < MIN_SPAN_PX:
            what = "coincide" if span == 0 else f"span {span:.3g} px"
            out.errors.append(f"{where}: all cortex_line points {what} (no line: a direction "
                              f"needs points at least {MIN_SPAN_PX:g} px apart)")


def _check_keys(data: dict[str, Any], known: tuple[str, ...], where: str, hint: str,
                out: AnnotationCheck, what: str = "key") -> None:
    """An error for each key of ``data`` not in ``known`` (a typo must not be ignored)."""
    for key in data:
        if key not in known:
            out.errors.append(f"{where}unknown {what} {_short(key)} (expected one of "
                              f"{', '.join(known)}{hint})")


def parse_annotation(
    data: dict[str, Any], source: str = "<annotation>", sample_id: str | None = None,
    image_name: str | None = None, shape: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Check a loaded annotation dict and return it with numpy arrays for points.

    ``sample_id``, ``image_name`` and ``shape`` (H, W) are checked as by the validator when
    given (a reader that knows its image refuses what the validator would).
    Returns a dict with keys ``id``, ``image``, ``spacing_mm`` ((row, col) or None), ``side``,
    ``raters`` (list of RaterAnnotation), ``schoettle_point`` and ``meta``.
    Raises AnnotationError naming ``source`` and the first problem :func:`check_annotation`
    finds.
    """
    check = check_annotation(data, sample_id, image_name, shape)
    if check.errors:
        raise AnnotationError(f"{source}: {check.errors[0]}")
    spacing = data.get("pixel_spacing_mm")
    raters = []
    for r in data["raters"]:
        landmarks = np.array([r["landmarks"][n] for n in LANDMARKS], dtype=np.float64)
        cortex = np.array(r["cortex_line"], dtype=np.float64)
        raters.append(RaterAnnotation(landmarks, cortex, r.get("rater")))
    sp_point = data.get("schoettle_point")
    return {
        "id": data["id"],
        "image": data.get("image"),
        "spacing_mm": None if spacing is None else check_spacing(spacing),
        "side": data.get("side"),
        "raters": raters,
        "schoettle_point": None if sp_point is None else np.array(sp_point, dtype=np.float64),
        "meta": data.get("meta") or {},
    }


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` of :func:`load_json`: JSON lets a key repeat and Python keeps the
    last value silently; two ``pixel_spacing_mm`` or two ``p_blum`` are ambiguous, so refuse."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_short(key)} in one object")
        out[key] = value
    return out


def load_json(path: str | Path, max_bytes: int = MAX_JSON_BYTES, what: str = "an annotation"
              ) -> Any:
    """Parse a JSON file; any problem (unreadable, not UTF-8, malformed, larger than
    ``max_bytes``: not ``what``, nested too deeply, a key repeated in one object) raises
    AnnotationError naming the file, never a RecursionError. A UTF-8 byte-order mark (Windows
    editors write one) is allowed."""
    path = Path(path)
    try:
        if not path.is_file():
            raise AnnotationError(f"{path}: not a regular file")
        if path.stat().st_size > max_bytes:
            raise AnnotationError(f"{path}: larger than {max_bytes / 1e6:g} MB: not {what}")
        return json.loads(path.read_text(encoding="utf-8-sig"),
                          object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise AnnotationError(f"{path}: cannot read JSON: nested too deeply") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
        if isinstance(err, AnnotationError):
            raise
        if "integer string conversion" in str(err):  # Python's own 4300-digit limit
            raise AnnotationError(f"{path}: cannot read JSON: it holds an integer of more than "
                                  "4300 digits, not a coordinate") from None
        raise AnnotationError(f"{path}: cannot read JSON: {err}") from None


def read_annotation(
    path: str | Path, sample_id: str | None = None, image_name: str | None = None,
    shape: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Read and check ``annotations/<id>.json`` (against its id, image name and (H, W) when
    given); errors name the file."""
    return parse_annotation(load_json(path), str(Path(path)), sample_id, image_name, shape)


def _pt(p: np.ndarray) -> list[float]:
    return [float(p[0]), float(p[1])]


def annotation_dict(
    ann_id: str,
    image_name: str,
    raters: list[RaterAnnotation],
    spacing_mm: tuple[float, float] | None = None,
    side: str | None = None,
    schoettle_point: np.ndarray | None = None,
    meta: dict | None = None,
) -> dict[str, Any]:
    """Build a schema-v1 dict (the inverse of ``parse_annotation``)."""
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "id": ann_id,
        "image": image_name,
        "pixel_spacing_mm": None if spacing_mm is None else [float(s) for s in spacing_mm],
        "side": side,
        "raters": [
            {
                "rater": r.rater,
                "landmarks": {n: _pt(r.landmarks[i]) for i, n in enumerate(LANDMARKS)},
                "cortex_line": [_pt(p) for p in r.cortex_points],
            }
            for r in raters
        ],
        "schoettle_point": None if schoettle_point is None else _pt(schoettle_point),
        "meta": meta or {},
    }
    check = check_annotation(out)
    if check.errors:
        raise AnnotationError(f"{ann_id}: refusing to write an invalid annotation: "
                              f"{check.errors[0]}")
    return out


def write_annotation(path: str | Path, data: dict[str, Any]) -> None:
    """Write an annotation dict as pretty JSON."""
    replace_link(Path(path)).write_text(json.dumps(data, indent=2) + "\n")
