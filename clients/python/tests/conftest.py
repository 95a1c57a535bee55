"""Test support: a database of its own per test, real ``lineq`` and Python worker processes.

Needs ``LINEQ_TEST_ADMIN_URL`` (a role that may create databases; ``DATABASE_URL`` when unset)
and ``LINEQ_BIN`` (the ``lineq`` binary under test). tests/python.rs sets both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

T = TypeVar("T")
TESTS = Path(__file__).parent
ADMIN_URL = os.environ.get("LINEQ_TEST_ADMIN_URL") or os.environ.get("DATABASE_URL", "")
LINEQ_BIN = os.environ.get("LINEQ_BIN", "lineq")


def url_with_database(url: str, name: str) -> str:
    """``url`` with its database swapped for ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def eventually(what: str, check: Callable[[], T | None], within: float = 30.0) -> T:
    """Polls ``check`` until it returns something other than None or False."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        time.sleep(0.05)


class Db:
    """A fresh, migrated database."""

    def __init__(self) -> None:
        if not ADMIN_URL:
            raise RuntimeError("set LINEQ_TEST_ADMIN_URL or DATABASE_URL")
        self.name = f"lineq_pytest_{uuid.uuid4().hex}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            # The name is made here, never from input; identifiers cannot be bound.
            admin.execute(f"CREATE DATABASE {self.name}")
        self.url = url_with_database(ADMIN_URL, self.name)
        out = lineq(self.url, "migrate")
        assert out.returncode == 0, out.stderr
        self.conn = psycopg.connect(self.url, autocommit=True)

    def one(self, query: str, *params: Any) -> Any:
        """The first column of the first row."""
        row = self.conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    def all(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Every row."""
        return self.conn.execute(query, params).fetchall()

    def drop(self) -> None:
        """Drops the database."""
        self.conn.close()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


def lineq(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``lineq ARGS`` to completion."""
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    env["DATABASE_URL"] = url
    return subprocess.run(
        [LINEQ_BIN, *args],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


class Proc:
    """A running process, logging to a file; killed at the end of the test."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: str | None = None):
        self.name = name
        fd, self.log = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
        self.popen = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd
        )
        os.close(fd)

    def log_text(self) -> str:
        """The log so far."""
        return Path(self.log).read_text(errors="replace")

    def terminate(self, within: float = 30.0) -> int:
        """SIGTERM, then the exit code (at most ``within`` seconds)."""
        self.popen.send_signal(signal.SIGTERM)
        return self.wait(within)

    def wait(self, within: float) -> int:
        """The exit code; fails with the log if it does not exit in time."""
        try:
            return self.popen.wait(within)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise AssertionError(
                f"{self.name} did not exit within {within} s:\n{self.log_text()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL."""
        self.popen.kill()
        self.popen.wait()

    @property
    def running(self) -> bool:
        """True while it runs."""
        return self.popen.poll() is None


class Procs:
    """Starts ``lineq`` and Python worker processes against one database."""

    def __init__(self, db: Db):
        self.db = db
        self.procs: list[Proc] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="lineq-pytest-"))

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a child process."""
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        env.update(
            DATABASE_URL=self.db.url,
            RUST_LOG="info,sqlx=warn",
            PYTHONPATH=str(TESTS),
            LINEQ_TEST_DIR=str(self.tmp),
        )
        env.update(extra)
        return env

    def lineq(self, name: str, *args: str, **env: str) -> Proc:
        """Starts ``lineq ARGS``."""
        p = Proc(name, [LINEQ_BIN, *args], self.env(**env))
        self.procs.append(p)
        return p

    def orchestrator(self) -> Proc:
        """Starts ``lineq orchestrator``."""
        return self.lineq("orchestrator", "orchestrator")

    def python_worker(
        self, worker_id: str, *args: str, app: str = "apps.handlers:worker", **env: str
    ) -> Proc:
        """Starts ``python -m lineq worker APP`` with id ``worker_id``; waits until registered."""
        # Run from the test's directory: the installed package is imported, not the source tree.
        p = Proc(
            worker_id,
            [sys.executable, "-m", "lineq", "worker", app, "--worker-id", worker_id, *args],
            self.env(**env),
            cwd=str(self.tmp),
        )
        self.procs.append(p)
        eventually(
            f"worker {worker_id} registered",
            lambda: (
                self.db.one(
                    "SELECT count(*) FROM lineq.workers"
                    " WHERE worker_id = %s AND stopped_at IS NULL",
                    worker_id,
                )
                == 1
                or self._dead(p)
            ),
        )
        return p

    def _dead(self, p: Proc) -> bool:
        if not p.running:
            raise AssertionError(f"{p.name} exited:\n{p.log_text()}")
        return False

    def logs(self) -> str:
        """Every process's log, for an assertion message."""
        return "\n".join(f"--- {p.name}\n{p.log_text()[-4000:]}" for p in self.procs)

    def marker(self, name: str) -> dict[str, Any] | None:
        """A marker file a test handler wrote (apps/handlers.py), or None."""
        path = self.tmp / name
        return json.loads(path.read_text()) if path.exists() else None

    def stop_all(self) -> None:
        """Kills whatever still runs."""
        for p in self.procs:
            if p.running:
                p.kill()


@pytest.fixture
def db() -> Iterator[Db]:
    """A fresh database for one test."""
    d = Db()
    yield d
    d.drop()


@pytest.fixture(scope="module")
def shared_db() -> Iterator[Db]:
    """One database for the tests of a module that do not run workers."""
    d = Db()
    yield d
    d.drop()


@pytest.fixture
def procs(db: Db, request: pytest.FixtureRequest) -> Iterator[Procs]:
    """Processes against ``db``, killed after the test (their logs printed if it failed)."""
    p = Procs(db)
    yield p
    p.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(p.logs())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keeps each test's report on the item, for the procs fixture."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def lineage_check(db: Db, execution_id: uuid.UUID) -> None:
    """``lineq lineage check`` passes on the execution's tree."""
    out = lineq(db.url, "lineage", "check", str(execution_id))
    assert out.returncode == 0, f"lineage check {execution_id}: {out.stdout}{out.stderr}"


def deliveries(db: Db, execution_id: uuid.UUID, step: str) -> list[tuple[str, int, int]]:
    """``(worker_id, delivery, attempt)`` of each claim of ``step``, in order."""
    return [
        (r[0], int(r[1]), int(r[2]))
        for r in db.all(
            "SELECT worker_id, (payload->>'delivery')::int, attempt FROM lineq.events "
            "WHERE execution_id = %s AND event_type = 'action_started' AND payload->>'step' = %s "
            "ORDER BY created_at, event_id",
            execution_id,
            step,
        )
    ]
