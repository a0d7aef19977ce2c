"""Collect what image decoders print, so a bad file gives one line and a good one a note.

Decoders talk on three channels besides exceptions: libpng (inside OpenCV) writes
``libpng error: ...`` straight to file descriptor 2, tifffile logs through ``logging``, pydicom
issues ``UserWarning``s. Left alone, a damaged file prints several lines before our one-line
error (found by fuzzing PNG, TIFF, JPEG and DICOM files). :func:`decoder_messages` gathers all
three for the duration of a read; the reader puts them into its error or the plan's warnings.
"""

from __future__ import annotations

import logging
import os
import re
import reprlib
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOGGERS = ("tifffile", "pydicom")
_LOCK = threading.RLock()


class _Collect(logging.Handler):
    """A logging handler that keeps each record's message."""

    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@contextmanager
def decoder_messages() -> Iterator[list[str]]:
    """Yield a list that receives, one string each, the decoders' warnings, log records and
    raw stderr lines written during the ``with`` block (none of them reach the terminal)."""
    messages: list[str] = []
    handler = _Collect(messages)
    sys.stderr.flush()  # C libraries write to descriptor 2 itself, whatever sys.stderr is
    try:
        os.fstat(2)
        fd: int | None = 2
    except OSError:  # no descriptor 2 (a daemon): nothing to catch there
        fd = None
    # One reader at a time per process: descriptor 2 and the loggers are process-wide.
    with _LOCK, tempfile.TemporaryFile() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        saved = [(log, log.propagate) for log in map(logging.getLogger, LOGGERS)]
        kept = None
        try:
            for log, _ in saved:
                log.addHandler(handler)
                log.propagate = False
            if fd is not None:
                kept = os.dup(fd)
                os.dup2(tmp.fileno(), fd)
            yield messages
        finally:
            if kept is not None:
                os.dup2(kept, fd)  # type: ignore[arg-type]
                os.close(kept)
            for log, propagate in saved:
                log.removeHandler(handler)
                log.propagate = propagate
            # decoders warn with UserWarning; numpy's or deprecation warnings are not theirs
            messages.extend(str(w.message) for w in caught
                            if issubclass(w.category, UserWarning))  # fmt: skip
            tmp.seek(0)
            raw = tmp.read(64 * 1024).decode("utf-8", "replace")
            messages.extend(opencv_plain(line) for line in raw.splitlines() if line.strip())


# OpenCV's log decoration: "[ERROR:0@0.331] global loadsave.cpp:1377 imdecode_ imdecode_('/tmp/..'):
# can't read header: OpenCV(5.1.0) /io/.../grfmt_tiff.cpp:413: error: (-2:Unspecified error) ..."
_OPENCV_DECORATION = re.compile(
    r"^\[\s*[A-Z]+:\d+@[\d.]+\]\s*(?:global\s+)?\S+:\d+\s+\S+\s+"  # log prefix, function
    r"|\w+\('[^']*'\):\s*"  # the call and its (temporary) file name
    r"|OpenCV\([^)]*\)\s+\S+:\d+:\s*error:\s*\(-?\d+:[^)]*\)\s*")  # source file, error code


def opencv_plain(line: str) -> str:
    """A stderr line without OpenCV's log decoration (its log level, source files and
    temporary file names): what the decoder found, e.g. "can't read header: bitsperpixel
    value 4 is not supported"."""
    line = line.strip()
    if not line.startswith("[") or not _OPENCV_DECORATION.match(line):  # not OpenCV's log
        return line
    return _OPENCV_DECORATION.sub("", line).strip() or line


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x00``): a file name may hold a
    newline, and an error naming the file must stay one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(text: str, limit: int) -> str:
    """``text`` on one line (whitespace runs, newlines included, become one space), shortened to
    ``limit`` characters with "..." (some decoders' messages span several lines)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def brief(messages: list[str], limit: int = 200) -> str:
    """The first message on one line, shortened to ``limit`` characters ('' when none)."""
    return one_line(messages[0], limit) if messages else ""


_REPR = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 40, 40, 40


def short_repr(value: Any) -> str:
    """``repr`` of an untrusted value for a message: about 40 characters, two levels deep
    (``repr`` of a tuple nested 5 000 deep raised RecursionError inside an error message:
    second review of fuzz round 5)."""
    return _REPR.repr(value)
