"""The pixel-count limit on input images, without OpenCV (so it can be set before cv2 loads).

``max_pixels`` is the limit every reader checks against the header; ``OPENCV_DECODE_CAP`` is
the name of OpenCV's own cap on a decode (``OPENCV_IO_MAX_IMAGE_PIXELS``, read once when cv2 is
first imported), set to the same limit by ``datamodules/__init__.py``: a decoder that the header
check cannot see into (a WebP or BMP named .tif, a JPEG whose size hides behind fill bytes)
then fails instead of allocating GBs.
"""

from __future__ import annotations

import os
import sys

DEFAULT_MAX_PIXELS = 40_000_000  # override with the environment variable KNEEPLAN_MAX_PIXELS
MIN_SIDE_PX = 32  # the smallest image side planned, validated or trained on
OPENCV_DECODE_CAP = "OPENCV_IO_MAX_IMAGE_PIXELS"


def max_pixels() -> int:
    """The pixel-count limit: ``KNEEPLAN_MAX_PIXELS`` if set (a positive integer), else 40 MP
    (planning one image stays under 2 GB up to about that size)."""
    raw = os.environ.get("KNEEPLAN_MAX_PIXELS", "").strip()
    try:
        value = int(float(raw)) if raw else DEFAULT_MAX_PIXELS
    except (ValueError, OverflowError):
        value = DEFAULT_MAX_PIXELS
    return value if value > 0 else DEFAULT_MAX_PIXELS


def env_problem() -> str | None:
    """One line on a ``KNEEPLAN_MAX_PIXELS`` that is set but not a positive whole number (each
    command checks it at start: an "inf" failed every image, blaming the image), else None."""
    raw = os.environ.get("KNEEPLAN_MAX_PIXELS", "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
        ok = value.is_integer() and 0 < value < 1e15
    except (ValueError, OverflowError):
        ok = False
    if ok:
        return None
    return (f"KNEEPLAN_MAX_PIXELS={raw[:40]!r}: expected a positive whole number of pixels "
            "(e.g. 80000000); unset it for the default of 40 megapixels")


_CAP = {"active": False}


def cap_opencv_decodes() -> None:
    """Set OpenCV's decode cap to ``max_pixels`` unless the user set it, and record whether it
    can still take effect (not when cv2 was imported first, e.g. by a user's script)."""
    preset = OPENCV_DECODE_CAP in os.environ
    os.environ.setdefault(OPENCV_DECODE_CAP, str(max_pixels()))
    _CAP["active"] = preset or "cv2" not in sys.modules


def opencv_cap_active() -> bool:
    """Whether OpenCV refuses decodes over the pixel limit in this process."""
    return _CAP["active"]
