"""Minimal DICOM files written with pydicom, for the tests that need one (shared helper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


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
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
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
