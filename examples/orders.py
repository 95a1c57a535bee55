"""Python handlers for the `order` workflow (examples/order.yaml), on lineq's Python client.

Run from the repository root, with clients/python installed:

    python -m lineq worker examples.orders:worker

A workflow step's input is the envelope {"input": <the execution's input>, "steps": {<each
dependency>: <its output>}, "params": <the step's params>} (docs/handlers.md).
"""

import logging
from typing import Any

import lineq

worker = lineq.Worker(namespace="default", concurrency=8)  # DATABASE_URL unless given a dsn
log = logging.getLogger(__name__)


@worker.handler("reserve")
def reserve(ctx: lineq.StepContext, step: dict[str, Any]) -> dict[str, Any]:
    """Reserves the order's items (a plain def runs in a thread pool)."""
    items = step["input"]["items"]
    log.info("reserving %d item(s)", len(items))  # logged with the execution's ids
    return {"reserved": sum(item["qty"] for item in items)}


@worker.handler("charge", timeout=30)
async def charge(ctx: lineq.StepContext, step: dict[str, Any]) -> dict[str, Any]:
    """Charges the price the `price` step computed, once the items are reserved."""
    price = step["steps"]["price"]
    if price["total_cents"] <= 0:
        raise lineq.PermanentError("nothing to charge")  # failed for good, not retried
    # The same for every delivery of this attempt: a payment provider charges once per key.
    return {
        "charged_cents": price["total_cents"],
        "currency": price["currency"],
        "reserved": step["steps"]["reserve"]["reserved"],
        "payment_key": ctx.idempotency_key,
    }
