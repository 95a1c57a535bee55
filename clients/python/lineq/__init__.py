"""lineq for Python: a client and workers over lineq's SQL interface (docs/sql-api.md).

>>> client = await lineq.connect(dsn)                      # asyncio
>>> e = await client.submit("process_order", {"order_id": "12345"}, tags={"customer": "acme"})
>>> done = await client.wait(e.id, timeout=60)

>>> worker = lineq.Worker(dsn, namespace="media", concurrency=16)
>>> @worker.handler("resize")
... async def resize(ctx: lineq.StepContext, input: dict) -> dict: ...
"""

__version__ = "0.1.0"

from .client import AsyncClient, Client, Listing, connect
from .context import StepContext
from .errors import (
    Conflict,
    InvalidState,
    LineqError,
    NotFound,
    NotPermitted,
    PermanentError,
    RetryableError,
    UnknownNamespace,
    ValidationError,
    WaitTimeout,
)
from .execution import (
    FINISHED,
    CancelResult,
    Execution,
    HistoryEntry,
    LineageNode,
    Page,
    Status,
)
from .ids import uuid7
from .worker import Handler, Worker

__all__ = [
    "FINISHED",
    "AsyncClient",
    "CancelResult",
    "Client",
    "Conflict",
    "Execution",
    "Handler",
    "HistoryEntry",
    "InvalidState",
    "LineageNode",
    "LineqError",
    "Listing",
    "NotFound",
    "NotPermitted",
    "Page",
    "PermanentError",
    "RetryableError",
    "Status",
    "StepContext",
    "UnknownNamespace",
    "ValidationError",
    "WaitTimeout",
    "Worker",
    "__version__",
    "connect",
    "uuid7",
]
