"""Sweep worker: `python -m sweeps.run --trials N --study NAME [--storage URL] [options]`.

Runs N trials (this worker's count, like Optuna's `n_trials`) of one study, then prints the best
parameters found so far. Start it again, or on other nodes with the same `--storage` URL and
`--study`, and the workers share and continue the one study (trial numbers continue).
`--max-total-trials M` additionally stops every worker once the study holds M finished trials
(COMPLETE + PRUNED + FAIL; trials running elsewhere are not counted, so it may overshoot by at
most the number of other workers).

Arguments this parser does not know are passed to the training entry unchanged, e.g.
`python -m sweeps.run --trials 4 --study s --trainer.max_epochs=3`.

Before any trial the training arguments are checked once with the training CLI (at the search
box's corners), and the settings that define a trial's score and training (objective formula,
unit and weights, the resolved training config) are recorded in the study; a worker that would
continue a study with other settings is refused.

Exit status 0 when the study holds at least one completed trial, else 1; 2 for a usage, config
or storage problem (one line `sweeps.run: error: ...`, before any trial); 130 when Ctrl-C
stopped the sweep (the running trial is recorded as failed "interrupted" and its parameters are
queued again; run the same command to continue).
Outputs go to `<studies-dir>/<study>/`: `study.db` (the default SQLite storage) and `trials/tNNNN`
(each trial's training run). `python -m sweeps.report` writes the reports there.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from datamodules.config_file import ConfigFileError, check_config_file
from datamodules.one_line_parser import OneLineParser
from lightning_modules.malloc_tuning import keep_freed_memory
from sweeps.guards import (
    SETTINGS_ATTR,
    InterruptGuard,
    TrainingArgsError,
    check_run_root,
    check_training_args,
    data_problem,
    settings_problem,
    sweep_settings,
    training_settings,
)
from sweeps.objective import FitFn, ObjectiveSpec, TrainObjective
from sweeps.space import CLI_KEYS, SearchSpace, cli_overrides
from sweeps.storage import (
    DEFAULT_STUDIES_DIR,
    STORAGE_ERRORS,
    mask_url,
    open_storage,
    storage_problem,
    study_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/quick.yaml"  # relative to the working directory, else the repository
# No per-epoch validation pictures in sweeps (time, disk); pass --run.val_images=4 to get them.
SWEEP_TRAIN_DEFAULTS = ("--run.val_images=0",)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it)


def trial_args(number: int, run_dir: Path, study_name: str) -> list[str]:
    """Training arguments giving a trial its run folder and its W&B group (the study).

    The training entry writes into `<run.root>/<run.name>/<timestamp>/`, here
    `<study folder>/trials/tNNNN/<timestamp>/`.
    """
    return [
        f"--run.root={run_dir.parent}",
        f"--run.name={run_dir.name}",
        f"--wandb-group={study_name}",
        f"--wandb-name={study_name}-t{number:04d}",
    ]


def _range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"range {text!r} must be LOW,HIGH (e.g. 0,2)") from None
    return low, high


def _params(text: str) -> dict[str, float]:
    """``name=value[,name=value]`` as a dict; a name given twice is an error (the last one
    silently won)."""
    try:
        pairs = [(k.strip(), float(v)) for k, v in (kv.split("=") for kv in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"parameters {text!r} must be name=value[,name=value] (e.g. beta=0.6,alpha=1)"
        ) from None
    names = [k for k, _ in pairs]
    if twice := sorted({k for k in names if names.count(k) > 1}):
        raise argparse.ArgumentTypeError(f"parameters {text!r} give {', '.join(twice)} twice")
    return dict(pairs)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m sweeps.run", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      allow_abbrev=False)
    p.add_argument("--trials", type=int, required=True, help="trials this worker runs")
    p.add_argument("--study", required=True, help="study name (shared by all its workers)")
    p.add_argument("--storage", default=None,
                   help="database URL (postgresql://user:pw@host:5432/db); default "
                        "sqlite:///<studies-dir>/<study>/study.db")
    p.add_argument("--studies-dir", default=str(DEFAULT_STUDIES_DIR),
                   help="folder of study folders (default: studies)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="training config YAML")
    p.add_argument("--data-root", default=None, help="dataset folder passed to training")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    p.add_argument("--worker-index", type=int, default=None,
                   help="distinct per parallel worker, varies the sampler seed "
                        "(default: $SLURM_ARRAY_TASK_ID, $SLURM_PROCID or 0)")
    p.add_argument("--beta", type=_range, default=(0.0, 2.0), help="beta range LOW,HIGH")
    p.add_argument("--alpha", type=_range, default=(0.0, 3.0), help="alpha range LOW,HIGH")
    p.add_argument("--lr", type=_range, default=None,
                   help="also sample the network learning rate, log-uniform in LOW,HIGH")
    p.add_argument("--objective-unit", choices=("auto", "mm", "px"), default="auto",
                   help="landmark error unit (auto: mm when spacing is known, else px)")
    p.add_argument("--weight-lm", type=float, default=1.0, help="weight of landmark error")
    p.add_argument("--weight-iou", type=float, default=0.0, help="weight of (1 - mean IoU)")
    p.add_argument("--pruner", choices=("median", "threshold", "none"), default="median")
    p.add_argument("--prune-startup-trials", type=int, default=2,
                   help="median pruner: completed trials before pruning starts")
    p.add_argument("--prune-warmup-epochs", type=int, default=1,
                   help="median pruner: epochs of a trial never pruned")
    p.add_argument("--prune-above", type=float, default=None,
                   help="threshold pruner: prune when the epoch's objective exceeds this")
    p.add_argument("--tpe-startup-trials", type=int, default=8,
                   help="random trials before TPE models the results")
    p.add_argument("--enqueue", type=_params, action="append", default=[],
                   help="run these parameters first, e.g. beta=0.6,alpha=1 (repeatable; "
                        "skipped when the study already holds them)")
    p.add_argument("--max-total-trials", type=int, default=None,
                   help="stop once the study holds this many finished trials")
    p.add_argument("--heartbeat-interval", type=int, default=30,
                   help="seconds between heartbeats of a running trial")
    p.add_argument("--grace-period", type=int, default=None,
                   help="seconds without heartbeat before a trial is failed and retried "
                        "(default 2 x heartbeat interval)")
    p.add_argument("--max-retry", type=int, default=2,
                   help="re-runs of a trial whose worker died")
    return p


def argument_problem(args: argparse.Namespace) -> str | None:
    """Why a numeric argument is out of range, or an enqueued parameter unknown (None: fine);
    Optuna would refuse some later, misreported as a storage problem, and take others silently."""
    counts = [("--trials", args.trials, 0), ("--seed", args.seed, 0),
              ("--prune-startup-trials", args.prune_startup_trials, 0),
              ("--prune-warmup-epochs", args.prune_warmup_epochs, 0),
              ("--tpe-startup-trials", args.tpe_startup_trials, 0),
              ("--max-total-trials", args.max_total_trials, 1),
              ("--heartbeat-interval", args.heartbeat_interval, 1),
              ("--grace-period", args.grace_period, 1), ("--max-retry", args.max_retry, 0),
              ("--worker-index", args.worker_index, 0)]
    for flag, value, least in counts:
        if value is not None and value < least:
            return f"{flag} must be at least {least}, got {value}"
    for flag, value in (("--weight-lm", args.weight_lm), ("--weight-iou", args.weight_iou),
                        ("--prune-above", args.prune_above)):
        if value is not None and not math.isfinite(value):
            return f"{flag} must be a finite number, got {value}"
    for flag, rng in (("--beta", args.beta), ("--alpha", args.alpha), ("--lr", args.lr)):
        if rng is not None and not all(math.isfinite(v) for v in rng):
            return f"{flag} range must be finite, got {rng[0]},{rng[1]}"
    try:
        study_dir(args.study, args.studies_dir)  # a name that cannot be a folder
    except ValueError as err:
        return str(err)
    if args.pruner == "threshold" and args.prune_above is None:
        return "--pruner threshold needs --prune-above VALUE"
    ranges = {"beta": args.beta, "alpha": args.alpha}
    if args.lr is not None:
        ranges["lr"] = args.lr
    for params in args.enqueue:
        if unknown := sorted(set(params) - set(ranges)):
            return (f"--enqueue names {', '.join(unknown)}, which this sweep does not search "
                    f"(it searches {', '.join(sorted(ranges))})")
        for name, value in params.items():
            low, high = ranges[name]
            if not math.isfinite(value):
                return f"--enqueue {name}={value}: values must be finite numbers"
            if not low <= value <= high:  # Optuna would warn in passing and train it anyway
                return (f"--enqueue {name}={value:g} is outside the searched range --{name} "
                        f"{low:g},{high:g} (widen --{name} to include it)")
    return None


def make_pruner(args: argparse.Namespace) -> optuna.pruners.BasePruner:
    if args.pruner == "none":
        return optuna.pruners.NopPruner()
    if args.pruner == "threshold":  # --prune-above checked by argument_problem
        return optuna.pruners.ThresholdPruner(upper=args.prune_above)
    return optuna.pruners.MedianPruner(
        n_startup_trials=args.prune_startup_trials, n_warmup_steps=args.prune_warmup_epochs
    )


def worker_index(explicit: int | None) -> int:
    if explicit is not None:
        return explicit
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


class TrialSeededTPESampler(optuna.samplers.TPESampler):
    """TPE whose random draws are reseeded from (seed, trial number) before every trial.

    Trial numbers are unique within a study (the storage hands them out), so workers started
    at the same moment on a new study (same seed, same empty history) still draw distinct
    start-up samples, and a trial's draw does not depend on which worker runs it.
    """

    def __init__(self, *args, seed: int = 0, **kwargs) -> None:
        super().__init__(*args, seed=seed, **kwargs)
        self._base_seed = int(seed)

    def trial_seed(self, number: int) -> int:
        """The seed of trial ``number``."""
        return (self._base_seed * 1_000_003 + number * 7_919 + 17) % 2**32

    def before_trial(self, study: optuna.Study, trial) -> None:
        seed = self.trial_seed(trial.number)
        # Optuna keeps the TPE and the start-up RandomSampler generators in these attributes
        # (optuna 4-5); reseed both so that every draw of this trial follows from its number.
        self._rng.rng.seed(seed)
        self._random_sampler._rng.rng.seed(seed)
        super().before_trial(study, trial)


def open_study(
    args: argparse.Namespace, create: bool = True
) -> tuple[optuna.Study | None, bool]:
    """Create (unless ``create`` is False: then (None, False) for a study that does not exist)
    or join the study with a seeded TPE sampler and the pruner; True if this worker created it.

    The seed is `seed + 1009 * worker_index + trials already in the study`, and every trial
    reseeds the sampler's draws from that seed and its trial number (unique in the study), so a
    fresh local study is reproducible while parallel workers, even two started at the same
    moment on a new study, and restarted workers do not repeat each other's samples. The study
    name is unique in the storage, so exactly one of several workers started together creates
    it: that one records the settings, the others wait for them (`record_settings`).
    """
    storage = open_storage(args.storage, args.study, args.studies_dir,
                           heartbeat_interval=args.heartbeat_interval,
                           grace_period=args.grace_period, max_retry=args.max_retry)
    exists = _exists(storage, args.study)
    if not exists and not create:
        return None, False
    n_existing = len(storage.get_all_trials(storage.get_study_id_from_name(args.study),
                                            deepcopy=False)) if exists else 0
    seed = args.seed + 1009 * worker_index(args.worker_index) + n_existing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = TrialSeededTPESampler(
            seed=seed, n_startup_trials=args.tpe_startup_trials, multivariate=True,
            constant_liar=True,
        )
    try:
        storage.create_new_study([StudyDirection.MINIMIZE], args.study)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    study = optuna.load_study(study_name=args.study, storage=storage, sampler=sampler,
                              pruner=make_pruner(args))
    return study, created


def _exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def count_finished(study: optuna.Study) -> int:
    """Trials that count against ``--max-total-trials``: complete, pruned or failed, except the
    ones Ctrl-C interrupted (their parameters are queued to run again)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED)
               if not str(t.user_attrs.get("fail_reason", "")).startswith("interrupted"))


