"""Optuna study storage: an embedded SQLite file by default, a database URL for many workers.

Every worker opens the study through `open_storage`, an `optuna.storages.RDBStorage` with
heartbeats: each running trial writes a heartbeat every `heartbeat_interval` seconds; when a
worker dies (killed, pre-empted, node lost) its trial stops beating and the next worker that
starts a trial marks it FAIL after `grace_period` seconds and re-enqueues its parameters
(`RetryHeartbeatStaleTrialCallback`), so no trial is left RUNNING forever.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import sqlite3
import stat
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from datamodules.dataset_io import NAME_MAX
from lightning_modules.run_folder import invisible_at

DEFAULT_STUDIES_DIR = Path("studies")
DB_FILENAME = "study.db"


def study_dir(study_name: str, studies_dir: str | Path = DEFAULT_STUDIES_DIR) -> Path:
    """Folder holding a study's SQLite file (default storage), trial runs and reports."""
    if not study_name or "/" in study_name or study_name in (".", ".."):
        raise ValueError(f"study name {study_name!r:.80} must be a non-empty name without '/'")
    if (i := invisible_at(study_name)) is not None:  # printed raw: ESC cleared the terminal
        raise ValueError(f"study name {study_name!r:.80} holds a control or bidirectional "
                         f"character ({study_name[i]!r} at position {i}): give a plain name")
    if (size := len(os.fsencode(study_name))) > NAME_MAX:  # (a traceback in sweeps.report)
        raise ValueError(f"study name {study_name[:24]!r}... is {size} bytes: a folder name "
                         f"holds at most {NAME_MAX}")
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
    check_sqlite_file(url)
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


def _in_memory_sqlite(url: str) -> bool:
    """Whether ``url`` is SQLite in memory (``sqlite://``, ``sqlite:///:memory:``)."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return False
    return parsed.get_backend_name() == "sqlite" and sqlite_path(url) is None


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///` URL (None: another database, or SQLite in memory)."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return None  # (RDBStorage names a bad URL itself)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    database = parsed.database
    if str(parsed.query.get("uri", "")).lower() in ("true", "1"):  # sqlite:///file:x.db?uri=true
        database = database.removeprefix("file:").split("?", 1)[0]
    return None if database in ("", ":memory:") else Path(database)


# Optuna's SQLite schema holds tables and indexes only. A trigger runs its own SQL whenever the
# sweep writes (one with an endless recursive query hangs the first write), a view whatever SQL
# it was given whenever a read names it (a view named like Optuna's tables hangs any read), and
# a virtual table the code of its module: a shared study file is data, so these are refused.
_FOREIGN_SCHEMA = ("SELECT type, name, tbl_name FROM sqlite_master "
                   "WHERE type IN ('trigger', 'view') "
                   "OR (type = 'table' AND upper(substr(ltrim(sql), 1, 14)) = 'CREATE VIRTUAL') "
                   "LIMIT 1")


MAX_TABLES = 64  # Optuna's schema has 13
_CHECK = re.compile(r"\bCHECK\s*\(", re.IGNORECASE)
_PLAIN_CHECK = re.compile(r"\bCHECK\s*\(\s*\w+\s*=\s*\d+\s*\)", re.IGNORECASE)  # Optuna's one


def _ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def _expression_problem(con: sqlite3.Connection) -> str | None:
    """What in the schema SQLite would compute on every read or write, or None: a generated
    column (``GENERATED ALWAYS AS (... zeroblob(3e8) ...)``: 40 s and 1.6 GB per report of 21
    trials, red-team round 9), a DEFAULT, a CHECK other than ``column = number``, an index on an
    expression or a partial index. Optuna's schema has none of these but one ``CHECK (id=1)``."""
    tables = con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' "
                         f"LIMIT {MAX_TABLES + 1}").fetchall()
    if len(tables) > MAX_TABLES:
        return f"more than {MAX_TABLES} tables"
    for name, sql in tables:
        for _cid, col, _type, _nn, default, _pk, hidden in con.execute(
                f"PRAGMA table_xinfo({_ident(name)})"):
            if hidden in (2, 3):
                return f"the generated column {str(col)[:40]!r} in {str(name)[:40]!r}"
            if default is not None:
                return f"a default expression on {str(name)[:40]}.{str(col)[:40]}"
        if len(_CHECK.findall(sql or "")) != len(_PLAIN_CHECK.findall(sql or "")):
            return f"a CHECK expression in the table {str(name)[:40]!r}"
    for name, sql in con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                                 "AND sql IS NOT NULL"):
        expression = any(row[1] == -2 for row in con.execute(
            f"PRAGMA index_xinfo({_ident(name)})"))
        if expression or re.search(r"\bWHERE\b", sql, re.IGNORECASE):
            return f"the {'expression' if expression else 'partial'} index {str(name)[:40]!r}"
    return None


