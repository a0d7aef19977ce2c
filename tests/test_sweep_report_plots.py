"""Sweep report plots (issue 14): one title each, beta on x and alpha on y everywhere, a contour
only with enough completed trials, the objective's unit on the colour bar, no warnings."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from sweeps.report import (
    MIN_CONTOUR_TRIALS,
    contour_figure,
    contour_reason,
    importance_figure,
    scatter_figure,
    write_report,
)
from sweeps.storage import open_storage

DIST = {"beta": optuna.distributions.FloatDistribution(0, 2),
        "alpha": optuna.distributions.FloatDistribution(0, 3)}


def _study(tmp_path, n_complete: int) -> optuna.Study:
    study = optuna.create_study(study_name="plots", storage=open_storage(None, "plots", tmp_path))
    study.set_user_attr("objective", "1*(val/lm_err_mm_median)")
    rng = np.random.default_rng(1)
    for _ in range(n_complete):
        beta, alpha = float(rng.uniform(0, 2)), float(rng.uniform(0, 3))
        study.add_trial(optuna.create_trial(
            state=TrialState.COMPLETE, value=3 + (beta - 0.6) ** 2 + (alpha - 1) ** 2,
            params={"beta": beta, "alpha": alpha}, distributions=DIST,
            user_attrs={"objective_metric": "val/lm_err_mm_median"}))
    study.add_trial(optuna.create_trial(state=TrialState.PRUNED, params={"beta": 1.9, "alpha": 0.2},
                                        distributions=DIST, intermediate_values={0: 9.0}))
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, params={"beta": 0.1, "alpha": 2.9},
                                        distributions=DIST))
    return study


def _titles(fig) -> list[str]:
    found = [ax.get_title(loc) for ax in fig.axes for loc in ("left", "center", "right")]
    if fig._suptitle is not None:
        found.append(fig._suptitle.get_text())
    return [t for t in found if t]


@pytest.mark.filterwarnings("error")
def test_plots_have_one_title_the_same_axes_and_the_unit(tmp_path):
    study = _study(tmp_path, MIN_CONTOUR_TRIALS + 2)
    assert contour_reason(study) is None
    figs = {"scatter": scatter_figure(study), "contour": contour_figure(study)}
    for name, fig in figs.items():
        assert len(_titles(fig)) == 1, (name, _titles(fig))
        ax = fig.axes[0]
        assert ax.get_xlabel().startswith("beta") and ax.get_ylabel().startswith("alpha")
        # the searched box (beta in [0, 2], alpha in [0, 3]) plus 4 % on each side
        np.testing.assert_allclose(ax.get_xlim(), (-0.08, 2.08))
        np.testing.assert_allclose(ax.get_ylim(), (-0.12, 3.12))
        colorbar = fig.axes[1]
        assert "(mm)" in colorbar.get_ylabel(), colorbar.get_ylabel()
        # one colour scale for both: the completed trials' objective range
        values = [t.value for t in study.trials if t.state == TrialState.COMPLETE]
        np.testing.assert_allclose(colorbar.get_ylim(), (min(values), max(values)))
    imp = importance_figure(study)
    assert len(_titles(imp)) == 1
    paths = write_report(study, tmp_path / "rep")  # saving raises on any warning
    names = {p.name for p in paths}
    assert {"trials_beta_alpha.png", "contour_beta_alpha.png", "param_importance.png"} <= names


@pytest.mark.filterwarnings("error")
def test_too_few_trials_give_the_scatter_alone_and_say_why(tmp_path, capsys):
    study = _study(tmp_path, 4)
    reason = contour_reason(study)
    assert reason is not None and f"needs {MIN_CONTOUR_TRIALS}" in reason
    fig = scatter_figure(study, note=reason)
    assert reason in fig.legends[0].get_title().get_text()  # said on the picture itself
    paths = write_report(study, tmp_path / "rep")
    names = {p.name for p in paths}
    assert "trials_beta_alpha.png" in names and "contour_beta_alpha.png" not in names
    assert "param_importance.png" not in names
    assert reason in capsys.readouterr().out
    assert reason in (tmp_path / "rep" / "trials.md").read_text()
