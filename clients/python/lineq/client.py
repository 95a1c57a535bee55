"""The client: submit, read, list, tag, cancel and wait for executions.

``await lineq.connect(dsn)`` gives an :class:`AsyncClient`, ``lineq.Client(dsn)`` a sync
one; both speak lineq's SQL interface (docs/sql-api.md) with the same statements
(:mod:`lineq.queries`). Every write accepts ``conn=``: it then runs on that connection, inside
the caller's transaction, and exists exactly when that transaction commits.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Generator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from . import queries
from .errors import WaitTimeout, translate_errors
from .execution import CancelResult, Execution, HistoryEntry, LineageNode, Page

__all__ = ["AsyncClient", "Client", "Listing", "connect"]

#: Session settings lineq's own pools use: plan each statement for the tables' current size,
#: never JIT-compile (docs/design-notes.md).
CONNECT_OPTIONS = "-c plan_cache_mode=force_custom_plan -c jit=off"

_Row = dict[str, Any]
_LIST_PAGE = 500
_Executions = list[Execution]
_Histories = list[HistoryEntry]
_Strs = list[str]


def _connect_kwargs(application_name: str) -> dict[str, Any]:
    return {"autocommit": True, "options": CONNECT_OPTIONS, "application_name": application_name}


def _tree(rows: Iterable[Execution], root_id: UUID) -> LineageNode:
    nodes = {e.execution_id: LineageNode(e) for e in rows}
    for n in sorted(
        nodes.values(), key=lambda n: (n.execution.created_at, n.execution.execution_id)
    ):
        parent = n.execution.parent_execution_id
        if parent is not None and parent in nodes:
            nodes[parent].children.append(n)
    return nodes[root_id]


def _page(rows: list[_Row], limit: int) -> Page:
    items = [Execution.from_row(r) for r in rows]
    cursor = (
        queries.encode_cursor(items[-1].created_at, items[-1].execution_id)
        if len(items) == limit
        else None
    )
    return Page(items, cursor)


async def connect(
    dsn: str, *, node_name: str | None = None, application_name: str = "lineq-python"
) -> AsyncClient:
    """An asyncio client on a connection of its own to ``dsn``."""
    conn = await psycopg.AsyncConnection.connect(dsn, **_connect_kwargs(application_name))
    return AsyncClient(conn, dsn=dsn, node_name=node_name)


class Listing:
    """``client.list(...)``: await it for one page, or ``async for`` over every match."""

    def __init__(self, client: AsyncClient, limit: int, args: dict[str, Any]):
        self._client = client
        self._limit = limit
        self._args = args

    def __await__(self) -> Generator[Any, None, Page]:
        return self._client._list_page(self._limit, **self._args).__await__()

    async def __aiter__(self) -> AsyncIterator[Execution]:
        args = dict(self._args)
        while True:
            page = await self._client._list_page(self._limit, **args)
            for e in page:
                yield e
            if page.next_cursor is None:
                return
            args["cursor"] = page.next_cursor


class AsyncClient:
    """lineq for asyncio. Make one with :func:`connect`; ``async with`` closes it."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        dsn: str | None = None,
        node_name: str | None = None,
    ):
        self._conn = conn
        self._dsn = dsn
        self.node_name = node_name

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the client's connection."""
        await self._conn.close()

    async def _rows(
        self, q: queries.Query, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> list[_Row]:
        with translate_errors():
            async with (conn or self._conn).cursor(row_factory=dict_row) as cur:
                await cur.execute(q[0], q[1])
                return await cur.fetchall()

    async def submit(
        self,
        target: str,
        input: Any = None,
        *,
        tags: Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        namespace: str = "default",
        correlation_id: UUID | str | None = None,
        idempotency_key: str | None = None,
        parent_execution_id: UUID | str | None = None,
        timeout_ms: int | None = None,
        priority: int = 0,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> Execution:
        """Submits ``target`` (a workflow ``NAME``/``NAME@VERSION`` or a handler) with ``input``.

        With ``conn``, inside that connection's transaction: the execution exists iff it
        commits. ``created`` is False when ``idempotency_key`` was taken (that execution is
        returned and nothing is written).
        """
        rows = await self._rows(
            queries.submit(
                target,
                input,
                namespace=namespace,
                correlation_id=correlation_id,
                idempotency_key=idempotency_key,
                tags=tags,
                metadata=metadata,
                parent_execution_id=parent_execution_id,
                timeout_ms=timeout_ms,
                priority=priority,
                node_name=self.node_name,
            ),
            conn,
        )
        return Execution.from_row(rows[0])

    async def submit_many(
        self,
        requests: Iterable[Mapping[str, Any]],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> _Executions:
        """Submits several (mappings of ``submit``'s arguments): all or none, in order."""
        rows = await self._rows(queries.submit_many(requests, self.node_name), conn)
        return [Execution.from_row(r) for r in rows]

    async def get(self, execution_id: UUID | str) -> Execution:
        """One execution; ``NotFound`` when there is none."""
        return Execution.from_row((await self._rows(queries.get(execution_id)))[0])

    def list(
        self,
        *,
        tags: Mapping[str, str | None] | None = None,
        metadata: Mapping[str, Any] | None = None,
        status: str | Sequence[str] | None = None,
        workflow: str | None = None,
        parent_execution_id: UUID | str | None = None,
        root_execution_id: UUID | str | None = None,
        correlation_id: UUID | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
        newest_first: bool = False,
    ) -> Listing:
        """Executions matching every filter given, oldest first (or ``newest_first``).

        ``tags`` must all match (AND); a value of None means "has the tag". ``metadata`` is
        contained in theirs. ``await`` it for a :class:`Page` of at most ``limit`` (its
        ``next_cursor`` is the ``cursor`` of the next), or ``async for`` over all of them.
        """
        return Listing(
            self,
            limit,
            {
                "tags": tags,
                "metadata": metadata,
                "status": status,
                "workflow": workflow,
                "parent_execution_id": parent_execution_id,
                "root_execution_id": root_execution_id,
                "correlation_id": correlation_id,
                "since": since,
                "until": until,
                "cursor": cursor,
                "newest_first": newest_first,
            },
        )

    async def _list_page(self, limit: int, **args: Any) -> Page:
        return _page(await self._rows(queries.list_executions(limit=limit, **args)), limit)

    async def update_tags(
        self,
        execution_id: UUID | str,
        tags: Mapping[str, str],
        *,
        expect_version: int | None = None,
        cause: str | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> Execution:
        """Sets ``tags`` on a pending execution; ``Conflict`` if ``expect_version`` is stale."""
        return await self._tags(execution_id, tags, [], expect_version, cause, conn)

    async def remove_tags(
        self,
        execution_id: UUID | str,
        keys: Iterable[str],
        *,
        expect_version: int | None = None,
        cause: str | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> Execution:
        """Removes the tags ``keys`` of a pending execution."""
        return await self._tags(execution_id, {}, list(keys), expect_version, cause, conn)

    async def _tags(
        self,
        execution_id: UUID | str,
        set: Mapping[str, str],
        remove: _Strs,
        expect_version: int | None,
        cause: str | None,
        conn: psycopg.AsyncConnection[Any] | None,
    ) -> Execution:
        rows = await self._rows(
            queries.update_tags(
                execution_id,
                set,
                remove,
                expect_version=expect_version,
                cause=cause,
                actor=self.node_name,
            ),
            conn,
        )
        return Execution.from_row(rows[0])

    async def history(self, execution_id: UUID | str) -> _Histories:
        """The execution's status, step and tag changes, oldest first."""
        return [HistoryEntry.from_row(r) for r in await self._rows(queries.history(execution_id))]

    async def cancel(
        self,
        execution_id: UUID | str,
        *,
        reason: str | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> CancelResult:
        """Cancels the execution and every unfinished execution below it."""
        rows = await self._rows(queries.cancel(execution_id, reason, self.node_name), conn)
        return CancelResult(**rows[0])

    async def lineage(self, execution_id: UUID | str) -> LineageNode:
        """The tree the execution belongs to, from its root, each execution under its parent."""
        e = await self.get(execution_id)
        tree = [x async for x in self.list(root_execution_id=e.root_execution_id, limit=_LIST_PAGE)]
        return _tree(tree, e.root_execution_id)

    async def wait(self, execution_id: UUID | str, timeout: float | None = None) -> Execution:
        """Waits until the execution has finished and returns it; ``WaitTimeout`` after ``timeout``.

        Listens on ``lineq_finished`` first, then reads the status, then waits for the
        execution's notification: nothing polls.
        """
        if self._dsn is None:
            raise RuntimeError("wait needs a client made by lineq.connect(dsn)")
        eid = queries.get(execution_id)[1]["id"]
        deadline = None if timeout is None else time.monotonic() + timeout
        async with await psycopg.AsyncConnection.connect(
            self._dsn, **_connect_kwargs("lineq-python-wait")
        ) as listener:
            await listener.execute("LISTEN lineq_finished")
            e = await self.get(eid)
            while not e.finished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeout(f"execution {eid} is still {e.status} after {timeout} s")
                async for note in listener.notifies(timeout=remaining):
                    if note.payload == str(eid):
                        break
                e = await self.get(eid)
            return e


class Client:
    """lineq, synchronously: the same operations as :class:`AsyncClient`.

    ``Client(dsn)`` opens a connection of its own; ``with Client(dsn) as c:`` closes it.
    """

    def __init__(
        self, dsn: str, *, node_name: str | None = None, application_name: str = "lineq-python"
    ):
        self._dsn = dsn
        self._conn = psycopg.Connection.connect(dsn, **_connect_kwargs(application_name))
        self.node_name = node_name

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the client's connection."""
        self._conn.close()

    def _rows(self, q: queries.Query, conn: psycopg.Connection[Any] | None = None) -> list[_Row]:
        with translate_errors(), (conn or self._conn).cursor(row_factory=dict_row) as cur:
            cur.execute(q[0], q[1])
            return cur.fetchall()

    def submit(
        self,
        target: str,
        input: Any = None,
        *,
        tags: Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        namespace: str = "default",
        correlation_id: UUID | str | None = None,
        idempotency_key: str | None = None,
        parent_execution_id: UUID | str | None = None,
        timeout_ms: int | None = None,
        priority: int = 0,
        conn: psycopg.Connection[Any] | None = None,
    ) -> Execution:
        """See :meth:`AsyncClient.submit`."""
        rows = self._rows(
            queries.submit(
                target,
                input,
                namespace=namespace,
                correlation_id=correlation_id,
                idempotency_key=idempotency_key,
                tags=tags,
                metadata=metadata,
                parent_execution_id=parent_execution_id,
                timeout_ms=timeout_ms,
                priority=priority,
                node_name=self.node_name,
            ),
            conn,
        )
        return Execution.from_row(rows[0])

    def submit_many(
        self, requests: Iterable[Mapping[str, Any]], *, conn: psycopg.Connection[Any] | None = None
    ) -> _Executions:
        """See :meth:`AsyncClient.submit_many`."""
        rows = self._rows(queries.submit_many(requests, self.node_name), conn)
        return [Execution.from_row(r) for r in rows]

    def get(self, execution_id: UUID | str) -> Execution:
        """One execution; ``NotFound`` when there is none."""
        return Execution.from_row(self._rows(queries.get(execution_id))[0])

    def list(
        self,
        *,
        tags: Mapping[str, str | None] | None = None,
        metadata: Mapping[str, Any] | None = None,
        status: str | Sequence[str] | None = None,
        workflow: str | None = None,
        parent_execution_id: UUID | str | None = None,
        root_execution_id: UUID | str | None = None,
        correlation_id: UUID | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
        newest_first: bool = False,
    ) -> Page:
        """One page of matching executions; see :meth:`AsyncClient.list`."""
        return _page(
            self._rows(
                queries.list_executions(
                    tags=tags,
                    metadata=metadata,
                    status=status,
                    workflow=workflow,
                    parent_execution_id=parent_execution_id,
                    root_execution_id=root_execution_id,
                    correlation_id=correlation_id,
                    since=since,
                    until=until,
                    limit=limit,
                    cursor=cursor,
                    newest_first=newest_first,
                )
            ),
            limit,
        )

    def iterate(self, *, limit: int = _LIST_PAGE, **filters: Any) -> Iterator[Execution]:
        """Every matching execution, page after page (``list``'s filters)."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.list(limit=limit, cursor=cursor, **filters)
            yield from page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def update_tags(
        self,
        execution_id: UUID | str,
        tags: Mapping[str, str],
        *,
        expect_version: int | None = None,
        cause: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> Execution:
        """See :meth:`AsyncClient.update_tags`."""
        return Execution.from_row(
            self._rows(
                queries.update_tags(
                    execution_id,
                    tags,
                    [],
                    expect_version=expect_version,
                    cause=cause,
                    actor=self.node_name,
                ),
                conn,
            )[0]
        )

    def remove_tags(
        self,
        execution_id: UUID | str,
        keys: Iterable[str],
        *,
        expect_version: int | None = None,
        cause: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> Execution:
        """See :meth:`AsyncClient.remove_tags`."""
        return Execution.from_row(
            self._rows(
                queries.update_tags(
                    execution_id,
                    {},
                    list(keys),
                    expect_version=expect_version,
                    cause=cause,
                    actor=self.node_name,
                ),
                conn,
            )[0]
        )

    def history(self, execution_id: UUID | str) -> _Histories:
        """See :meth:`AsyncClient.history`."""
        return [HistoryEntry.from_row(r) for r in self._rows(queries.history(execution_id))]

    def cancel(
        self,
        execution_id: UUID | str,
        *,
        reason: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> CancelResult:
        """See :meth:`AsyncClient.cancel`."""
        return CancelResult(
            **self._rows(queries.cancel(execution_id, reason, self.node_name), conn)[0]
        )

    def lineage(self, execution_id: UUID | str) -> LineageNode:
        """See :meth:`AsyncClient.lineage`."""
        e = self.get(execution_id)
        return _tree(self.iterate(root_execution_id=e.root_execution_id), e.root_execution_id)

    def wait(self, execution_id: UUID | str, timeout: float | None = None) -> Execution:
        """See :meth:`AsyncClient.wait`."""
        eid = queries.get(execution_id)[1]["id"]
        deadline = None if timeout is None else time.monotonic() + timeout
        with psycopg.Connection.connect(
            self._dsn, **_connect_kwargs("lineq-python-wait")
        ) as listener:
            listener.execute("LISTEN lineq_finished")
            e = self.get(eid)
            while not e.finished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeout(f"execution {eid} is still {e.status} after {timeout} s")
                for note in listener.notifies(timeout=remaining):
                    if note.payload == str(eid):
                        break
                e = self.get(eid)
            return e
