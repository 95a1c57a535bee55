#!/usr/bin/env python3
"""A command handler: prices an order.

A worker runs it with `--command price='python3 examples/steps/price.py'`. It reads the step's
input as JSON on stdin and prints its output as JSON on stdout; a non-zero exit fails the attempt
with the end of stderr. What it writes to stderr on success goes to the worker's log.

It is a step of the `order` workflow (examples/order.yaml), so its input is the envelope
{"input": <the execution's input>, "steps": {<each dependency>: <its output>}, "params": <the
step's params>} (docs/handlers.md).
"""

import json
import os
import sys

order = json.load(sys.stdin)["input"]

items = order.get("items")
if not items:
    print("the order has no items", file=sys.stderr)
    sys.exit(1)

total = sum(item["qty"] * item["unit_cents"] for item in items)
print(
    f"priced order {order.get('order')} at {total} cents "
    f"(execution {os.environ['LINEQ_EXECUTION_ID']}, attempt {os.environ['LINEQ_ATTEMPT']})",
    file=sys.stderr,
)
json.dump({"total_cents": total, "currency": "EUR"}, sys.stdout)