# Attribute tables and the largest value (JSON text) one of their rows may hold. A sweep writes
# a few kB per trial; Optuna parses every value when it loads a study, so one 20 M-element list
# took ~1 GB in sweeps.run and 2 GB in sweeps.report (fifth fuzz round). sweeps.report leaves
# values over 100 kB out of its tables; beyond this the file is refused before Optuna reads it.
_ATTRIBUTE_TABLES = ("study_user_attributes", "study_system_attributes",
                     "trial_user_attributes", "trial_system_attributes")
MAX_VALUE_CHARS = 10_000_000
MAX_TOTAL_CHARS = 100_000_000  # all attribute values together (many values just under the cap)


MAX_TRIALS = 10_000  # trials of one stored study: each is a training run (30 000 copied rows
# made the report take 64 s and 655 MB, 300 000 more than 5 minutes; red-team round 8)
MAX_ROWS = 50 * MAX_TRIALS  # parameter, value and intermediate-value rows together


def _row_count_problem(con: sqlite3.Connection) -> str | None:
    """Why the file holds more trials (or trial rows) than a study can have, or None: Optuna
    loads every one of them, in Python, before anything is checked."""
    rows = 0
    for table in ("trials", "trial_params", "trial_values", "trial_intermediate_values"):
        try:
            (count,) = con.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        except sqlite3.OperationalError:  # no such table: not Optuna's schema (Optuna says so)
            continue
        if table == "trials" and count > MAX_TRIALS:
            return f"{count:,} trials (more than {MAX_TRIALS:,}: each is a training run)"
        rows += int(count)
    if rows > MAX_ROWS:
        return f"{rows:,} trial rows (more than {MAX_ROWS:,})"
    return None


def _attribute_size_problem(con: sqlite3.Connection) -> str | None:
    """Why the attribute values are too large to load (one over ``MAX_VALUE_CHARS``, or all of
    them together over ``MAX_TOTAL_CHARS``), or None. One scan per table: with max(), SQLite
    takes the bare ``key`` from the longest row. (length() of a BLOB counts bytes.)"""
    total = 0
    for table in _ATTRIBUTE_TABLES:
        try:
            longest, key, size = con.execute(
                f"SELECT max(length(value_json)), key, total(length(value_json)) "  # noqa: S608
                f"FROM {table}").fetchone()
        except sqlite3.OperationalError:  # no such table (not Optuna's schema: Optuna says so)
            continue
        if longest is not None and longest > MAX_VALUE_CHARS:
            return (f"a value of {longest:,} characters ({table}, key {str(key)[:40]!r}; "
                    f"more than {MAX_VALUE_CHARS:,})")
        total += int(size or 0)
    if total > MAX_TOTAL_CHARS:
        return f"attribute values of {total:,} characters in all (more than {MAX_TOTAL_CHARS:,})"
    return None


