"""Run a native image decoder in a forked child, so that a crash in it is one line, not ours.

GDCM, which pydicom uses for compressed DICOM pixel data, aborts the whole process (SIGABRT,
nothing printed) on a JPEG stream with one marker byte changed; found by fuzzing. No check of
the stream can rule out every such crash in C++ code, so the decode itself runs in a child made
by ``os.fork`` (no new interpreter: it costs milliseconds, and it works inside a DataLoader
worker, which ``multiprocessing`` would refuse as a daemon's child). The child sends the array
back through a pipe; its death by a signal, or a decode running past ``TIMEOUT_S``, becomes
:class:`DecoderCrashed` with words the reader puts in its one-line error. The child also ends
itself: by an alarm past the same limit, and on Linux when this process dies (a killed
DataLoader worker must not leave a hung decoder behind). Where ``os.fork`` is missing (Windows)
the decode runs in this process, as before.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import selectors
import signal
import struct
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np

from datamodules.decoder_messages import decoder_messages

TIMEOUT_S = 30.0  # a decode of the largest allowed frame takes seconds; past this it is stuck
MAX_MESSAGES = 50  # the decoder's own lines sent back (each cut to 300 characters)
MAX_PIXEL_BYTES = 1 << 34  # the largest reply a frame within the pixel limit can need (16 GiB)
_HEADER_MAX = 1 << 20  # the child's header (dtype, shape, messages) is JSON of a few kB


class DecoderCrashed(Exception):
    """The decoder died (a signal) or hung; ``str`` says which, in words. ``signal_name``:
    the signal of a crash (``"SIGABRT"``), None when it hung or was killed (SIGKILL)."""

    def __init__(self, message: str, signal_name: str | None = None) -> None:
        super().__init__(message)
        self.signal_name = signal_name


class DecoderFailed(Exception):
    """The decoder raised; ``str`` is its message on one line, as the child described it."""


def decode_in_child(decode: Callable[[], np.ndarray], describe: Callable[[BaseException], str],
                    timeout_s: float = TIMEOUT_S) -> np.ndarray:
    """``decode()`` run in a forked child; its array comes back through a pipe.

    Args:
        decode: makes the array (in the child, on a copy of this process's memory).
        describe: an exception of ``decode`` in one line (sent back as :class:`DecoderFailed`).
        timeout_s: the child is killed after this many seconds (:class:`DecoderCrashed`).

    What the decoder prints or warns in the child is warned again here as ``UserWarning``s, so
    an enclosing ``decoder_messages`` collects it as if the decode had run here.
    """
    if not hasattr(os, "fork"):
        return decode()
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:  # no process to spare (a limit, no memory): decode here, as before
        os.close(read_fd)
        os.close(write_fd)
        return decode()
    if pid == 0:  # the child: never returns, never runs the parent's cleanup
        os.close(read_fd)
        _child(write_fd, decode, describe, timeout_s)
    os.close(write_fd)
    header, payload, problem = None, bytearray(), "the decoder was interrupted"
    try:
        header, payload, problem = _receive(read_fd, timeout_s)
    finally:
        os.close(read_fd)
        if header is None:  # hung, or already dead (a signal to a dead child does nothing)
            with contextlib.suppress(ProcessLookupError):  # (reaped already: SIGCHLD ignored)
                os.kill(pid, signal.SIGKILL)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:  # SIGCHLD ignored by the host: the child reaped itself
            status = None
    if header is None:
        if problem is None and status is not None and os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGKILL:  # not a crash: the kernel's OOM killer?
                raise DecoderCrashed("the decoder was killed (SIGKILL; out of memory?)")
            try:
                name = signal.Signals(sig).name
            except ValueError:  # a real-time signal without a name
                name = f"signal {sig}"
            raise DecoderCrashed(f"the decoder crashed ({name}): the compressed stream is "
                                 "malformed", name)
        raise DecoderCrashed(problem or "the decoder ended without a result")
    for message in header.get("said", []):
        warnings.warn(str(message), UserWarning, stacklevel=2)
    if "error" in header:
        raise DecoderFailed(str(header["error"]))
    return np.frombuffer(payload, dtype=np.dtype(header["dtype"])).reshape(header["shape"])


def _child(write_fd: int, decode: Callable[[], np.ndarray],
           describe: Callable[[BaseException], str], timeout_s: float) -> None:
    """Decode, send header and pixels, and leave with ``os._exit`` (0 sent, 1 not sent)."""
    code = 1
    try:
        if faulthandler.is_enabled():  # a crash here is reported by the parent, in one line
            faulthandler.disable()
        _end_with_parent(timeout_s)
        with decoder_messages() as said:
            try:
                arr, header = decode(), {}
            except Exception as err:  # noqa: BLE001 - any decoder error goes back in words
                arr, header = None, {"error": describe(err)}
        header["said"] = [m[:300] for m in said[:MAX_MESSAGES]]
        if arr is not None:
            arr = np.ascontiguousarray(arr)
            header.update(dtype=arr.dtype.str, shape=list(arr.shape))
        blob = json.dumps(header).encode()
        with os.fdopen(write_fd, "wb") as out:
            out.write(struct.pack("<QQ", len(blob), 0 if arr is None else arr.nbytes))
            out.write(blob)
            if arr is not None:
                out.write(memoryview(arr).cast("B"))
        code = 0
    finally:
        os._exit(code)


def _receive(fd: int, timeout_s: float) -> tuple[dict | None, bytearray, str | None]:
    """The child's header and pixel bytes, or (None, empty, why not: None when the child just
    stopped sending, which its exit status then explains)."""
    deadline = time.monotonic() + timeout_s
    late = f"the decoder took longer than {timeout_s:.0f} s and was stopped"
    sizes = _read_exactly(fd, 16, deadline)
    if sizes is None or len(sizes) < 16:
        return None, bytearray(), late if sizes is None else None
    n_header, n_pixels = struct.unpack("<QQ", sizes)
    if n_header > _HEADER_MAX or n_pixels > MAX_PIXEL_BYTES:
        return None, bytearray(), "the decoder's reply was larger than any image it may return"
    blob = _read_exactly(fd, n_header, deadline)
    if blob is None or len(blob) < n_header:
        return None, bytearray(), late if blob is None else None
    header = json.loads(bytes(blob))
    payload = _read_exactly(fd, n_pixels, deadline)
    if payload is None or len(payload) < n_pixels:
        return None, bytearray(), late if payload is None else None
    return header, payload, None


def _end_with_parent(timeout_s: float) -> None:
    """Make this child end on its own past ``timeout_s`` (an alarm) and, on Linux, when the
    parent dies (``PR_SET_PDEATHSIG``): a killed parent cannot stop a hung decoder."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(1, int(timeout_s) + 5))
    if sys.platform.startswith("linux"):
        import ctypes

        parent = os.getppid()
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before the request: end now
            os._exit(1)


def _read_exactly(fd: int, n: int, deadline: float) -> bytearray | None:
    """Up to ``n`` bytes from ``fd`` (fewer when the writer closed early); None past
    ``deadline``."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    with selectors.DefaultSelector() as sel:  # (select.select cannot watch descriptors >= 1024)
        sel.register(fd, selectors.EVENT_READ)
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return None
            chunk = os.readv(fd, [view[got:]])
            if chunk == 0:
                return buf[:got]
            got += chunk
    return buf

