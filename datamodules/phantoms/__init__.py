"""Synthetic lateral knee radiographs (phantoms) with exact ground truth.

``generate_phantom(seed, config)`` returns a ``datamodules.sample.Sample``; ``python -m
datamodules.phantoms --out DIR --n N --seed SEED`` writes a dataset; ``python -m
datamodules.phantoms.sheet`` renders a contact sheet.
"""

from datamodules.phantoms.config import PhantomConfig
from datamodules.phantoms.generate import generate_phantom, sample_seed

__all__ = ["PhantomConfig", "generate_phantom", "sample_seed"]
