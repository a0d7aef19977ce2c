"""kneeplan sweeps."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no run may touch the network
