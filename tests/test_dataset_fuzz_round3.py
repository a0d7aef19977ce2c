"""Round-3 attacks on a dataset folder: each case was silently accepted before its fix.

- a Schoettle point far outside the image (used as the truth of ``planning.evaluate``) was
  not checked against the image size, unlike the landmarks;
- a mask saved white everywhere with the bone drawn by its alpha channel (a common export of
  drawing tools) was read as bone everywhere, since alpha was ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from datamodules.annotations import AnnotationError
from datamodules.dataset_io import DatasetError, read_mask, read_sample, write_sample
from datamodules.validate import validate_dataset
from tests.small_datasets import annotation, small_sample


@pytest.fixture
def root(tmp_path) -> Path:
    """A valid two-image dataset."""
    for i in range(2):
        write_sample(tmp_path / "data", small_sample(f"k{i}", seed=i, raters=1))
    return tmp_path / "data"


def _errors(root: Path, path: Path) -> list[str]:
    return [i.message for i in validate_dataset(root).errors if i.path == str(path)]


@pytest.mark.parametrize("point", [[1e6, -1e6], [50.0, 10.0], [-1.0, 0.0]])
def test_a_schoettle_point_outside_the_image_is_an_error(root, point):
    ann = root / "annotations" / "k0.json"
    ann.write_text(json.dumps(annotation("k0", schoettle_point=point)))
    assert any("schoettle_point" in m and "outside" in m for m in _errors(root, ann))
    with pytest.raises(AnnotationError, match="schoettle_point: .* lies outside"):
        read_sample(root, "k0")


def test_a_schoettle_point_inside_the_image_is_kept(root):
    ann = root / "annotations" / "k0.json"
    ann.write_text(json.dumps(annotation("k0", schoettle_point=[49.5, 39.5])))
    assert validate_dataset(root).ok
    np.testing.assert_allclose(read_sample(root, "k0").schoettle_point, [49.5, 39.5])


def test_a_mask_drawn_by_its_alpha_channel_is_refused(root):
    path = root / "masks" / "k0_femur.png"
    gray = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    white = np.full_like(gray, 255)
    cv2.imwrite(str(path), np.dstack([white, white, white, gray]))  # bone only in the alpha
    assert any("alpha" in m for m in _errors(root, path))
    with pytest.raises(DatasetError, match="alpha"):
        read_sample(root, "k0")


@pytest.mark.parametrize("alpha", ["opaque", "same"])
def test_a_gray_mask_with_an_opaque_or_equal_alpha_still_reads(root, alpha):
    path = root / "masks" / "k0_femur.png"
    gray = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    a = np.full_like(gray, 255) if alpha == "opaque" else gray
    cv2.imwrite(str(path), np.dstack([gray, gray, gray, a]))
    assert validate_dataset(root).ok
    np.testing.assert_array_equal(read_mask(path, gray.shape), (gray > 0).astype(np.uint8))
