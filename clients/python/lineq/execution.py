"""What the client returns: executions, their history, a cancellation, a lineage tree."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

__all__ = [
    "FINISHED",
    "CancelResult",
    "Execution",
    "HistoryEntry",
    "LineageNode",
    "Page",
    "Status",
]

Status = Literal["pending", "running", "completed", "failed", "cancelled"]

#: The statuses an execution never leaves.
FINISHED: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class Execution:
    """One execution, with every field of the REST API (``lineq.executions``'s columns).

    ``created`` is set by ``submit``: False when the idempotency key was taken already (this
    is then that first execution and nothing was written); None when read back.
    """

    execution_id: UUID
    workflow_name: str
    workflow_version: int
    namespace: str
    status: Status
    input: Any
    output: Any
    error: Any
    correlation_id: UUID
    parent_correlation_id: UUID | None
    parent_execution_id: UUID | None
    root_execution_id: UUID
    parent_event_id: UUID | None
    parent_step: str | None
    tags: dict[str, str]
    metadata: dict[str, Any]
    idempotency_key: str | None
    priority: int
    version: int
    kind: str
    parent_step_id: UUID | None
    parent_waits: bool
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    created: bool | None = None

    @property
    def id(self) -> UUID:
        """The execution id."""
        return self.execution_id

    @property
    def workflow(self) -> str:
        """The workflow's (or, for a task, the handler's) name."""
        return self.workflow_name

    @property
    def finished(self) -> bool:
        """True once completed, failed or cancelled."""
        return self.status in FINISHED

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Execution:
        """An execution from a row of ``lineq.executions`` (columns it does not know are left)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


class Page(list[Execution]):
    """A page of a list: the executions, and ``next_cursor`` when another page may follow."""

    def __init__(self, items: list[Execution], next_cursor: str | None):
        super().__init__(items)
        self.next_cursor = next_cursor


@dataclass(frozen=True)
class HistoryEntry:
    """One change in an execution's life (``lineq.execution_history``), oldest first.

    ``kind`` is ``status`` (``status`` says which), ``step`` (``step`` and ``step_status``) or
    ``tags`` (``tags_before``, ``tags_after``, ``version``); ``cause`` says why.
    """

    at: datetime
    kind: str
    event_id: UUID
    event_type: str
    status: str | None
    step: str | None
    step_status: str | None
    attempt: int | None
    version: int | None
    tags_before: dict[str, str] | None
    tags_after: dict[str, str] | None
    cause: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> HistoryEntry:
        """An entry from a row of ``lineq.execution_history``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass(frozen=True)
class CancelResult:
    """What a cancel did: how many executions, steps and queued messages it cancelled."""

    execution_id: UUID
    executions: int
    steps: int
    messages_deleted: int
    cancelled: list[UUID]


@dataclass
class LineageNode:
    """An execution in its tree: the executions it started are its ``children``."""

    execution: Execution
    children: list[LineageNode] = field(default_factory=list)

    def walk(self) -> Iterator[LineageNode]:
        """This node and every node below it, parents before children."""
        yield self
        for c in self.children:
            yield from c.walk()

    def find(self, execution_id: UUID) -> LineageNode | None:
        """The node of ``execution_id`` in this tree."""
        return next((n for n in self.walk() if n.execution.execution_id == execution_id), None)
