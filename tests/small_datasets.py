"""Small valid datasets for the tests of bad inputs: a 40 x 50 sample and an annotation dict with
chosen fields changed."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from datamodules.sample import RaterAnnotation, Sample

H, W = 40, 50


def small_sample(sample_id: str, spacing=(0.2, 0.25), seed: int = 0, raters: int = 2) -> Sample:
    """A 40 x 50 sample: four rectangular bones, ``raters`` raters (the second 0.5 px off)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, H, W), dtype=np.uint8)
    masks[0, 5:30, 10:30] = 1
    masks[1, 10:20, 30:40] = 1
    masks[2, 25:40, 10:35] = 1
    masks[3, 28:40, 35:45] = 1
    rater = RaterAnnotation(np.array([[20.0, 12.0], [15.0, 25.5]]),
                            np.array([[12.0, 2.0], [13.0, 20.0], [14.0, 28.0]]), "r1")
    second = RaterAnnotation(rater.landmarks + 0.5, rater.cortex_points + 0.25, "r2")
    return Sample(sample_id, rng.uniform(0, 1, (H, W)).astype(np.float32), masks,
                  [rater, second][:raters], spacing, "annotation", meta={"side": "left"})


def annotation(sample_id: str = "k", **change: Any) -> dict:
    """The annotation of ``<sample_id>.png`` (one rater), with ``change`` applied: a plain key
    replaces a top-level field, ``r_<key>`` one of the rater's, ``lm_<name>`` a landmark."""
    out = {"schema_version": 1, "id": sample_id, "image": f"{sample_id}.png",
           "pixel_spacing_mm": [0.2, 0.2], "side": "left",
           "raters": [{"rater": "r1", "landmarks": {"p_blum": [20.0, 12.0], "p_tmc": [15, 25]},
                       "cortex_line": [[12, 2], [13, 20], [14, 28]]}],
           "schoettle_point": None, "meta": {}}  # fmt: skip
    out = copy.deepcopy(out)
    for key, value in change.items():
        if key.startswith("r_"):
            out["raters"][0][key[2:]] = value
        elif key.startswith("lm_"):
            out["raters"][0]["landmarks"][key[3:]] = value
        else:
            out[key] = value
    return out
