"""``python -m lineq``: ``worker MODULE:ATTR`` runs a worker, ``bench`` measures throughput."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading

from .logs import configure
from .worker import Worker

__all__ = ["load_worker", "main", "worker_main"]


def load_worker(spec: str) -> Worker:
    """The :class:`Worker` named by ``package.module:attribute``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"expected MODULE:ATTRIBUTE, e.g. app.handlers:worker (got {spec!r})")
    sys.path.insert(0, os.getcwd())
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Worker):
        raise SystemExit(f"{spec} is a {type(obj).__name__}, not a lineq.Worker")
    return obj


def _worker_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", help="the worker to run, as MODULE:ATTRIBUTE")
    parser.add_argument("--dsn", help="PostgreSQL URL (default: the worker's, or DATABASE_URL)")
    parser.add_argument("--namespace", help="override the worker's namespace")
    parser.add_argument("--concurrency", type=int, help="override the worker's concurrency")
    parser.add_argument("--worker-id", help="override the worker's id")
    parser.add_argument(
        "--shutdown-grace", type=float, help="seconds running handlers get to finish after SIGTERM"
    )
    parser.add_argument("--log-level", default=os.environ.get("LINEQ_LOG_LEVEL", "INFO"))


def _run_worker(args: argparse.Namespace) -> int:
    configure(args.log_level.upper())
    worker = load_worker(args.app)
    if args.dsn:
        worker.dsn = args.dsn
    if args.namespace:
        worker.namespace = args.namespace
    if args.concurrency:
        worker.concurrency = args.concurrency
        worker.batch_size = min(worker.batch_size, args.concurrency)
    if args.worker_id:
        worker.worker_id = args.worker_id
    if args.shutdown_grace is not None:
        worker.shutdown_grace = args.shutdown_grace
    worker.run_forever()
    logging.shutdown()
    # A sync handler still running past the grace period (its message was released) would
    # keep the interpreter waiting for its thread: leave without it.
    if any(t.name.startswith("lineq-handler") and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def worker_main() -> None:
    """The ``lineq-worker`` console script: ``lineq-worker app.handlers:worker``."""
    parser = argparse.ArgumentParser(prog="lineq-worker", description="Run a lineq worker.")
    _worker_parser(parser)
    sys.exit(_run_worker(parser.parse_args()))


def main(argv: list[str] | None = None) -> int:
    """``python -m lineq worker|bench ...``."""
    parser = argparse.ArgumentParser(prog="python -m lineq")
    sub = parser.add_subparsers(dest="command", required=True)
    _worker_parser(sub.add_parser("worker", help="run a worker: MODULE:ATTRIBUTE"))
    from . import bench

    bench.add_arguments(
        sub.add_parser(
            "bench", help="one-step executions per second: two Python workers, two Rust workers"
        )
    )
    args = parser.parse_args(argv)
    if args.command == "worker":
        return _run_worker(args)
    return bench.run(args)


if __name__ == "__main__":
    sys.exit(main())