def check_sqlite_file(url: str) -> None:
    """Refuse (ValueError, one line) a SQLite study file that is not a regular file, or whose
    schema holds a trigger, a view or a virtual table, before Optuna runs a statement on it;
    also one with an attribute value over ``MAX_VALUE_CHARS`` characters.

    Read-only, and only the schema table: a file that does not exist yet is fine (Optuna
    creates it), other databases (PostgreSQL, ...) are not checked.
    """
    path = sqlite_path(url)
    if path is None:
        if _in_memory_sqlite(url):  # (walkthrough: the study was gone when the sweep ended)
            raise ValueError("SQLite in memory keeps the study only while this worker runs: no "
                             "other worker and no sweep-report can read it; give a file, e.g. "
                             "sqlite:///studies/my.db")
        return
    if path.name.startswith("file:") and "uri=true" not in url.lower():
        # (SQLite URI filenames need ?uri=true; without it "file::memory:?cache=shared" made a
        # file of that name in the current folder: fifth fuzz round)
        raise ValueError(f"the SQLite database name {path.name[:60]!r} is a URI filename without "
                         "?uri=true: it would be a file of that name; give a file path")
    try:
        info = path.stat()
    except FileNotFoundError:
        if not path.parent.is_dir():  # (SQLite says only "unable to open database file")
            raise ValueError(f"the folder {path.parent} of the SQLite study file does not "
                             "exist (sqlite:////abs/path.db has four slashes, "
                             "sqlite:///rel.db three)") from None
        return
    except OSError as err:
        raise ValueError(f"the SQLite file cannot be read: {err.strerror or err}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ValueError("the path is a folder, not a SQLite study file")
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block the open, /dev/zero reads forever
        raise ValueError("the path is not a regular file (a pipe or device), not a SQLite "
                         "study file")
    if info.st_size == 0:
        return  # (Optuna makes its tables in an empty file)
    try:
        con = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True,
                              timeout=60)
        try:
            row = con.execute(_FOREIGN_SCHEMA).fetchone()
            computed = _expression_problem(con) if row is None else None
            huge = (_attribute_size_problem(con) or _row_count_problem(con)) \
                if row is None and computed is None else None
        finally:
            con.close()
    except sqlite3.Error as err:  # not a database, damaged, a malformed schema, unreadable
        raise ValueError(f"the SQLite file cannot be read: {err}") from None
    if row is not None:
        kind, name, table = row
        kind = "virtual table" if kind == "table" else kind
        on = f" on {str(table)[:40]!r}" if kind == "trigger" else ""
        raise ValueError(f"the file holds the {kind} {str(name)[:40]!r}{on}, which no Optuna "
                         "study has (it runs its own SQL when the sweep reads or writes): "
                         "refused; drop it or start a new study")
    if computed is not None:
        raise ValueError(f"the file's schema holds {computed}, which no Optuna study has (SQLite "
                         "computes it on every read or write): refused; start a new study")
    if huge is not None:
        raise ValueError(f"the file holds {huge}: a sweep writes a few kB per trial, and "
                         "loading this would take gigabytes; refused")


# Errors opening a storage that are the user's to fix: not a database, a damaged one, one of
# another Optuna schema, an unknown dialect, a database driver that is not installed.
# (Optuna wraps a failed write, e.g. to a read-only SQLite file, in StorageInternalError)
STORAGE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, RuntimeError, ValueError, ImportError, OSError,
                  optuna.exceptions.StorageInternalError)
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
    if isinstance(err, optuna.exceptions.StorageInternalError) and isinstance(
            err.__cause__ or err.__context__, sqlalchemy.exc.SQLAlchemyError):
        err = err.__cause__ or err.__context__  # (Optuna's guess "invalid data" misleads)
    orig = getattr(err, "orig", None)  # the driver's own message (e.g. "file is not a database")
    text = str(orig if orig is not None else err).strip()
    return mask_url(text.splitlines()[0][:200] if text else type(err).__name__)
