"""The worker: claims steps of one namespace, runs their handlers, reports the outcomes.

It speaks the worker protocol of lineq's SQL interface (``lineq.worker_*``, docs/sql-api.md):
register, then claim batches, keep running steps hidden (``worker_extend``), report finished
attempts in batches, heartbeat, and stop. Poison and malformed messages never reach it: the
claim dead-letters them.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from psycopg import sql

from . import __version__
from .client import CONNECT_OPTIONS
from .context import StepContext
from .errors import PermanentError, RetryableError, ValidationError
from .logs import install_record_factory, step_fields
from .tracing import Tracing

__all__ = ["Handler", "Worker"]

log = logging.getLogger("lineq.worker")

Handler = Callable[[StepContext, Any], Any]
H = TypeVar("H", bound=Handler)

#: A handler's output is at most this many bytes of compact JSON (as the Rust worker's).
MAX_OUTPUT_BYTES = 1024 * 1024
_NAMESPACE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_HANDLER = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_REPORT_BATCH = 1000
#: A registration silent this long may be taken over by a worker with the same id.
TAKEOVER_AFTER_SECS = 30.0


@dataclass
class _Handler:
    fn: Handler
    is_async: bool
    timeout: float | None


@dataclass
class _Held:
    """A claimed message: kept hidden until its outcome is reported."""

    msg_id: int
    ctx: StepContext
    task: asyncio.Task[None] | None = None
    #: Released at shutdown: whatever the handler still returns is not reported.
    released: bool = False


class Worker:
    """A worker for one namespace: ``@worker.handler("name")`` registers handlers.

    ``await worker.run()`` runs until :meth:`stop` (or the ``stop`` event given);
    :meth:`run_forever` does so with SIGTERM and SIGINT stopping it. Stopping stops claiming,
    lets running handlers finish within ``shutdown_grace`` seconds, and releases the messages
    of those still running so that another worker runs them at once.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        namespace: str = "default",
        concurrency: int = 16,
        worker_id: str | None = None,
        batch_size: int | None = None,
        visibility_timeout: int = 30,
        max_deliveries: int = 5,
        shutdown_grace: float = 30.0,
        poll_interval: float = 1.0,
        heartbeat_interval: float = 5.0,
        node_name: str | None = None,
    ):
        if not _NAMESPACE.match(namespace):
            raise ValidationError(
                "namespace",
                f"1 to 32 of a-z, 0-9 and _, starting with a letter (got {namespace!r})",
            )
        if concurrency < 1:
            raise ValidationError("concurrency", f"at least 1 (got {concurrency})")
        self.dsn = dsn
        self.namespace = namespace
        self.queue = f"lineq_steps_{namespace}"
        self.concurrency = concurrency
        host = socket.gethostname()
        self.worker_id = worker_id or f"python-{host}-{os.getpid()}-{os.urandom(3).hex()}"
        self.batch_size = batch_size or min(concurrency, 100)
        self.visibility_timeout = visibility_timeout
        self.max_deliveries = max_deliveries
        self.shutdown_grace = shutdown_grace
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.node_name = node_name or os.environ.get("LINEQ_NODE_NAME") or host
        self._handlers: dict[str, _Handler] = {}
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token = ""
        self._held: dict[int, _Held] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._slot = asyncio.Event()
        self._stopping_hard = False

    # -- handlers ---------------------------------------------------------------------------

    def handler(self, name: str, *, timeout: float | None = None) -> Callable[[H], H]:
        """Registers the decorated function as handler ``name``.

        ``async def f(ctx, input)`` runs on the worker's event loop, ``def f(ctx, input)`` in
        its thread pool. ``timeout`` (seconds) applies when the step names none
        (``timeout_ms``). Raise :class:`~lineq.PermanentError` for a failure not to retry.
        """

        def register(fn: H) -> H:
            self.add_handler(name, fn, timeout=timeout)
            return fn

        return register

    def add_handler(self, name: str, fn: Handler, *, timeout: float | None = None) -> None:
        """Registers ``fn`` as handler ``name`` (see :meth:`handler`)."""
        if not _HANDLER.match(name):
            raise ValidationError(
                "handler", f"1 to 128 of letters, digits, '_', '.', ':' and '-' (got {name!r})"
            )
        self._handlers[name] = _Handler(fn, inspect.iscoroutinefunction(fn), timeout)

    @property
    def handlers(self) -> list[str]:
        """The names of the registered handlers."""
        return sorted(self._handlers)

    # -- running ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Asks the worker to stop (from any thread or a signal handler)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def run_forever(self) -> None:
        """Runs until SIGTERM or SIGINT, then stops gracefully."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            await self.run()

        asyncio.run(main())

    async def _connect(self, dsn: str, purpose: str) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            dsn,
            autocommit=True,
            options=CONNECT_OPTIONS,
            application_name=f"lineq-python-worker {purpose}",
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Runs until ``stop`` is set (or :meth:`stop` is called)."""
        if not self._handlers:
            raise ValidationError("handlers", "register at least one handler")
        dsn = self.dsn or os.environ.get("DATABASE_URL")
        if not dsn:
            raise ValidationError("dsn", "give Worker a dsn or set DATABASE_URL")
        if not _NAMESPACE.match(self.namespace):
            raise ValidationError(
                "namespace",
                f"1 to 32 of a-z, 0-9 and _, starting with a letter (got {self.namespace!r})",
            )
        self.queue = f"lineq_steps_{self.namespace}"
        self._loop = asyncio.get_running_loop()
        self._stop = stop or asyncio.Event()
        self._slot = asyncio.Event()
        install_record_factory()
        self._tracing = Tracing()
        self._pool = ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="lineq-handler"
        )
        self._claim_db = await self._connect(dsn, "claim")
        self._side_db = await self._connect(dsn, "report")
        self._listen_db = await self._connect(dsn, "listen")
        await self._ensure_queue()
        self._token = await self._register()
        await self._listen_db.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.queue)))
        self._wake = asyncio.Event()
        self._reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        background = [
            asyncio.create_task(self._listen()),
            asyncio.create_task(self._report_loop()),
            asyncio.create_task(self._keep_loop()),
        ]
        log.info(
            "worker %s started: namespace %s, concurrency %s, handlers %s",
            self.worker_id,
            self.namespace,
            self.concurrency,
            ", ".join(self.handlers),
        )
        try:
            await self._claim_loop()
            await self._shut_down()
        finally:
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            try:
                await self._side_db.execute(
                    "SELECT lineq.worker_stop(%s, %s)", (self.worker_id, self._token)
                )
            except psycopg.Error as e:
                log.warning("worker_stop failed: %s", e)
            for c in (self._claim_db, self._side_db, self._listen_db):
                await c.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._tracing.shutdown()
            log.info("worker %s stopped", self.worker_id)

    async def _ensure_queue(self) -> None:
        """Creates the namespace's queue if this role may (a worker role may not: it must exist)."""
        cur = await self._side_db.execute(
            "SELECT 1 FROM lineq.queues() WHERE queue_name = %s", (self.queue,)
        )
        if await cur.fetchone() is None:
            try:
                await self._side_db.execute("SELECT lineq.create_queue(%s)", (self.queue,))
            except psycopg.errors.InsufficientPrivilege:
                log.warning(
                    "queue %s does not exist and this role may not create it "
                    "(lineq namespace create %s)",
                    self.queue,
                    self.namespace,
                )

    async def _register(self) -> str:
        """Registers; the token is what later calls present.

        The worker exports only the spans its handlers open, not the attempt spans they nest
        under: an orchestrator with tracing on exports those on its behalf, under the service
        named here (``OTEL_SERVICE_NAME``; else ``lineq-worker-python``).
        """
        cur = await self._side_db.execute(
            "SELECT lineq.worker_register(%s, %s::text[], %s::text[], %s, %s, %s, 'python', "
            "%s, %s::text, false)",
            (
                self.worker_id,
                [self.namespace],
                self.handlers,
                socket.gethostname(),
                os.getpid(),
                __version__,
                TAKEOVER_AFTER_SECS,
                os.environ.get("OTEL_SERVICE_NAME") or None,
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])

    def _wake_when_visible(self, payload: str) -> None:
        """Wakes the claim loop when a delayed message becomes visible.

        The notification is `<queue>@<epoch ms>`: a delayed start or a retry's backoff is
        claimed then, not at the next poll.
        """
        queue, sep, at = payload.partition("@")
        if not sep or queue != self.queue or not at.isdigit():
            return
        delay = int(at) / 1000.0 - time.time()
        if delay > 86400:
            return  # found by polling well before it is due
        asyncio.get_running_loop().call_later(max(delay, 0.0), self._wake.set)

    async def _listen(self) -> None:
        """Wakes the claim loop when a step is sent to the queue (delivered on commit).

        When the connection drops, it listens again on a new one and wakes the loop, since a
        notification may have been missed meanwhile (the poll interval bounds the delay).
        """
        while True:
            try:
                async for note in self._listen_db.notifies():
                    if note.payload == self.queue:
                        self._wake.set()
                    else:
                        self._wake_when_visible(note.payload)
            except psycopg.Error as e:
                log.warning("wake-up listener lost its connection: %s", e)
            await asyncio.sleep(1.0)
            try:
                self._listen_db = await self._reconnect(self._listen_db, "listen")
                await self._listen_db.execute(
                    sql.SQL("LISTEN {}").format(sql.Identifier(self.queue))
                )
            except psycopg.Error as e:
                log.warning("listening again failed: %s", e)
            self._wake.set()

    async def _claim_loop(self) -> None:
        assert self._stop is not None
        backoff = 0.1
        while not self._stop.is_set():
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot.clear()
                await _first(self._stop.wait(), self._slot.wait())
                continue
            qty = min(free, self.batch_size)
            self._wake.clear()
            try:
                cur = await self._claim_db.execute(
                    "SELECT msg_id, delivery, message, started_event_id, traceparent "
                    "FROM lineq.worker_claim(%s, %s, %s, %s, %s, %s, %s::text[], %s)",
                    (
                        self.worker_id,
                        self._token,
                        self.namespace,
                        qty,
                        self.visibility_timeout,
                        self.max_deliveries,
                        self.handlers,
                        self.node_name,
                    ),
                )
                rows = await cur.fetchall()
                backoff = 0.1
            except psycopg.Error as e:
                log.error("claim failed; retrying in %.1f s: %s", backoff, e)
                self._claim_db = await self._reconnect(self._claim_db, "claim")
                await _first(self._stop.wait(), asyncio.sleep(backoff))
                backoff = min(backoff * 2, 5.0)
                continue
            for msg_id, delivery, message, started_event_id, traceparent in rows:
                self._start_step(msg_id, delivery, message, started_event_id, traceparent)
            if len(rows) < qty:
                await _first(
                    self._stop.wait(), self._wake.wait(), asyncio.sleep(self.poll_interval)
                )

    async def _reconnect(
        self, conn: psycopg.AsyncConnection[Any], purpose: str
    ) -> psycopg.AsyncConnection[Any]:
        if not conn.closed and not conn.broken:
            return conn
        try:
            return await self._connect(self.dsn or os.environ["DATABASE_URL"], purpose)
        except psycopg.Error as e:
            log.warning("reconnect failed: %s", e)
            return conn

    def _start_step(
        self,
        msg_id: int,
        delivery: int,
        message: str,
        started_event_id: UUID,
        traceparent: str | None,
    ) -> None:
        try:
            m = json.loads(message)
            meta = m.get("meta") or {}
            context = m.get("context") or {}
            ctx = StepContext(
                execution_id=UUID(m["execution_id"]),
                step_id=UUID(m["step_id"]),
                step=m["step"],
                handler=m["handler"],
                attempt=int(m["attempt"]),
                delivery=delivery,
                correlation_id=UUID(meta["correlation_id"]),
                root_execution_id=UUID(meta["root_execution_id"]),
                parent_execution_id=(
                    UUID(meta["parent_execution_id"]) if meta.get("parent_execution_id") else None
                ),
                workflow=context.get("workflow") or m["handler"],
                tags=dict(context.get("tags") or {}),
                metadata=dict(context.get("metadata") or {}),
                parent_step=context.get("parent_step"),
                worker_id=self.worker_id,
                traceparent=traceparent or meta.get("traceparent") or "",
                event_id=started_event_id,
            )
            timeout_ms = m.get("timeout_ms")
            step_input = m.get("input")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            task = asyncio.create_task(
                self._reject(msg_id, f"the Python worker cannot read the step message: {e!r}")
            )
        else:
            held = _Held(msg_id, ctx)
            self._held[msg_id] = held
            task = asyncio.create_task(
                self._run_step(held, delivery, started_event_id, timeout_ms, step_input)
            )
            held.task = task
        self._running.add(task)
        task.add_done_callback(self._step_done)

    def _step_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slot.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("step task failed: %r", task.exception())

    async def _reject(self, msg_id: int, reason: str) -> None:
        log.error("rejecting message %s: %s", msg_id, reason)
        await self._side(
            "SELECT lineq.worker_reject(%s, %s, %s, %s, %s, %s)",
            (self.worker_id, self._token, self.namespace, msg_id, reason, self.node_name),
        )

    async def _side(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Runs ``query`` on the reporting connection (reconnecting once if it broke)."""
        try:
            cur = await self._side_db.execute(query, params)
        except psycopg.OperationalError:
            self._side_db = await self._reconnect(self._side_db, "report")
            cur = await self._side_db.execute(query, params)
        return await cur.fetchall() if cur.description else []

    async def _run_step(
        self,
        held: _Held,
        delivery: int,
        started_event_id: UUID,
        timeout_ms: int | None,
        step_input: Any,
    ) -> None:
        ctx = held.ctx
        started = time.monotonic()
        outcome = await self._execute(ctx, timeout_ms, step_input)
        if outcome is None or held.released:  # cut short by shutdown: released, not reported
            return
        outcome.update(
            msg_id=held.msg_id,
            delivery=delivery,
            started_event_id=str(started_event_id),
            duration_ms=int((time.monotonic() - started) * 1000),
        )
        if outcome["outcome"] == "completed" and ctx.children:
            outcome["children"] = ctx.children
        await self._reports.put(outcome)

    async def _execute(
        self, ctx: StepContext, timeout_ms: int | None, step_input: Any
    ) -> dict[str, Any] | None:
        """Runs the handler; its outcome as ``worker_report`` takes it."""
        h = self._handlers.get(ctx.handler)
        if h is None:
            return _failed(
                "unknown_handler",
                f"no handler named {ctx.handler!r} on worker "
                f"{self.worker_id} (it serves {', '.join(self.handlers)})",
                False,
            )
        limit = timeout_ms / 1000 if timeout_ms else h.timeout
        try:
            if h.is_async:
                result = await asyncio.wait_for(self._call_async(h.fn, ctx, step_input), limit)
            else:
                run = contextvars.copy_context().run
                future = asyncio.get_running_loop().run_in_executor(
                    self._pool, run, self._call_sync, h.fn, ctx, step_input
                )
                result = await asyncio.wait_for(future, limit)
        except asyncio.CancelledError:
            if self._stopping_hard:
                return None
            raise
        except asyncio.TimeoutError:
            ctx._cancel()
            return _failed(
                "timeout",
                f"handler {ctx.handler!r} ran past its {int((limit or 0) * 1000)} ms timeout",
                True,
            )
        except PermanentError as e:
            return _failed(e.kind, str(e), False)
        except RetryableError as e:
            return _failed(e.kind, str(e), True)
        except Exception as e:
            with step_fields(**_fields(ctx)):
                log.exception("handler %s raised", ctx.handler)
            return _failed("exception", f"{type(e).__name__}: {e}", True)
        try:
            size = len(json.dumps(result, separators=(",", ":")).encode())
        except (TypeError, ValueError) as e:
            return _failed("output_not_json", f"the output is not JSON: {e}", False)
        if size > MAX_OUTPUT_BYTES:
            return _failed(
                "output_too_large",
                f"output is {size} bytes; the limit is {MAX_OUTPUT_BYTES}",
                False,
            )
        return {"outcome": "completed", "output": result}

    async def _call_async(self, fn: Handler, ctx: StepContext, step_input: Any) -> Any:
        with step_fields(**_fields(ctx)), self._tracing.attempt(ctx.traceparent):
            result = fn(ctx, step_input)
            return await result if inspect.isawaitable(result) else result

    def _call_sync(self, fn: Handler, ctx: StepContext, step_input: Any) -> Any:
        with step_fields(**_fields(ctx)), self._tracing.attempt(ctx.traceparent):
            return fn(ctx, step_input)

    async def _report_loop(self) -> None:
        """Reports finished attempts, as many per call (one transaction) as are waiting."""
        while True:
            batch = [await self._reports.get()]
            while len(batch) < _REPORT_BATCH and not self._reports.empty():
                batch.append(self._reports.get_nowait())
            backoff = 0.1
            while True:
                try:
                    await self._side(
                        "SELECT msg_id FROM lineq.worker_report(%s, %s, %s, %s::jsonb, %s)",
                        (
                            self.worker_id,
                            self._token,
                            self.namespace,
                            json.dumps(batch, separators=(",", ":")),
                            self.node_name,
                        ),
                    )
                    break
                except psycopg.Error as e:
                    log.error(
                        "report of %s outcomes failed; retrying in %.1f s: %s",
                        len(batch),
                        backoff,
                        e,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            for o in batch:
                self._held.pop(o["msg_id"], None)
                self._reports.task_done()

    async def _keep_loop(self) -> None:
        """Heartbeats, extends the visibility of held messages, signals cancelled steps.

        Looks twice a second; extends every third of the visibility timeout.
        """
        extend_every = max(1.0, self.visibility_timeout / 3)
        last_extend = last_beat = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            try:
                if now - last_beat >= self.heartbeat_interval:
                    last_beat = now
                    await self._side(
                        "SELECT lineq.worker_heartbeat(%s, %s)", (self.worker_id, self._token)
                    )
                held = list(self._held.values())
                if not held:
                    continue
                if now - last_extend >= extend_every:
                    last_extend = now
                    await self._side(
                        "SELECT lineq.worker_extend(%s, %s, %s, %s::bigint[], %s)",
                        (
                            self.worker_id,
                            self._token,
                            self.namespace,
                            [h.msg_id for h in held],
                            self.visibility_timeout,
                        ),
                    )
                rows = await self._side(
                    "SELECT lineq.worker_cancelled(%s::uuid[])", ([h.ctx.step_id for h in held],)
                )
                cancelled = {r[0] for r in rows}
                for h in held:
                    if h.ctx.step_id in cancelled and not h.ctx.cancelled.is_set():
                        with step_fields(**_fields(h.ctx)):
                            log.info("step %s cancelled; signalling its handler", h.ctx.step_id)
                        h.ctx._cancel()
            except psycopg.Error as e:
                log.warning("heartbeat, visibility extension or cancel check failed: %s", e)

    async def _shut_down(self) -> None:
        """Lets running handlers finish within the grace period, then releases the rest."""
        running = set(self._running)
        log.info(
            "worker %s stopping: %s running, grace %.1f s",
            self.worker_id,
            len(running),
            self.shutdown_grace,
        )
        if running:
            _, pending = await asyncio.wait(running, timeout=self.shutdown_grace)
            if pending:
                self._stopping_hard = True
                left = [h for h in self._held.values() if h.task in pending]
                for h in left:
                    h.released = True
                for t in pending:
                    t.cancel()
                for h in left:
                    h.ctx._cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                ids = [h.msg_id for h in left]
                try:
                    await self._side(
                        "SELECT lineq.worker_release(%s, %s, %s, %s::bigint[])",
                        (self.worker_id, self._token, self.namespace, ids),
                    )
                    log.info("released %s messages past the grace period: %s", len(ids), ids)
                except psycopg.Error as e:
                    log.error("release failed (they reappear after the visibility timeout): %s", e)
                for i in ids:
                    self._held.pop(i, None)
        try:
            await asyncio.wait_for(self._reports.join(), max(10.0, self.shutdown_grace))
        except asyncio.TimeoutError:
            log.error(
                "%s outcomes could not be reported; their steps run again after the "
                "visibility timeout",
                self._reports.qsize(),
            )


def _failed(kind: str, message: str, retryable: bool) -> dict[str, Any]:
    return {
        "outcome": "failed",
        "error": {"kind": kind, "message": message, "retryable": retryable},
    }


def _fields(ctx: StepContext) -> dict[str, str]:
    return {
        "correlation_id": str(ctx.correlation_id),
        "execution_id": str(ctx.execution_id),
        "trace_id": ctx.trace_id,
        "step": ctx.step,
    }


async def _first(*aws: Awaitable[Any]) -> None:
    """Waits until the first of ``aws`` is done; cancels the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
