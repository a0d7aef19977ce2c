"""kneeplan planning."""

import datamodules  # noqa: F401 (before anything imports cv2 or albumentations: it sets
# NO_ALBUMENTATIONS_UPDATE, so no run touches the network, and OpenCV's decode cap)
