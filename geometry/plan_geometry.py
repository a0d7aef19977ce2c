"""From network outputs (or ground-truth maps) to a Schoettle plan in original pixels and mm.

Steps (docs/ARCHITECTURE.md, "Planning geometry"):
1. decode p_blum and p_tmc from their heat-maps in the network frame; map to original pixels;
2. femur outline (of the largest component of femur probability >= 0.5) in the network frame,
   kept where the ROI heat-map >= ``roi_threshold``; map the points to original pixels and drop
   those within one network pixel of the image border (where the bone is cut by the image edge
   the outline follows the edge, not the cortex);
3. everything geometric is built in an isotropic "physical" frame: mm (x * col_mm, y * row_mm)
   when the spacing is known, original pixels otherwise (perpendicularity and the inscribed
   circle are not preserved by anisotropic scaling); LM1 is fitted there, LM2, LM3 and the
   Schoettle point constructed there, and points and lines are mapped back to original pixels;
4. the anterior side of LM1 is the side where the predicted femur lies (not the side of p_blum:
   a p_blum predicted a few mm behind LM1 must not flip the circle to the posterior side).

The :class:`Plan` is immutable and holds facts only; whether to trust it is decided in one place,
``planning.review.review(plan, context)``.

Example:
    >>> plan = plan_from_maps(seg, lm, roi, frame=PadResize.from_shape(900, 700, 256),
    ...                       spacing=(0.15, 0.15), decode="quadratic")
    >>> plan.schoettle, plan.radius_mm, plan.femur_side, plan.blum_offset
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from geometry.frame import PadResize
from geometry.heatmaps import HeatmapCodec, as_numpy, decode_heatmap
from geometry.lines import Line, cortex_points, fit_points, from_mm, largest_component, to_mm
from geometry.schoettle import schoettle_point

LANDMARK_NAMES = ("p_blum", "p_tmc")  # heat-map channel order (datamodules.sample.LANDMARKS)


@dataclass(frozen=True)
class Plan:
    """A Schoettle plan (immutable). Points are (x, y) in ORIGINAL pixels unless named
    ``*_network``/``*_mm``; "unit" is mm when the spacing is known, else original pixels.

    Attributes:
        landmarks: (2, 2) p_blum, p_tmc (channel order ``LANDMARK_NAMES``).
        landmarks_network: (2, 2) the same in the network frame.
        peaks: (2,) heat-map peak heights (landmark confidence).
        lm1: posterior cortex line, or None when it could not be fitted.
        lm1_support: number of outline points the LM1 fit rests on.
        lm1_points: (K, 2) the ROI-masked outline points LM1 was fitted to.
        lm1_rms: RMS orthogonal residual of the fit (unit).
        roi_peak: maximum of the ROI heat-map (line confidence).
        lm2, lm3: perpendiculars to LM1 through p_tmc and p_blum (None without LM1).
        schoettle: (2,) Schoettle point (NaN when not constructible).
        radius_mm: circle radius in mm (None without spacing).
        radius_px: circle radius in px (exact for isotropic spacing; else at the mean spacing).
        lm_separation: distance between LM2 and LM3 (unit).
        spacing: (row_mm, col_mm) or None.
        image_shape: (H, W) of the original image.
        femur_side: +1 / -1, the side of LM1's normal where the predicted femur lies (anterior);
            0 when there is no femur or no LM1.
        blum_offset: signed distance of p_blum from LM1, positive on the femur side (unit); NaN
            without LM1 or femur side. Negative: p_blum lies posterior of the cortex line.
        tmc_offset: distance of p_tmc from LM1 (unit), NaN without LM1.
    """

    landmarks: np.ndarray
    landmarks_network: np.ndarray
    peaks: np.ndarray
    lm1: Line | None
    lm1_support: int
    lm1_points: np.ndarray
    lm1_rms: float
    roi_peak: float
    lm2: Line | None
    lm3: Line | None
    schoettle: np.ndarray
    radius_mm: float | None
    radius_px: float
    lm_separation: float
    spacing: tuple[float, float] | None
    image_shape: tuple[int, int] = (0, 0)
    femur_side: int = 0
    blum_offset: float = float("nan")
    tmc_offset: float = float("nan")

    @property
    def unit(self) -> str:
        """``mm`` when the spacing is known, else ``px``."""
        return "px" if self.spacing is None else "mm"

    def landmark(self, name: str) -> np.ndarray:
        """(2,) original-pixel position of ``p_blum`` or ``p_tmc``."""
        return self.landmarks[LANDMARK_NAMES.index(name)]

    @property
    def landmarks_mm(self) -> np.ndarray | None:
        """(2, 2) landmarks in mm, None without spacing."""
        return None if self.spacing is None else to_mm(self.landmarks, self.spacing)

    @property
    def schoettle_mm(self) -> np.ndarray | None:
        """(2,) Schoettle point in mm, None without spacing."""
        return None if self.spacing is None else to_mm(self.schoettle, self.spacing)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN -> None)."""

        def clean(v: Any) -> Any:
            if isinstance(v, Line):
                return v.as_dict()
            if isinstance(v, np.ndarray):
                return clean(v.tolist())
            if isinstance(v, list | tuple):
                return [clean(x) for x in v]
            if isinstance(v, float | np.floating):
                return None if not np.isfinite(v) else float(v)
            if isinstance(v, np.integer):
                return int(v)
            return v

        lms_mm = self.landmarks_mm
        return {
            "landmarks": {n: clean(self.landmarks[i]) for i, n in enumerate(LANDMARK_NAMES)},
            "landmarks_mm": None
            if lms_mm is None
            else {n: clean(lms_mm[i]) for i, n in enumerate(LANDMARK_NAMES)},
            "landmarks_network": {
                n: clean(self.landmarks_network[i]) for i, n in enumerate(LANDMARK_NAMES)
            },
            "peaks": {n: clean(self.peaks[i]) for i, n in enumerate(LANDMARK_NAMES)},
            "lm1": clean(self.lm1),
            "lm1_support": int(self.lm1_support),
            "lm1_rms": clean(self.lm1_rms),
            "roi_peak": clean(self.roi_peak),
            "lm2": clean(self.lm2),
            "lm3": clean(self.lm3),
            "schoettle": clean(self.schoettle),
            "schoettle_mm": clean(self.schoettle_mm),
            "radius_px": clean(self.radius_px),
            "radius_mm": clean(self.radius_mm),
            "lm_separation": clean(self.lm_separation),
            "spacing": clean(self.spacing),
            "femur_side": int(self.femur_side),
            "blum_offset": clean(self.blum_offset),
            "tmc_offset": clean(self.tmc_offset),
        }


