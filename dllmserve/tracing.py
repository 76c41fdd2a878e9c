"""Optional OpenTelemetry spans: scheduler (`dllmserve.generate`) -> Redis -> worker
(`dllmserve.run`), one trace per request.

Nothing here costs anything unless tracing is on: that needs the opentelemetry packages
(`pip install "dllmserve[tracing]"`) and either OTEL_TRACES_EXPORTER (`otlp` or `console`; the
usual OTEL_EXPORTER_OTLP_* variables point the exporter) or a tracer provider installed by
`opentelemetry-instrument`. The scheduler stores its span's W3C `traceparent` in the
request's Redis hash (field `tp`); the worker reads it at admission and opens its span as a
child, so a trace shows queueing, dispatch and the denoising of each request.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the packages are optional
    trace = None

_enabled = False


def setup(service_name: str) -> bool:
    """Export spans when OTEL_TRACES_EXPORTER asks for it and the SDK is installed."""
    global _enabled
    wanted = os.environ.get("OTEL_TRACES_EXPORTER", "")
    if trace is None or wanted in ("", "none"):
        _enabled = trace is not None and _provider_installed()
        return _enabled
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )

        if wanted == "console":  # one JSON object per line, written as each span ends
            processor = SimpleSpanProcessor(
                ConsoleSpanExporter(formatter=lambda s: s.to_json(indent=None) + "\n")
            )
        elif wanted == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            processor = BatchSpanProcessor(OTLPSpanExporter())
        else:
            log.warning("OTEL_TRACES_EXPORTER=%r: only otlp and console are supported", wanted)
            return False
    except ImportError as e:
        log.warning("tracing off: %s (pip install 'dllmserve[tracing]')", e)
        return False
    name = os.environ.get("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def _provider_installed() -> bool:
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def enabled() -> bool:
    return _enabled


def start(name: str, parent: str = "", **attributes):
    """A span started now (ended with `end`), child of a `traceparent`; None when off."""
    if not _enabled:
        return None
    ctx = TraceContextTextMapPropagator().extract({"traceparent": parent}) if parent else None
    attrs = {k: v for k, v in attributes.items() if v is not None}
    return trace.get_tracer("dllmserve").start_span(name, context=ctx, attributes=attrs)


def end(span, **attributes) -> None:
    if span is not None:
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        span.end()


def traceparent(span) -> str:
    """The W3C traceparent header of a span ("" when off)."""
    if span is None:
        return ""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
    return carrier.get("traceparent", "")
