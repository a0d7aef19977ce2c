"""What the file system allows a path to be written to, shared by every check of an output or
run folder (``planning/output_paths.py``, ``lightning_modules/run_folder.py``): the longest name
it takes, the nearest folder on a path that already exists, the longest name on a path. Each
caller words its own message; these only measure."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePath


def name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder`` takes (255 if unknown)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def nearest_existing(path: PurePath, links: bool = True) -> Path:
    """``path`` itself or its nearest parent that exists (``.`` when none does).

    ``links``: a link to nothing counts as existing (``os.path.lexists``); False follows links
    (``os.path.exists``). Neither raises: a name too long or a folder that may not be searched is
    "not there".
    """
    exists = os.path.lexists if links else os.path.exists
    return next((Path(p) for p in (path, *path.parents) if exists(p)), Path("."))


def longest_name(parts: Iterable[str]) -> tuple[str, int]:
    """The longest of ``parts`` in bytes, and its length (``("", 0)`` for none)."""
    return max(((p, len(os.fsencode(p))) for p in parts), key=lambda t: t[1], default=("", 0))


def replace_link(path: str | Path) -> Path:
    """``path``, with a symbolic link there removed (the link, never its target), so that what is
    written next creates a file of that name instead of writing through the link: an output
    folder shared with others held ``x_plan.json -> ~/notes.txt`` and the plan overwrote the
    notes (fifth fuzz round)."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
    return path
