"""What a handler is told about the step it runs."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from .ids import uuid7

__all__ = ["StepContext"]


@dataclass
class StepContext:
    """The step attempt a handler runs, and how it starts child executions.

    ``cancelled`` is set (within a second) when the execution is cancelled, the attempt runs
    past its timeout, or the worker shuts down past its grace period; a sync handler, in its
    thread, asks :meth:`is_cancelled` instead.
    """

    execution_id: UUID
    step_id: UUID
    step: str
    handler: str
    attempt: int
    delivery: int
    correlation_id: UUID
    root_execution_id: UUID
    parent_execution_id: UUID | None
    workflow: str
    tags: dict[str, str]
    metadata: dict[str, Any]
    parent_step: str | None
    worker_id: str
    #: W3C ``traceparent`` of this attempt's span: the parent of the handler's own spans.
    traceparent: str
    #: The ``action_started`` event of this delivery.
    event_id: UUID
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    children: list[dict[str, Any]] = field(default_factory=list)
    _cancelled_flag: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def idempotency_key(self) -> str:
        """Step id and attempt: the same for every delivery of this attempt."""
        return f"{self.step_id}:{self.attempt}"

    @property
    def trace_id(self) -> str:
        """The trace id of the execution's trace (32 hex digits)."""
        parts = self.traceparent.split("-")
        return parts[1] if len(parts) == 4 else ""

    def is_cancelled(self) -> bool:
        """True once ``cancelled`` is set; safe to call from any thread."""
        return self._cancelled_flag.is_set()

    def _cancel(self) -> None:
        """Sets ``cancelled`` (call on the worker's event loop)."""
        self._cancelled_flag.set()
        self.cancelled.set()

    def spawn(
        self, target: str, input: Any = None, *, namespace: str | None = None, wait: bool = False
    ) -> UUID:
        """Starts a child execution of ``target`` and returns its id.

        It is created when this step's result is recorded (an attempt that crashes leaves no
        orphans), with this execution as its parent. With ``wait``, this step completes with
        the child's output (or fails with its error).
        """
        child_id = uuid7()
        child: dict[str, Any] = {
            "execution_id": str(child_id),
            "target": target,
            "input": input,
            "wait": wait,
        }
        if namespace is not None:
            child["namespace"] = namespace
        self.children.append(child)
        return child_id
