"""Red-team round 9, data side: an image whose name is legal but whose masks' names are not (an
id of 246 bytes: ``<id>_patella.png`` is 258) is one error naming the image, in the validator and
in the dataset reader (``Path.exists`` raised ENAMETOOLONG: a traceback in validate and train);
a dataset subfolder that is a file or a loop is named once; a DICOM Presentation LUT Sequence is
applied or named (an inverting one was ignored silently)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from dicom_files import write_dicom

from datamodules.dataset_io import DatasetError, id_name_problem, read_sample, write_sample
from datamodules.image_io import load_image
from datamodules.validate import validate_dataset
from tests.small_datasets import small_sample

LONG = "M" * 246  # "<LONG>.png" is 250 bytes (legal), "<LONG>_patella.png" 258


def test_id_name_problem_counts_bytes_of_the_longest_name():
    assert id_name_problem("M" * 243) is None  # "_patella.png": 255 bytes exactly
    assert "would be 256 bytes (file names hold at most 255)" in id_name_problem("M" * 244)
    assert "would be 256 bytes" in id_name_problem("é" * 122)  # 2 bytes each in UTF-8


def test_an_id_too_long_for_its_masks_is_one_error(tmp_path):
    root = tmp_path / "data"
    write_sample(root, small_sample("ok"))
    write_sample(root, small_sample("ok2", seed=1))
    long_image = root / "images" / f"{LONG}.png"
    shutil.copy(root / "images" / "ok.png", long_image)
    report = validate_dataset(root)
    errors = [(str(e.path), e.message) for e in report.errors]
    assert errors == [(str(long_image), f"its id is too long for its files: {'M' * 24!r}... "
                       "would be 258 bytes (file names hold at most 255): shorten the image name")]
    with pytest.raises(DatasetError, match=r"MMMM\.png: its id is too long for its files"):
        read_sample(root, LONG)
    assert read_sample(root, "ok").id == "ok"


def test_a_dataset_subfolder_that_is_a_file_or_a_loop_is_named_once(tmp_path):
    """``masks`` a file and ``annotations`` a link to itself were both "missing folder", then
    one "missing" line per mask and annotation of every image."""
    root = tmp_path / "data"
    write_sample(root, small_sample("ok"))
    write_sample(root, small_sample("ok2", seed=1))
    shutil.rmtree(root / "masks")
    (root / "masks").write_text("not a folder")
    shutil.rmtree(root / "annotations")
    (root / "annotations").symlink_to(root / "annotations")
    errors = [(e.path, e.message) for e in validate_dataset(root).errors]
    assert errors == [(str(root / "masks"), "is a file, not a folder"),
                      (str(root / "annotations"),
                       "symlink loop (a link that leads back to itself)")]
    shutil.rmtree(root / "images")
    assert [e.message for e in validate_dataset(root).errors][0] == "missing folder"


def _with_presentation_lut(path, lut: np.ndarray, bits: int = 12,
                           photometric: str = "MONOCHROME2") -> np.ndarray:
    """A 12-bit ramp DICOM with a Presentation LUT Sequence of ``lut`` (uint16 entries)."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    px = np.linspace(0, 4095, 8 * 16).round().astype(np.uint16).reshape(8, 16)
    write_dicom(path, px, bits=12, photometric=photometric)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [len(lut) % 65536, 0, bits]
    item.LUTData = lut.astype("<u2").tobytes()  # OW (the US form: the short case below)
    ds.PresentationLUTSequence = Sequence([item])
    ds.save_as(path, enforce_file_format=True)
    return px


def test_a_dicom_presentation_lut_sequence_is_applied_or_named(tmp_path):
    """A decreasing Presentation LUT Sequence (a viewer shows the image inverted) was ignored
    silently: it is applied to MONOCHROME2 (against numpy's own interpolation of the LUT), and
    a short or invalid one, or one on MONOCHROME1, is named in a note and not applied."""
    lut = np.linspace(4095, 0, 4096).round().astype(np.uint16)
    px = _with_presentation_lut(tmp_path / "inv.dcm", lut)
    loaded = load_image(tmp_path / "inv.dcm")
    np.testing.assert_allclose(loaded.image, 1 - px / 4095, atol=1e-6)
    assert "DICOM Presentation LUT Sequence applied (4096 entries) (decreasing: the image is " \
           "shown inverted)" in loaded.notes
    gamma = (4095 * np.linspace(0, 1, 256) ** 2).round().astype(np.uint16)  # 256 entries
    px = _with_presentation_lut(tmp_path / "g.dcm", gamma)
    want = gamma[np.rint(px / 4095 * 255).astype(int)] / 4095
    np.testing.assert_allclose(load_image(tmp_path / "g.dcm").image, want, atol=1e-6)
    for name, table, bits, photometric, why in [
        ("short", lut[:100], 12, "MONOCHROME2", None),
        ("bits", lut, 0, "MONOCHROME2", "descriptor 4096 entries of 0 bits is not valid"),
        ("m1", lut, 12, "MONOCHROME1", "on a MONOCHROME1 image"),
    ]:
        px = _with_presentation_lut(tmp_path / f"{name}.dcm", table, bits, photometric)
        if name == "short":  # the descriptor says 100 entries: cut the data to 50
            import pydicom

            ds = pydicom.dcmread(tmp_path / "short.dcm")
            item = ds.PresentationLUTSequence[0]
            del item.LUTData
            item.add_new(0x00283006, "US", [int(v) for v in table[:50]])
            ds.save_as(tmp_path / "short.dcm", enforce_file_format=True)
            why = "LUTData holds 50 of its 100 entries"
        loaded = load_image(tmp_path / f"{name}.dcm")
        assert f"DICOM Presentation LUT Sequence ignored ({why})" in loaded.notes, loaded.notes
        plain = px / 4095 if photometric == "MONOCHROME2" else 1 - px / 4095
        np.testing.assert_allclose(loaded.image, plain, atol=1e-6)