def stop_at_total(limit: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Optuna callback: stop this worker once the study holds ``limit`` trials by
    ``count_finished`` (Optuna's MaxTrialsCallback would also count interrupted ones)."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if count_finished(study) >= limit:
            study.stop()

    return callback


def format_best(study: optuna.Study) -> str:
    """One block of text: trial counts per state and the best trial's parameters."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    lines = [f"study {study.study_name!r}: {len(trials)} trials ("
             + ", ".join(f"{n} {k.lower()}" for k, n in counts.items() if n) + ")"]
    if counts["COMPLETE"] == 0:
        lines.append("no completed trial yet: no best parameters")
        return "\n".join(lines)
    best = study.best_trial
    metric = best.user_attrs.get("objective_metric", "objective")
    metric = metric if isinstance(metric, str) and len(metric) <= 100 else "objective"
    lines.append(f"best trial #{best.number}: {metric} objective = {best.value:.4f}")
    lines.append("best params: " + ", ".join(f"{k}={_param_text(v)}"
                                             for k, v in best.params.items()))
    usable = {k: v for k, v in best.params.items()
              if k in CLI_KEYS and isinstance(v, float) and math.isfinite(v)}
    if usable:  # (a trial's own config.yaml would name the trial's folder and W&B run)
        lines.append(f'train with them: make train CONFIG=<the sweep\'s> DATA=<the sweep\'s> '
                     f'ARGS="{" ".join(cli_overrides(usable))}" (and the sweep\'s own ARGS)')
    return "\n".join(lines)


def _param_text(value: object) -> str:
    """A parameter for the summary: a number as 4 digits, NaN (which SQLite stores as NULL and
    Optuna reads back as None) as nan, anything else (a categorical choice) shortened."""
    if value is None:
        return "nan"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.4g}"
    return str(value)[:40]


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove the folders this worker made (innermost first) that are still empty: a refused
    sweep leaves no ``studies/<name>/`` behind."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:  # not empty (another worker's study), or gone
            return


def _usage_error(message: str, code: int = 2) -> SystemExit:
    """Print the one-line usage/config/storage error (``code`` 1: bad input data); the caller
    raises the returned exit."""
    print(f"sweeps.run: error: {mask_url(message)}", file=sys.stderr)
    return SystemExit(code)  # README: exit codes


# How long a worker that joined a new, empty study waits for its creator's settings.
SETTINGS_WAIT_S = 60.0


def record_settings(study: optuna.Study, settings: dict, base_args: list[str],
                    created: bool = True) -> None:
    """Record the study's settings (new study), or refuse a worker whose settings differ.

    Only the worker that created the study records them; a worker that joined an empty study
    without settings waits up to `SETTINGS_WAIT_S` for the creator's (two workers started at
    the same moment would otherwise both write, the last write winning, and the first would
    train under settings the study no longer records). A study made by an older sweeps.run has
    no recorded settings: its objective formula (the `objective` attribute) is still compared,
    the rest is recorded with a warning.
    """
    attrs = study.user_attrs
    start, said = time.monotonic(), False
    while (not created and SETTINGS_ATTR not in attrs and "objective" not in attrs
           and not study.get_trials(deepcopy=False)
           and time.monotonic() - start < SETTINGS_WAIT_S):
        if not said and time.monotonic() - start > 2:  # (usually the creator takes ms)
            print(f"sweeps.run: study {study.study_name!r} is empty and has no settings yet: "
                  f"waiting up to {SETTINGS_WAIT_S:.0f} s for the worker that created it",
                  file=sys.stderr)
            said = True
        time.sleep(0.2)
        attrs = study.user_attrs
    recorded = attrs.get(SETTINGS_ATTR)
    if recorded is None:
        legacy = {"objective": attrs["objective"]} if "objective" in attrs else {}
        if problem := settings_problem(study.study_name, legacy, settings, complete=False):
            raise _usage_error(problem)
        if legacy or study.get_trials(deepcopy=False):
            print(f"sweeps.run: warning: study {study.study_name!r} has no recorded training "
                  "settings (made by an older sweeps.run): recording this run's; its earlier "
                  "trials are assumed to match them", file=sys.stderr)
    elif problem := settings_problem(study.study_name, recorded, settings):
        raise _usage_error(problem)
    elif new := sorted(set(settings) - set(recorded)):  # options added since: record them
        print(f"sweeps.run: warning: study {study.study_name!r} did not record "
              f"{', '.join(new[:4])}{', ...' if len(new) > 4 else ''}: recording this run's",
              file=sys.stderr)
    else:
        return
    study.set_user_attr(SETTINGS_ATTR, {**(recorded or {}), **settings})
    if "objective" not in attrs:
        study.set_user_attr("objective", settings["objective"])
        study.set_user_attr("train_args", base_args)


def run_sweep(argv: Sequence[str] | None = None, fit: FitFn | None = None) -> optuna.Study:
    """Parse `argv` like the command line, run this worker's trials, return the study.

    Raises SystemExit(2) for a usage, config or storage problem (one line, before any trial)
    and SystemExit(130) after Ctrl-C (the summary printed, the study kept).
    """
    args, train_extra = build_parser().parse_known_args(argv)
    if os.environ.get("LOCAL_RANK", "0") != "0":
        # Lightning's DDP launcher re-runs the command line in each extra rank: that would start
        # a second sweep worker. Trials use one device; run more workers instead.
        raise _usage_error("started as DDP rank > 0; sweep trials train on one device each "
                           "(do not pass --devices/--trainer.devices > 1); start more workers")
    if problem := argument_problem(args):
        raise _usage_error(problem)
    try:
        space = SearchSpace(beta=args.beta, alpha=args.alpha, lr=args.lr)
        spec = ObjectiveSpec(unit=args.objective_unit, weight_lm=args.weight_lm,
                             weight_iou=args.weight_iou)
    except ValueError as err:
        raise _usage_error(str(err)) from None
    config = Path(args.config)
    if not config.is_file() and not config.is_absolute() and (REPO_ROOT / config).is_file():
        config = REPO_ROOT / config
    if not config.is_file():
        raise _usage_error(f"training config {args.config}: no such file")
    try:  # once here, not once per failing trial
        check_config_file(config)
    except ConfigFileError as err:
        raise _usage_error(str(err)) from None
    # Sweep defaults go before the user's extra arguments, which may override them.
    base_args = ["--config", str(config), *SWEEP_TRAIN_DEFAULTS]
    if args.data_root is not None:
        base_args += [f"--data-root={args.data_root}"]
    base_args += train_extra
    try:  # the training CLI's own checks, once, instead of a traceback in every trial
        resolved = check_training_args(
            base_args, space, trial_args(0, check_run_root() / "t0000", args.study))
    except TrainingArgsError as err:
        raise _usage_error(str(err)) from None
    if problem := data_problem(resolved):  # a typo in DATA failed every trial, in the study
        raise _usage_error(problem, code=1)  # README: exit codes (bad input, as make train)
    settings = sweep_settings(spec, training_settings(resolved, space))

    folder = study_dir(args.study, args.studies_dir)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # removed if refused
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _usage_error(f"--studies-dir {args.studies_dir}: cannot make the study folder "
                           f"{folder}: {err.strerror or err}") from None
    storage_name = args.storage or f"sqlite:///{folder / 'study.db'}"
    db = (Path(storage_name.removeprefix("sqlite:///"))  # (a file this worker may create)
          if storage_name.startswith("sqlite:///") else None)
    new_db = None if db is None or db.exists() else db
    try:
        # --trials 0 with nothing to enqueue only prints a study: a new one would stay empty
        study, created = open_study(args, create=bool(args.trials or args.enqueue))
        if study is None:
            if new_db is not None and not optuna.get_all_study_names(storage_name):
                new_db.unlink(missing_ok=True)  # (unless another worker made a study there)
            _remove_empty(made)
            raise _usage_error(f"study {args.study!r} does not exist in {storage_name}: "
                               "--trials 0 runs nothing (it prints an existing study's best "
                               "trial); give --trials N to start it")
        record_settings(study, settings, base_args, created)
    except STORAGE_ERRORS as err:
        _remove_empty(made)
        raise _usage_error(f"cannot open the study storage {storage_name}: "
                           f"{storage_problem(err)}") from None
    for params in args.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)

    interrupt = InterruptGuard()
    completed = []  # this worker's completed trials

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            completed.append(trial.number)
        if interrupt.requested:  # Ctrl-C outside training: stop before the next trial
            study.stop()

    callbacks = [after_trial]
    if args.max_total_trials is not None:
        callbacks.append(stop_at_total(args.max_total_trials))
        if count_finished(study) >= args.max_total_trials:
            print(f"study {args.study!r} already holds {count_finished(study)} finished trials "
                  f"(>= --max-total-trials {args.max_total_trials}); nothing to run")
            args.trials = 0
    objective = TrainObjective(base_args, args.study, folder / "trials", space, spec,
                               trial_args=trial_args, fit=fit, interrupt=interrupt)
    if args.trials:
        interrupt.install()
        try:
            study.optimize(objective, n_trials=args.trials, catch=(Exception,),
                           callbacks=callbacks, gc_after_trial=True)
        finally:
            interrupt.restore()
    # Optuna checks heartbeats when a trial starts; check once more so a dead worker's trial
    # does not stay RUNNING when this was the study's last trial (its retry waits in the queue).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    print(format_best(study), flush=True)
    if interrupt.requested:
        print(f"sweeps.run: interrupted after {len(completed)} completed trials (study "
              f"{args.study!r} kept; run the same command to continue)", file=sys.stderr,
              flush=True)
        raise SystemExit(EXIT_INTERRUPTED)
    return study


def main(argv: Sequence[str] | None = None) -> int:
    keep_freed_memory()  # a process that trains: reuse freed activations (malloc_tuning.py)
    try:
        study = run_sweep(argv)
    except KeyboardInterrupt:  # Ctrl-C outside the trials' handler (checks, storage)
        print("sweeps.run: interrupted (run the same command to continue)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else 1


if __name__ == "__main__":
    sys.exit(main())
