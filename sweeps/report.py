"""Sweep report: `python -m sweeps.report --study NAME [--storage URL]`.

Writes into `<studies-dir>/<study>/`:
- `best_trial.json`: the best completed trial (number, objective, params, metrics);
- `trials.csv`, `trials.md`: every trial (number, state, objective, params, fail reason, ...);
- `trials_beta_alpha.png`: every trial's (beta, alpha) in the searched box, completed ones
  coloured by their objective (colour bar with its unit), others marked by state (pruned,
  failed, running), each labelled `#number objective`;
- `contour_beta_alpha.png`: the objective linearly interpolated between completed trials
  (inside their convex hull only), and `param_importance.png` (PED-ANOVA), once the study holds
  MIN_CONTOUR_TRIALS (8) completed trials with >= 3 distinct beta and alpha; with fewer a
  contour is an interpolation artefact: it is not drawn, the scatter says so, and so does the
  report's output.
Every plot has beta on x and alpha on y, and one title.
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
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Annotation  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from datamodules.one_line_parser import OneLineParser
from datamodules.path_limits import replace_link
from datamodules.real_numbers import finite_real
from sweeps.storage import (  # noqa: E402
    DEFAULT_STUDIES_DIR,
    STORAGE_ERRORS,
    check_sqlite_file,
    default_storage_url,
    mask_url,
    normalise_url,
    sqlite_path,
    storage_problem,
)
from sweeps.storage import study_dir as _study_dir  # noqa: E402


class ReportError(SystemExit):
    """A usage or storage problem of the report: `main` prints `sweeps.report: error: <reason>`
    and exits with status 2 (uncaught elsewhere, it exits with its one-line message)."""

    def __init__(self, reason: str) -> None:
        self.reason = mask_url(reason)
        super().__init__(f"sweeps.report: {self.reason}")


def load_study(name: str, storage: str | None, studies_dir: str | Path) -> optuna.Study:
    """Load an existing study; :class:`ReportError` (one line) when it cannot be."""
    if storage is None:
        db = _study_dir(name, studies_dir) / "study.db"
        if not db.is_file():
            raise ReportError(f"no study database {db} (run `make sweep` first, or pass "
                              "--storage URL)")
        storage = default_storage_url(name, studies_dir)
    try:
        url = normalise_url(storage)
        if (db := sqlite_path(url)) is not None and not db.exists():  # (Optuna would make it:
            # a mistyped path left an empty database behind a command that only reads)
            raise ReportError(f"no study database {db} (check --storage)")
        check_sqlite_file(url)  # a trigger or view in a shared SQLite file: refused unrun
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        raise ReportError(f"study {name!r} not found in {mask_url(storage)}") from None
    except STORAGE_ERRORS as err:
        # not a database, a damaged one, one of another Optuna schema, no driver: one line
        raise ReportError(f"cannot open the study storage {mask_url(storage)}: "
                          f"{storage_problem(err)}") from None
    if problem := study_problem(study):
        raise ReportError(f"cannot read study {name!r} in {mask_url(storage)}: {problem}")
    return study


# Errors Optuna raises on rows it cannot parse (hand-edited or damaged storage), e.g. a JSON
# distribution nested too deeply (RecursionError is a RuntimeError), of an unknown kind
# (ValueError, KeyError), or with attributes of the wrong type (TypeError).
_ROW_ERRORS = (*STORAGE_ERRORS, TypeError, KeyError, AttributeError, IndexError, OverflowError)


def study_problem(study: optuna.Study) -> str | None:
    """Why the report cannot use a loaded study (rows Optuna cannot parse, several
    objectives), or None; reads every trial once (Optuna caches finished ones)."""
    try:
        n_objectives = len(study.directions)
        study.user_attrs  # noqa: B018 (parsed on access)
        study.get_trials(deepcopy=False)
    except RecursionError:
        return ("Optuna cannot parse its rows: a stored JSON value is nested too deeply "
                "(the storage was edited or is damaged)")
    except _ROW_ERRORS as err:
        return (f"Optuna cannot parse its rows ({type(err).__name__}: {storage_problem(err)}; "
                "the storage was edited or is damaged)")
    if n_objectives != 1:
        return f"it has {n_objectives} objectives; a kneeplan sweep minimises one"
    return None


# User attributes and parameters are copied into the reports only up to this size (characters
# of their JSON text, about): a stored attribute of millions of values would make a report of
# hundreds of MB and take GBs of memory to write. Larger ones are left out with one warning.
MAX_ATTR_CHARS = 100_000
_left_out: dict[str, None] = {}  # what write_report leaves out (ordered set), warned once


def _too_large(value: object, limit: int = MAX_ATTR_CHARS) -> bool:
    """True when `value`'s JSON text would exceed about `limit` characters; looks at no more
    than about `limit` items (a list of 20 M values is not walked)."""
    budget, stack = limit, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            budget -= len(v) + 2
        elif isinstance(v, dict):
            budget -= 2 + 4 * len(v)
            if budget >= 0:
                stack.extend(v.keys())
                stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            budget -= 2 + 2 * len(v)
            if budget >= 0:
                stack.extend(v)
        else:
            budget -= len(str(v)) if isinstance(v, (int, float)) else 8
        if budget < 0:
            return True
    return False


def _bounded(value: object, what: str) -> object:
    """`value`, or a placeholder naming its omission when it is too large for a report."""
    if not _too_large(value):
        return value
    _left_out.setdefault(what)
    return f"<left out: larger than {MAX_ATTR_CHARS // 1000} kB>"


def _attr(t: FrozenTrial, key: str, default: object = None) -> object:
    return _bounded(t.user_attrs.get(key, default), f"trial #{t.number} {key!r}")


def _study_attr(study: optuna.Study, key: str) -> object:
    return _bounded(study.user_attrs.get(key), f"study {key!r}")


def trial_rows(study: optuna.Study) -> tuple[list[str], list[dict]]:
    """Header and one dict per trial for the CSV/Markdown tables."""
    trials = study.get_trials(deepcopy=False)
    names = {p for t in trials for p in t.params}
    names |= {p for t in trials if t.state == TrialState.WAITING
              and isinstance(t.system_attrs.get("fixed_params"), dict)
              for p in t.system_attrs["fixed_params"] if isinstance(p, str)}
    first = ("beta", "alpha", "lr")
    params = [p for p in first if p in names] + sorted(names - set(first))
    header = ["number", "state", "objective", *params, "epochs", "duration_s", "worker",
              "retry_of", "fail_reason"]
    rows = []
    for t in trials:
        row = {"number": t.number, "state": t.state.name, "objective": t.value}
        row.update({p: _param(t, p) for p in params})
        row["epochs"] = _attr(t, "epochs")
        row["duration_s"] = (round(t.duration.total_seconds(), 1)
                             if t.duration is not None else None)
        row["worker"] = _attr(t, "worker")
        # a re-run after a lost heartbeat (Optuna's attribute) or after Ctrl-C (ours)
        row["retry_of"] = (_bounded(t.system_attrs["failed_trial"], f"trial #{t.number} "
                                    "'failed_trial'") if "failed_trial" in t.system_attrs
                           else _attr(t, "retry_of"))
        row["fail_reason"] = fail_reason(t)
        rows.append(row)
    return header, rows


def fail_reason(t: FrozenTrial) -> str | None:
    """The recorded reason; a FAIL without one was failed by a lost heartbeat (dead worker)."""
    if t.state != TrialState.FAIL:
        return None
    return _attr(t, "fail_reason") or "worker lost (no heartbeat): killed or pre-empted"


def _param(t: FrozenTrial, name: str) -> object:
    """A trial's parameter for the tables: absent is None (an empty cell); a NaN one (SQLite
    stores NaN as NULL, which Optuna reads back as None) is shown as nan."""
    if name in t.params:
        value = t.params[name]
    else:  # a queued trial (a Ctrl-C'd one's retry) shows the values it will run with
        fixed = t.system_attrs.get("fixed_params") if t.state == TrialState.WAITING else None
        if not isinstance(fixed, dict) or name not in fixed:
            return None
        value = fixed[name]
    return math.nan if value is None else _bounded(value, f"trial #{t.number} param {name!r}")


def _fmt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v).replace("|", "/").replace("\n", " ")


def write_tables(study: optuna.Study, folder: Path) -> tuple[Path, Path]:
    header, rows = trial_rows(study)
    csv_path, md_path = folder / "trials.csv", folder / "trials.md"
    with replace_link(csv_path).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    lines = [f"# Study `{_fmt(study.study_name)}`", ""]
    if "objective" in study.user_attrs:
        lines += [f"Objective (minimised): {_fmt(_study_attr(study, 'objective'))}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(r[h]) for h in header) + " |" for r in rows]
    replace_link(md_path).write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def write_best(study: optuna.Study, folder: Path) -> Path | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    path = folder / "best_trial.json"
    if not complete:
        path.unlink(missing_ok=True)
        return None
    best = best_trial(study, complete)
    data = {
        "study": study.study_name,
        "objective": _study_attr(study, "objective"),
        "objective_metric": _attr(best, "objective_metric"),
        "number": best.number,
        "value": best.value,
        "params": {p: _param(best, p) for p in best.params},
        "metrics": _attr(best, "metrics", {}),
        "epochs": _attr(best, "epochs"),
        "run_dir": _attr(best, "run_dir"),
        "n_trials": len(study.get_trials(deepcopy=False)),
        "n_complete": len(complete),
    }
    replace_link(path).write_text(json.dumps(data, indent=2) + "\n")
    return path


def best_trial(study: optuna.Study, complete: Sequence[FrozenTrial]) -> FrozenTrial:
    """The best of the completed trials (lowest number among equals; a NaN value last), like
    `study.best_trial` without its deep copy of every attribute."""
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0

    def key(t: FrozenTrial) -> tuple[bool, float, int]:
        bad = t.value is None or math.isnan(t.value)
        return bad, 0.0 if bad else sign * t.value, t.number

    return min(complete, key=key)


def _finite(v: object) -> bool:
    """A finite real number (``datamodules.real_numbers``: not a bool, a huge int is inf)."""
    return finite_real(v) is not None


def _complete_with(study: optuna.Study, params: Sequence[str]) -> list[FrozenTrial]:
    """Completed trials with a finite objective and finite values of `params`."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if _finite(t.value) and all(_finite(t.params.get(p)) for p in params)]


