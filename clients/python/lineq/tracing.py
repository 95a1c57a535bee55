"""Handler spans under their step attempt's span, when OpenTelemetry is there.

With ``opentelemetry-sdk`` and ``opentelemetry-exporter-otlp-proto-http`` installed (the
``lineq[otel]`` extra) and ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) set,
the worker makes a tracer provider (service name from ``OTEL_SERVICE_NAME``, resource from
``OTEL_RESOURCE_ATTRIBUTES``) that exports over OTLP/HTTP. A provider the application set
itself is used as it is. Each handler runs with the claim's ``traceparent`` as its current
context, so the spans it opens are children of the attempt's span. Without OpenTelemetry,
nothing is imported, installed or exported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Tracing"]

log = logging.getLogger("lineq.tracing")


class Tracing:
    """The process's OpenTelemetry, if any."""

    def __init__(self) -> None:
        self._owned: Any = None
        self._propagator: Any = None
        self._context: Any = None
        try:
            from opentelemetry import context, trace
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError:
            return
        self._propagator = TraceContextTextMapPropagator()
        self._context = context
        if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
            return
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        already = type(trace.get_tracer_provider()).__name__ != "ProxyTracerProvider"
        if already or not endpoint or os.environ.get("OTEL_TRACES_EXPORTER") == "none":
            return
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warning(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-sdk or its "
                "OTLP/HTTP exporter is missing: pip install 'lineq[otel]'"
            )
            return
        provider = TracerProvider(resource=Resource.create())
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        self._owned = provider
        log.info("exporting handler spans over OTLP/HTTP to %s", endpoint)

    @contextmanager
    def attempt(self, traceparent: str) -> Iterator[None]:
        """Inside, the current trace context is the attempt's span named by ``traceparent``."""
        if self._propagator is None or not traceparent:
            yield
            return
        ctx = self._propagator.extract({"traceparent": traceparent})
        token = self._context.attach(ctx)
        try:
            yield
        finally:
            self._context.detach(token)

    def shutdown(self) -> None:
        """Exports what is left, if this worker made the provider."""
        if self._owned is not None:
            self._owned.shutdown()
            self._owned = None
