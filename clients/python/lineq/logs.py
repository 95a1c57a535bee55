"""Log lines that name their step: correlation_id, execution_id and trace_id on every record.

While a handler runs, every ``logging`` record made in its task or thread carries the step's
ids as attributes (``-`` outside a step), so a format can print them (:data:`LOG_FORMAT`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["LOG_FORMAT", "configure", "install_record_factory", "step_fields"]

LOG_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s: %(message)s "
    "[correlation_id=%(correlation_id)s execution_id=%(execution_id)s "
    "trace_id=%(trace_id)s]"
)

_FIELDS = ("correlation_id", "execution_id", "trace_id", "step")
_current: ContextVar[dict[str, str] | None] = ContextVar("lineq_step_log_fields", default=None)
_installed = False


@contextmanager
def step_fields(**fields: str) -> Iterator[None]:
    """Records made inside carry these fields."""
    token = _current.set(fields)
    try:
        yield
    finally:
        _current.reset(token)


def install_record_factory() -> None:
    """Adds the step's fields to every log record (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        fields = _current.get() or {}
        for name in _FIELDS:
            if not hasattr(record, name):
                setattr(record, name, fields.get(name, "-"))
        return record

    logging.setLogRecordFactory(factory)


def configure(level: int | str = logging.INFO) -> None:
    """Logs to stderr with :data:`LOG_FORMAT` (what ``python -m lineq worker`` uses)."""
    install_record_factory()
    logging.basicConfig(level=level, format=LOG_FORMAT)
