"""The README's examples run.

Its files are written out and its worker started, then each Python block runs in order
against a fresh database.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from conftest import Db, Procs, eventually

README = Path(__file__).parent.parent / "README.md"
BLOCK = re.compile(r"(?:<!-- file: (?P<file>\S+) -->\n)?```python\n(?P<code>.*?)```", re.S)


def test_readme_examples_run(db: Db, procs: Procs) -> None:
    blocks = [(m["file"], m["code"]) for m in BLOCK.finditer(README.read_text())]
    files = [(f, code) for f, code in blocks if f]
    assert files and len(blocks) > len(files)
    for name, code in files:
        path = procs.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
        (path.parent / "__init__.py").touch()
    procs.orchestrator()
    procs.python_worker("readme-worker", app="app.handlers:worker")
    os.environ["DATABASE_URL"] = db.url
    try:
        scope: dict[str, object] = {"__name__": "readme"}
        for _, code in (b for b in blocks if not b[0]):
            exec(compile(code, str(README), "exec"), scope)
    finally:
        del os.environ["DATABASE_URL"]
    # Its three orders completed on its worker (and nothing else did: one was refused).
    eventually(
        "the README's orders",
        lambda: (
            db.one(
                "SELECT count(*) FROM lineq.executions WHERE workflow_name = 'process_order' "
                "AND status = 'completed'"
            )
            == 3
        ),
    )
    assert (
        db.one("SELECT count(*) FROM lineq.executions WHERE workflow_name = 'process_order'") == 3
    )
    assert db.one("SELECT count(*) FROM orders") == 1
