"""Configuration of the phantom generator: ranges (lo, hi) sampled uniformly, and probabilities.

Every randomisation range lives here (and in the YAML files under ``configs/phantoms/``, which
override these defaults field by field); ``FACTORS`` names groups of fields that switch one
factor of variation off, for leave-one-factor-out experiments.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from datamodules.real_numbers import finite_real

Range = tuple[float, float]


@dataclass
class PhantomConfig:
    """Ranges and probabilities for ``generate_phantom``; the defaults are the default mixture.

    Args:
        styles: relative weights of the rendering styles ("physics": Beer-Lambert image formation
            and a randomised CR/DR processing chain; "classic": the first generator's painted look).
        min_side, max_side: allowed image side lengths in px (images are never square).
        spacing_mm: preferred pixel spacing range; when the side limits make it impossible to fit
            the field of view (tiny test images), spacing is scaled up so the anatomy still fits.
        fov_height_mm, visible_shaft_mm: field of view height and femoral shaft above p_tmc.
        aspect, p_landscape: width / height of portrait images; probability of landscape.
        knee_shift: horizontal placement jitter (fraction of the width; large = crops bone).
        flexion_deg, rotation_deg, scale: knee flexion, in-plane rotation, global bone scale.
        p_left: probability of a left knee (mirrored anatomy).
        condylar_offset_mm: how far the posterior condyle bulges behind the posterior cortex
            line (real radiographs: 25 +- 2 mm; beyond ~12 mm the condyle's top is a dome).
        lateral_offset_x_mm / _y_mm: offset of the second condyle (imperfect laterals).
        p_double_blumensaat: probability of rendering the second condyle's roof line.
        patella_height_deg: patella position on the trochlea (low = baja, high = alta).
        p_dysplasia: trochlear dysplasia (groove line crossing the anterior condyle contour).
        p_open_physes: open growth plates (adolescents; bone scale is then drawn from
            ``adolescent_scale``).
        p_osteophytes: osteophytes at the joint margins; soft_tissue_scale: thin to obese.
        p_contralateral: the other knee partly in the background.
        render_grid_px: longest side of the render grid (the network sees 128-256 px; finer
            rendering would be invisible to it); the image is upsampled, detector grain added.
        mu_*: attenuation per mm at the effective energy (physics style).
        beam_hardening, heel, scatter_fraction, scatter_sigma_mm, mtf_sigma_mm, photons,
        electronic_noise: image formation (physics style).
        window_lo_q / window_hi_q: window quantiles of the log image; usm_gain_*: multi-scale
        unsharp masking gains (fine, medium, coarse; a negative coarse gain compresses the
            latitude, as CR systems do) with usm_sigma_* in mm; lut_slope,
        lut_centre, lut_mix: S-shaped LUT; gamma; bits: output bit depths to choose from;
        p_monochrome1: probability of an inverted (MONOCHROME1-like) image.
        exposure, window_gamma, noise_sigma, blur_mm: classic style display and detector.
        p_*: probability of each optional distractor.

    Example:
        >>> cfg = PhantomConfig(min_side=160, max_side=256)  # quick training / tests
    """

    styles: dict[str, float] = field(default_factory=lambda: {"physics": 0.8, "classic": 0.2})
    min_side: int = 512
    max_side: int = 1500
    spacing_mm: Range = (0.1, 0.2)
    fov_height_mm: Range = (135.0, 290.0)
    visible_shaft_mm: Range = (30.0, 190.0)
    aspect: Range = (0.68, 0.95)
    p_landscape: float = 0.15
    knee_shift: Range = (-0.15, 0.15)
    flexion_deg: Range = (0.0, 90.0)
    rotation_deg: Range = (-45.0, 45.0)
    scale: Range = (0.85, 1.2)
    p_left: float = 0.5
    # anatomy
    condylar_offset_mm: Range = (7.0, 30.0)
    lateral_offset_x_mm: Range = (-3.5, 10.0)
    lateral_offset_y_mm: Range = (-8.0, 2.0)
    p_double_blumensaat: float = 0.5
    patella_height_deg: Range = (15.0, 55.0)
    p_dysplasia: float = 0.2
    p_open_physes: float = 0.2
    adolescent_scale: Range = (0.75, 0.95)
    p_osteophytes: float = 0.25
    soft_tissue_scale: Range = (0.7, 1.8)
    p_contralateral: float = 0.25
    render_grid_px: int = 400  # rendering grid's longer side (px); the image is upsampled
    # physics: attenuation per mm
    mu_cortex: Range = (0.045, 0.09)
    mu_cancellous: Range = (0.016, 0.03)
    mu_muscle: Range = (0.018, 0.024)
    mu_fat: Range = (0.013, 0.018)
    mu_metal: Range = (0.8, 2.0)
    mu_plastic: Range = (0.02, 0.05)
    trabecular_contrast: Range = (0.1, 0.4)
    trabecular_scale_mm: Range = (0.3, 0.7)
    fat_layer_mm: Range = (3.0, 25.0)
    # physics: image formation
    beam_hardening: Range = (0.0, 0.15)
    heel: Range = (-0.3, 0.3)
    scatter_fraction: Range = (0.05, 0.8)
    scatter_sigma_mm: Range = (15.0, 60.0)
    mtf_sigma_mm: Range = (0.05, 0.25)
    photons: Range = (600.0, 10000.0)
    electronic_noise: Range = (0.0, 0.004)
    # physics: processing chain
    window_lo_q: Range = (0.0, 0.3)
    window_hi_q: Range = (0.95, 1.0)
    window_headroom: Range = (0.0, 0.35)
    usm_gain_fine: Range = (0.0, 0.7)
    usm_gain_medium: Range = (0.0, 0.8)
    usm_gain_coarse: Range = (-0.3, 0.6)
    usm_sigma_fine_mm: Range = (0.5, 2.0)
    usm_sigma_medium_mm: Range = (3.0, 10.0)
    usm_sigma_coarse_mm: Range = (25.0, 60.0)
    lut_slope: Range = (2.0, 6.0)
    lut_centre: Range = (0.35, 0.65)
    lut_mix: Range = (0.0, 1.0)
    gamma: Range = (0.6, 1.6)
    bits: tuple[int, ...] = (8, 10, 12, 16)
    p_monochrome1: float = 0.03
    # classic style
    exposure: Range = (1.2, 2.0)
    window_gamma: Range = (0.8, 1.3)
    noise_sigma: Range = (0.006, 0.03)
    blur_mm: Range = (0.08, 0.3)
    # distractors
    p_sphere: float = 0.4
    sphere_diameter_mm: float = 30.0
    p_rings: float = 0.15
    p_box_marker: float = 0.15
    p_metal: float = 0.3
    p_tunnel: float = 0.1
    p_cast: float = 0.08
    p_splint: float = 0.08
    p_collimation: float = 0.75
    collimation_tilt_deg: Range = (-12.0, 12.0)
    p_shutter_dark: float = 0.5
    p_black_border: float = 0.3
    p_side_marker: float = 0.85
    p_text: float = 0.5
    p_ruler: float = 0.25
    p_electrode: float = 0.15
    p_cassette_edge: float = 0.1
    p_buttons: float = 0.1

    def clean(self) -> PhantomConfig:
        """A copy without noise, optional extras, scatter, heel, beam hardening, halos (unsharp
        masking), bone clipping or inversion: display values rise with the line integral (for
        exact intensity tests)."""
        return replace(
            self,
            scatter_fraction=(0.0, 0.0),
            beam_hardening=(0.0, 0.0),
            heel=(0.0, 0.0),
            usm_gain_fine=(0.0, 0.0),
            usm_gain_medium=(0.0, 0.0),
            usm_gain_coarse=(0.0, 0.0),
            window_hi_q=(1.0, 1.0),
            window_headroom=(0.1, 0.3),
            noise_sigma=(0.0, 0.0),
            photons=(1e9, 1e9),
            electronic_noise=(0.0, 0.0),
            p_monochrome1=0.0,
            p_contralateral=0.0,
            **{name: 0.0 for name in DISTRACTORS},
        )

    def without(self, *factors: str) -> PhantomConfig:
        """A copy with the named factors (keys of ``FACTORS``) switched off."""
        cfg = self
        for name in factors:
            if name not in FACTORS:
                raise ValueError(f"unknown phantom factor {name!r}; known: {sorted(FACTORS)}")
            cfg = replace(cfg, **FACTORS[name])
        return cfg

    def with_overrides(self, overrides: dict[str, Any] | None) -> PhantomConfig:
        """A copy with fields replaced (lists become tuples; unknown fields are an error); the
        key ``factors_off`` lists factors to switch off (``without``)."""
        if not overrides:
            return self
        overrides = dict(overrides)
        off = overrides.pop("factors_off", None) or []
        if isinstance(off, str):
            off = [f for f in off.split(",") if f]
        cfg = self.without(*off)
        if not overrides:
            return cfg
        known = {f.name for f in fields(self)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"unknown PhantomConfig field(s): {bad}")
        vals = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        out = replace(cfg, **vals)
        for name in vals:
            if problem := _value_problem(name, getattr(out, name), getattr(PhantomConfig, name,
                                                                           None)):
                raise ValueError(f"PhantomConfig.{name}: {problem}")
        return out

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> PhantomConfig:
        """Defaults updated by a YAML mapping of fields (``factors_off: [..]`` switches factors
        off), then by ``overrides``."""
        from datamodules.config_file import read_yaml

        path = Path(path)
        data = read_yaml(path, what="phantom config")  # bounded; errors are one line
        data = {} if data is None else data  # (an empty file: the defaults; [] or false: no)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: phantom config must be a mapping of fields")
        try:
            cfg = cls().with_overrides(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        return cfg.with_overrides(overrides)


# Ranges whose values must be positive (a side, a spacing, a dose, a scale, a blur, a gamma):
# zero or less is no image (or a traceback deep in the generator).
MAX_CONDYLAR_OFFSET_MM = 40.0  # the condyle ellipse (radius 18-26 mm) still reaches LM1
POSITIVE_RANGES = frozenset({
    "spacing_mm", "fov_height_mm", "visible_shaft_mm", "aspect", "scale", "adolescent_scale",
    "soft_tissue_scale", "trabecular_scale_mm", "scatter_sigma_mm", "mtf_sigma_mm", "photons",
    "usm_sigma_fine_mm", "usm_sigma_medium_mm", "usm_sigma_coarse_mm", "lut_slope", "gamma",
    "exposure", "window_gamma", "condylar_offset_mm",
})  # fmt: skip


def _is_number(v: Any) -> bool:
    return finite_real(v) is not None


def _value_problem(name: str, value: Any, default: Any) -> str | None:
    """Why an overridden field's value cannot drive the generator (None: it can): a
    probability outside [0, 1], a range that is not two finite numbers low <= high, a positive
    quantity at or below 0 (checked by the shape of the field's default)."""
    if name.startswith("p_") or name == "sphere_diameter_mm":
        if not _is_number(value):
            return f"{value!r:.40} is not a finite number"
        if name.startswith("p_") and not 0.0 <= value <= 1.0:
            return f"{value} is a probability: give a value in [0, 1]"
        if name == "sphere_diameter_mm" and value <= 0:
            return f"{value} must be positive"
    elif isinstance(default, tuple) and len(default) == 2 and name != "bits":
        if not (isinstance(value, tuple) and len(value) == 2 and all(map(_is_number, value))):
            return f"{value!r:.60} is not a range [low, high] of two finite numbers"
        if value[0] > value[1]:
            return f"range [{value[0]}, {value[1]}]: low must be <= high"
        if name in POSITIVE_RANGES and value[0] <= 0:
            return f"range [{value[0]}, {value[1]}]: values must be positive"
        if name == "condylar_offset_mm" and value[1] > MAX_CONDYLAR_OFFSET_MM:
            return (f"range [{value[0]}, {value[1]}]: a condyle bulges at most "
                    f"{MAX_CONDYLAR_OFFSET_MM:g} mm behind the cortex line")
    return None


DISTRACTORS = (
    "p_sphere", "p_rings", "p_box_marker", "p_metal", "p_tunnel", "p_cast", "p_splint",
    "p_collimation", "p_black_border", "p_side_marker", "p_text", "p_ruler", "p_electrode",
    "p_cassette_edge", "p_buttons",
)  # fmt: skip

# Factor -> field values that switch it off (leave-one-factor-out, ``PhantomConfig.without``).
FACTORS: dict[str, dict[str, Any]] = {
    "physics": {"styles": {"classic": 1.0}},
    "classic": {"styles": {"physics": 1.0}},
    "processing": {
        "usm_gain_fine": (0.0, 0.0), "usm_gain_medium": (0.0, 0.0), "usm_gain_coarse": (0.0, 0.0),
        "lut_mix": (0.0, 0.0), "gamma": (1.0, 1.0), "p_monochrome1": 0.0, "bits": (16,),
    },
    "noise": {"photons": (1e9, 1e9), "electronic_noise": (0.0, 0.0), "noise_sigma": (0.0, 0.0)},
    "scatter": {"scatter_fraction": (0.0, 0.0), "heel": (0.0, 0.0)},
    "trabecular": {"trabecular_contrast": (0.0, 0.0)},
    "pose": {"flexion_deg": (0.0, 60.0), "rotation_deg": (-12.0, 12.0)},
    "imperfect_lateral": {
        "lateral_offset_x_mm": (-3.5, 3.5), "lateral_offset_y_mm": (-3.5, 2.0),
        "p_double_blumensaat": 0.0,
    },
    "variants": {"p_dysplasia": 0.0, "p_open_physes": 0.0, "p_osteophytes": 0.0,
                 "patella_height_deg": (25.0, 45.0)},
    "soft_tissue": {"soft_tissue_scale": (1.0, 1.0), "fat_layer_mm": (8.0, 8.0)},
    "contralateral": {"p_contralateral": 0.0},
    "calibration": {"p_sphere": 0.0, "p_rings": 0.0, "p_box_marker": 0.0, "p_ruler": 0.0},
    "metal": {"p_metal": 0.0, "p_tunnel": 0.0},
    "cast": {"p_cast": 0.0, "p_splint": 0.0, "p_buttons": 0.0},
    "collimation": {"p_collimation": 0.0, "p_black_border": 0.0},
    "text": {"p_side_marker": 0.0, "p_text": 0.0},
    "crop": {"knee_shift": (-0.08, 0.08), "visible_shaft_mm": (45.0, 130.0)},
}  # fmt: skip
