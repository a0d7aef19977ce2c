"""The run's ``metrics.csv`` logger: a resumed run appends to its history instead of losing it.

Lightning's CSV writer deletes an existing ``metrics.csv`` when its folder is not empty, and a
resumed run (``RESUME=``) reuses its run folder: the epochs before the resume were lost. Here
the file is kept and its columns are carried over, so that a key first logged after the resume
rewrites the file with every column (Lightning's rewrite only knows the keys of its session).
"""

from __future__ import annotations

import csv
from typing import Any

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer, keeping an existing ``metrics.csv`` and its header's keys."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                header = next(csv.reader(fh), [])
            self.metrics_keys = sorted({k for k in header if k})


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume into the same folder."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
