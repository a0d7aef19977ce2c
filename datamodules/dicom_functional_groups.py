"""Enhanced DICOM settings kept in functional groups, brought to where the reader looks.

An Enhanced (multi-frame IOD style) object may hold its rescale (Pixel Value Transformation),
its window (Frame VOI LUT) and its pixel spacing (Pixel Measures) only in the Shared or the
Per-frame Functional Groups Sequence. pydicom's LUT functions and our spacing reader look at the
top level only, so such an image was read inverted or unscaled without a word (red-team round
10). For the one frame we read, a per-frame value wins over a shared one (PS3.3 C.7.6.16) and
is copied to the top level. A top-level value that disagrees with the group's is refused for
the pixels (which one a viewer shows is unclear) and dropped as invalid for the spacing.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from datamodules.decoder_messages import printable

# functional group macro -> the attributes it carries that the reader uses
GROUP_ATTRIBUTES = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence"),
    "PixelMeasuresSequence": ("PixelSpacing",),
}
GROUP_SEQUENCES = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")


class FunctionalGroupError(ValueError):
    """The functional groups cannot be used (malformed, or disagreeing with the top level)."""


def group_elements(ds: Any) -> dict[str, Any]:
    """The first frame's ``GROUP_ATTRIBUTES`` data elements from the functional groups, the
    per-frame item's over the shared one's. Raises ``FunctionalGroupError`` when a group is not
    a sequence of datasets."""
    found: dict[str, Any] = {}
    for seq_name in GROUP_SEQUENCES:  # shared first: per-frame values overwrite them
        if seq_name not in ds:
            continue
        try:
            seq = ds[seq_name].value
            item = seq[0] if seq else None
            for macro, names in GROUP_ATTRIBUTES.items():
                inner = item.get(macro) if item is not None else None
                if not inner:
                    continue
                found.update({name: inner[0][name] for name in names if name in inner[0]})
        except Exception as err:  # noqa: BLE001 - a malformed nested item, in whatever way
            raise FunctionalGroupError(f"DICOM {seq_name} is unreadable "
                                       f"({type(err).__name__})") from err
    return found


def dicom_values(value: Any) -> list[Any]:
    """A DICOM attribute's values as a list (a pydicom MultiValue, a list or one value)."""
    from pydicom.multival import MultiValue

    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


# the reader keeps only a file's first window (image_io._first_window_only): compare that one
FIRST_VALUE_ONLY = ("WindowCenter", "WindowWidth")


def _empty(value: Any) -> bool:
    """An element present without a value (zero length): the same as absent."""
    return value is None or (isinstance(value, str | bytes) and not value.strip()) or (
        not isinstance(value, str | bytes) and not dicom_values(value))


def _same(a: Any, b: Any) -> bool:
    """Two attribute values equal as finite numbers (to 1e-6 relative) or as stripped text (a
    NaN agrees with nothing)."""
    xs, ys = dicom_values(a), dicom_values(b)
    if len(xs) != len(ys):
        return False
    for x, y in zip(xs, ys, strict=True):
        try:
            fx, fy = float(x), float(y)
        except (TypeError, ValueError):
            if str(x).strip().upper() != str(y).strip().upper():
                return False
            continue
        if not (math.isfinite(fx) and math.isfinite(fy)) or abs(fx - fy) > 1e-6 * max(
                abs(fx), abs(fy), 1.0):
            return False
    return True


def _text(value: Any) -> str:
    """A value as DICOM writes it (values joined by a backslash), at most 40 characters."""
    return printable("\\".join(str(v) for v in dicom_values(value)))[:40]


def lift_functional_groups(ds: Any, notes: list[str]) -> tuple[str, str] | None:
    """Copy the first frame's rescale, window and pixel spacing from the functional groups to
    the top level of ``ds`` (in place) and say so in ``notes``; returns ("PixelSpacing", text)
    when the group's spacing disagrees with the top level's (both then dropped: unknown), else
    None. Raises ``FunctionalGroupError`` for a rescale or window that disagrees."""
    found = group_elements(ds)
    bad_spacing = None
    lifted = []
    for name, elem in found.items():
        if name not in ds or _empty(ds[name].value):
            ds[name] = copy.deepcopy(elem)
            lifted.append(name)
            continue
        top_value, group_value = ds[name].value, elem.value
        if name in FIRST_VALUE_ONLY:
            top_value, group_value = dicom_values(top_value)[:1], dicom_values(group_value)[:1]
        if name == "VOILUTSequence" or _same(top_value, group_value):
            continue  # (a LUT is not compared: the top level's is used, as the file says twice)
        top, group = _text(ds[name].value), _text(elem.value)
        if name == "PixelSpacing":
            bad_spacing = ("PixelSpacing", f"{top} (functional groups: {group})")
            del ds[name]
            notes.append(f"DICOM PixelSpacing '{top}' disagrees with the functional groups' "
                         f"'{group}': the spacing is taken as unknown")
            continue
        raise FunctionalGroupError(f"DICOM {name} '{top}' disagrees with the functional groups' "
                                   f"'{group}' (which one a viewer applies is unclear)")
    if lifted:
        notes.append("DICOM functional groups applied (" + ", ".join(lifted) + ")")
    return bad_spacing
