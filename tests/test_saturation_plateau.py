"""Metal that is not the brightest thing in the image (red-team round 8): a 10 px lead marker or
burnt-in text at full white put the "saturated" level (top 2 % of the pixels' range) above a
uniform metal block at 0.85-0.93 over the condyles, and plans 10-23 mm off went unflagged. A
point's disc now also counts a FLAT plateau in the top of the range of the image's regions
(``planning.ood.saturation_levels``); textured, noisy bone at that level does not count."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from test_ood_round5 import SPACING, _image, build, knee_masks

from planning.ood import point_saturation, saturation_levels
from planning.review import ReviewContext, review


def _with_marker(img: np.ndarray) -> np.ndarray:
    img = img.copy()
    img[4:9, 4:9] = 1.0  # a lead marker at full white in the corner (2 % of the side, as 20 px
    # of a 1000 px radiograph)
    text = np.zeros(img.shape, np.uint8)
    cv2.putText(text, "L", (220, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1, 1)  # burnt-in text
    img[text > 0] = 1.0
    return img


def _dim_metal(level: float = 0.9, noise: float = 0.0):
    """(plan, context, image): a uniform disc of ``level`` (6 mm radius) over the Schoettle
    point, a marker and text at full white; ``noise`` added to the disc only."""
    m = knee_masks()
    plan, ctx = build(m)
    img = _with_marker(_image(m))
    s = plan.schoettle
    disc = np.zeros(img.shape, np.uint8)
    cv2.circle(disc, (int(round(s[0])), int(round(s[1]))), int(6 / SPACING[0]), 1, -1)
    rng = np.random.default_rng(1)
    img = np.where(disc > 0, level + rng.normal(0, noise, img.shape), img).astype(np.float32)
    return plan, ctx, img


def test_dim_metal_under_a_brighter_marker_is_flagged():
    plan, ctx, img = _dim_metal()
    got = [r for r in review(plan, ReviewContext(masks=ctx.masks, image=img))
           if r.code == "saturated"]
    assert got and "not visible" in got[0], got
    # the pixel range alone (the rule before round 8) does not see it: the marker sets the top
    lv = saturation_levels(img)
    clip_only = dataclasses.replace(lv, plateau=np.inf)
    assert point_saturation(img, plan.schoettle, 6.0, clip_only) == 0.0
    assert point_saturation(img, plan.schoettle, 6.0, lv) > 0.9


def test_the_same_metal_at_full_white_is_flagged_as_before():
    plan, ctx, img = _dim_metal(level=1.0)
    assert "saturated" in {r.code for r in review(plan, ReviewContext(masks=ctx.masks, image=img))}


def test_textured_bright_bone_at_the_regions_top_is_not_saturated():
    """The densest bone overlap is the regions' top in many images without metal (Blumensaat's
    line, the patella on the condyles); it is noisy and textured, not flat: not saturated."""
    plan, ctx, img = _dim_metal(level=0.9, noise=0.03)
    img = np.clip(img, 0, 1)
    assert review(plan, ReviewContext(masks=ctx.masks, image=img)) == []
    assert point_saturation(img, plan.schoettle, 6.0) < 0.3


def test_a_small_flat_white_marker_near_a_point_is_not_metal_over_it():
    """The marker itself is flat and at the top, but it does not cover the points' discs."""
    m = knee_masks()
    plan, ctx = build(m)
    img = _with_marker(_image(m))
    assert review(plan, ReviewContext(masks=ctx.masks, image=img)) == []


def test_flat_metal_below_brighter_textured_bone_is_flagged():
    """Round 8's remaining misses: a uniform block at 0.85 while denser, textured bone reaches
    0.95: a flat plateau counts from the top 15 % of the regions' range, not only the top 2 %."""
    plan, ctx, img = _dim_metal(level=0.85)
    rng = np.random.default_rng(2)
    img = img.copy()
    img[200:240, 20:80] = np.clip(0.95 + rng.normal(0, 0.03, (40, 60)), 0, 1)  # dense bone
    assert saturation_levels(img).plateau < 0.85
    assert "saturated" in {r.code for r in review(plan, ReviewContext(masks=ctx.masks, image=img))}
