"""Keep freed memory in the process for reuse (glibc ``mallopt``), for training processes.

A training step allocates and frees the same few hundred multi-MB activations every step. glibc
serves blocks above its (dynamic) mmap threshold with fresh ``mmap`` pages and returns freed heap
tops to the system above 128 kB, so every step page-faults the activations in again: 42,000-
54,000 minor faults and 0.13-0.3 s of system time per paper-network step (batch 2, 256 px, 2 CPU
threads). Serving blocks up to 32 MB (glibc's largest allowed threshold) from the heap and
keeping up to 1 GB of freed memory leaves a few hundred, and the step 3-9 % faster
(``python benchmarks/bench_step.py --alone [--no-malloc-tuning]`` measures both). Costs: a
training process keeps up to 1 GB of freed memory mapped. Not used by planning (its peak memory
is bounded, and it does not repeat steps). No effect off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc refuses more than HEAP_MAX_SIZE / 2 = 32 MB (64-bit)
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for a process that repeats large allocations;
    True when both were set, False where there is no glibc ``mallopt`` (macOS, musl...)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