# A contour interpolated between fewer completed trials draws a landscape that is not there.
MIN_CONTOUR_TRIALS = 8
AXES = ("beta", "alpha")  # x, y in every plot
STATE_STYLES = {TrialState.PRUNED: ("s", "tab:orange"), TrialState.FAIL: ("x", "tab:red"),
                TrialState.RUNNING: ("^", "tab:blue"), TrialState.WAITING: ("v", "tab:gray")}
CMAP = "viridis"


def objective_label(study: optuna.Study) -> str:
    """Colour-bar label with the objective's unit, e.g. ``objective (mm), lower is better``."""
    metrics = {m if isinstance(m := t.user_attrs.get("objective_metric"), str) else ""
               for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    units = {"mm" if "_mm" in m else "px" if "_px" in m else "" for m in metrics} - {""}
    unit = " or ".join(sorted(units)) if units else "unit unknown"
    formula = study.user_attrs.get("objective", "")
    formula = formula if isinstance(formula, str) else ""
    extra = " + IoU term" if "iou" in formula.lower() else ""
    return f"objective ({unit}{extra}), lower is better"


def contour_reason(study: optuna.Study) -> str | None:
    """Why no contour is drawn (too few completed trials or distinct values), or None."""
    done = _complete_with(study, AXES)
    distinct = min((len({t.params[p] for t in done}) for p in AXES), default=0)
    if len(done) < MIN_CONTOUR_TRIALS or distinct < 3:
        return (f"no contour: {len(done)} completed trials (needs {MIN_CONTOUR_TRIALS}); "
                "between fewer points it would be an interpolation artefact")
    return None


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """The scatter of all trials; the contour and importance plots only with enough trials.

    Every plot has beta on x and alpha on y over the searched box, and one title; completed
    trials are coloured by the objective on one colour scale, labelled with its unit.
    """
    for stale in ("contour_beta_alpha.png", "param_importance.png", "trials_beta_alpha.png"):
        (folder / stale).unlink(missing_ok=True)
    reason = contour_reason(study)
    if unplaced := [t.number for t in study.get_trials(deepcopy=False)
                    if set(AXES) <= set(t.params)
                    and not all(_finite(t.params[p]) for p in AXES)]:
        print(f"sweeps.report: {len(unplaced)} trial(s) with a NaN or infinite beta or alpha "
              f"not drawn (#{', #'.join(map(str, unplaced[:5]))}"
              f"{', ...' if len(unplaced) > 5 else ''})")
    written = [_save(scatter_figure(study, note=reason), folder / "trials_beta_alpha.png")]
    if reason:
        print(f"sweeps.report: {reason}")
        return written
    written.append(_save(contour_figure(study), folder / "contour_beta_alpha.png"))
    try:
        written.append(_save(importance_figure(study), folder / "param_importance.png"))
    except (ValueError, RuntimeError, ArithmeticError, TypeError) as err:
        print(f"sweeps.report: parameter importance skipped ({str(err)[:200]})")
        plt.close("all")
    return written


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(replace_link(path), dpi=110)
    plt.close(fig)
    return path


def _search_box(trials: list[FrozenTrial]) -> dict[str, tuple[float, float]]:
    """(low, high) of beta and alpha from the trials' distributions (padded by 4 %); only
    finite bounds and values count (a box too wide to draw falls back to the values')."""
    box = {}
    for name in AXES:
        dists = [t.distributions[name] for t in trials if name in t.distributions]
        values = [v for t in trials if _finite(v := t.params.get(name))]
        bounds = [v for d in dists for v in (getattr(d, "low", None), getattr(d, "high", None))
                  if _finite(v)]
        for candidates in (bounds + values, values):
            low, high = min(candidates, default=0.0), max(candidates, default=1.0)
            pad = 0.04 * (high - low) if high > low else 0.5
            if math.isfinite(low - pad) and math.isfinite(high + pad):
                break
        else:
            low, high, pad = 0.0, 1.0, 0.04
        box[name] = (low - pad, high + pad)
    return box


def _norm(done: list[FrozenTrial]) -> Normalize:
    values = [t.value for t in done if t.value is not None and math.isfinite(t.value)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    return Normalize(low, high if high > low else low + 1e-9)


def _axes(ax: Axes, box: dict[str, tuple[float, float]]) -> None:
    ax.set_xlim(*box["beta"])
    ax.set_ylim(*box["alpha"])
    ax.set_xlabel("beta (loss weight)")
    ax.set_ylabel("alpha (GradNorm asymmetry)")


def _points(ax: Axes, trials: list[FrozenTrial], norm: Normalize
            ) -> dict[tuple[float, float], list[str]]:
    """Completed trials coloured by objective, others by state marker, the best one ringed;
    returns the '#n value' labels per point (placed by ``_label_points`` once the figure is
    laid out)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if done:
        ax.scatter([t.params["beta"] for t in done], [t.params["alpha"] for t in done],
                   c=[t.value for t in done], cmap=CMAP, norm=norm, s=70, marker="o",
                   edgecolors="black", linewidths=0.8, label=f"complete ({len(done)})",
                   zorder=3)
    for state, (marker, colour) in STATE_STYLES.items():
        pts = [t for t in trials if t.state == state]
        if pts:
            ax.scatter([t.params["beta"] for t in pts], [t.params["alpha"] for t in pts],
                       marker=marker, color=colour, s=60, zorder=3,
                       label=f"{state.name.lower()} ({len(pts)})")
    if done:  # the best trial ringed (its label also said only "102", as did four others)
        best = min(done, key=lambda t: t.value)
        ax.scatter([best.params["beta"]], [best.params["alpha"]], s=260, facecolors="none",
                   edgecolors="red", linewidths=1.8, zorder=4,
                   label=f"best: #{best.number} {best.value:.4g}")
    labels: dict[tuple[float, float], list[str]] = {}
    for t in trials:  # a retried trial sits on its original: one label per point
        value = f" {t.value:.4g}" if t.value is not None and t.state != TrialState.FAIL else ""
        labels.setdefault((t.params["beta"], t.params["alpha"]), []).append(f"#{t.number}{value}")
    return labels


def _label_points(fig: Figure, ax: Axes, labels: dict[tuple[float, float], list[str]]) -> None:
    """Lay the figure out, keep that layout, then place the labels: a label placed before the
    colour bar and legend moved with the axes and could land on another."""
    fig.canvas.draw()
    fig.set_layout_engine("none")
    _place_labels(ax, labels)


# label offsets (points) tried in turn, with their horizontal alignment
LABEL_OFFSETS = ((6, 5, "left"), (6, -12, "left"), (-6, 5, "right"), (-6, -12, "right"),
                 (0, 11, "center"), (0, -18, "center"))


def _place_labels(ax: Axes, labels: dict[tuple[float, float], list[str]]
                  ) -> list[Annotation]:
    """'#n value' beside each point, at the first offset whose box stays inside the axes and
    overlaps no label placed before (two trials close together hid one label under the
    other); returns the texts."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed: list[Bbox] = []
    texts = []
    for (beta, alpha), words in labels.items():
        for dx, dy, ha in LABEL_OFFSETS:
            text = ax.annotate(", ".join(words), (beta, alpha), textcoords="offset points",
                               xytext=(dx, dy), ha=ha, fontsize=8, zorder=5,
                               bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                     "alpha": 0.7})
            box = text.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 \
                and box.y1 <= frame.y1  # (past the frame: under the colour bar, cut off)
            if (inside and not any(box.overlaps(other) for other in placed)) or \
                    (dx, dy, ha) == LABEL_OFFSETS[-1]:
                break
            text.remove()
        placed.append(box)
        texts.append(text)
    return texts


def _trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials with a finite beta and alpha: the ones a plot can place (a NaN one is not)."""
    return [t for t in study.get_trials(deepcopy=False)
            if all(_finite(t.params.get(p)) for p in AXES)]


def scatter_figure(study: optuna.Study, note: str | None = None) -> Figure:
    """Where each trial sampled (beta, alpha): completed ones coloured by their objective."""
    trials = _trials(study)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    fig, ax = plt.subplots(figsize=(7, 5.5), layout="constrained")
    norm = _norm(done)
    labels = _points(ax, trials, norm)
    _axes(ax, _search_box(trials))
    ax.set_title(f"Study {study.study_name}: {len(trials)} trials in the searched box")
    if done:
        fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), ax=ax, label=objective_label(study))
    if trials:
        _legend(fig, ax, note)
        _label_points(fig, ax, labels)
    else:
        ax.text(0.5, 0.5, "no trials yet", ha="center", va="center", transform=ax.transAxes)
        if note:
            ax.set_xlabel(f"{ax.get_xlabel()}\n{note}")
    return fig


def _legend(fig: Figure, ax: Axes, note: str | None = None) -> None:
    """The trial-state legend below the axes (never over a point), ``note`` as its title."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8,
               title=note, title_fontsize=8, frameon=False)


