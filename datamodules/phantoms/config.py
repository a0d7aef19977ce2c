"""Configuration of the phantom generator: ranges (lo, hi) sampled uniformly, and probabilities.

Every randomisation range lives here (and in the YAML files under ``configs/phantoms/``, which
override these defaults field by field); ``FACTORS`` names groups of fields that switch one
factor of variation off, for leave-one-factor-out experiments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from datamodules.pixel_limit import MIN_SIDE_PX, max_pixels
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
        render_grid_px: longest side of the render grid, 64-16384 px (``RENDER_GRID_PX``; the
            network sees 128-256 px; finer rendering would be invisible to it); the image is
            upsampled, detector grain added.
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
        if {"min_side", "max_side"} & set(vals) and (
                problem := side_problem(out.min_side, out.max_side)):
            raise ValueError(f"PhantomConfig: {problem}")
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
        # the sides are checked as a pair: the file's and the caller's are applied together
        sides = {k: overrides.pop(k) for k in ("min_side", "max_side") if k in overrides}
        try:
            cfg = cls().with_overrides({**data, **sides})
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


# The rendering styles ``generate._pick_style`` knows ("styles" weights name them).
STYLES = ("physics", "classic")
# render_grid_px: the grid is ``ceil(longer image side / render_grid_px)`` times coarser than the
# image (``generate._render_factor``). At or above the image's longer side the factor is 1 (full
# resolution), so a larger value changes nothing: 16384 px is beyond any radiograph (a 43 cm
# detector at 0.03 mm) and refuses a slipped extra digit. Below 64 px the largest field of view
# (290 mm) gets > 4.5 mm grid pixels: a condyle (radius 18-26 mm) a few pixels wide, the cortex
# and Blumensaat's line gone (render_grid_px: 1 gave a near-flat image under the labels).
RENDER_GRID_PX = (64, 16384)
# bits: ``physics.quantise`` rounds to 2**bits - 1 levels (0 bits: 0 levels, a NaN image) and
# ``dataset_io.write_sample`` stores 16-bit PNGs, so deeper quantisation cannot be stored.
BITS = (1, 16)


def side_problem(min_side: int, max_side: int,
                 names: tuple[str, str] = ("min_side", "max_side")) -> str | None:
    """Why ``min_side`` / ``max_side`` (called ``names``) cannot make phantoms the readers take,
    or None: images are never square (min < max), no side under ``MIN_SIDE_PX`` (the readers
    refuse it; side 1 gave a traceback after writing the image), and no image over the pixel
    limit (an image can be nearly max_side x max_side; 10^5 px tried to allocate 10^10)."""
    lo, hi = names
    if not 0 < min_side < max_side:
        return (f"need 0 < {lo} < {hi} (images are never square), got "
                f"{min_side} and {max_side}")
    if min_side < MIN_SIDE_PX:
        return f"{lo} {min_side} is below {MIN_SIDE_PX} px, the smallest side read"
    if max_side * max_side > max_pixels():
        return (f"{hi} {max_side} makes images of up to {max_side * max_side / 1e6:.0f} "
                f"megapixels, above the {max_pixels() / 1e6:g} MP the readers take (set "
                f"KNEEPLAN_MAX_PIXELS to raise it)")
    return None


def _is_number(v: Any) -> bool:
    return finite_real(v) is not None


def _is_whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _yaml_number_text(text: str) -> str | None:
    """How to write ``text`` (a finite number YAML read as a string) so that YAML 1.1 reads a
    float: a dot before the exponent and a signed exponent (1.0e9 and 1e9 -> 1.0e+9)."""
    import yaml

    try:
        x = float(text)
    except ValueError:
        return None
    if not math.isfinite(x):
        return None
    mantissa, e, exponent = text.strip().replace("E", "e").partition("e")
    if e:
        mantissa += "" if "." in mantissa else ".0"
        exponent = exponent if exponent[:1] in ("+", "-") else f"+{exponent}"
    candidates = (f"{mantissa}{e}{exponent}", repr(x))
    for c in candidates:  # the first that YAML reads back as this float
        try:
            back = yaml.safe_load(c)
        except yaml.YAMLError:
            continue
        if isinstance(back, float) and back == x:
            return c
    return None


def _text_problem(value: Any) -> str | None:
    """``value`` (or an item of it) is a number that YAML read as text: say so and how to write
    it (YAML 1.1 reads ``1.0e9`` and ``1e9`` as strings; ``1.0e+9`` is a number)."""
    items = value if isinstance(value, tuple | list) else (value,)
    for item in items[:4]:
        if isinstance(item, str) and (fix := _yaml_number_text(item)) is not None:
            why = (" (YAML reads a number with an exponent only with a dot and a signed "
                   "exponent)" if "e" in item.lower() else "")
            return f"{item!r:.40} was read as text, not a number{why}: write {fix}"
    return None


def _value_problem(name: str, value: Any, default: Any) -> str | None:
    """Why an overridden field's value cannot drive the generator (None: it can): a
    probability outside [0, 1], a range that is not two finite numbers low <= high, a positive
    quantity at or below 0 (checked by the shape of the field's default), a number YAML read as
    text, an image side that is not a whole number >= 1, ``render_grid_px`` outside
    ``RENDER_GRID_PX``, ``bits`` not a non-empty list of bit depths in ``BITS``, ``styles`` not
    a mapping of known styles to finite weights >= 0, one of them > 0."""
    if name == "render_grid_px":
        lo, hi = RENDER_GRID_PX
        if not _is_whole(value):
            return (f"{value!r:.40} is not a whole number of pixels "
                    f"(the render grid's longer side, {lo}-{hi})")
        if not lo <= value <= hi:
            return f"{value} is outside [{lo}, {hi}] px (the render grid's longer side)"
    elif name in ("min_side", "max_side"):  # (min_side < max_side: layout.py and the CLI)
        if not _is_whole(value) or value < 1:
            return f"{value!r:.40} is not a whole number of pixels >= 1"
    elif name == "bits":
        lo, hi = BITS
        if not isinstance(value, tuple | list):
            return f"{value!r:.40} is not a list of bit depths (e.g. [8, 12, 16])"
        if not value:
            return "an empty list: give at least one bit depth (e.g. [8, 12, 16])"
        for b in value:
            if not _is_whole(b) or not lo <= b <= hi:
                return (f"bit depth {b!r:.40} is not a whole number in [{lo}, {hi}] "
                        f"(images are stored as 16-bit PNG)")
    elif name == "styles":
        if not isinstance(value, dict) or not value:
            return (f"{value!r:.60} is not a mapping of style: weight "
                    f"(e.g. {{physics: 0.8, classic: 0.2}})")
        unknown = sorted(f"{k!r:.20}" for k in value if k not in STYLES)
        if unknown:
            return f"unknown style(s) [{', '.join(unknown[:5])}]; known: {list(STYLES)}"
        for k, w in value.items():
            if not _is_number(w) or w < 0:
                hint = _text_problem(w)
                return hint or f"weight of {k} {w!r:.40} must be a finite number >= 0"
        if not any(w > 0 for w in value.values()):
            return "no style has a positive weight"
    elif name.startswith("p_") or name == "sphere_diameter_mm":
        if not _is_number(value):
            return _text_problem(value) or f"{value!r:.40} is not a finite number"
        if name.startswith("p_") and not 0.0 <= value <= 1.0:
            return f"{value} is a probability: give a value in [0, 1]"
        if name == "sphere_diameter_mm" and value <= 0:
            return f"{value} must be positive"
    elif isinstance(default, tuple) and len(default) == 2:
        if not (isinstance(value, tuple) and len(value) == 2 and all(map(_is_number, value))):
            return _text_problem(value) or (
                f"{value!r:.60} is not a range [low, high] of two finite numbers")
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
