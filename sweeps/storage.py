"""Optuna study storage: an embedded SQLite file by default, a database URL for many workers.

Every worker opens the study through `open_storage`, an `optuna.storages.RDBStorage` with
heartbeats: each running trial writes a heartbeat every `heartbeat_interval` seconds; when a
worker dies (killed, pre-empted, node lost) its trial stops beating and the next worker that
starts a trial marks it FAIL after `grace_period` seconds and re-enqueues its parameters
(`RetryHeartbeatStaleTrialCallback`), so no trial is left RUNNING forever.
"""

from __future__ import annotations

import importlib.util
import random
import re
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

DEFAULT_STUDIES_DIR = Path("studies")
DB_FILENAME = "study.db"


def study_dir(study_name: str, studies_dir: str | Path = DEFAULT_STUDIES_DIR) -> Path:
    """Folder holding a study's SQLite file (default storage), trial runs and reports."""
    if not study_name or "/" in study_name or study_name in (".", ".."):
        raise ValueError(f"study name {study_name!r} must be a non-empty name without '/'")
    return Path(studies_dir) / study_name


def default_storage_url(study_name: str, studies_dir: str | Path = DEFAULT_STUDIES_DIR) -> str:
    """`sqlite:///<abs>/studies/<study>/study.db`: the embedded default, nothing to install."""
    return f"sqlite:///{(study_dir(study_name, studies_dir) / DB_FILENAME).resolve()}"


def normalise_url(url: str) -> str:
    """Pick an installed PostgreSQL driver for plain `postgresql://` / `postgres://` URLs.

    SQLAlchemy 2.1 maps `postgresql://` to psycopg 3; kneeplan installs psycopg2-binary, so a
    URL without an explicit driver gets `+psycopg2` when psycopg 3 is missing.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"storage {url!r} is not a database URL (e.g. sqlite:///x.db, "
                         "postgresql://user:pass@host:5432/db)")
    if scheme in ("postgresql", "postgres"):
        has_v3 = importlib.util.find_spec("psycopg") is not None
        has_v2 = importlib.util.find_spec("psycopg2") is not None
        scheme = "postgresql+psycopg2" if not has_v3 and has_v2 else "postgresql"
    return f"{scheme}://{rest}"


def open_storage(
    url: str | None,
    study_name: str,
    studies_dir: str | Path = DEFAULT_STUDIES_DIR,
    heartbeat_interval: int = 30,
    grace_period: int | None = None,
    max_retry: int = 2,
) -> RDBStorage:
    """Open (creating if needed) the storage a worker shares with the others.

    Args:
        url: database URL, or None for `studies/<study>/study.db` (SQLite).
        study_name: the study; names the default SQLite file's folder.
        studies_dir: parent of study folders.
        heartbeat_interval: seconds between a running trial's heartbeats.
        grace_period: seconds without heartbeat before a RUNNING trial counts as dead
            (default 2 x heartbeat_interval; keep it above the longest pause of a worker).
        max_retry: how often a dead worker's trial is re-enqueued with the same parameters.
    """
    if url is None:
        study_dir(study_name, studies_dir).mkdir(parents=True, exist_ok=True)
        url = default_storage_url(study_name, studies_dir)
    url = normalise_url(url)
    if url.startswith("sqlite"):
        # Several local processes may share one SQLite file: wait on its lock instead of failing.
        engine_kwargs: dict = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    # Workers starting together on a fresh database race to create Optuna's tables; the loser
    # gets an integrity/programming error and simply tries again (the tables exist by then).
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                        max_retry=max_retry),
                )
        except sqlalchemy.exc.DBAPIError:  # (not an unknown dialect or a bad URL: no retry)
            if attempt == 4:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


# Errors opening a storage that are the user's to fix: not a database, a damaged one, one of
# another Optuna schema, an unknown dialect, a database driver that is not installed.
STORAGE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, RuntimeError, ValueError, ImportError, OSError)
_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@")


def mask_url(text: str) -> str:
    """`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db` (any URL in the
    text): no message or record shows a storage password."""
    return _PASSWORD.sub(r"\1***@", text)


def storage_problem(err: BaseException) -> str:
    """The first line of a storage error, without SQLAlchemy's SQL echo and background link,
    and without any password."""
    if isinstance(err, ImportError):  # SQLAlchemy imports the dialect's driver on first use
        cause = err.__cause__ or err.__context__  # (Optuna wraps the ModuleNotFoundError)
        missing = getattr(cause, "name", None) or err.name
        return (f"its database driver is not installed (no module {missing!r}); install it "
                "into .venv, or use sqlite:/// or postgresql://" if missing else
                f"its database driver could not be imported: {str(err).splitlines()[0][:200]}")
    orig = getattr(err, "orig", None)  # the driver's own message (e.g. "file is not a database")
    text = str(orig if orig is not None else err).strip()
    return mask_url(text.splitlines()[0][:200] if text else type(err).__name__)
