"""Handlers the tests run on Python workers (``python -m lineq worker apps.handlers:worker``).

``LINEQ_TEST_DIR`` is where handlers leave marker files for the test to read;
``LINEQ_TEST_VT`` the visibility timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import lineq

worker = lineq.Worker(
    namespace=os.environ.get("LINEQ_TEST_NAMESPACE", "default"),
    concurrency=8,
    visibility_timeout=int(os.environ.get("LINEQ_TEST_VT", "30")),
)
DIR = Path(os.environ.get("LINEQ_TEST_DIR", "."))


def mark(name: str, **data: Any) -> None:
    """Leaves a marker file for the test."""
    tmp = DIR / f".{name}.tmp"
    tmp.write_text(json.dumps(data))
    tmp.rename(DIR / name)


def text_of(input: dict[str, Any]) -> str:
    """A task's ``text``, or a workflow step's ``input.text``."""
    return str(input.get("text") or (input.get("input") or {}).get("text", ""))


@worker.handler("shout")
async def shout(ctx: lineq.StepContext, input: dict[str, Any]) -> dict[str, Any]:
    """The text in upper case."""
    return {"shout": text_of(input).upper()}


@worker.handler("whoami")
async def whoami(ctx: lineq.StepContext, input: Any) -> dict[str, Any]:
    """What the context says."""
    return {
        "correlation_id": str(ctx.correlation_id),
        "execution_id": str(ctx.execution_id),
        "root_execution_id": str(ctx.root_execution_id),
        "step": ctx.step,
        "attempt": ctx.attempt,
        "idempotency_key": ctx.idempotency_key,
        "traceparent": ctx.traceparent,
        "worker_id": ctx.worker_id,
        "tags": ctx.tags,
    }


@worker.handler("add")
def add(ctx: lineq.StepContext, input: dict[str, Any]) -> dict[str, Any]:
    """A sync handler: runs in the worker's thread pool."""
    numbers = input.get("numbers") or (input.get("input") or {}).get("numbers", [])
    return {"sum": sum(numbers)}


@worker.handler("refuse")
async def refuse(ctx: lineq.StepContext, input: Any) -> None:
    """Fails for good."""
    raise lineq.PermanentError("no such order")


@worker.handler("crash")
def crash(ctx: lineq.StepContext, input: Any) -> None:
    """An unexpected exception: a retryable failure."""
    raise KeyError("missing")


@worker.handler("too_slow", timeout=0.3)
async def too_slow(ctx: lineq.StepContext, input: Any) -> None:
    """Runs past its timeout."""
    await asyncio.sleep(30)


@worker.handler("spawner")
async def spawner(ctx: lineq.StepContext, input: Any) -> dict[str, Any]:
    """Starts a child ``shout`` execution."""
    child = ctx.spawn("shout", {"text": "child"})
    return {"child": str(child)}


@worker.handler("slow")
async def slow(ctx: lineq.StepContext, input: dict[str, Any]) -> dict[str, Any]:
    """Marks its start; the first delivery then sleeps ``sleep`` seconds (or until cancelled)."""
    mark(
        f"started-{ctx.execution_id}-{ctx.delivery}", key=ctx.idempotency_key, worker=ctx.worker_id
    )
    if ctx.delivery == 1:
        try:
            await asyncio.wait_for(ctx.cancelled.wait(), float(input.get("sleep", 0)))
            mark(f"cancelled-{ctx.execution_id}", at=time.time())
            return {"cancelled": True}
        except asyncio.TimeoutError:
            pass
    mark(f"finished-{ctx.execution_id}-{ctx.delivery}")
    return {"delivery": ctx.delivery, "key": ctx.idempotency_key}


@worker.handler("traced")
def traced(ctx: lineq.StepContext, input: Any) -> dict[str, Any]:
    """Opens a span of its own."""
    from opentelemetry import trace

    with trace.get_tracer("apps.handlers").start_as_current_span("resize-work"):
        pass
    return {"traceparent": ctx.traceparent}
