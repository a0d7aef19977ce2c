"""The ``--device`` check shared by every command that runs a network (``planning.plan``,
``planning.evaluate``): a name torch does not know, or a device this machine lacks, is one usage
line naming the flag and the value, said before any model is read (torch's own error surfaced
as "cannot load checkpoint ...", blaming the file).

The name is checked without importing torch (``cpu`` and an ONNX model never need it); whether
the device exists is asked of torch only for a device other than the CPU.
"""

from __future__ import annotations

import re

DEVICE_KINDS = ("cpu", "cuda", "mps", "xpu")
EXPECTED = "expected cpu, cuda[:N], mps or xpu"
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(?::(\d{1,4}))?")


def shown_value(text: str, limit: int = 40) -> str:
    """``text`` as it may appear in a one-line message: printable as is, else quoted with its
    control characters escaped; shortened to ``limit`` characters."""
    short = text if len(text) <= limit else text[:limit] + "..."
    return short if short.isprintable() and short.strip() == short and short else repr(short)


def device_problem(text: str, flag: str = "--device", check_available: bool = True
                   ) -> str | None:
    """Why ``text`` cannot be the torch device a model runs on (None: it can).

    Args:
        text: the value given, e.g. ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        flag: the option named in the message.
        check_available: also ask torch whether this machine has that device (False: the
            name only, e.g. for an ONNX model, which runs on the CPU and never imports torch).

    Returns:
        One line ``<flag> <value>: <what is wrong>``, or None.
    """
    match = _DEVICE.fullmatch(text)
    if match is None:
        return f"{flag} {shown_value(text)}: not a torch device ({EXPECTED})"
    kind, index = match.group(1), match.group(2)
    if kind == "cpu" or not check_available:
        return None
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            return f"{flag} {text}: CUDA is not available on this machine"
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            return (f"{flag} {text}: this machine has {count} CUDA device(s), "
                    f"cuda:0..cuda:{count - 1}")
        return None
    backend = torch.backends.mps if kind == "mps" else getattr(torch, "xpu", None)
    if backend is None or not backend.is_available():
        return f"{flag} {text}: {kind.upper()} is not available on this machine"
    count = 1 if kind == "mps" else torch.xpu.device_count()
    if index is not None and int(index) >= count:
        return f"{flag} {text}: this machine has {count} {kind.upper()} device(s)"
    return None
