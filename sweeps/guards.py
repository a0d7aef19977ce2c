"""Checks a sweep makes before its first trial, and its Ctrl-C handling.

- `check_training_args`: the trials' training arguments go once through the training CLI's own
  parsing and checks (`lightning_modules.train`: config file, unknown keys, types, value rules,
  Lightning's trainer settings), with the search box's corners as the sampled values, so a bad
  option is one line before any trial instead of a traceback in every trial. It returns the
  resolved training config.
- `sweep_settings` / `settings_problem`: what defines a trial's score (objective formula, unit,
  weights) and its training (the resolved config, less the sampled and run-folder keys) is
  recorded in the study; a worker with other settings is refused, since its trials would be
  ranked on one scale with trials scored or trained differently.
- `InterruptGuard`: Ctrl-C stops the sweep instead of failing one trial and starting the next.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sweeps.space import CLI_KEYS, SearchSpace, cli_overrides

# Resolved-config keys that do not change what a trial learns or how it is scored: display,
# logging, loader processes. Everything else (trainer, model, data, seed) must match.
NOT_RESULT_KEYS = frozenset({
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps",
    "trainer.enable_checkpointing", "trainer.logger", "trainer.default_root_dir",
    "trainer.enable_autolog_hparams", "trainer.model_registry", "trainer.profiler",
    "data.num_workers", "data.pin_memory", "data.persistent_workers",
})
# Config keys naming files whose content defines the data (recorded as a hash as well).
FILE_KEYS = ("data.phantom_config", "data.split_file")
SETTINGS_ATTR = "sweep_settings"


class TrainingArgsError(ValueError):
    """The training CLI refused the sweep's training arguments (one line)."""


def corner_args(space: SearchSpace) -> list[list[str]]:
    """Training overrides at the search box's low and high corners."""
    corners = []
    for end in (0, 1):
        params = {"beta": space.beta[end], "alpha": space.alpha[end]}
        if space.lr is not None:
            params["lr"] = space.lr[end]
        corners.append(cli_overrides(params))
    return corners


def check_training_args(base_args: Sequence[str], space: SearchSpace,
                        trial_args: Sequence[str] = ()) -> dict[str, Any]:
    """Parse and check the trials' training arguments with the training CLI, build nothing
    that trains, and return the resolved config (at the low corner) as a nested dict.

    Raises :class:`TrainingArgsError` with the training CLI's one-line reason.
    """
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    from datamodules.config_file import ConfigFileError
    from lightning_modules.checkpoints import CheckpointError
    from lightning_modules.train import make_cli, translate_args

    config: dict[str, Any] = {}
    for k, overrides in enumerate(corner_args(space)):
        argv = translate_args([*base_args, *overrides, *trial_args], announce=False)
        where = "at the low corner" if k == 0 else "at the high corner"
        try:
            with _quiet(), _kept_process_state():
                cli = make_cli(argv)
        except (ConfigFileError, MisconfigurationException, CheckpointError) as err:
            raise TrainingArgsError(f"training arguments: {_first_line(err)}") from None
        except SystemExit as err:
            if err.code in (0, None):  # --help / --print_config: the user asked for it
                raise
            raise TrainingArgsError(f"training arguments refused (status {err.code})") from None
        except Exception as err:  # the same would fail every trial
            raise TrainingArgsError(f"training arguments {where} of the search box: "
                                    f"{type(err).__name__}: {_first_line(err)}") from None
        if k == 0:
            config = cli.config.as_dict()
        del cli
    return config


def check_run_root() -> Path:
    """A run root for the check's trial arguments (never created: folders are made lazily)."""
    return Path(tempfile.gettempdir()) / "kneeplan-sweep-check"


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).strip().splitlines()[:1]) or type(err).__name__
    return text[:400]


