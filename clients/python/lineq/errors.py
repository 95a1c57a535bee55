"""Typed errors: lineq's refusals (SQLSTATE class ``LQ``) and a handler's failures."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

__all__ = [
    "Conflict",
    "InvalidState",
    "LineqError",
    "NotFound",
    "NotPermitted",
    "PermanentError",
    "RetryableError",
    "UnknownNamespace",
    "ValidationError",
    "WaitTimeout",
    "from_database_error",
    "translate_errors",
]


class LineqError(Exception):
    """A refusal of lineq's SQL interface; ``sqlstate`` and ``detail`` are the server's."""

    def __init__(self, message: str, *, sqlstate: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.detail = detail


class ValidationError(LineqError, ValueError):
    """``LQ001``: invalid input, nothing was written.

    ``field`` names the input (``tags``, ``input``, ``namespace``, ...), ``reason`` is the
    rule broken, and ``limit`` the number the rule names ("at most 20", "1 to 1000": the upper
    one) when it names one.
    """

    def __init__(self, field: str, reason: str, **kw: str | None):
        super().__init__(f"{field}: {reason}", **kw)
        self.field = field
        self.reason = reason
        self.limit = _limit_of(reason)


class NotFound(LineqError, LookupError):
    """``LQ002``: no such execution (or workflow, step, worker): ``what`` and ``id``."""

    def __init__(self, message: str, *, what: str, id: str, **kw: str | None):
        super().__init__(message, **kw)
        self.what = what
        self.id = id


class Conflict(LineqError):
    """``LQ003``: a stale ``expect_version``; ``expected`` and ``actual`` versions."""

    def __init__(self, message: str, *, expected: int | None, actual: int | None, **kw: str | None):
        super().__init__(message, **kw)
        self.expected = expected
        self.actual = actual


class InvalidState(LineqError):
    """``LQ004``: not allowed now, e.g. changing the tags of an execution that has finished."""


class UnknownNamespace(LineqError):
    """``LQ005``: the namespace has no step queue (``lineq namespace create NAME``)."""

    def __init__(self, message: str, *, namespace: str, **kw: str | None):
        super().__init__(message, **kw)
        self.namespace = namespace


class NotPermitted(LineqError, PermissionError):
    """``LQ006``: not this worker's registration or claim."""


class WaitTimeout(LineqError, TimeoutError):
    """``wait`` gave up before the execution finished."""


class PermanentError(Exception):
    """Raised by a handler: the attempt failed and must not be retried."""

    def __init__(self, message: str, *, kind: str = "handler_error"):
        super().__init__(message)
        self.kind = kind


class RetryableError(Exception):
    """Raised by a handler: the attempt failed and may be retried (the step's retry policy)."""

    def __init__(self, message: str, *, kind: str = "handler_error"):
        super().__init__(message)
        self.kind = kind


_LIMIT = re.compile(r"(?:at most|at least|up to|to|limit is)\s+([0-9][0-9,]*)")


def _limit_of(reason: str) -> int | None:
    m = _LIMIT.search(reason)
    return int(m.group(1).replace(",", "")) if m else None


def _detail(detail: str | None, key: str) -> str | None:
    """A ``key=value`` of a ``DETAIL`` such as ``what=execution; id=…; expected=3``."""
    for part in (detail or "").split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k == key:
            return v
    return None


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def from_database_error(e: psycopg.Error) -> Exception:
    """The typed error for a database error: lineq's own for class ``LQ``, else ``e`` itself."""
    code = e.sqlstate
    diag = e.diag
    message = diag.message_primary or str(e)
    detail = diag.message_detail
    kw: dict[str, str | None] = {"sqlstate": code, "detail": detail}
    if code == "LQ001":
        field = diag.column_name or "input"
        reason = message.removeprefix(f"{field}: ")
        return ValidationError(field, reason, **kw)
    if code == "LQ002":
        return NotFound(
            message,
            what=_detail(detail, "what") or "execution",
            id=_detail(detail, "id") or message,
            **kw,
        )
    if code == "LQ003":
        return Conflict(
            message,
            expected=_int(_detail(detail, "expected")),
            actual=_int(_detail(detail, "actual")),
            **kw,
        )
    if code == "LQ004":
        return InvalidState(message, **kw)
    if code == "LQ005":
        return UnknownNamespace(message, namespace=_detail(detail, "namespace") or message, **kw)
    if code == "LQ006":
        return NotPermitted(message, **kw)
    return e


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raises database errors of class ``LQ`` as lineq's typed errors."""
    try:
        yield
    except psycopg.Error as e:
        typed = from_database_error(e)
        if typed is e:
            raise
        raise typed from e
