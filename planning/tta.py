"""Uncertainty from the model itself: test-time augmentation (TTA) and hourglass agreement.

The network-frame input is warped by K small affine maps (horizontal flip, scale, shift,
rotation; the first is the identity), every warped copy goes through the network, and each
output map is warped back into the unaugmented frame (``cv2.WARP_INVERSE_MAP``), so a model that
"knows" the anatomy answers the same wherever the knee sits. From each back-warped set of maps a
plan is built; the scatter of p_blum, p_tmc and the Schoettle point over the K plans is the
spread (covariance in original pixels). A second, free signal: the second-to-last hourglass's
landmark heat-maps (``lm_prev``) decoded beside the last one's; a large shift means the stack did
not converge on one answer.

Example:
    >>> unc = tta_uncertainty(module, image, base_maps, spacing=(0.15, 0.15), count=8)
    >>> unc.spread_px("schoettle"), unc.hourglass_shift_px
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from geometry.heatmaps import HeatmapCodec, decode_heatmap
from geometry.plan_geometry import plan_from_maps
from planning.predict import NetworkMaps, as_predictor, check_maps, network_input

POINT_NAMES = ("p_blum", "p_tmc", "schoettle")


@dataclass(frozen=True)
class TTAConfig:
    """How many augmentations and how strong (ranges are uniform, seeded)."""

    count: int = 8
    flip: bool = True
    max_scale: float = 0.08  # +-8 % zoom
    max_shift: float = 0.04  # +-4 % of the network side
    max_rotate_deg: float = 8.0
    seed: int = 0


@dataclass(frozen=True)
class Uncertainty:
    """Spread of the plan's points over TTA, in ORIGINAL pixels.

    Attributes:
        points: (K, 3, 2) p_blum, p_tmc, Schoettle point of each augmented plan (NaN: none).
        covariance: (3, 2, 2) covariance of each point over the finite plans (px^2).
        failures: fraction of augmented plans without a Schoettle point.
        hourglass_shift_px: (2,) distance between the last two hourglasses' landmarks, or None.
        look_shift_px: (2,) distance between the landmarks of the whole image and of the
            second look (``planning.zoom``), or None without one.
        metal_shift_px: (3,) distance p_blum, p_tmc and the Schoettle point move when the metal
            near them is painted out (``planning.metal_out``; NaN: lost), or None when no metal
            was near them.
        blank_shift_px: (3,) the same when the blank (shuttered) regions next to the distal femur
            are shown as soft tissue (``planning.blank_out``), or None when there were none.
        blank_cut_mm: the longest straight edge of those regions that cuts the femur (mm; 0:
            none, a blank that only follows the bone's outline), or None without such regions.
    """

    points: np.ndarray
    covariance: np.ndarray
    failures: float
    hourglass_shift_px: np.ndarray | None = None
    look_shift_px: np.ndarray | None = None
    metal_shift_px: np.ndarray | None = None
    blank_shift_px: np.ndarray | None = None
    blank_cut_mm: float | None = None

    def covariance_mm(self, spacing: tuple[float, float] | float) -> np.ndarray:
        """(3, 2, 2) covariances in mm: spacing (row_mm, col_mm), or one mm/px value."""
        sp = (spacing, spacing) if np.isscalar(spacing) else spacing
        d = np.diag([float(sp[1]), float(sp[0])])  # x scales by col_mm, y by row_mm
        return d @ self.covariance @ d

    def spread(self, name: str, spacing: tuple[float, float] | float = 1.0) -> float:
        """1-sigma major semi-axis of ``name``'s scatter (px, or mm with ``spacing``)."""
        cov = self.covariance_mm(spacing)[POINT_NAMES.index(name)]
        if not np.all(np.isfinite(cov)):
            return float("inf")
        return float(np.sqrt(max(np.linalg.eigvalsh(cov).max(), 0.0)))


def _affines(cfg: TTAConfig, size: int) -> list[np.ndarray]:
    """K (2, 3) forward warps of the network frame; the first is the identity."""
    rng = np.random.default_rng(cfg.seed)
    c = (size - 1) / 2.0
    out = [np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])]
    for k in range(1, cfg.count):
        s = 1.0 + rng.uniform(-cfg.max_scale, cfg.max_scale)
        a = rng.uniform(-cfg.max_rotate_deg, cfg.max_rotate_deg)
        t = rng.uniform(-cfg.max_shift, cfg.max_shift, 2) * size
        m = cv2.getRotationMatrix2D((c, c), a, s)
        m[:, 2] += t
        if cfg.flip and k % 2 == 1:  # x -> size-1-x first, then the similarity
            m = m @ np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        out.append(m)
    return out


