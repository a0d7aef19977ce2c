"""Progress output that suits where it goes: a redrawn bar on a terminal, plain lines elsewhere.

A bar redraws itself with carriage returns; written to a file (``make train > log.txt``, a
cluster job, nohup, CI) every redraw stays in the file. Without a terminal, progress is
therefore printed as whole lines, a few per run. ``KNEEPLAN_PROGRESS=bar|lines`` overrides the
choice (e.g. ``lines`` under a terminal multiplexer that records its output).

Imports neither torch nor Lightning, so planning, sweeps and training can all use it.

Example:
    >>> for sample in progress_iter(samples, "plan", total=len(samples)):
    ...     plan(sample)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")
PROGRESS_ENV = "KNEEPLAN_PROGRESS"


def use_bar(stream: IO[str] | None = None) -> bool:
    """True when progress may redraw a bar: ``stream`` (default stdout) is a terminal.

    ``KNEEPLAN_PROGRESS=bar`` or ``=lines`` decides instead when set.
    """
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in ("bar", "lines"):
        return forced == "bar"
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-like without isatty
        return False


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``2 h 07 min``: short and readable in a log."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def progress_line(desc: str, done: int, total: int | None, elapsed: float) -> str:
    """One line: ``desc: done/total (pct %), elapsed, ~remaining left``."""
    if total:
        pct = 100.0 * done / total
        left = elapsed / done * (total - done) if done else 0.0
        tail = f", ~{format_duration(left)} left" if done < total else ""
        return f"{desc}: {done}/{total} ({pct:.0f} %), {format_duration(elapsed)}{tail}"
    return f"{desc}: {done}, {format_duration(elapsed)}"


def progress_iter(
    iterable: Iterable[T],
    desc: str,
    total: int | None = None,
    every: int | None = None,
    stream: IO[str] | None = None,
) -> Iterator[T]:
    """Yield from ``iterable`` showing progress: a tqdm bar on a terminal, else plain lines.

    Args:
        iterable: what to iterate over.
        desc: what is counted (e.g. ``"plan"``), the start of every line.
        total: number of items (default ``len(iterable)`` when it has one).
        every: print a line after every ``every`` items (default: about 10 lines in all, or
            every 10 items when the total is unknown); the last item always gets a line.
        stream: where to write (default stdout).
    """
    out = sys.stdout if stream is None else stream
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if use_bar(out):
        from tqdm import tqdm

        yield from tqdm(iterable, desc=desc, total=total, file=out)
        return
    step = every or (max(1, total // 10) if total else 10)
    t0 = time.perf_counter()
    done = 0
    for item in iterable:
        yield item
        done += 1
        if done % step == 0 or done == total:
            print(progress_line(desc, done, total, time.perf_counter() - t0), file=out, flush=True)
    if done % step and done != total:  # an iterable shorter than announced, or no total
        print(progress_line(desc, done, total, time.perf_counter() - t0), file=out, flush=True)
