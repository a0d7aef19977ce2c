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
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.sample import LANDMARKS, RaterAnnotation

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = (1,)


class AnnotationError(ValueError):
    """An annotation file that cannot be used; the message names the file and the field."""


def _point(value: Any, where: str) -> np.ndarray:
    """Parse one [x, y] pair, raising AnnotationError on anything else (NaN included)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise AnnotationError(f"{where}: not a pair of numbers: {value!r}") from err
    if arr.shape != (2,):
        raise AnnotationError(f"{where}: expected [x, y], got {value!r}")
    if not np.all(np.isfinite(arr)):
        raise AnnotationError(f"{where}: NaN or infinite coordinate {value!r}")
    return arr


def parse_annotation(data: dict[str, Any], source: str = "<annotation>") -> dict[str, Any]:
    """Check a loaded annotation dict and return it with numpy arrays for points.

    Returns a dict with keys ``id``, ``image``, ``spacing_mm`` ((row, col) or None), ``side``,
    ``raters`` (list of RaterAnnotation), ``schoettle_point`` and ``meta``.
    Raises AnnotationError naming ``source`` and the first problem found.
    """
    if not isinstance(data, dict):
        raise AnnotationError(f"{source}: top level must be a JSON object")
    version = data.get("schema_version")
    if version not in SUPPORTED_VERSIONS:
        raise AnnotationError(
            f"{source}: unknown schema_version {version!r} (supported: {SUPPORTED_VERSIONS})"
        )
    ann_id = data.get("id")
    if not isinstance(ann_id, str) or not ann_id:
        raise AnnotationError(f"{source}: missing or empty 'id'")
    spacing = data.get("pixel_spacing_mm")
    if spacing is not None:
        if isinstance(spacing, int | float):
            spacing = [spacing, spacing]
        sp = _point(spacing, f"{source}: pixel_spacing_mm")
        if np.any(sp <= 0):
            raise AnnotationError(f"{source}: pixel_spacing_mm must be positive, got {spacing!r}")
        spacing = (float(sp[0]), float(sp[1]))
    raters_raw = data.get("raters")
    if not isinstance(raters_raw, list) or not raters_raw:
        raise AnnotationError(f"{source}: 'raters' must be a non-empty list")
    raters = []
    for i, r in enumerate(raters_raw):
        where = f"{source}: raters[{i}]"
        if not isinstance(r, dict):
            raise AnnotationError(f"{where}: must be an object")
        lms = r.get("landmarks")
        if not isinstance(lms, dict):
            raise AnnotationError(f"{where}: missing 'landmarks'")
        missing = [n for n in LANDMARKS if n not in lms]
        if missing:
            raise AnnotationError(f"{where}: missing landmark(s) {missing}")
        landmarks = np.stack([_point(lms[n], f"{where}.landmarks.{n}") for n in LANDMARKS])
        line = r.get("cortex_line")
        if not isinstance(line, list) or len(line) < 2:
            raise AnnotationError(f"{where}: 'cortex_line' needs at least two points")
        cortex = np.stack([_point(p, f"{where}.cortex_line[{j}]") for j, p in enumerate(line)])
        raters.append(RaterAnnotation(landmarks, cortex, r.get("rater")))
    names = [r.rater for r in raters]
    if len(raters) > 1 and (None in names or len(set(names)) != len(names)):
        raise AnnotationError(f"{source}: several raters need distinct 'rater' ids, got {names}")
    sp_point = data.get("schoettle_point")
    schoettle = None if sp_point is None else _point(sp_point, f"{source}: schoettle_point")
    return {
        "id": ann_id,
        "image": data.get("image"),
        "spacing_mm": spacing,
        "side": data.get("side"),
        "raters": raters,
        "schoettle_point": schoettle,
        "meta": data.get("meta") or {},
    }


def read_annotation(path: str | Path) -> dict[str, Any]:
    """Read and check ``annotations/<id>.json``; errors name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AnnotationError(f"{path}: cannot read JSON: {err}") from err
    return parse_annotation(data, str(path))


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
    for r in out["raters"]:
        for p in [*r["landmarks"].values(), *r["cortex_line"]]:
            if not all(math.isfinite(v) for v in p):
                raise AnnotationError(f"{ann_id}: refusing to write a non-finite coordinate")
    return out


def write_annotation(path: str | Path, data: dict[str, Any]) -> None:
    """Write an annotation dict as pretty JSON."""
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
