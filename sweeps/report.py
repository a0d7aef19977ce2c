"""Sweep report: `python -m sweeps.report --study NAME [--storage URL]`.

Writes into `<studies-dir>/<study>/`:
- `best_trial.json`: the best completed trial (number, objective, params, metrics);
- `trials.csv`, `trials.md`: every trial (number, state, objective, params, fail reason, ...);
- `trials_beta_alpha.png`: every trial's (beta, alpha), marked by state (complete, pruned,
  failed) and labelled with its objective;
- `contour_beta_alpha.png`: Optuna's contour of the objective over beta x alpha, and
  `param_importance.png` (PED-ANOVA), once >= 3 completed trials with distinct beta and alpha
  exist (with fewer, a contour is an interpolation artefact; a message says so).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from sweeps.storage import DEFAULT_STUDIES_DIR, default_storage_url, normalise_url  # noqa: E402
from sweeps.storage import study_dir as _study_dir  # noqa: E402


def load_study(name: str, storage: str | None, studies_dir: str | Path) -> optuna.Study:
    """Load an existing study; a clear error when it does not exist."""
    if storage is None:
        db = _study_dir(name, studies_dir) / "study.db"
        if not db.is_file():
            raise SystemExit(f"sweeps.report: no study database {db} (run `make sweep` first, "
                             "or pass --storage URL)")
        storage = default_storage_url(name, studies_dir)
    try:
        return optuna.load_study(study_name=name, storage=normalise_url(storage))
    except KeyError:
        raise SystemExit(f"sweeps.report: study {name!r} not found in {storage}") from None


def trial_rows(study: optuna.Study) -> tuple[list[str], list[dict]]:
    """Header and one dict per trial for the CSV/Markdown tables."""
    trials = study.get_trials(deepcopy=False)
    names = {p for t in trials for p in t.params}
    first = ("beta", "alpha", "lr")
    params = [p for p in first if p in names] + sorted(names - set(first))
    header = ["number", "state", "objective", *params, "epochs", "duration_s", "worker",
              "retry_of", "fail_reason"]
    rows = []
    for t in trials:
        row = {"number": t.number, "state": t.state.name, "objective": t.value}
        row.update({p: t.params.get(p) for p in params})
        row["epochs"] = t.user_attrs.get("epochs")
        row["duration_s"] = (round(t.duration.total_seconds(), 1)
                             if t.duration is not None else None)
        row["worker"] = t.user_attrs.get("worker")
        row["retry_of"] = t.system_attrs.get("failed_trial")
        row["fail_reason"] = fail_reason(t)
        rows.append(row)
    return header, rows


def fail_reason(t: FrozenTrial) -> str | None:
    """The recorded reason; a FAIL without one was failed by a lost heartbeat (dead worker)."""
    if t.state != TrialState.FAIL:
        return None
    return t.user_attrs.get("fail_reason") or "worker lost (no heartbeat): killed or pre-empted"


def _fmt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v).replace("|", "/").replace("\n", " ")


def write_tables(study: optuna.Study, folder: Path) -> tuple[Path, Path]:
    header, rows = trial_rows(study)
    csv_path, md_path = folder / "trials.csv", folder / "trials.md"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    lines = [f"# Study `{study.study_name}`", ""]
    if "objective" in study.user_attrs:
        lines += [f"Objective (minimised): {study.user_attrs['objective']}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(r[h]) for h in header) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def write_best(study: optuna.Study, folder: Path) -> Path | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    path = folder / "best_trial.json"
    if not complete:
        path.unlink(missing_ok=True)
        return None
    best = study.best_trial
    data = {
        "study": study.study_name,
        "objective": study.user_attrs.get("objective"),
        "objective_metric": best.user_attrs.get("objective_metric"),
        "number": best.number,
        "value": best.value,
        "params": best.params,
        "metrics": best.user_attrs.get("metrics", {}),
        "epochs": best.user_attrs.get("epochs"),
        "run_dir": best.user_attrs.get("run_dir"),
        "n_trials": len(study.get_trials(deepcopy=False)),
        "n_complete": len(complete),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _complete_with(study: optuna.Study, params: Sequence[str]) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if all(p in t.params for p in params)]


MIN_CONTOUR_TRIALS = 3  # a contour through fewer points is an interpolation artefact


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Scatter of all trials by state; Optuna contour (beta x alpha) and importance when the
    study holds at least MIN_CONTOUR_TRIALS completed trials with distinct beta and alpha."""
    from optuna.visualization import matplotlib as ovm

    for stale in ("contour_beta_alpha.png", "param_importance.png", "trials_beta_alpha.png"):
        (folder / stale).unlink(missing_ok=True)
    written = [_scatter(study, folder / "trials_beta_alpha.png")]
    done = _complete_with(study, ("beta", "alpha"))
    enough = all(len({t.params[p] for t in done}) >= MIN_CONTOUR_TRIALS for p in ("beta", "alpha"))
    if not enough:
        print(f"sweeps.report: {len(done)} completed trials; the contour and importance plots "
              f"need {MIN_CONTOUR_TRIALS} with distinct beta and alpha")
        return written
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = ovm.plot_contour(study, params=["beta", "alpha"])
        ax.set_title(f"{study.study_name}: objective over beta x alpha "
                     f"({len(done)} completed trials)")
        written.append(_save(ax, folder / "contour_beta_alpha.png"))
        try:
            ev = optuna.importance.PedAnovaImportanceEvaluator()
            ax = ovm.plot_param_importances(study, evaluator=ev)
            ax.set_title(f"{study.study_name}: parameter importance (PED-ANOVA, "
                         f"{len(done)} completed trials)")
            written.append(_save(ax, folder / "param_importance.png"))
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            print(f"sweeps.report: parameter importance skipped ({err})")
            plt.close("all")
    return written


