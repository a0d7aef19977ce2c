"""Configuration of the phantom generator: ranges (lo, hi) sampled uniformly, and probabilities."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass
class PhantomConfig:
    """Ranges and probabilities for ``generate_phantom``; the defaults give full-realism phantoms.

    Args:
        min_side, max_side: allowed image side lengths in px (images are never square).
        spacing_mm: preferred pixel spacing range; when the side limits make it impossible to fit
            the field of view (tiny test images), spacing is scaled up so the anatomy still fits.
        fov_height_mm: height of the field of view; with ``visible_shaft_mm`` it sets how much
            femoral shaft is shown above p_tmc.
        aspect: width / height of portrait images; ``p_landscape`` inverts it.
        flexion_deg, rotation_deg, scale: knee flexion, in-plane rotation, global bone scale.
        p_left: probability of a left knee (mirrored anatomy).
        exposure, window_gamma: display contrast (1 - exp(-exposure * A), then a gamma).
        noise_sigma: detector noise std (in display units at mid grey).
        blur_mm: detector blur sigma in mm.
        p_*: probability of each optional feature.

    Example:
        >>> cfg = PhantomConfig(min_side=160, max_side=256)  # quick training / tests
    """

    min_side: int = 512
    max_side: int = 1500
    spacing_mm: tuple[float, float] = (0.1, 0.2)
    fov_height_mm: tuple[float, float] = (135.0, 230.0)
    visible_shaft_mm: tuple[float, float] = (45.0, 130.0)
    aspect: tuple[float, float] = (0.68, 0.9)
    p_landscape: float = 0.15
    flexion_deg: tuple[float, float] = (0.0, 60.0)
    rotation_deg: tuple[float, float] = (-12.0, 12.0)
    scale: tuple[float, float] = (0.9, 1.1)
    p_left: float = 0.5
    exposure: tuple[float, float] = (1.2, 2.0)
    window_gamma: tuple[float, float] = (0.8, 1.3)
    noise_sigma: tuple[float, float] = (0.006, 0.03)
    blur_mm: tuple[float, float] = (0.08, 0.3)
    p_sphere: float = 0.5
    sphere_diameter_mm: float = 30.0
    p_metal: float = 0.15
    p_collimation: float = 0.7
    p_black_border: float = 0.3
    p_side_marker: float = 0.85
    p_text: float = 0.5
    p_ruler: float = 0.3
    p_electrode: float = 0.2
    p_cassette_edge: float = 0.15

    def clean(self) -> PhantomConfig:
        """A copy without noise and without any optional extra (for exact intensity tests)."""
        return replace(
            self,
            noise_sigma=(0.0, 0.0),
            p_sphere=0.0,
            p_metal=0.0,
            p_collimation=0.0,
            p_black_border=0.0,
            p_side_marker=0.0,
            p_text=0.0,
            p_ruler=0.0,
            p_electrode=0.0,
            p_cassette_edge=0.0,
        )