@contextlib.contextmanager
def _kept_process_state() -> Iterator[None]:
    """Undo what building the trainer sets for its run: environment variables (the run
    folder, WANDB_MODE) and torch's thread count (`run.cpu_threads`)."""
    import torch

    env, threads = dict(os.environ), torch.get_num_threads()
    try:
        yield
    finally:
        for key in set(os.environ) - set(env):
            del os.environ[key]
        os.environ.update(env)
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No Lightning info lines, warnings or prints during the check (errors still raise)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


# ----------------------------------------------------------------------------- study settings
def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value


def _sha256(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def training_settings(config: Mapping[str, Any], space: SearchSpace) -> dict[str, Any]:
    """The resolved training config as `{"trainer.max_epochs": 2, ...}`, without the sampled
    keys, the run folder section (`run.*`), the config file paths and `NOT_RESULT_KEYS`;
    files named by `FILE_KEYS` add the hash of their content, dataset folders (`FOLDER_KEYS`)
    are named by their real path (`data/` and a link to it are one folder) and add a digest of
    their files' names and sizes (images added, removed or replaced under the same name)."""
    flat: dict[str, Any] = {}
    _flatten(config, "", flat)
    sampled = {CLI_KEYS[p] for p in ("beta", "alpha")} | ({CLI_KEYS["lr"]} if space.lr else set())
    keep = {k: v for k, v in flat.items()
            if k != "config" and not k.startswith("run.") and k not in NOT_RESULT_KEYS
            and k not in sampled}
    for key in FILE_KEYS:
        if isinstance(keep.get(key), str) and (digest := _sha256(keep[key])):
            keep[f"{key} content (sha256)"] = digest
    keep = _real_folders(keep)
    for key in FOLDER_KEYS:
        if isinstance(keep.get(key), str) and keep[key].strip():
            keep[f"{key} files (names and sizes, sha256)"] = folder_digest(keep[key])
    return json.loads(json.dumps(keep, default=str, sort_keys=True))


def _real_folders(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with the dataset folders (``FOLDER_KEYS``) by their real path: ``data/``,
    ``./data/`` and a link to it are one folder (a study recorded before this, with the text
    as given, compares the same way)."""
    out = dict(settings)
    for key in FOLDER_KEYS:
        if isinstance(out.get(key), str) and out[key].strip():
            out[key] = os.path.realpath(os.path.expanduser(out[key]))
    return out


FOLDER_KEYS = ("data.data_root", "data.test_root")  # dataset folders (datamodules.dataset_io)
DATASET_SUBFOLDERS = ("images", "masks", "annotations")


def folder_digest(root: str | Path) -> str:
    """SHA-256 (16 hex digits) of the name and size of every file in a dataset folder's
    ``images/``, ``masks/`` and ``annotations/`` (their top level, as training reads them): a
    study continued on a folder whose images were added, removed or replaced is refused, at
    the cost of a listing (no reading)."""
    digest = hashlib.sha256()
    for sub in DATASET_SUBFOLDERS:  # (their top level, as training reads them)
        try:
            with os.scandir(Path(root) / sub) as it:
                entries = sorted((e.name, e.stat().st_size) for e in it if e.is_file())
        except OSError:
            entries = []
        for name, size in entries:
            digest.update(f"{sub}/{name}\0{size}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def data_problem(config: Mapping[str, Any]) -> str | None:
    """Why the trials' dataset folders would be refused by every trial (the training's own
    validation, ``datamodules.validate``, run once here), or None: a mistyped ``DATA`` failed
    every trial with a traceback and left a study that no later run with the right folder
    could continue."""
    from datamodules.validate import validate_dataset

    data = config.get("data") or {}
    if not data.get("validate", True):
        return None
    for key in ("data_root", "test_root"):
        root = data.get(key)
        if not isinstance(root, str) or not root:
            continue
        report = validate_dataset(os.path.expanduser(root))
        if not report.passes(bool(data.get("strict_validation", False))):
            first = (report.errors or report.warnings)[0]
            more = len(report.errors) + len(report.warnings) - 1
            return (f"data.{key}: {first}" + (f" (and {more} more)" if more > 0 else "")
                    + f"; see make validate-data DATA={root}")
    return None


def sweep_settings(spec: Any, training: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that defines a trial's score and training, flat, objective first."""
    objective = {"--objective-unit": spec.unit, "--weight-lm": spec.weight_lm,
                 "--weight-iou": spec.weight_iou, "objective": spec.describe()}
    return json.loads(json.dumps({**objective, **dict(training)}, default=str))


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def _one_sided_change(key: str, keys: set[str]) -> bool:
    """Whether ``key``, set on one side only, is a changed setting: it lies inside a dict-valued
    option (three or more parts: ``model.net_kwargs.head_channels``, ``data.augment.scale``,
    ``data.phantom_overrides.factors_off``), or the other side holds the same option as a whole
    (``data.phantom_overrides: null`` against ``data.phantom_overrides.factors_off``). A
    two-part key on one side only is an option another code version added or removed."""
    if key.count(".") >= 2:
        return True
    return any(o != key and (o.startswith(key + ".") or key.startswith(o + ".")) for o in keys)


def _value(settings: Mapping[str, Any], key: str) -> Any:
    """``key``'s value, or the dict of its keys (``key.a``, ``key.b``), or "(not set)"."""
    if key in settings:
        return settings[key]
    sub = {k[len(key) + 1:]: v for k, v in settings.items() if k.startswith(key + ".")}
    return sub if sub else "(not set)"


def settings_problem(study_name: str, recorded: Mapping[str, Any],
                     current: Mapping[str, Any], complete: bool = True) -> str | None:
    """Why this worker may not continue the study (a recorded setting differs), or None.
    ``complete``: ``recorded`` is a full record, so a setting present on one side only can be a
    change too (``_one_sided_change``); False for the objective alone of an older study."""
    recorded = _real_folders(recorded)  # (a study recorded before folders were real paths)
    differ = [k for k in current if k in recorded and recorded[k] != current[k]]
    if complete:
        keys = set(recorded) | set(current)
        differ += sorted(k for k in set(recorded) ^ set(current) if _one_sided_change(k, keys))
    # an option named once: data.phantom_overrides, not also data.phantom_overrides.factors_off
    differ = [k for k in differ if not any(k.startswith(o + ".") for o in differ)]
    if not differ:
        return None
    key = differ[0]
    more = f" (and {len(differ) - 1} more: {', '.join(differ[1:4])}" + (
        ", ...)" if len(differ) > 4 else ")") if len(differ) > 1 else ""
    return (f"study {study_name!r} was run with {key}={_show(_value(recorded, key))}, this "
            f"run has {key}={_show(_value(current, key))}{more}: its trials would be scored "
            "or trained differently and ranked on one scale with the earlier ones (use a new "
            "--study, or the study's settings)")


# ----------------------------------------------------------------------------- Ctrl-C
class InterruptGuard:
    """SIGINT handler of a sweep worker.

    Ctrl-C sets `requested`. During training (`training()`) it also raises KeyboardInterrupt
    once, so Lightning stops the trainer (its graceful shutdown ignores further Ctrl-C until it
    is done; training then raises TrainingInterrupted); outside training (bookkeeping, storage
    writes) it only sets the flag, so a finished trial's value is still recorded, and the sweep
    stops
    before the next trial. Installed only in the main thread (signals are delivered there).
    """

    def __init__(self) -> None:
        self.requested = False
        self._training = False
        self._installed = False
        self._previous: Any = None

    def install(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self._training:
            self._training = False  # one KeyboardInterrupt per training
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        self._training = True
        try:
            yield
        finally:
            self._training = False
            if self._installed:  # Lightning / training replaced it after a Ctrl-C
                signal.signal(signal.SIGINT, self._handle)