def _save(ax: object, path: Path) -> Path:
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure  # type: ignore[union-attr]
    fig.set_size_inches(7, 5.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _scatter(study: optuna.Study, path: Path) -> Path:
    """Where each trial sampled (beta, alpha), marked by state and labelled with its value."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    styles = {TrialState.COMPLETE: ("o", "tab:green"), TrialState.PRUNED: ("s", "tab:orange"),
              TrialState.FAIL: ("x", "tab:red"), TrialState.RUNNING: ("^", "tab:blue"),
              TrialState.WAITING: ("v", "tab:gray")}
    trials = [t for t in study.get_trials(deepcopy=False) if {"beta", "alpha"} <= set(t.params)]
    labels: dict[tuple[float, float], list[str]] = {}
    for state, (marker, color) in styles.items():
        pts = [t for t in trials if t.state == state]
        if pts:
            ax.scatter([t.params["beta"] for t in pts], [t.params["alpha"] for t in pts],
                       marker=marker, color=color, s=60, label=f"{state.name.lower()} ({len(pts)})")
    for t in trials:  # a retried trial sits on its original: one label per point
        value = f" {t.value:.3g}" if t.value is not None and t.state != TrialState.FAIL else ""
        labels.setdefault((t.params["beta"], t.params["alpha"]), []).append(f"#{t.number}{value}")
    for (beta, alpha), text in labels.items():
        ax.annotate(", ".join(text), (beta, alpha), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    if trials:  # show the whole searched box, so its coverage is visible
        for name, setter in (("beta", ax.set_xlim), ("alpha", ax.set_ylim)):
            dist = trials[-1].distributions[name]
            low, high = getattr(dist, "low", None), getattr(dist, "high", None)
            if low is not None and high is not None and high > low:
                pad = 0.04 * (high - low)
                setter(low - pad, high + pad)
    ax.set_xlabel("beta")
    ax.set_ylabel("alpha")
    ax.set_title(f"{study.study_name}: sampled beta, alpha of {len(trials)} trials "
                 "(label: #number objective)", fontsize=10)
    if trials:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no trials yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(study: optuna.Study, folder: Path) -> list[Path]:
    """All report files for `study` into `folder`; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = list(write_tables(study, folder))
    best = write_best(study, folder)
    if best is not None:
        paths.append(best)
    paths += write_plots(study, folder)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sweeps.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--study", required=True)
    p.add_argument("--storage", default=None, help="database URL (default: the study's SQLite)")
    p.add_argument("--studies-dir", default=str(DEFAULT_STUDIES_DIR))
    p.add_argument("--out", default=None, help="output folder (default: the study folder)")
    args = p.parse_args(argv)
    study = load_study(args.study, args.storage, args.studies_dir)
    folder = Path(args.out) if args.out else _study_dir(args.study, args.studies_dir)
    for path in write_report(study, folder):
        print(f"wrote {path}")
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n == 0:
        print("no completed trial: best_trial.json not written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
