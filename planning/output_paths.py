"""Output paths checked before any work: a command that would fail to write its results only
after minutes of evaluation or training says so first, in one line naming the flag and the path
(an existing file where a folder is wanted, a path under a file, a name longer than the file
system takes, a folder that cannot be created or written in)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from datamodules.path_limits import longest_name, name_max, nearest_existing


def out_folder_problem(out: Path, flag: str = "--out", create: bool = True) -> str | None:
    """Why files cannot be written into the folder ``out`` given as ``flag`` (None: they can).
    Said before any work: an existing file, a path under a file, a name the file system refuses
    (too long), a folder that cannot be created or written in (probed with a temporary file:
    permissions, a read-only mount).

    ``create``: make the folder now (it then exists); False leaves the disk as it was (the
    nearest existing folder is probed instead, and the names still to be created are checked
    against the longest name it takes).
    """
    try:
        above = nearest_existing(out)
        if above == out and not out.is_dir():
            return f"{flag} {out} is a file, not a folder"
        if not above.is_dir():
            return f"{flag} {out}: cannot create the output folder ({above} is a file)"
        probe = out
        if create:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                return f"{flag} {out}: cannot create the output folder ({err.strerror or err})"
        elif above != out:
            limit = name_max(above)
            if longest_name(out.parts[len(above.parts):])[1] > limit:
                return (f"{flag} {out}: cannot create the output folder (File name too long: "
                        f"at most {limit} bytes)")
            probe = above
        with tempfile.TemporaryFile(dir=probe, prefix=".write-check-"):
            pass
    except OSError as err:  # (is_dir of an unreadable parent, the probe file)
        return f"{flag} {out}: cannot write into the output folder ({err.strerror or err})"
    except ValueError as err:  # a NUL byte in the name
        return f"{flag} {out}: not a usable path ({err})"
    return None


def out_file_problem(out: Path, beside: Sequence[Path] = ()) -> str | None:
    """Why a file cannot be written as ``out`` (and the files ``beside`` it, e.g. an export's
    JSON), or None: a folder in the way, a parent that is a file, a name longer than the file
    system takes, a folder that cannot be written in. Nothing is created."""
    try:
        targets = (out, *beside)
        above = nearest_existing(out.absolute().parent, links=False)
        limit = name_max(above)
        to_make = out.absolute().parent.parts[len(above.parts):]
        name, longest = longest_name([*to_make, *(t.name for t in targets)])
        if longest > limit:  # (before is_dir: the OS's own error would not say which name)
            what = "folder" if name in to_make else "file"
            return f"--out {out}: the {what} name {_too_long(name, longest, limit)}"
        for target in targets:
            if target.is_dir():
                return f"{target}: is a folder, not a file to write"
        if not above.is_dir():
            return f"{above}: is a file, not a folder to write {out.name} in"
        if not os.access(above, os.W_OK | os.X_OK):
            return f"--out {out}: cannot write in {above} (no permission or a read-only mount)"
    except OSError as err:  # a parent's name too long, a folder that may not be searched
        return f"--out {out}: cannot write there ({err.strerror or err})"
    except ValueError as err:  # a NUL byte
        return f"--out {out}: not a usable path ({err})"
    return None


def out_names_problem(folder: Path, names: Sequence[str]) -> str | None:
    """Why files named ``names`` cannot be made in ``folder`` (which may not exist yet): one
    longer than the file system takes (None: they can). Checked before any of them is written,
    so that a plan never leaves an overlay without its report (a 250-byte image name made a
    255-byte ``_plan.png`` and then failed on the 256-byte ``_plan.json``: fifth fuzz round)."""
    limit = name_max(nearest_existing(Path(folder).absolute()))
    name, longest = longest_name(names)
    if longest > limit:
        return f"the output name {_too_long(name, longest, limit)}: rename the image"
    return None


def _too_long(name: str, length: int, limit: int) -> str:
    """"'name...' is too long (N bytes; the file system takes L)": the name shortened."""
    return (f"{name[:40]!r}{'...' if len(name) > 40 else ''} is too long ({length} bytes; the "
            f"file system takes {limit})")
