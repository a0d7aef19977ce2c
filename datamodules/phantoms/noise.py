"""Seeded unit Gaussian noise windows cut from one fixed bank (fast and still a pure function of
the seed)."""

from __future__ import annotations

import numpy as np

_NOISE_BANK: np.ndarray | None = None
_NOISE_SIDE = 2048


def noise_window(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) unit Gaussian noise: a window of a fixed 2048^2 bank (made once from a fixed seed;
    the bank or its transposed copy, both C-contiguous) at a seeded random offset; drawing 1M
    fresh normals per image would cost more than the whole rendering."""
    global _NOISE_BANK
    if max(h, w) > _NOISE_SIDE:
        return rng.standard_normal((h, w), dtype=np.float32)
    if _NOISE_BANK is None:
        bank = np.random.default_rng(20190512).standard_normal(
            (_NOISE_SIDE, _NOISE_SIDE), dtype=np.float32
        )
        _NOISE_BANK = np.stack([bank, np.ascontiguousarray(bank.T)])
    bank = _NOISE_BANK[int(rng.random() < 0.5)]
    oy = int(rng.integers(0, _NOISE_SIDE - h + 1))
    ox = int(rng.integers(0, _NOISE_SIDE - w + 1))
    return bank[oy : oy + h, ox : ox + w]
