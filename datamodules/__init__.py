"""Data: synthetic phantoms, on-disk datasets, validation, transforms, targets, DataModule."""

import os

# albumentations 2.0.8 checks PyPI for updates on import unless told not to: no run may touch
# the network, so this is set before any submodule can import it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# numpy's BLAS on one thread (read when numpy loads): our numpy products are small (the second
# look's area weights, the sphere fit), and OpenBLAS's idle threads spin beside torch's: a
# warm plan with the second look took ~40 ms longer with two BLAS threads (A/B, 2 cores).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# OpenCV reads its decode cap once, when cv2 is first imported: set it to our pixel limit now.
from datamodules.pixel_limit import cap_opencv_decodes  # noqa: E402

cap_opencv_decodes()