def masks_to_original(seg_prob: Any, frame: PadResize, threshold: float = 0.5) -> np.ndarray:
    """(C, S, S) network-frame probabilities -> (C, orig_h, orig_w) boolean masks.

    The probabilities are resized back with bilinear interpolation (``PadResize.invert_image``)
    and thresholded afterwards, so the outline is interpolated rather than blocky.
    """
    seg = as_numpy(seg_prob)
    if seg.ndim != 3 or seg.shape[1:] != (frame.size, frame.size):
        raise ValueError(
            f"masks_to_original: expected (C, {frame.size}, {frame.size}), got {seg.shape}"
        )
    # thresholded channel by channel: a 36 MP image would otherwise stack 4 float copies (576 MB)
    return np.stack([frame.invert_image(ch.astype(np.float32)) >= threshold for ch in seg])


def _check_spacing(spacing: Any) -> tuple[float, float] | None:
    if spacing is None:
        return None
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.size != 2 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        return None  # NaN spacing (the batch convention for unknown) -> unknown
    return float(sp[0]), float(sp[1])


def femur_side(seg_femur: np.ndarray, line: Line, to_phys) -> int:
    """+1 / -1: the side of ``line``'s normal where the largest femur component lies (the mean
    signed distance of its pixels, in the physical frame); 0 without femur pixels.

    ``to_phys`` maps (N, 2) network-frame pixel centres to the frame ``line`` lives in.
    """
    femur = largest_component(np.asarray(seg_femur) >= 0.5)
    ys, xs = np.nonzero(femur)
    if xs.size == 0:
        return 0
    d = line.signed_distance(to_phys(np.column_stack([xs, ys]).astype(np.float64)))
    return int(np.sign(np.mean(d)))


