"""The one palette of every picture (plan overlay, validation images, phantom sheet, curves).

Colours are RGB ``(r, g, b)`` uint8 tuples keyed by the names of ``datamodules.sample``; OpenCV
code drawing on BGR images reverses them (``colour[::-1]``). Bone colours stay distinct from
each other, from gray (the radiograph) and from the landmark colours.
"""

from __future__ import annotations

BONE_RGB: dict[str, tuple[int, int, int]] = {
    "femur": (255, 210, 0),
    "patella": (255, 80, 255),
    "tibia": (0, 200, 255),
    "fibula": (120, 255, 120),
}
LANDMARK_RGB: dict[str, tuple[int, int, int]] = {"p_blum": (0, 255, 255), "p_tmc": (255, 255, 255)}
CORTEX_RGB = (255, 40, 40)  # the posterior cortex line (LM1) and its ROI
SCHOETTLE_RGB = (0, 255, 0)  # the Schoettle point and its reference circle
# matplotlib colour names of the tasks (GradNorm weight curves)
TASK_COLOURS: dict[str, str] = {"seg": "tab:blue", "lm": "tab:red", "roi": "tab:green"}
