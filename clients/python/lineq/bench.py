"""``python -m lineq bench``: one-step executions per second, Python workers next to Rust ones.

Two Python workers and two Rust workers (``lineq worker``), in the same run, on the same
database.

Both rows run the same executions: N one-step ``echo`` tasks (the input back as the output),
submitted with ``submit_many`` (500 per transaction), two ``lineq orchestrator`` processes, two
worker processes at concurrency 64. Each row is timed by the database's clock, from just before
the first submit to the last execution's ``finished_at``; every execution must complete. The
worker processes' own CPU time per execution (user and system, from ``/proc``, counted from
their registration to the row's end) says what a worker costs, whatever else the machine does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import psycopg

from .client import Client
from .worker import Worker

__all__ = ["add_arguments", "run", "worker"]

#: The Python row's worker: ``echo``, as the Rust worker's built-in.
worker = Worker(namespace="bench_py", concurrency=64, batch_size=100)


@worker.handler("echo")
async def echo(ctx: Any, input: Any) -> Any:
    """The input back."""
    return input


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bench's options."""
    p.add_argument(
        "--dsn",
        default=os.environ.get("DATABASE_URL"),
        help="PostgreSQL URL (default: DATABASE_URL)",
    )
    p.add_argument(
        "--lineq-bin",
        default=os.environ.get("LINEQ_BIN") or shutil.which("lineq"),
        help="the lineq binary (default: LINEQ_BIN, or lineq on PATH); use a release build",
    )
    p.add_argument("--executions", type=int, default=5000)
    p.add_argument(
        "--rounds", type=int, default=2, help="each row runs this many times, alternating"
    )
    p.add_argument("--format", choices=["text", "json"], default="text")


def _spawn(cmd: list[str], dsn: str, log: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, DATABASE_URL=dsn, RUST_LOG="warn", LINEQ_LOG_LEVEL="WARNING")
    out = open(log, "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()


def _cpu_seconds(procs: list[subprocess.Popen[bytes]]) -> float:
    """User and system CPU time the processes have used so far (Linux ``/proc``)."""
    total = 0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            return float("nan")
    return total / os.sysconf("SC_CLK_TCK")


def _row(dsn: str, lineq_bin: str, language: str, n: int, logdir: str) -> dict[str, Any]:
    ns = "bench_py" if language == "python" else "bench_rs"
    if language == "python":
        cmds = [
            [
                sys.executable,
                "-m",
                "lineq",
                "worker",
                "lineq.bench:worker",
                "--worker-id",
                f"bench-py-{i}-{os.getpid()}",
            ]
            for i in range(2)
        ]
    else:
        cmds = [
            [
                lineq_bin,
                "worker",
                "--namespace",
                ns,
                "--concurrency",
                "64",
                "--batch-size",
                "100",
                "--worker-id",
                f"bench-rs-{i}-{os.getpid()}",
            ]
            for i in range(2)
        ]
    workers = [
        _spawn(c, dsn, os.path.join(logdir, f"{language}-worker-{i}.log"))
        for i, c in enumerate(cmds)
    ]
    try:
        with psycopg.connect(dsn, autocommit=True) as db:
            deadline = time.monotonic() + 60
            while db.execute(
                "SELECT count(*) FROM lineq.workers WHERE %s = ANY(namespaces) "
                "AND stopped_at IS NULL AND worker_id LIKE %s",
                (ns, f"bench-%-{os.getpid()}"),
            ).fetchone() != (2,):
                if time.monotonic() > deadline:
                    raise SystemExit(f"the {language} workers did not start (logs in {logdir})")
                time.sleep(0.1)
            run = os.urandom(6).hex()
            cpu_before = _cpu_seconds(workers)
            with Client(dsn) as client:
                row = db.execute("SELECT clock_timestamp()").fetchone()
                assert row is not None
                start = row[0]
                for first in range(0, n, 500):
                    client.submit_many(
                        [
                            {
                                "target": "echo",
                                "namespace": ns,
                                "input": {"i": i},
                                "tags": {"bench_run": run},
                            }
                            for i in range(first, min(n, first + 500))
                        ]
                    )
            while True:
                left = db.execute(
                    "SELECT count(*) FROM lineq.executions WHERE namespace = %s "
                    "AND created_at >= %s AND status NOT IN ('completed','failed','cancelled')",
                    (ns, start),
                ).fetchone()
                if left == (0,):
                    break
                time.sleep(0.5)
            done = db.execute(
                "SELECT count(*) FILTER (WHERE status = 'completed'), count(*), "
                "extract(epoch FROM max(finished_at) - %s) FROM lineq.executions "
                "WHERE tags @> %s::jsonb",
                (start, json.dumps({"bench_run": run})),
            ).fetchone()
            assert done is not None
            cpu = _cpu_seconds(workers) - cpu_before
    finally:
        _stop(workers)
    completed, total, secs = int(done[0]), int(done[1]), float(done[2])
    if completed != n or total != n:
        raise SystemExit(f"{language}: {completed} of {total} completed, {n} submitted")
    return {
        "workers": language,
        "executions": n,
        "seconds": round(secs, 3),
        "per_second": round(n / secs, 1),
        "worker_cpu_us_per_execution": round(cpu / n * 1e6, 1),
    }


def run(args: argparse.Namespace) -> int:
    """Runs the bench and prints its table."""
    if not args.dsn:
        raise SystemExit("set DATABASE_URL or pass --dsn")
    if not args.lineq_bin:
        raise SystemExit("the lineq binary was not found: pass --lineq-bin or set LINEQ_BIN")
    logdir = tempfile.mkdtemp(prefix="lineq-bench-")
    env = dict(os.environ, DATABASE_URL=args.dsn)
    for cmd in (
        ["migrate"],
        ["namespace", "create", "bench_py"],
        ["namespace", "create", "bench_rs"],
    ):
        subprocess.run([args.lineq_bin, *cmd], env=env, check=True, stdout=subprocess.DEVNULL)
    orchestrators = [
        _spawn(
            [args.lineq_bin, "orchestrator"],
            args.dsn,
            os.path.join(logdir, f"orchestrator-{i}.log"),
        )
        for i in range(2)
    ]
    rows = []
    try:
        for _ in range(args.rounds):
            for language in ("python", "rust"):
                rows.append(_row(args.dsn, args.lineq_bin, language, args.executions, logdir))
    finally:
        _stop(orchestrators)
    best = {
        lang: max(r["per_second"] for r in rows if r["workers"] == lang)
        for lang in ("python", "rust")
    }
    if args.format == "json":
        print(json.dumps({"rows": rows, "best": best}, indent=2))
        return 0
    print(f"{'workers':<8} {'executions':>10} {'seconds':>8} {'exec/s':>9} {'worker CPU/exec':>16}")
    for r in rows:
        print(
            f"{r['workers']:<8} {r['executions']:>10} {r['seconds']:>8.2f} "
            f"{r['per_second']:>9.1f} {r['worker_cpu_us_per_execution']:>13.1f} µs"
        )
    print(
        f"best: python {best['python']:.0f}/s, rust {best['rust']:.0f}/s "
        f"(python at {best['python'] / best['rust']:.0%} of rust)"
    )
    return 0
