"""The client against a real database: submit, list, tags, history, cancel, wait, errors."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest
from conftest import Db

import lineq


def run(coro: Any) -> Any:
    """Runs a coroutine to completion."""
    return asyncio.run(coro)


def tag() -> str:
    """A tag value no other test uses."""
    return uuid.uuid4().hex[:12]


async def client(db: Db) -> lineq.AsyncClient:
    """An asyncio client on ``db``."""
    return await lineq.connect(db.url)


def test_submit_returns_every_field_and_honours_idempotency(shared_db: Db) -> None:
    async def go() -> None:
        async with await client(shared_db) as c:
            corr = lineq.uuid7()
            e = await c.submit(
                "process_order",
                {"order_id": "12345"},
                tags={"customer": "acme-corp"},
                metadata={"order": {"id": 1}},
                correlation_id=corr,
                idempotency_key=f"order-{corr}",
                timeout_ms=5000,
            )
            assert e.created is True
            assert (e.status, e.workflow_name, e.namespace, e.kind) == (
                "pending",
                "process_order",
                "default",
                "task",
            )
            assert e.input == {"order_id": "12345"}
            assert e.correlation_id == corr
            assert e.root_execution_id == e.id and e.parent_execution_id is None
            assert e.tags == {"customer": "acme-corp"} and e.metadata == {"order": {"id": 1}}
            assert e.version == 1 and e.finished_at is None and e.created_at is not None
            again = await c.submit(
                "process_order", {"order_id": "other"}, idempotency_key=f"order-{corr}"
            )
            assert (again.id, again.created) == (e.id, False)
            got = await c.get(e.id)
            assert got.id == e.id and got.input == e.input and got.created is None

            many = await c.submit_many([{"target": "a", "input": 1}, {"target": "b"}])
            assert [m.workflow_name for m in many] == ["a", "b"]
            assert [m.input for m in many] == [1, None]

    run(go())


def test_bad_input_names_the_field(shared_db: Db) -> None:
    with lineq.Client(shared_db.url) as c:
        with pytest.raises(lineq.ValidationError) as bad_tag:
            c.submit("x", tags={"Bad Key": "v"})
        assert bad_tag.value.field == "tags"
        assert bad_tag.value.sqlstate == "LQ001"
        with pytest.raises(lineq.ValidationError) as too_big:
            c.submit("x", "a" * 1_100_000)
        assert too_big.value.field == "input"
        assert too_big.value.limit == 1048576, too_big.value.reason
        with pytest.raises(lineq.ValidationError) as ns:
            c.submit("x", namespace="Not-A-Namespace")
        assert ns.value.field == "namespace"
        with pytest.raises(lineq.ValidationError) as batch:
            c.submit_many([{"target": "x"}, {"target": "y", "timeout_ms": 0}])
        assert batch.value.field == "timeout_ms"
        assert "request 1" in batch.value.reason
        with pytest.raises(lineq.UnknownNamespace) as unknown:
            c.submit("x", namespace="nowhere")
        assert unknown.value.namespace == "nowhere"
        missing = lineq.uuid7()
        with pytest.raises(lineq.NotFound) as nf:
            c.get(missing)
        assert (nf.value.what, nf.value.id) == ("execution", str(missing))
        # Nothing was written by the refused calls.
        assert shared_db.one("SELECT count(*) FROM lineq.executions WHERE workflow_name = 'x'") == 0


def test_list_filters_tags_and_metadata_and_pages(shared_db: Db) -> None:
    batch = tag()

    async def go() -> None:
        async with await client(shared_db) as c:
            a = await c.submit(
                "t",
                tags={"batch": batch, "customer": "acme-corp", "region": "us-west"},
                metadata={"plan": "gold"},
            )
            b = await c.submit("t", tags={"batch": batch, "customer": "acme-corp", "region": "eu"})
            d = await c.submit(
                "t",
                tags={"batch": batch, "customer": "other", "region": "us-west", "batch_id": "7"},
            )
            ids = lambda page: [e.id for e in page]  # noqa: E731
            both = await c.list(tags={"batch": batch, "customer": "acme-corp", "region": "us-west"})
            assert ids(both) == [a.id]
            assert ids(await c.list(tags={"batch": batch, "customer": "acme-corp"})) == [a.id, b.id]
            assert ids(await c.list(tags={"batch": batch, "batch_id": None})) == [d.id]
            assert ids(await c.list(tags={"batch": batch}, metadata={"plan": "gold"})) == [a.id]
            assert ids(await c.list(tags={"batch": batch}, status="completed")) == []
            assert ids(await c.list(tags={"batch": batch}, newest_first=True)) == [d.id, b.id, a.id]

            first = await c.list(tags={"batch": batch}, limit=2)
            assert ids(first) == [a.id, b.id] and first.next_cursor is not None
            second = await c.list(tags={"batch": batch}, limit=2, cursor=first.next_cursor)
            assert ids(second) == [d.id] and second.next_cursor is None
            every = [e.id async for e in c.list(tags={"batch": batch}, limit=1)]
            assert every == [a.id, b.id, d.id]
            with pytest.raises(lineq.ValidationError) as bad:
                await c.list(limit=0)
            assert bad.value.field == "limit"

    run(go())
    with lineq.Client(shared_db.url) as sync:
        assert len(list(sync.iterate(tags={"batch": batch}, limit=2))) == 3
        assert len(sync.list(tags={"batch": batch, "batch_id": None})) == 1


def test_tags_change_with_versions_and_history(shared_db: Db) -> None:
    async def go() -> None:
        async with await client(shared_db) as c:
            e = await c.submit("t", tags={"customer": "acme"})
            e2 = await c.update_tags(
                e.id, {"priority": "critical"}, expect_version=e.version, cause="escalated"
            )
            assert e2.tags == {"customer": "acme", "priority": "critical"}
            assert e2.version == e.version + 1
            with pytest.raises(lineq.Conflict) as stale:
                await c.update_tags(e.id, {"priority": "low"}, expect_version=e.version)
            assert (stale.value.expected, stale.value.actual) == (e.version, e2.version)
            e3 = await c.remove_tags(e.id, ["priority"])
            assert e3.tags == {"customer": "acme"}
            history = await c.history(e.id)
            tags = [h for h in history if h.kind == "tags"]
            assert [(h.tags_after, h.cause) for h in tags] == [
                ({"customer": "acme", "priority": "critical"}, "escalated"),
                ({"customer": "acme"}, ""),
            ]
            assert history[0].kind == "status" and history[0].status == "pending"

            cancelled = await c.cancel(e.id, reason="withdrawn")
            assert cancelled.cancelled == [e.id] and cancelled.executions == 1
            with pytest.raises(lineq.InvalidState):
                await c.update_tags(e.id, {"priority": "critical"})
            with pytest.raises(lineq.InvalidState):
                await c.cancel(e.id)
            assert "cancelled" in [h.status for h in await c.history(e.id)]

    run(go())


def test_wait_listens_for_the_finish_and_times_out(shared_db: Db) -> None:
    async def go() -> None:
        async with await client(shared_db) as c:
            e = await c.submit("nobody_serves_this")
            with pytest.raises(lineq.WaitTimeout):
                await c.wait(e.id, timeout=0.3)
            waiter = asyncio.create_task(c.wait(e.id, timeout=30))
            await asyncio.sleep(0.3)
            assert not waiter.done()
            # Another session finishes it: the waiter hears the notification.
            with lineq.Client(shared_db.url) as other:
                other.cancel(e.id)
            done = await asyncio.wait_for(waiter, 10)
            assert done.status == "cancelled"
            # Already finished: returns at once.
            assert (await c.wait(e.id, timeout=1)).status == "cancelled"

    run(go())
    with lineq.Client(shared_db.url) as sync:
        e = sync.submit("nobody_serves_this")
        with pytest.raises(lineq.WaitTimeout):
            sync.wait(e.id, timeout=0.2)
        sync.cancel(e.id)
        assert sync.wait(e.id, timeout=5).status == "cancelled"


def test_lineage_is_the_tree_of_executions(shared_db: Db) -> None:
    with lineq.Client(shared_db.url) as c:
        root = c.submit("parent")
        child = c.submit("child", parent_execution_id=root.id)
        grandchild = c.submit("grandchild", parent_execution_id=child.id)
        sibling = c.submit("child2", parent_execution_id=root.id)
        tree = c.lineage(grandchild.id)
        assert tree.execution.id == root.id
        assert [n.execution.id for n in tree.children] == [child.id, sibling.id]
        assert [n.execution.id for n in tree.children[0].children] == [grandchild.id]
        assert [n.execution.id for n in tree.walk()] == [
            root.id,
            child.id,
            grandchild.id,
            sibling.id,
        ]
        assert grandchild.root_execution_id == root.id
        # The same tree through list's filters.
        assert [e.id for e in c.list(parent_execution_id=root.id)] == [child.id, sibling.id]
        assert [e.id for e in c.list(root_execution_id=root.id, workflow="grandchild")] == [
            grandchild.id
        ]
        assert [
            e.id
            for e in c.list(
                root_execution_id=root.id, since=child.created_at, until=sibling.created_at
            )
        ] == [child.id, grandchild.id]
        assert [e.id for e in c.list(correlation_id=child.correlation_id)] == [child.id]

    async def go() -> None:
        async with await client(shared_db) as ac:
            t = await ac.lineage(root.id)
            assert [n.execution.id for n in t.walk()] == [
                root.id,
                child.id,
                grandchild.id,
                sibling.id,
            ]

    run(go())


def test_submit_in_the_callers_transaction(shared_db: Db) -> None:
    key = tag()
    shared_db.conn.execute("CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY)")
    with lineq.Client(shared_db.url) as c, psycopg.connect(shared_db.url) as conn:
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute("INSERT INTO orders (id) VALUES (%s)", (key,))
            e = c.submit("ship", {"order": key}, tags={"order": key}, conn=conn)
            assert c.list(tags={"order": key}) == []  # not visible outside yet
            raise RuntimeError("roll back")
        assert c.list(tags={"order": key}) == []
        assert shared_db.one("SELECT count(*) FROM orders WHERE id = %s", key) == 0
        assert shared_db.one("SELECT count(*) FROM lineq.events WHERE execution_id = %s", e.id) == 0

    async def go() -> None:
        async with (
            await client(shared_db) as ac,
            await psycopg.AsyncConnection.connect(shared_db.url) as aconn,
        ):
            async with aconn.transaction():
                await aconn.execute("INSERT INTO orders (id) VALUES (%s)", (key,))
                e = await ac.submit("ship", {"order": key}, tags={"order": key}, conn=aconn)
            assert [x.id for x in await ac.list(tags={"order": key})] == [e.id]

    run(go())
