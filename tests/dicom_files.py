"""Minimal DICOM files written with pydicom, for the tests that need one (shared helper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def cr_dataset(syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """An empty single-image CR dataset (file meta, SOP class and instance) in ``syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    return ds


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    bits: int = 12,
    photometric: str = "MONOCHROME2",
    pixel_spacing: list[float] | None = None,
    imager_spacing: list[float] | None = None,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    magnification: float | str | None = None,
) -> None:
    """A minimal single-frame CR DICOM file with the given tags (pydicom)."""
    ds = cr_dataset()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 0
    if pixel_spacing is not None:
        ds.PixelSpacing = pixel_spacing
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = imager_spacing
    if magnification is not None:
        ds.EstimatedRadiographicMagnificationFactor = magnification
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
