"""A Python handler's own span arrives, over OTLP/HTTP, under its step attempt's span."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import Db, Procs, eventually
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

import lineq


class Receiver:
    """A real OTLP/HTTP trace receiver: decodes every ExportTraceServiceRequest it gets."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for rs in request.resource_spans:
                    resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            receiver.spans.append(
                                {
                                    "name": s.name,
                                    "trace_id": s.trace_id.hex(),
                                    "span_id": s.span_id.hex(),
                                    "parent_span_id": s.parent_span_id.hex(),
                                    "service": resource.get("service.name"),
                                    "path": self.path,
                                }
                            )
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An OTLP/HTTP receiver on a free port."""
    r = Receiver()
    yield r
    r.server.shutdown()


def test_a_handler_span_nests_under_its_attempt(db: Db, procs: Procs, receiver: Receiver) -> None:
    # The orchestrator exports the attempt spans of workers that export none (the Python
    # worker exports only its handlers' spans), under the worker's service name.
    procs.lineq(
        "orchestrator",
        "orchestrator",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="orchestrator",
    )
    worker = procs.python_worker(
        "py-traced",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_SERVICE_NAME="lineq-pytest-worker",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    with lineq.Client(db.url) as c:
        e = c.submit("traced")
        done = c.wait(e.id, timeout=60)
        assert done.status == "completed", procs.logs()
        traceparent = done.output["traceparent"]
        # The claim's traceparent names the attempt's span: the action_started event's.
        started = db.one(
            "SELECT event_id FROM lineq.events WHERE execution_id = %s "
            "AND event_type = 'action_started'",
            e.id,
        )
        assert traceparent == db.one("SELECT lineq.traceparent(%s, %s)", e.correlation_id, started)
    _, trace_id, attempt_span_id, _ = traceparent.split("-")
    assert worker.terminate() == 0  # flushes what is left
    span = eventually(
        "the handler's span",
        lambda: next((s for s in receiver.spans if s["name"] == "resize-work"), None),
        within=20,
    )
    assert span["trace_id"] == trace_id == e.correlation_id.hex
    assert span["parent_span_id"] == attempt_span_id
    assert span["service"] == "lineq-pytest-worker"
    assert span["path"] == "/v1/traces"
    # Its parent, the attempt's span, arrives too: the trace nests.
    attempt = eventually(
        "the attempt's span",
        lambda: next((s for s in receiver.spans if s["span_id"] == attempt_span_id), None),
        within=20,
    )
    assert attempt["trace_id"] == trace_id
    assert attempt["service"] == "lineq-pytest-worker"
