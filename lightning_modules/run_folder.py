"""The run folder ``<run.root>/<run.name>/<stamp>``: its stamp (time, ``KNEEPLAN_RUN_STAMP``,
SLURM or torchrun ids), whether it can be made inside ``run.root``, the newest ``last.ckpt`` of a
run name (``--resume last``), the run folder a checkpoint was written in, and whether that
folder holds links out of it before a resumed run writes there."""

from __future__ import annotations

import os
import time
import unicodedata
from pathlib import Path, PurePath
from typing import Any

from datamodules.config_file import ConfigFileError
from datamodules.path_limits import longest_name, name_max, nearest_existing
from lightning_modules.checkpoint_file import CheckpointError

RUN_DIR_ENV = "KNEEPLAN_RUN_DIR"  # lets DDP child processes find their parent's run folder
MAX_PATH_BYTES = 4096 - 256  # PATH_MAX, less room for the files inside a run folder
MAX_RUN_ENTRIES = 100_000  # entries of a run folder looked at for links (a run has ~10^2)
# Unicode categories refused in a run name: control characters (ESC, newline, tab, DEL, C1),
# format characters (the bidirectional overrides and isolates, zero-width spaces, BOM) and
# line/paragraph separators. They end up in the folder name and in every line that shows it.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _stamp_source() -> tuple[str, str | None]:
    """(the run folder's stamp, the environment variable it came from or None)."""
    stamp = _run_stamp()
    for var in ("KNEEPLAN_RUN_STAMP", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        if os.environ.get(var) and os.environ[var] in stamp:
            return stamp, var
    return stamp, None


def invisible_at(text: str) -> int | None:
    """Index of the first control, bidirectional or other invisible formatting character of
    ``text`` (``_INVISIBLE_CATEGORIES``), or None."""
    for i, ch in enumerate(text):
        if unicodedata.category(ch) in _INVISIBLE_CATEGORIES:
            return i
    return None


def run_folder_problem(root: Any, name: Any) -> str | None:
    """Why ``<run.root>/<run.name>/<stamp>`` cannot be this run's folder, or None: a
    ``run.name`` (or a stamp from ``KNEEPLAN_RUN_STAMP``, ``SLURM_JOB_ID``,
    ``TORCHELASTIC_RUN_ID``) that is absolute or goes up (``..``) out of ``run.root``, a name
    the file system refuses (too long, a NUL), a name or stamp holding control or bidirectional
    characters (``\x1b[31m``, U+202E: a folder named with them, raw escape codes printed), or a
    file (not a folder) on the way. Checked before anything is built: these were a traceback, or
    a run written outside ``run.root``. Names are shown escaped (``repr``)."""
    root_s, name_s = str(root), str(name)
    stamp, var = _stamp_source()
    if "\0" in root_s or "\0" in name_s:
        return "run.root/run.name holds a NUL character"
    if not name_s.strip() or PurePath(name_s) == PurePath("."):
        return f"run.name={name_s!r} is empty: name the run"
    if PurePath(name_s).is_absolute():
        return (f"run.name={name_s!r:.80} is an absolute path: the run folder must stay inside "
                f"run.root ({root_s[:200]}); give a plain name")
    if ".." in PurePath(name_s).parts:
        return (f"run.name={name_s!r:.80} goes up (..) out of run.root ({root_s[:200]}): the run "
                "folder must stay inside it; give a plain name")
    if (i := invisible_at(name_s)) is not None:
        return (f"run.name={name_s!r:.80} holds a control or bidirectional character "
                f"({name_s[i]!r} at position {i}): it would be in the run folder's name and in "
                "every line that shows it; give a plain name")
    if var and (i := invisible_at(stamp)) is not None:
        return (f"{var}={os.environ.get(var, '')!r:.80} holds a control or bidirectional "
                f"character ({stamp[i]!r}): the run folder's name must be plain text")
    seps = {os.sep, os.altsep or os.sep, "/"}
    if var and (any(s in stamp for s in seps) or stamp in (".", "..") or "\0" in stamp):
        return (f"{var}={os.environ.get(var, '')!r:.80} would make the run folder "
                f"{stamp!r:.80}: it must be one plain folder name (no path separator, not . or "
                "..) so the run stays inside run.root")
    base = Path(root_s)  # (as make_run_dir takes it: no ~ expansion)
    run_dir = base / name_s / stamp
    existing = nearest_existing(run_dir, links=False)  # (never raises: Path.exists did)
    limit = name_max(existing if os.path.isdir(existing) else Path("."))
    for key, text in (("run.name", name_s), (var or "the run stamp", stamp),
                      ("run.root", root_s)):
        part, size = longest_name(PurePath(text).parts)
        if size > limit:
            return (f"{key}: the folder name {part[:40]!r}... is {size} bytes, longer than the "
                    f"{limit} a file name may have (run folder {str(run_dir)[:100]}...)")
    if len(os.fsencode(str(run_dir.absolute()))) > MAX_PATH_BYTES:
        return (f"run folder {str(run_dir.absolute())[:80]!r}...: the path is longer than the "
                f"{MAX_PATH_BYTES} bytes it may have")
    for p in reversed((run_dir, *run_dir.parents)):
        if os.path.lexists(p) and not os.path.isdir(p):
            key = "run.root" if p == base or p in base.parents else "run.name"
            return (f"{key}: {p} is a file (or a link to nothing), not a folder: the run folder "
                    f"{run_dir} cannot be made")
    if existing != run_dir and not os.access(existing, os.W_OK | os.X_OK):
        return f"run.root: cannot create the run folder in {existing} (no write permission)"
    return None


def _run_stamp() -> str:
    for var in ("KNEEPLAN_RUN_STAMP", "SLURM_JOB_ID"):
        if os.environ.get(var):
            return os.environ[var] if var != "SLURM_JOB_ID" else f"slurm{os.environ[var]}"
    rdzv = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if rdzv not in ("", "none"):
        return f"torchrun-{rdzv}"
    return time.strftime("%Y%m%d-%H%M%S")


# Variables by which a cluster launcher tells a process where the other nodes' processes are
# (SLURM srun, torchrun / torchelastic, LSF, Open MPI, MPICH/PMI, or by hand: Lightning's
# MASTER_ADDR + NODE_RANK on each node).
LAUNCHER_VARS = (("SLURM_NTASKS",), ("TORCHELASTIC_RUN_ID",), ("GROUP_RANK",), ("LSB_JOBID",),
                 ("OMPI_COMM_WORLD_SIZE",), ("PMI_SIZE",), ("MV2_COMM_WORLD_SIZE",),
                 ("MASTER_ADDR", "NODE_RANK"), ("WORLD_SIZE", "RANK"))


def launcher_problem(num_nodes: Any, plugins: Any = None) -> str | None:
    """Why a run on ``num_nodes`` > 1 nodes cannot start from this process (None: it can): no
    launcher put it in a cluster, so it would wait for the other nodes for ever, deaf to
    Ctrl-C (walkthrough, session 30: ``make train NODES=2`` on a workstation). Trainer
    ``plugins`` (a cluster environment of the user's own) are trusted to know."""
    if not isinstance(num_nodes, int) or num_nodes <= 1 or plugins:
        return None
    if any(all(os.environ.get(v) for v in group) for group in LAUNCHER_VARS):
        return None
    return (f"num_nodes={num_nodes}, but no cluster launcher started this process (no SLURM "
            "srun, torchrun, LSF or MPI environment, nor MASTER_ADDR and NODE_RANK): alone it "
            "would wait for the other nodes for ever; start it on every node as README "
            "\"Multi-GPU and multi-node\" shows, or leave NODES unset")


def requeued_checkpoint(root: str | Path, name: str) -> Path | None:
    """The checkpoint a requeued SLURM job continues from (``SLURM_RESTART_COUNT`` > 0): the
    newest of Lightning's ``hpc_ckpt_*.ckpt`` (written on SIGUSR1 before a requeue) and
    ``checkpoints/last.ckpt`` in the job's own folder ``<root>/<name>/slurm<id>``; None for a
    first start, another launcher, or a folder without one. A requeued job started a new
    folder ``slurm<id>-1`` from scratch before."""
    job = os.environ.get("SLURM_JOB_ID", "")
    try:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        restarts = 0
    if not job or restarts < 1 or os.environ.get("KNEEPLAN_RUN_STAMP"):
        return None
    folder = Path(root) / name / f"slurm{job}"
    try:
        found = [*folder.glob("hpc_ckpt_*.ckpt"), folder / "checkpoints" / "last.ckpt"]
        found = [p for p in found if p.is_file() and not p.is_symlink()]
        return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None
    except OSError:
        return None


def make_run_dir(root: str | Path, name: str, reuse: Path | None = None) -> Path:
    """``<root>/<name>/<stamp>``; a DDP child reuses its parent's folder (``KNEEPLAN_RUN_DIR``);
    ``reuse`` (a resumed run's folder) is continued instead of opening a new one.

    The folder is not created here (rank 0's loggers create it).
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and int(os.environ.get("LOCAL_RANK", "0")) > 0:
        return Path(inherited)
    if reuse is not None:
        os.environ[RUN_DIR_ENV] = str(reuse.resolve())
        return reuse.resolve()
    base = Path(root) / name
    run_dir = base / _run_stamp()
    k = 1
    while run_dir.exists() and "KNEEPLAN_RUN_STAMP" not in os.environ:
        run_dir = base / f"{_run_stamp()}-{k}"
        k += 1
    if "KNEEPLAN_RUN_STAMP" in os.environ and _first_process() and _holds_a_run(run_dir):
        # (a stamp set by hand and used again mixed two runs' metrics and checkpoints in one
        # folder; the other nodes of a multi-node run find it made by this one: not refused)
        last = run_dir / "checkpoints" / "last.ckpt"
        raise ConfigFileError(
            f"KNEEPLAN_RUN_STAMP={os.environ['KNEEPLAN_RUN_STAMP']!r:.80}: the run folder "
            f"{run_dir} already holds a run; a second one there would mix their metrics and "
            f"checkpoints: choose another stamp, or continue it with --resume {last}")
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    return run_dir.resolve()


def _first_process() -> bool:
    """Whether this is the run's first process (global rank 0 on node 0) as far as the
    launcher says (torchrun's RANK / GROUP_RANK, SLURM_PROCID, NODE_RANK); True without one."""
    return all(os.environ.get(v, "0") in ("", "0")
               for v in ("RANK", "GROUP_RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"))


def _holds_a_run(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier run's metrics or checkpoints."""
    try:
        return (folder / "metrics.csv").exists() or any((folder / "checkpoints").glob("*.ckpt"))
    except OSError:
        return False


def find_last_checkpoint(root: str | Path, name: str, exclude: Path | None = None) -> Path:
    """The newest ``<root>/<name>/*/checkpoints/last.ckpt`` (for ``--resume last``)."""
    base = Path(root) / name
    found = [p for p in base.glob("*/checkpoints/last.ckpt")
             if exclude is None or p.resolve().parents[1] != exclude.resolve()]
    if not found:
        raise CheckpointError(
            f"{base}: --resume last: no earlier run with checkpoints/last.ckpt here (runs "
            f"named {name!r}; one trained with another CONFIG has that config's name: give the "
            "same CONFIG, or a checkpoint path)"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def run_folder_of(ckpt: Path) -> Path | None:
    """The run folder a checkpoint was written in (``<run>/checkpoints/x.ckpt``, or Lightning's
    ``<run>/hpc_ckpt_N.ckpt`` of a SLURM requeue, written into the run folder itself), else
    None."""
    ckpt = ckpt.absolute()
    run = ckpt.parent.parent
    if ckpt.parent.name == "checkpoints" and (run / "config.yaml").is_file():
        return run
    if ckpt.name.startswith("hpc_ckpt_") and (ckpt.parent / "config.yaml").is_file():
        return ckpt.parent  # (a requeue continued in slurm<id>-1 and lost it on the next)
    return None


def outside_link(run: Path) -> str | None:
    """What in the run folder ``run`` a resumed run must not write through: the first symbolic
    link inside it that leads out of it or loops ("a link out of it (link -> target)"), or more
    than ``MAX_RUN_ENTRIES`` entries; None when there is nothing.
    (``run`` itself may be reached through a link: the user's own layout.)

    A resumed run appends to ``metrics.csv``, rewrites ``config.yaml`` and deletes the previous
    best checkpoint: through a link placed in a shared run folder it overwrote or deleted files
    anywhere the user may write (fifth fuzz round). Links inside the folder (W&B's
    ``latest-run``) are left alone, and so are links inside an earlier W&B run's own folder
    (``wandb/<run>/...``): W&B itself links ``logs/debug-core.log`` to its cache in the home
    folder, and a resumed run starts a new W&B run folder, writing nothing through old ones.
    """
    top = run.resolve()
    seen = 0
    unreadable: list[OSError] = []  # (os.walk skips a folder it cannot list: its links unseen)
    for here, dirs, files in os.walk(run, followlinks=False, onerror=unreadable.append):
        in_old_wandb_run = _in_wandb_run_folder(Path(here), run)
        for name in (*dirs, *files):
            seen += 1
            if seen > MAX_RUN_ENTRIES:
                return f"more than {MAX_RUN_ENTRIES} entries (not a run folder?)"
            entry = Path(here) / name
            if entry.is_symlink() and not in_old_wandb_run:
                try:
                    target = entry.resolve(strict=False)
                except (OSError, RuntimeError):  # a link loop: not a run's own link either
                    return f"a link that loops ({entry} -> {os.readlink(entry)})"
                if target != top and top not in target.parents:
                    return f"a link out of it ({entry} -> {os.readlink(entry)})"
    if unreadable:
        err = unreadable[0]
        return f"a folder that cannot be read ({err.filename}: {err.strerror or err})"
    return None


def _in_wandb_run_folder(folder: Path, run: Path) -> bool:
    """Whether ``folder`` lies inside one W&B run's folder of ``run`` (``wandb/<run>/...``), a
    real folder (os.walk does not enter linked ones), which nothing of a resumed run writes."""
    parts = folder.relative_to(run).parts
    return len(parts) >= 2 and parts[0] == "wandb"
