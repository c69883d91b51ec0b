"""Where an Optuna study lives, for the tune command and its workers: a journal file (one host, no server)
or a database (PostgreSQL through psycopg 3 for a study shared by several machines), with the heartbeats
that let a live worker fail a dead one's trial, and the lock a worker holds while it counts the study's
trials and asks for one more (tuning.next_trial). Errors opening a database are one line naming the URL
without its password.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, StorageInternalError
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages.journal import JournalFileBackend

log = logging.getLogger(__name__)

# Database storage: a worker writes a heartbeat every HEARTBEAT seconds while its trial runs, and a running
# trial without one for GRACE seconds is failed by the next worker to look (tests set a few seconds).
HEARTBEAT = ("LOCALEARN_HEARTBEAT_SECONDS", 60)
GRACE = ("LOCALEARN_GRACE_SECONDS", 180)
CONNECT_TIMEOUT = 10  # seconds; a lost database host is an error, not a hang
POSTGRES_EXTRA = "pip install 'localearn[postgres]'"


def open_storage(storage: str | None, root: Path, study_name: str) -> tuple[Any, bool]:
    """(storage, is_journal_file): a database for a URL, else a journal file (default: ROOT/STUDY.journal)."""
    if storage and "://" in storage:
        return open_database(storage), False
    path = journal_path(storage, root, study_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path))), True


def journal_path(storage: str | None, root: Path, study_name: str) -> Path:
    return Path(storage) if storage else root / f"{study_name}.journal"


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds, from $LOCALEARN_HEARTBEAT_SECONDS (default 60) and
    $LOCALEARN_GRACE_SECONDS (default 180). The grace period must outlast a heartbeat or two, or a slow but
    live worker's trial is failed under it."""
    interval, grace = _seconds(*HEARTBEAT), _seconds(*GRACE)
    if grace <= interval:
        raise ValueError(
            f"${GRACE[0]}={grace} must be longer than ${HEARTBEAT[0]}={interval}: "
            "a live worker's trial would be failed between two of its heartbeats"
        )
    return interval, grace


def _seconds(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"${name}={raw!r}: expected a whole number of seconds, at least 1")
    return int(raw)


def sqlalchemy_url(url: str) -> Any:
    """The parsed URL; ``postgresql://`` means psycopg 3 (the ``postgres`` extra), not SQLAlchemy's default
    psycopg2."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        shown = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)  # no password in an error message
        raise ValueError(
            f"--storage {shown}: not a database URL (DIALECT[+DRIVER]://USER@HOST:PORT/DATABASE)"
        ) from None
    return parsed.set(drivername="postgresql+psycopg") if parsed.drivername == "postgresql" else parsed


def open_database(url: str) -> RDBStorage:
    """Optuna's RDB storage with heartbeats, or a one-line ValueError naming the URL (without its password)
    and the cause: a missing driver, a refused connection, a wrong password, a missing database."""
    import sqlalchemy

    parsed = sqlalchemy_url(url)
    shown = parsed.render_as_string(hide_password=True)
    postgres = parsed.get_backend_name() == "postgresql"
    if parsed.drivername == "postgresql+psycopg" and importlib.util.find_spec("psycopg") is None:
        raise ValueError(f"--storage {shown}: PostgreSQL needs the psycopg driver: {POSTGRES_EXTRA}")
    interval, grace = heartbeat_settings()
    options: dict[str, Any] = {"pool_pre_ping": True}  # a connection dropped between trials is replaced
    if postgres:
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    full = parsed.render_as_string(hide_password=False)
    try:
        # Workers that start together on a fresh database would race to create Optuna's tables: one at a
        # time, under an advisory lock (PostgreSQL; SQLite is one host and locks its file itself).
        schema_engine = sqlalchemy.create_engine(full, **options) if postgres else None
        try:
            with (
                advisory_lock(schema_engine, "localearn: optuna schema")
                if schema_engine
                else contextlib.nullcontext()
            ):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are "experimental"
                    return RDBStorage(
                        full,
                        engine_kwargs=options,
                        heartbeat_interval=interval,
                        grace_period=grace,
                        heartbeat_stale_trial_callback=_log_stale_trial,
                    )
        finally:
            if schema_engine is not None:
                schema_engine.dispose()
    except ImportError as e:
        raise ValueError(f"--storage {shown}: the database driver is missing ({e.__cause__ or e})") from None
    except (sqlalchemy.exc.SQLAlchemyError, StorageInternalError) as e:
        cause = getattr(e, "orig", None) or e.__cause__ or e
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        if parsed.password:
            reason = reason.replace(str(parsed.password), "***")
        raise ValueError(f"cannot open the study storage {shown}: {reason}") from None


def _log_stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's callback for a trial it failed because its heartbeats stopped: say whose it was."""
    attrs = trial.user_attrs
    log.warning(
        "trial %d of study %s marked failed: its worker (host %s, process %s) sent no heartbeat for the "
        "grace period; its slot is run again",
        trial.number,
        study.study_name,
        attrs.get("host", "?"),
        attrs.get("pid", "?"),
    )


@contextlib.contextmanager
def advisory_lock(engine: Any, name: str) -> Iterator[None]:
    """A PostgreSQL session advisory lock keyed by ``name``, on a connection of its own: the server
    releases it if the holder dies (its connection closes), so a killed worker never leaves it held."""
    import sqlalchemy

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on ``path`` (created if missing): the kernel releases it if the holder dies.
    It serializes the processes of one host only (fcntl locks over a network file system can race)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ask_lock(
    storage: Any, location: str | None, root: Path, study_name: str
) -> Callable[[], AbstractContextManager[None]]:
    """The lock a worker holds while it counts the study's trials and asks for a new one, so that several
    workers never start more than the study needs: an advisory lock on PostgreSQL (every machine), a file
    lock beside a journal file or an SQLite database (one host), none for a study in memory."""
    if isinstance(storage, RDBStorage) and storage.engine.dialect.name == "postgresql":
        return lambda: advisory_lock(storage.engine, f"localearn: study {study_name}")
    if isinstance(storage, JournalStorage):
        path = Path(f"{journal_path(location, root, study_name)}.ask.lock")
    elif isinstance(storage, RDBStorage):
        database = storage.engine.url.database
        on_file = storage.engine.dialect.name == "sqlite" and database and database != ":memory:"
        path = Path(f"{database}.ask.lock") if on_file else root / f"{study_name}.ask.lock"
    else:
        return contextlib.nullcontext
    return lambda: file_lock(path)


def poll_seconds(storage: Any) -> float:
    """How often a worker with nothing to start looks again: often enough to pick up a dead worker's slot
    soon after its grace period, rarely enough not to load a shared database."""
    return float(min(2, storage.get_heartbeat_interval())) if is_heartbeat_enabled(storage) else 1.0
