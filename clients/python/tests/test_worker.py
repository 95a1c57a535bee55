"""Python workers next to real ``lineq orchestrator`` processes.

Outcomes, the context, crashes, shutdown, cancellation, and poison messages.
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import Db, Procs, deliveries, eventually, lineage_check, lineq

import lineq as lq


def test_handlers_complete_fail_retry_time_out_and_spawn(db: Db, procs: Procs) -> None:
    procs.orchestrator()
    procs.python_worker("py-1")
    with lq.Client(db.url) as c:
        shout = c.submit("shout", {"text": "hello"}, tags={"customer": "acme"})
        who = c.submit("whoami", {}, tags={"customer": "acme"})
        add = c.submit("add", {"numbers": [1, 2, 3]})
        refuse = c.submit("refuse")
        crash = c.submit("crash")
        slow = c.submit("too_slow")
        spawner = c.submit("spawner")
        done = {
            e.id: c.wait(e.id, timeout=60) for e in (shout, who, add, refuse, crash, slow, spawner)
        }
        assert done[shout.id].output == {"shout": "HELLO"}, procs.logs()
        assert done[add.id].output == {"sum": 6}

        w = done[who.id].output
        assert w["correlation_id"] == str(who.correlation_id)
        assert w["execution_id"] == str(who.id) == w["root_execution_id"]
        assert w["step"] == "whoami" and w["attempt"] == 1 and w["worker_id"] == "py-1"
        assert w["tags"] == {"customer": "acme"}
        step_id = db.one("SELECT step_id FROM lineq.steps WHERE execution_id = %s", who.id)
        assert w["idempotency_key"] == f"{step_id}:1"
        started = db.one(
            "SELECT event_id FROM lineq.events WHERE execution_id = %s "
            "AND event_type = 'action_started'",
            who.id,
        )
        assert w["traceparent"] == db.one(
            "SELECT lineq.traceparent(%s, %s)", who.correlation_id, started
        )

        assert done[refuse.id].status == "failed"
        assert "no such order" in json.dumps(done[refuse.id].error)
        # PermanentError is not retried; an unexpected exception is (task default policy).
        assert len(deliveries(db, refuse.id, "refuse")) == 1
        assert done[crash.id].status == "failed"
        assert "KeyError" in json.dumps(done[crash.id].error)
        assert done[slow.id].status == "failed"
        assert "timeout" in json.dumps(done[slow.id].error)

        assert done[spawner.id].status == "completed"
        child_id = done[spawner.id].output["child"]
        child = c.wait(child_id, timeout=30)
        assert child.parent_execution_id == spawner.id and child.output == {"shout": "CHILD"}
        assert [n.execution.id for n in c.lineage(spawner.id).walk()] == [spawner.id, child.id]
        for e in done.values():
            lineage_check(db, e.id)

    # Registered as a Python worker, and shown so by `lineq workers`.
    assert db.one("SELECT language FROM lineq.workers WHERE worker_id = 'py-1'") == "python"
    listed = lineq(db.url, "workers", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert any(
        w.get("worker_id") == "py-1" and w.get("language") == "python"
        for w in json.loads(listed.stdout)["workers"]
    ), listed.stdout
    # The handler's exception was logged with its step's ids.
    log = procs.procs[1].log_text()
    assert (
        f"handler crash raised [correlation_id={crash.correlation_id} "
        f"execution_id={crash.id} trace_id={crash.correlation_id.hex}]"
    ) in log, log


def test_transactional_submit_commits_and_completes(db: Db, procs: Procs) -> None:
    procs.orchestrator()
    procs.python_worker("py-1")
    import psycopg

    with lq.Client(db.url) as c, psycopg.connect(db.url) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        conn.commit()
        with conn.transaction():
            conn.execute("INSERT INTO orders VALUES (1)")
            rolled_back = c.submit("shout", {"text": "never"}, idempotency_key="order-1", conn=conn)
            raise psycopg.Rollback()
        with conn.transaction():
            conn.execute("INSERT INTO orders VALUES (2)")
            kept = c.submit("shout", {"text": "shipped"}, idempotency_key="order-2", conn=conn)
        assert c.wait(kept.id, timeout=60).output == {"shout": "SHIPPED"}
        assert (
            db.one("SELECT count(*) FROM lineq.executions WHERE execution_id = %s", rolled_back.id)
            == 0
        )
        assert (
            db.one("SELECT count(*) FROM lineq.events WHERE execution_id = %s", rolled_back.id) == 0
        )
        assert db.one("SELECT count(*) FROM orders") == 1


def test_sigkill_mid_step_runs_again_elsewhere_with_the_same_key(db: Db, procs: Procs) -> None:
    procs.orchestrator()
    a = procs.python_worker("py-a", LINEQ_TEST_VT="2")
    with lq.Client(db.url) as c:
        others = [c.submit("shout", {"text": f"n{i}"}) for i in range(5)]
        slow = c.submit("slow", {"sleep": 120})
        eventually("py-a runs the slow step", lambda: procs.marker(f"started-{slow.id}-1"))
        a.kill()
        procs.python_worker("py-b", LINEQ_TEST_VT="2")
        done = c.wait(slow.id, timeout=60)
        assert done.status == "completed", procs.logs()
        assert deliveries(db, slow.id, "slow") == [("py-a", 1, 1), ("py-b", 2, 1)]
        first, second = procs.marker(f"started-{slow.id}-1"), procs.marker(f"started-{slow.id}-2")
        assert first is not None and second is not None
        assert first["key"] == second["key"] == done.output["key"]
        # Lost: none.
        for e in others:
            assert c.wait(e.id, timeout=60).status == "completed"
        assert db.one("SELECT count(*) FROM lineq.executions WHERE status <> 'completed'") == 0
        lineage_check(db, slow.id)


def test_sigterm_lets_a_handler_finish_within_the_grace_period(db: Db, procs: Procs) -> None:
    procs.orchestrator()
    w = procs.python_worker("py-1", "--shutdown-grace", "20")
    with lq.Client(db.url) as c:
        e = c.submit("slow", {"sleep": 2})
        eventually("the handler runs", lambda: procs.marker(f"started-{e.id}-1"))
        assert w.terminate(within=30) == 0
        assert procs.marker(f"finished-{e.id}-1") is not None, w.log_text()
        assert c.wait(e.id, timeout=30).output["delivery"] == 1
        assert (
            db.one("SELECT stopped_at IS NOT NULL FROM lineq.workers WHERE worker_id = 'py-1'")
            is True
        )


def test_sigterm_past_the_grace_period_releases_the_step(db: Db, procs: Procs) -> None:
    procs.orchestrator()
    # A long visibility timeout: only the release can let another worker have the step soon.
    w = procs.python_worker("py-1", "--shutdown-grace", "1", LINEQ_TEST_VT="600")
    with lq.Client(db.url) as c:
        e = c.submit("slow", {"sleep": 300})
        eventually("the handler runs", lambda: procs.marker(f"started-{e.id}-1"))
        assert w.terminate(within=30) == 0
        assert "released 1 messages" in w.log_text()
        assert not c.get(e.id).finished
        procs.python_worker("py-2")
        done = c.wait(e.id, timeout=60)
        assert done.output["delivery"] == 2
        assert deliveries(db, e.id, "slow") == [("py-1", 1, 1), ("py-2", 2, 1)]
        lineage_check(db, e.id)


def test_cancellation_reaches_a_running_handler(db: Db, procs: Procs) -> None:
    procs.orchestrator()
    procs.python_worker("py-1")
    with lq.Client(db.url) as c:
        e = c.submit("slow", {"sleep": 120})
        eventually("the handler runs", lambda: procs.marker(f"started-{e.id}-1"))
        cancelled_at = time.time()
        c.cancel(e.id)
        seen = eventually(
            "the handler sees the cancellation",
            lambda: procs.marker(f"cancelled-{e.id}"),
            within=10,
        )
        assert seen["at"] >= cancelled_at
        assert c.get(e.id).status == "cancelled"


def test_poison_and_malformed_messages_do_not_stop_the_worker(db: Db, procs: Procs) -> None:
    procs.orchestrator()
    w = procs.python_worker("py-1")
    db.conn.execute(
        "SELECT pgmq.send('lineq_steps_default', %s::jsonb)",
        (json.dumps({"handler": "shout", "garbage": True}),),
    )
    db.conn.execute("SELECT pgmq.send('lineq_steps_default', %s::jsonb)", ('"not an object"',))
    with lq.Client(db.url) as c:
        e = c.submit("shout", {"text": "after"})
        assert c.wait(e.id, timeout=60).output == {"shout": "AFTER"}
    eventually(
        "the malformed messages leave the queue",
        lambda: db.one("SELECT count(*) FROM pgmq.q_lineq_steps_default") == 0,
    )
    assert w.running
    dead = lineq(db.url, "dlq", "list", "--format", "json")
    assert dead.returncode == 0 and len(json.loads(dead.stdout)) == 2, dead.stdout


def test_visibility_is_extended_while_a_handler_runs(db: Db, procs: Procs) -> None:
    procs.orchestrator()
    # Hidden for 2 s at a time; the handler runs 5 s, so only extension keeps it from a
    # second delivery (two workers: one would claim it again if it reappeared).
    procs.python_worker("py-1", LINEQ_TEST_VT="2")
    procs.python_worker("py-2", LINEQ_TEST_VT="2")
    with lq.Client(db.url) as c:
        e = c.submit("slow", {"sleep": 5})
        assert c.wait(e.id, timeout=60).output["delivery"] == 1
        assert len(deliveries(db, e.id, "slow")) == 1


def test_the_console_script_runs_a_worker(db: Db, procs: Procs) -> None:
    import sys
    from pathlib import Path

    from conftest import Proc

    script = Path(sys.executable).parent / "lineq-worker"
    procs.orchestrator()
    p = Proc(
        "console-script",
        [str(script), "apps.handlers:worker", "--worker-id", "py-cli"],
        procs.env(),
        cwd=str(procs.tmp),
    )
    procs.procs.append(p)
    with lq.Client(db.url) as c:
        e = c.submit("shout", {"text": "script"})
        assert c.wait(e.id, timeout=60).output == {"shout": "SCRIPT"}, p.log_text()
    assert deliveries(db, e.id, "shout") == [("py-cli", 1, 1)]
    assert p.terminate() == 0


def test_a_worker_serves_only_its_namespace(db: Db, procs: Procs) -> None:
    procs.orchestrator()
    procs.python_worker("py-media", "--namespace", "media")  # makes its queue (admin role)
    with lq.Client(db.url) as c:
        media = c.submit("shout", {"text": "media"}, namespace="media")
        default = c.submit("shout", {"text": "default"})
        assert c.wait(media.id, timeout=60).output == {"shout": "MEDIA"}
        with pytest.raises(lq.WaitTimeout):
            c.wait(default.id, timeout=1)
        assert db.one("SELECT namespaces FROM lineq.workers WHERE worker_id = 'py-media'") == [
            "media"
        ]
