"""Two sweep workers on one PostgreSQL study (issue 7): every trial recorded once, none lost.

Needs a server: `.ci/run` starts one on loopback (`.ci/postgres.sh`) and exports
KNEEPLAN_TEST_POSTGRES_URL; without it the test is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.report import main as report_main
from sweeps.storage import normalise_url

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
URL = os.environ.get("KNEEPLAN_TEST_POSTGRES_URL")

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(not URL, reason="KNEEPLAN_TEST_POSTGRES_URL is not set (CI starts a "
                                      "server with .ci/postgres.sh)"),
]

TRIALS_PER_WORKER = 2


def test_two_workers_share_one_postgres_study(tmp_path):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled",
               WANDB_SILENT="true", OMP_NUM_THREADS="1")
    workers = []
    for index in range(2):
        cmd = [sys.executable, "-m", "sweeps.run", "--trials", str(TRIALS_PER_WORKER),
               "--study", name, "--storage", URL, "--studies-dir", str(tmp_path),
               "--config", str(TINY), "--worker-index", str(index), "--pruner", "none",
               "--trainer.max_epochs=1", "--data.num_train=4", "--data.num_val=2",
               "--trainer.enable_progress_bar=false"]
        workers.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True))
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for w, out in zip(workers, outputs, strict=True):
        assert w.returncode == 0, out
        assert "best params: beta=" in out

    study = optuna.load_study(study_name=name, storage=normalise_url(URL))
    trials = study.get_trials(deepcopy=False)
    total = 2 * TRIALS_PER_WORKER
    assert len(trials) == total
    assert sorted(t.number for t in trials) == list(range(total))  # each recorded once
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    per_worker = {}
    for t in trials:
        per_worker.setdefault(t.user_attrs["worker"], []).append(t.number)
    assert sorted(len(v) for v in per_worker.values()) == [TRIALS_PER_WORKER] * 2
    # distinct seeds per worker: the two workers did not sample the same first point
    firsts = [min(v) for v in per_worker.values()]
    assert trials[firsts[0]].params != trials[firsts[1]].params

    assert report_main(["--study", name, "--storage", URL, "--out", str(tmp_path / "rep")]) == 0
    rows = (tmp_path / "rep" / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + total
