"""The SQL the client sends: fixed statements, every value a bound parameter.

Each builder returns ``(query, params)``; the async and the sync client run the same ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from .errors import ValidationError

__all__ = [
    "cancel",
    "decode_cursor",
    "encode_cursor",
    "get",
    "history",
    "list_executions",
    "submit",
    "submit_many",
    "update_tags",
]

Query = tuple[str, dict[str, Any]]

_SUBMIT = """
SELECT * FROM lineq.submit(
    %(target)s,
    p_input => %(input)s,
    p_namespace => %(namespace)s,
    p_correlation_id => %(correlation_id)s::uuid,
    p_idempotency_key => %(idempotency_key)s::text,
    p_tags => %(tags)s,
    p_metadata => %(metadata)s,
    p_parent_execution_id => %(parent_execution_id)s::uuid,
    p_timeout_ms => %(timeout_ms)s::bigint,
    p_priority => %(priority)s::integer,
    p_node_name => %(node_name)s::text)
"""

_SUBMIT_FIELDS = frozenset(
    {
        "target",
        "input",
        "namespace",
        "correlation_id",
        "idempotency_key",
        "tags",
        "metadata",
        "parent_execution_id",
        "timeout_ms",
        "priority",
    }
)


def submit(
    target: str,
    input: Any,
    *,
    namespace: str,
    correlation_id: UUID | str | None,
    idempotency_key: str | None,
    tags: Mapping[str, str] | None,
    metadata: Mapping[str, Any] | None,
    parent_execution_id: UUID | str | None,
    timeout_ms: int | None,
    priority: int,
    node_name: str | None,
) -> Query:
    """``lineq.submit``: one execution."""
    return _SUBMIT, {
        "target": target,
        "input": Jsonb(input),
        "namespace": namespace,
        "correlation_id": _uuid_or_none(correlation_id, "correlation_id"),
        "idempotency_key": idempotency_key,
        "tags": Jsonb(dict(tags or {})),
        "metadata": Jsonb(dict(metadata or {})),
        "parent_execution_id": _uuid_or_none(parent_execution_id, "parent_execution_id"),
        "timeout_ms": timeout_ms,
        "priority": priority,
        "node_name": node_name,
    }


def submit_many(requests: Iterable[Mapping[str, Any]], node_name: str | None) -> Query:
    """``lineq.submit_many``: several executions, all or none, in request order.

    Each request is a mapping with ``submit``'s arguments (``target`` required).
    """
    batch: list[dict[str, Any]] = []
    for i, r in enumerate(requests):
        unknown = set(r) - _SUBMIT_FIELDS
        if unknown:
            raise ValidationError("requests", f"request {i}: unknown field {sorted(unknown)[0]!r}")
        batch.append(
            {
                k: (str(v) if isinstance(v, UUID) else v)
                for k, v in r.items()
                if v is not None or k == "input"
            }
        )
    return "SELECT * FROM lineq.submit_many(%(requests)s, %(node_name)s::text)", {
        "requests": Jsonb(batch),
        "node_name": node_name,
    }


def get(execution_id: UUID | str) -> Query:
    """``lineq.get_execution``."""
    return "SELECT * FROM lineq.get_execution(%(id)s::uuid)", {
        "id": _uuid(execution_id, "execution_id")
    }


def history(execution_id: UUID | str) -> Query:
    """``lineq.execution_history``: status, step and tag changes, oldest first."""
    return "SELECT * FROM lineq.execution_history(%(id)s::uuid)", {
        "id": _uuid(execution_id, "execution_id")
    }


def update_tags(
    execution_id: UUID | str,
    set: Mapping[str, str],
    remove: Sequence[str],
    *,
    expect_version: int | None,
    cause: str | None,
    actor: str | None,
) -> Query:
    """``lineq.update_tags``: set and remove tags of a pending execution."""
    return (
        """
