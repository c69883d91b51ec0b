"""A throw-away PostgreSQL cluster for the tests: initdb and pg_ctl in a temporary directory, listening on a
free port of 127.0.0.1, stopped and removed at the end. Nothing depends on a server started by hand.

Run as root (CI), the server runs as the ``postgres`` user of the Debian package (PostgreSQL refuses to run
as root); run as anyone else, as that user. Where PostgreSQL or a Python package is missing, the tests
skip with a message saying how to run them, unless LOCALEARN_REQUIRE_POSTGRES=1 (CI), where they fail.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

REQUIRE = "LOCALEARN_REQUIRE_POSTGRES"
HOW = (
    "install the Debian package postgresql (apt-get install postgresql) and the extras "
    "(pip install -e '.[test,postgres,dashboard]'); .ci/run does both"
)
SUPERUSER = "postgres"  # trusted on 127.0.0.1
PASSWORD_USER, PASSWORD = "tuner", "right-horse-battery"  # needs its password (scram-sha-256)
HBA = f"""\
local all all trust
host all {SUPERUSER} 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


def unavailable(reason: str) -> None:
    """Skip (a developer's machine without PostgreSQL), or fail where the tests must run (CI)."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason}, and {REQUIRE}=1 says these tests must run: {HOW}", pytrace=False)
    pytest.skip(f"{reason}; to run these tests, {HOW}")


def find_bindir() -> Path | None:
    """initdb's directory: on PATH, else Debian's /usr/lib/postgresql/VERSION/bin (the newest)."""
    found = shutil.which("initdb")
    if found:  # the real directory, where pg_ctl lives too (Debian links only some tools into PATH)
        return Path(found).resolve().parent
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    candidates.sort(key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")])
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One PostgreSQL server in a temporary directory: ``url(database)`` names a database on it."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="localearn-pg-"))
        self.data, self.sockets, self.log = (
            self.root / "data",
            self.root / "sockets",
            self.root / "server.log",
        )
        self.sockets.mkdir()
        self.owner: str | None = None
        if os.geteuid() == 0:  # PostgreSQL will not run as root
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("running as root, PostgreSQL needs the 'postgres' user, which is missing")
            self.owner = "postgres"
            for path in (self.root, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _as_owner(self, *argv: str, timeout: float = 120) -> None:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if self.owner:
            command = ["runuser", "-u", self.owner, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv[:2])} failed:\n{done.stdout}{done.stderr}{log}")

    def start(self) -> Cluster:
        self._as_owner(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "-E", "UTF8", "--no-sync", "-A", "trust"
        )
        (self.data / "pg_hba.conf").write_text(HBA)
        # A test server: durability off (it is thrown away), enough connections for a few workers each.
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        self._as_owner(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )
        self.sql(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'")
        return self

    def sql(self, statement: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url(database).replace("+psycopg", ""), autocommit=True) as connection:
            connection.execute(statement)

    def create_database(self, name: str) -> str:
        """A fresh database for one test (owned by the password user too, so it may open it); its URL."""
        self.sql(f"CREATE DATABASE {name} OWNER {PASSWORD_USER}")
        return self.url(name)

    def url(
        self, database: str, user: str = SUPERUSER, password: str | None = None, port: int | None = None
    ) -> str:
        login = f"{user}:{password}" if password is not None else user
        return f"postgresql+psycopg://{login}@127.0.0.1:{port or self.port}/{database}"

    def stop(self) -> None:
        """Stop the server (immediately: its data is thrown away) and remove its directory."""
        with contextlib.suppress(Exception):
            self._as_owner("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():  # pg_ctl failed: the server we started goes anyway
            with contextlib.suppress(Exception):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> Cluster:
    """A started cluster, or a skip (a failure under LOCALEARN_REQUIRE_POSTGRES=1) saying what is missing."""
    bindir = find_bindir()
    if bindir is None:
        unavailable("PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("the psycopg driver is not installed")
    cluster = Cluster(bindir)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise
