"""Seeded unit Gaussian noise windows cut from one fixed bank (fast and still a pure function of
the seed)."""

from __future__ import annotations

import numpy as np

_NOISE_BANK: np.ndarray | None = None
_NOISE_SIDE = 2048


def noise_window(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) unit Gaussian noise: a window of a fixed 2048^2 bank (made once from a fixed seed)
    at a seeded random offset and orientation; drawing 1M fresh normals per image would cost more
    than the whole rendering."""
    global _NOISE_BANK
    if max(h, w) > _NOISE_SIDE:
        return rng.standard_normal((h, w), dtype=np.float32)
    if _NOISE_BANK is None:
        _NOISE_BANK = np.random.default_rng(20190512).standard_normal(
            (_NOISE_SIDE, _NOISE_SIDE), dtype=np.float32
        )
    bank = _NOISE_BANK if rng.random() < 0.5 else _NOISE_BANK.T
    oy = int(rng.integers(0, _NOISE_SIDE - h + 1))
    ox = int(rng.integers(0, _NOISE_SIDE - w + 1))
    win = bank[oy : oy + h, ox : ox + w]
    return win[::-1] if rng.random() < 0.5 else win
