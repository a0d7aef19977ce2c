"""Test-wide settings: no network, and one intra-op thread per process.

On a 2-core machine, OpenMP spin-waiting with 2 threads made the tiny models of these tests up
to 100x slower when anything else ran beside them; one thread is also what the DDP tests'
two processes need.
"""

import os

import pytest
import torch

import datamodules  # noqa: F401  (first: OpenCV's decode cap is read when cv2 loads)

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations: no update check
os.environ.setdefault("WANDB_MODE", "offline")  # W&B never goes online from a test
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run every test on one torch thread, restoring the previous setting after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
