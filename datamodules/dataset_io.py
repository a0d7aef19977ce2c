"""Write (and list) samples in the on-disk dataset format: images/, masks/, annotations/.

Layout of a dataset folder ROOT:
    ROOT/images/<id>.png|.tif|.tiff|.dcm   grayscale, 8 or 16 bit (DICOM any bit depth)
    ROOT/masks/<id>_<bone>.png              one binary mask per bone in BONES (0 / nonzero)
    ROOT/annotations/<id>.json              schema of datamodules.annotations
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from datamodules.annotations import annotation_dict, write_annotation
from datamodules.sample import BONES, Sample

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".dcm")


def write_sample(root: str | Path, sample: Sample) -> Path:
    """Write one sample (16-bit PNG image, 0/255 masks, schema-v1 JSON); return the image path."""
    root = Path(root)
    for sub in ("images", "masks", "annotations"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    img = np.clip(np.asarray(sample.image, dtype=np.float64), 0.0, 1.0)
    img_path = root / "images" / f"{sample.id}.png"
    if not cv2.imwrite(str(img_path), np.round(img * 65535.0).astype(np.uint16)):
        raise OSError(f"{img_path}: OpenCV could not write the image")
    for b, bone in enumerate(BONES):
        mask_path = root / "masks" / f"{sample.id}_{bone}.png"
        mask = (np.asarray(sample.masks[b]) > 0).astype(np.uint8) * 255
        if not cv2.imwrite(str(mask_path), mask):
            raise OSError(f"{mask_path}: OpenCV could not write the mask")
    data = annotation_dict(
        sample.id,
        img_path.name,
        sample.annotations,
        spacing_mm=sample.spacing_mm,
        side=sample.meta.get("side"),
        schoettle_point=sample.schoettle_point,
        meta=sample.meta,
    )
    write_annotation(root / "annotations" / f"{sample.id}.json", data)
    return img_path