def contour_figure(study: optuna.Study) -> Figure:
    """Objective linearly interpolated between completed trials (inside their hull only)."""
    from scipy.interpolate import griddata

    trials = _trials(study)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            and math.isfinite(t.value)]
    box = _search_box(trials)
    norm = _norm(done)
    xy = np.array([[t.params["beta"], t.params["alpha"]] for t in done])
    gx, gy = np.meshgrid(np.linspace(*box["beta"], 120), np.linspace(*box["alpha"], 120))
    gz = griddata(xy, np.array([t.value for t in done]), (gx, gy), method="linear")
    fig, ax = plt.subplots(figsize=(7, 5.5), layout="constrained")
    ax.contourf(gx, gy, gz, levels=np.linspace(norm.vmin, norm.vmax, 13), cmap=CMAP, norm=norm)
    labels = _points(ax, trials, norm)
    _axes(ax, box)
    ax.set_title(f"Study {study.study_name}: objective between {len(done)} completed trials")
    fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), ax=ax, label=objective_label(study))
    _legend(fig, ax)
    _label_points(fig, ax, labels)
    return fig


def importance_figure(study: optuna.Study) -> Figure:
    """PED-ANOVA importance of each sampled parameter (horizontal bars)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(7, 1.6 + 0.5 * len(names)), layout="constrained")
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.text(imp[n], i, f" {imp[n]:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, max(1.0, max(imp.values(), default=0) * 1.15))
    ax.set_xlabel("importance (PED-ANOVA, sums to 1)")
    n = len(_complete_with(study, AXES))
    ax.set_title(f"Study {study.study_name}: parameter importance ({n} completed trials)")
    return fig


def write_report(study: optuna.Study, folder: Path) -> list[Path]:
    """All report files for `study` into `folder`; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    _left_out.clear()
    paths = list(write_tables(study, folder))
    best = write_best(study, folder)
    if best is not None:
        paths.append(best)
    paths += write_plots(study, folder)
    reason = contour_reason(study)
    if reason:  # the table says why a plot is missing, not only the console
        with paths[1].open("a") as fh:
            fh.write(f"\nPlots: {reason}.\n")
    if _left_out:
        names = list(_left_out)
        print(f"sweeps.report: warning: {len(names)} stored value(s) larger than "
              f"{MAX_ATTR_CHARS // 1000} kB left out of the report ({', '.join(names[:3])}"
              f"{', ...' if len(names) > 3 else ''})", file=sys.stderr)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="python -m sweeps.report", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      allow_abbrev=False)
    p.add_argument("--study", required=True)
    p.add_argument("--storage", default=None, help="database URL (default: the study's SQLite)")
    p.add_argument("--studies-dir", default=str(DEFAULT_STUDIES_DIR))
    p.add_argument("--out", default=None, help="output folder (default: the study folder)")
    args = p.parse_args(argv)
    try:
        _study_dir(args.study, args.studies_dir)  # a name that cannot be a folder
    except ValueError as err:
        print(f"sweeps.report: error: {err}", file=sys.stderr)
        return 2
    folder = Path(args.out) if args.out else _study_dir(args.study, args.studies_dir)
    try:
        not_folder = folder.exists() and not folder.is_dir()
    except OSError as err:  # a name too long (ENAMETOOLONG was a traceback)
        print(f"sweeps.report: error: --out {str(folder)[:200]!r}: {err.strerror or err}",
              file=sys.stderr)
        return 2
    try:
        if not_folder:
            raise ReportError(f"--out {folder}: exists and is not a folder")
        study = load_study(args.study, args.storage, args.studies_dir)
        try:
            paths = write_report(study, folder)
        except OSError as err:  # a folder above is a file, no permission, disk full
            name = err.filename or folder
            raise ReportError(f"cannot write the report into {folder}: {name}: "
                              f"{err.strerror or err}") from None
    except ReportError as err:
        print(f"sweeps.report: error: {err.reason}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n == 0:
        print("no completed trial: best_trial.json not written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