SELECT * FROM lineq.update_tags(
    %(id)s::uuid, p_set => %(set)s, p_remove => %(remove)s::text[],
    p_expect_version => %(expect_version)s::bigint, p_cause => %(cause)s::text,
    p_actor => %(actor)s::text)
""",
        {
            "id": _uuid(execution_id, "execution_id"),
            "set": Jsonb(dict(set)),
            "remove": list(remove),
            "expect_version": expect_version,
            "cause": cause,
            "actor": actor,
        },
    )


def cancel(execution_id: UUID | str, reason: str | None, actor: str | None) -> Query:
    """``lineq.cancel``: the execution and everything below it."""
    return (
        """
SELECT * FROM lineq.cancel(%(id)s::uuid, p_reason => %(reason)s::text, p_actor => %(actor)s::text)
""",
        {"id": _uuid(execution_id, "execution_id"), "reason": reason, "actor": actor},
    )


_LIST = """
SELECT * FROM lineq.list_executions(
    p_tags => %(tags)s::jsonb,
    p_has_tags => %(has_tags)s::text[],
    p_metadata => %(metadata)s::jsonb,
    p_statuses => %(statuses)s::text[],
    p_workflow => %(workflow)s::text,
    p_parent_execution_id => %(parent)s::uuid,
    p_root_execution_id => %(root)s::uuid,
    p_correlation_id => %(correlation_id)s::uuid,
    p_since => %(since)s::timestamptz,
    p_until => %(until)s::timestamptz,
    p_limit => %(limit)s::integer,
    p_after_created_at => %(after_created_at)s::timestamptz,
    p_after_execution_id => %(after_execution_id)s::uuid,
    p_newest_first => %(newest_first)s::boolean)
"""


def list_executions(
    *,
    tags: Mapping[str, str | None] | None,
    metadata: Mapping[str, Any] | None,
    status: str | Sequence[str] | None,
    workflow: str | None,
    parent_execution_id: UUID | str | None,
    root_execution_id: UUID | str | None,
    correlation_id: UUID | str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    cursor: str | None,
    newest_first: bool,
) -> Query:
    """``lineq.list_executions``: every filter given must match.

    In ``tags`` a value of None means "has this tag, whatever its value".
    """
    equal = {k: v for k, v in (tags or {}).items() if v is not None}
    present = [k for k, v in (tags or {}).items() if v is None]
    statuses = [status] if isinstance(status, str) else list(status or [])
    after_created_at, after_id = decode_cursor(cursor) if cursor else (None, None)
    return _LIST, {
        "tags": Jsonb(equal) if equal else None,
        "has_tags": present or None,
        "metadata": Jsonb(dict(metadata)) if metadata is not None else None,
        "statuses": statuses or None,
        "workflow": workflow,
        "parent": _uuid_or_none(parent_execution_id, "parent_execution_id"),
        "root": _uuid_or_none(root_execution_id, "root_execution_id"),
        "correlation_id": _uuid_or_none(correlation_id, "correlation_id"),
        "since": since,
        "until": until,
        "limit": limit,
        "after_created_at": after_created_at,
        "after_execution_id": after_id,
        "newest_first": newest_first,
    }


def encode_cursor(created_at: datetime, execution_id: UUID) -> str:
    """The cursor after a row: its ``created_at`` and ``execution_id``."""
    return f"{created_at.isoformat()}|{execution_id}"


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The row a cursor names; ``ValidationError`` (field ``cursor``) when it is not one."""
    at, sep, eid = cursor.partition("|")
    try:
        if not sep:
            raise ValueError(cursor)
        return datetime.fromisoformat(at), UUID(eid)
    except ValueError:
        raise ValidationError("cursor", "not a cursor this client returned") from None


def _uuid(v: UUID | str, field: str) -> UUID:
    if isinstance(v, UUID):
        return v
    try:
        return UUID(str(v))
    except ValueError:
        raise ValidationError(field, f"not a UUID (got {str(v)[:80]!r})") from None


def _uuid_or_none(v: UUID | str | None, field: str) -> UUID | None:
    return None if v is None else _uuid(v, field)