def plan_from_maps(
    seg_prob: Any,
    lm_heatmaps: Any,
    roi: Any,
    frame: PadResize | None = None,
    spacing: tuple[float, float] | None = None,
    decode: str = "argmax",
    line_fit: str = "lstsq",
    roi_threshold: float = 0.5,
    robust_band_px: float = 1.0,
    subpixel_outline: bool = True,
    codec: HeatmapCodec | None = None,
) -> Plan:
    """Build the plan from (S, S) network-frame maps (predictions or ground truth).

    Args:
        seg_prob: (4, S, S) bone probabilities in [0, 1]; channel 0 is the femur.
        lm_heatmaps: (2, S, S) heat-maps of p_blum, p_tmc.
        roi: (1, S, S) or (S, S) cortex-line ROI heat-map.
        frame: network <-> original frame; None: the maps are in original pixels.
        spacing: (row_mm, col_mm) of the original image; None or NaN: unknown.
        decode: heat-map decoding (``argmax`` as in the paper, ``quadratic``, ``soft_argmax``).
        line_fit: ``lstsq`` (paper) or ``robust``.
        roi_threshold: outline points with ROI below this are dropped (paper: 0.5).
        robust_band_px: RANSAC inlier band of the robust fit, in network pixels.
        subpixel_outline: outline points on the 0.5 iso-line (True) or at boundary pixel
            centres (False; biased half a network pixel into the bone), see
            :func:`geometry.lines.femur_outline`.
        codec: the model's heat-map codec (None: heat-maps in the network frame, default
            soft-argmax window).
    """
    seg, lm, roi_map = as_numpy(seg_prob), as_numpy(lm_heatmaps), as_numpy(roi)
    roi_map = roi_map[0] if roi_map.ndim == 3 else roi_map
    if seg.ndim != 3 or lm.ndim != 3 or lm.shape[0] != 2 or roi_map.ndim != 2:
        raise ValueError(
            f"plan_from_maps: expected seg (C, S, S), lm (2, S, S), roi (S, S); got "
            f"{seg.shape}, {lm.shape}, {roi_map.shape}"
        )
    if not (seg.shape[1:] == lm.shape[1:] == roi_map.shape):
        raise ValueError(
            f"plan_from_maps: map sizes differ: {seg.shape}, {lm.shape}, {roi_map.shape}"
        )
    sp = _check_spacing(spacing)
    to_orig = (lambda p: np.asarray(p, np.float64)) if frame is None else frame.to_original
    to_phys = (lambda p: np.asarray(p, np.float64)) if sp is None else (lambda p: to_mm(p, sp))
    to_px = (lambda p: np.asarray(p, np.float64)) if sp is None else (lambda p: from_mm(p, sp))
    scale = 1.0 if frame is None else frame.scale
    mean_sp = 1.0 if sp is None else float(np.mean(sp))

    lm_net, peaks = codec.decode(lm, decode) if codec else decode_heatmap(lm, method=decode)
    lms = to_orig(lm_net)
    h, w = roi_map.shape if frame is None else (frame.orig_h, frame.orig_w)
    pts = to_orig(cortex_points(seg[0], roi_map, roi_threshold, subpixel_outline))
    # Where the femur is cut by the image edge, the outline follows the edge, not the cortex:
    # drop points within one network pixel of the original image's border.
    margin = 1.0 / scale
    keep = (pts[:, 0] > -0.5 + margin) & (pts[:, 0] < w - 0.5 - margin)
    keep &= (pts[:, 1] > -0.5 + margin) & (pts[:, 1] < h - 0.5 - margin)
    pts = pts[keep]
    band = robust_band_px / scale * mean_sp
    fit = fit_points(to_phys(pts), method=line_fit, threshold=band)
    nan2 = np.full(2, np.nan)
    common = dict(
        landmarks=lms, landmarks_network=lm_net, peaks=peaks, lm1_support=fit.n_support,
        lm1_points=pts, lm1_rms=fit.rms, roi_peak=float(roi_map.max()), spacing=sp,
        image_shape=(int(h), int(w)),
    )  # fmt: skip
    if fit.line is None:
        return Plan(
            lm1=None, lm2=None, lm3=None, schoettle=nan2, radius_mm=None,
            radius_px=float("nan"), lm_separation=float("nan"), **common,
        )  # fmt: skip

    p_blum, p_tmc = to_phys(lms)
    side = femur_side(seg[0], fit.line, lambda q: to_phys(to_orig(q)))
    res = schoettle_point(fit.line, p_tmc, p_blum, anterior=side or None)
    return Plan(
        lm1=fit.line.map(to_px), lm2=res.lm2.map(to_px), lm3=res.lm3.map(to_px),
        schoettle=to_px(res.point), radius_mm=None if sp is None else res.radius,
        radius_px=res.radius / mean_sp, lm_separation=2.0 * res.radius, femur_side=side,
        blum_offset=side * res.blum_distance if side else float("nan"),
        tmc_offset=abs(float(fit.line.signed_distance(p_tmc))), **common,
    )  # fmt: skip
