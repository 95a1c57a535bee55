"""Python and Rust together, with lineage checks passing on both.

A workflow submitted from the ``lineq`` CLI runs on Python workers, one submitted from Python
runs on Rust workers (``lineq worker``).
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Db, Procs, deliveries, lineage_check, lineq

import lineq as lq


def register(db: Db, tmp: Path, name: str, yaml: str) -> None:
    """``lineq workflow register`` of a YAML definition."""
    path = tmp / f"{name}.yaml"
    path.write_text(yaml)
    out = lineq(db.url, "workflow", "register", str(path))
    assert out.returncode == 0, out.stderr


def test_cli_submitted_workflow_runs_on_python_workers(db: Db, procs: Procs) -> None:
    register(
        db,
        procs.tmp,
        "py_flow",
        """
name: py_flow
steps:
  - name: loud
    handler: shout
  - name: sum
    handler: add
    depends_on: [loud]
  - name: who
    handler: whoami
    depends_on: [loud]
""",
    )
    procs.orchestrator()
    procs.python_worker("py-1")
    procs.python_worker("py-2")
    ids = []
    for i in range(4):
        out = lineq(
            db.url,
            "submit",
            "py_flow",
            "--format",
            "json",
            "--input",
            json.dumps({"text": f"hello {i}", "numbers": [i, 1]}),
        )
        assert out.returncode == 0, out.stderr
        ids.append(json.loads(out.stdout)["execution_id"])
    with lq.Client(db.url) as c:
        for i, eid in enumerate(ids):
            e = c.wait(eid, timeout=60)
            assert e.status == "completed", (e.error, procs.logs())
            assert e.output["loud"] == {"shout": f"HELLO {i}"}
            assert e.output["who"]["correlation_id"] == str(e.correlation_id)
            workers = {
                w for step in ("loud", "sum", "who") for (w, _, _) in deliveries(db, e.id, step)
            }
            assert workers <= {"py-1", "py-2"} and workers, workers
            lineage_check(db, e.id)


def test_python_submitted_workflow_runs_on_rust_workers(db: Db, procs: Procs) -> None:
    register(
        db,
        procs.tmp,
        "rs_flow",
        """
name: rs_flow
steps:
  - name: first
    handler: echo
  - name: second
    handler: echo
    depends_on: [first]
""",
    )
    procs.orchestrator()
    procs.lineq("rust-worker", "worker", "--worker-id", "rust-1")
    with lq.Client(db.url) as c:
        submitted = [c.submit("rs_flow", {"n": i}, tags={"from": "python"}) for i in range(4)]
        for s in submitted:
            e = c.wait(s.id, timeout=60)
            assert e.status == "completed", (e.error, procs.logs())
            assert e.output["first"]["input"] == s.input
            assert [w for (w, _, _) in deliveries(db, e.id, "first")] == ["rust-1"]
            assert [w for (w, _, _) in deliveries(db, e.id, "second")] == ["rust-1"]
            lineage_check(db, e.id)
        assert len(c.list(tags={"from": "python"}, status="completed")) == 4
