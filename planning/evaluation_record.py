"""What an evaluation folder holds: the model, the test set and the settings its tables were made
with (``evaluation.json``), so that a later evaluation of another model, test set or setting
never replaces them silently.

``make evaluate`` into its default folder (named after the checkpoint only) takes the next free
``<name>-2``, ``-3``, ... when the folder holds another evaluation; an ``--out`` the user chose
that holds another evaluation is refused (one line naming the first difference). The same
evaluation run again replaces its own tables. Folders from before the record are written into
as before (there is nothing to compare).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datamodules.path_limits import replace_link

RECORD = "evaluation.json"
INFO_KEYS = ("model",)  # said, not compared: the same bytes (model_sha256) moved or renamed
MAX_RECORD_BYTES = 1 << 20  # a record is a few hundred bytes; a larger one is not ours
MAX_SUFFIX = 999  # folders tried for a free <name>-N


def read_record(folder: Path) -> dict[str, Any] | None:
    """The record of ``folder`` (None: none, or not readable as one)."""
    path = folder / RECORD
    try:
        if not path.is_file() or path.stat().st_size > MAX_RECORD_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def difference(recorded: dict[str, Any] | None, record: dict[str, Any]) -> str | None:
    """The first field in which ``recorded`` and ``record`` differ, as "field: old -> new"
    (None: no record, or the same evaluation)."""
    if recorded is None:
        return None
    for key in (k for k in record if k not in INFO_KEYS):
        old, new = recorded.get(key), record[key]
        if isinstance(new, dict) and isinstance(old, dict):
            for sub in sorted(set(old) | set(new)):
                if old.get(sub) != new.get(sub):
                    return f"{key}.{sub}: {old.get(sub)} -> {new.get(sub)}"
        elif old != new:
            return f"{key}: {old} -> {new}"
    return None


def free_folder(base: Path, record: dict[str, Any]) -> tuple[Path, str | None]:
    """``base``, or the first ``<base>-N`` that holds no other evaluation, and why ``base`` was
    passed over (None when it was not)."""
    why = difference(read_record(base), record)
    if why is None:
        return base, None
    for n in range(2, MAX_SUFFIX + 1):
        folder = base.with_name(f"{base.name}-{n}")
        if difference(read_record(folder), record) is None:
            return folder, why
    raise ValueError(f"{base}: {MAX_SUFFIX} earlier evaluations of this model; remove some")


def write_record(folder: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` into ``folder`` (created) as ``evaluation.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = replace_link(folder / RECORD)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    return path
