"""Data: synthetic phantoms, on-disk datasets, validation, transforms, targets, DataModule."""

import os

# albumentations 2.0.8 checks PyPI for updates on import unless told not to: no run may touch
# the network, so this is set before any submodule can import it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# OpenCV reads its decode cap once, when cv2 is first imported: set it to our pixel limit now.
from datamodules.pixel_limit import cap_opencv_decodes  # noqa: E402

cap_opencv_decodes()
