"""A DICOM Presentation LUT Sequence (2050,0010): the last step before display, mapping the VOI
output to P-values (brighter = higher). pydicom's ``apply_presentation_lut`` indexes the LUT
without checking its length or bit depth (a short LUTData is an IndexError), and rescales by the
image's own min and max, so it is done here on the [0, 1] image the reader already has."""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_ENTRIES = 65536  # LUTDescriptor's first value (0 means 65536)


def presentation_lut(ds: Any) -> np.ndarray | str | None:
    """The sequence's LUT as (n,) float32 P-values in [0, 1], None when the file has none, or
    why it cannot be used (one phrase for a note)."""
    seq = ds.get("PresentationLUTSequence")
    if not seq:
        return None
    try:
        item = seq[0]
        nr_entries, _first, bit_depth = (int(v) for v in item.LUTDescriptor)
        elem = item["LUTData"]
        data = (np.asarray(elem.value, dtype=np.uint16) if elem.VR == "US"
                else np.frombuffer(bytes(elem.value)[:2 * MAX_ENTRIES], dtype="<u2"))
    except Exception as err:  # noqa: BLE001 - a malformed item: say so, read without it
        return f"unreadable ({type(err).__name__})"
    nr_entries = MAX_ENTRIES if nr_entries == 0 else nr_entries
    if not 2 <= nr_entries <= MAX_ENTRIES or not 1 <= bit_depth <= 16:
        return f"descriptor {nr_entries} entries of {bit_depth} bits is not valid"
    if data.size < nr_entries:
        return f"LUTData holds {data.size} of its {nr_entries} entries"
    lut = (data[:nr_entries] & ((1 << bit_depth) - 1)).astype(np.float32)
    return lut / np.float32((1 << bit_depth) - 1)


def apply_presentation_lut(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``image`` (float, [0, 1], the VOI output spread over the LUT's input range) through
    ``lut`` ((n,) from ``presentation_lut``), as float32 of the same shape."""
    idx = np.rint(np.clip(image, 0.0, 1.0) * (lut.size - 1)).astype(np.uint16)
    return np.take(lut, idx)
