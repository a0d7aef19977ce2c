"""``condylar_offset_mm``: how far the posterior condyle bulges behind the posterior cortex line
(real lateral radiographs: 25 +- 2 mm; default 7-30 mm, the first generator's 7-11 mm unchanged).
Beyond ~12 mm the outline joins the condyle near its top (a dome), not along a flat shelf."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.phantoms import PhantomConfig, generate_phantom
from planning.ood import condyle_bulge_px, cortex_recess_px, femur_shape


def truth_bulge_and_recess(seed: int, cfg: PhantomConfig) -> tuple[float, float]:
    """(how far the true femur reaches behind its true cortex line, how far its hindmost bone
    near p_tmc lies in front of that line), in mm; the line fitted (numpy SVD) to the cortex
    points."""
    s = generate_phantom(seed, cfg)
    femur = s.masks[0].astype(bool)
    pts = np.asarray(s.cortex_points, float)
    centre = pts.mean(axis=0)
    direction = np.linalg.svd(pts - centre)[2][0]
    normal = np.array([-direction[1], direction[0]])
    ys, xs = np.nonzero(femur)
    side = 1 if ((np.column_stack([xs, ys]) - centre) @ normal).mean() > 0 else -1
    mm = float(np.mean(s.spacing_mm))
    bulge = condyle_bulge_px(femur, centre, normal, side) * mm
    recess = cortex_recess_px(femur, centre, direction, side, s.landmarks[1],
                              femur_shape(femur).proximal_dir, (5 / mm, 20 / mm), 1 / mm) * mm
    return bulge, recess


@pytest.mark.parametrize("offset", [(7.0, 11.0), (24.0, 26.0)])
def test_the_condyle_bulges_as_far_as_asked(offset):
    """The truth masks reach behind the cortex line by the offset times the knee's scale
    (0.75-1.2: adolescents to large adults), and the bone reaches the line near p_tmc (a dome,
    no shelf in front of it)."""
    cfg = PhantomConfig(min_side=300, max_side=400, condylar_offset_mm=offset,
                        rotation_deg=(0.0, 0.0))
    for seed in range(6):
        bulge, recess = truth_bulge_and_recess(8100 + seed, cfg)
        assert 0.7 * offset[0] <= bulge <= 1.25 * offset[1] + 1.0, (seed, bulge)
        assert recess < 1.5, (seed, recess)


@pytest.mark.parametrize("bad", [[-1.0, 5.0], [20.0, 60.0], [12.0, 8.0]])
def test_an_impossible_offset_is_refused(bad):
    with pytest.raises(ValueError, match="condylar_offset_mm"):
        PhantomConfig().with_overrides({"condylar_offset_mm": bad})
