"""The training processes' allocator setting is one glibc accepts (it refuses an mmap threshold
above 32 MB on 64-bit and then changes nothing)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from lightning_modules import malloc_tuning


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_both_thresholds():
    code = "from lightning_modules.malloc_tuning import keep_freed_memory as k; print(k())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"  # a separate process: this one's allocator stays as is


def test_threshold_within_glibc_limit():
    assert malloc_tuning.MMAP_THRESHOLD <= 32 * 2**20 < malloc_tuning.TRIM_THRESHOLD


def test_train_entry_sets_it(monkeypatch):
    """`python -m lightning_modules.train` sets it before anything is built."""
    from lightning_modules import train

    calls = []
    monkeypatch.setattr(train, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(train, "fit", lambda argv: None)
    train.main(["--trainer.max_epochs=1"])
    assert calls == [1]