def _warp(maps: np.ndarray, m: np.ndarray, inverse: bool) -> np.ndarray:
    """Warp (C, S, S) maps by ``m`` (forward), or pull them back through it (``inverse``)."""
    size = maps.shape[-1]
    flags = cv2.INTER_LINEAR | (cv2.WARP_INVERSE_MAP if inverse else 0)
    chans = [cv2.warpAffine(ch.astype(np.float32), m, (size, size), flags=flags,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
             for ch in maps]  # fmt: skip
    return np.stack(chans)


def plan_points(plan: Any) -> np.ndarray:
    """(3, 2) p_blum, p_tmc and the Schoettle point of ``plan`` (``POINT_NAMES`` order)."""
    return np.stack([plan.landmarks[0], plan.landmarks[1], plan.schoettle])


def _landmarks(maps: NetworkMaps, decode: str, codec: HeatmapCodec | None,
               prev: bool = False) -> np.ndarray:
    """(2, 2) decoded landmarks of ``maps`` (``prev``: of ``lm_prev``) in original pixels."""
    lm = maps.lm_prev if prev else maps.lm
    pts = codec.decode(lm, decode)[0] if codec is not None else decode_heatmap(lm, method=decode)[0]
    return maps.frame.to_original(pts)


def hourglass_shift(
    maps: NetworkMaps, decode: str = "argmax", codec: HeatmapCodec | None = None
) -> np.ndarray | None:
    """(2,) original-pixel distance between the last two hourglasses' landmarks (None: one);
    ``codec``: the model's heat-map codec (None: maps in the network frame)."""
    if getattr(maps, "lm_prev", None) is None:
        return None
    a, b = _landmarks(maps, decode, codec), _landmarks(maps, decode, codec, prev=True)
    return np.hypot(*(a - b).T)


def look_shift(
    maps: NetworkMaps, decode: str = "argmax", codec: HeatmapCodec | None = None
) -> np.ndarray | None:
    """(2,) original-pixel distance between the landmarks of the whole image's pass and of the
    second look (``planning.zoom``) they come from; None without a second look."""
    first = getattr(maps, "first_look", None)
    if first is None:
        return None
    a, b = _landmarks(maps, decode, codec), _landmarks(first, decode, codec)
    return np.hypot(*(a - b).T)


def hourglass_only(
    base: NetworkMaps, decode: str = "argmax", codec: HeatmapCodec | None = None
) -> Uncertainty | None:
    """Without TTA: the hourglass and look agreements alone (None when there is neither)."""
    shift, looks = hourglass_shift(base, decode, codec), look_shift(base, decode, codec)
    if shift is None and looks is None:
        return None
    return Uncertainty(np.full((1, 3, 2), np.nan), np.full((3, 2, 2), np.nan), 0.0, shift, looks)


@dataclass(frozen=True)
class AugmentedMaps:
    """The network's answers to the augmented copies, pulled back into the unaugmented network
    frame: one dict of (C, S, S) ``seg``/``lm``/``roi`` maps per augmentation after the identity,
    and the frame that maps them to original pixels."""

    maps: list[dict[str, np.ndarray]]
    frame: Any


def augmented_maps(
    module: Any, image: np.ndarray, config: TTAConfig | None = None, batch_size: int = 4,
    frame: Any = None, net_input: np.ndarray | None = None,
) -> AugmentedMaps:
    """Run the network on ``config.count - 1`` augmented copies of ``image`` (the network half
    of ``tta_uncertainty``: it needs no pixel spacing, so it can run while the spacing is
    still being resolved); ``frame``: the unaugmented pass's (None: the centred square), and
    ``net_input`` the image it saw in that frame (None: resampled here)."""
    cfg = config or TTAConfig()
    predictor = as_predictor(module)
    size = int(predictor.image_size)
    if net_input is not None and frame is not None and np.shape(net_input) == (size, size):
        x = np.asarray(net_input, np.float32)
    else:
        x, frame = network_input(image, size, frame)
    rest = _affines(cfg, size)[1:]
    out: list[dict[str, np.ndarray]] = []
    for start in range(0, len(rest), batch_size):
        chunk = rest[start : start + batch_size]
        batch = np.stack([_warp(x[None], m, inverse=False) for m in chunk]).astype(np.float32)
        res = check_maps(predictor.predict_maps(batch), len(chunk), size)
        arrs = {k: res[k] for k in ("seg", "lm", "roi")}
        out.extend({k: _warp(arrs[k][i].reshape(-1, size, size), m, inverse=True) for k in arrs}
                   for i, m in enumerate(chunk))  # fmt: skip
    return AugmentedMaps(out, frame)


def tta_uncertainty(
    module: Any,
    image: np.ndarray,
    base: NetworkMaps,
    spacing: tuple[float, float] | None = None,
    config: TTAConfig | None = None,
    decode: str = "argmax",
    line_fit: str = "lstsq",
    batch_size: int = 4,
    augmented: AugmentedMaps | None = None,
) -> Uncertainty:
    """Spread of the plan over ``config.count`` augmentations (the identity is ``base``).

    Args:
        module: a ``planning.predict`` predictor (torch or ONNX) or a module with a torch-style
            ``predict_maps`` (wrapped by ``as_predictor``); its ``codec`` decodes the heat-maps.
        image: (H, W) original image in [0, 1].
        base: the unaugmented prediction (its plan is the reported one).
        spacing: (row_mm, col_mm) or None, for the plans' construction.
        config: augmentation settings.
        decode, line_fit: as for the reported plan.
        batch_size: augmented copies per forward pass.
        augmented: ``augmented_maps`` already run with the same config (else run here).
    """
    cfg = config or TTAConfig()
    codec = getattr(as_predictor(module), "codec", None)
    aug = augmented or augmented_maps(module, image, cfg, batch_size, frame=base.frame,
                                      net_input=getattr(base, "net_input", None))
    plans = [plan_from_maps(base.seg, base.lm, base.roi, frame=base.frame, spacing=spacing,
                            decode=decode, line_fit=line_fit, codec=codec)]  # fmt: skip
    plans += [plan_from_maps(m["seg"], m["lm"], m["roi"], frame=aug.frame, spacing=spacing,
                             decode=decode, line_fit=line_fit, codec=codec)
              for m in aug.maps]  # fmt: skip
    pts = np.stack([plan_points(p) for p in plans])
    cov = np.full((3, 2, 2), np.nan)
    for j in range(3):
        ok = np.all(np.isfinite(pts[:, j]), axis=1)
        if ok.sum() >= 2:
            cov[j] = np.cov(pts[ok, j].T)
    failures = float(np.mean(~np.all(np.isfinite(pts[:, 2]), axis=1)))
    return Uncertainty(pts, cov, failures, hourglass_shift(base, decode, codec),
                       look_shift(base, decode, codec))
