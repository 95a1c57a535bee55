"""Least-privilege roles (``lineq migrate --roles``) from Python.

A Python worker logs in as a worker role, an application as a submitter, a dashboard as a
reader, and each does its work.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from conftest import ADMIN_URL, Db, Procs, lineq

import lineq as lq


def url_as(url: str, user: str, password: str) -> str:
    """``url`` logging in as ``user``."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


@pytest.fixture
def roles(db: Db) -> Iterator[dict[str, str]]:
    """Group and login roles of this test's own; their URLs by kind."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    secrets = Path(tempfile.mkdtemp(prefix="lineq-roles-"))
    logins = {kind: f"{prefix}_{kind}_login" for kind in ("worker", "submitter", "reader")}
    passwords = {}
    for kind, name in logins.items():
        passwords[kind] = f"pw-{uuid.uuid4().hex}"
        (secrets / name).write_text(passwords[kind] + "\n")
    out = lineq(
        db.url,
        "migrate",
        "--roles",
        "--role-prefix",
        prefix,
        "--role-password-dir",
        str(secrets),
        *[a for kind, name in logins.items() for a in ("--login-role", f"{kind}={name}")],
    )
    assert out.returncode == 0, out.stderr
    yield {kind: url_as(db.url, name, passwords[kind]) for kind, name in logins.items()}
    names = [
        *logins.values(),
        *(f"{prefix}_{g}" for g in ("orchestrator", "worker", "submitter", "reader")),
    ]
    # Generated names, never input (identifiers cannot be bound).
    for n in names:
        db.conn.execute(f"DROP OWNED BY {n}")
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        for n in names:
            admin.execute(f"DROP ROLE IF EXISTS {n}")


def test_each_role_does_its_part(db: Db, roles: dict[str, str], procs: Procs) -> None:
    procs.orchestrator()
    procs.python_worker("py-least", DATABASE_URL=roles["worker"])
    with lq.Client(roles["submitter"]) as app:
        e = app.submit("shout", {"text": "least privilege"}, tags={"tier": "gold"})
        assert app.wait(e.id, timeout=60).output == {"shout": "LEAST PRIVILEGE"}
        pending = app.submit("nobody_serves_this", tags={"tier": "gold"})
        app.update_tags(pending.id, {"tier": "silver"}, expect_version=pending.version)
        app.cancel(pending.id)
    with lq.Client(roles["reader"]) as reader:
        assert [x.id for x in reader.list(tags={"tier": "gold"})] == [e.id]
        assert reader.history(pending.id)[-1].kind in ("status", "step")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.submit("shout", {"text": "not allowed"})
    # The worker role may not submit either.
    with (
        lq.Client(roles["worker"]) as worker_role,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        worker_role.submit("shout")
