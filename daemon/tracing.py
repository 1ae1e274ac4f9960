"""``daemon.tracing``: OpenTelemetry traces of what fired, exported over OTLP/HTTP.

A trace per event that fires a rule: the rule's span (the child of the ``traceparent`` the event
carries: a Kafka record header, or the source's ``trace_field``), a span per tool call under it,
a span per attempt under that, and a span per model call of an llm tool's run under its attempt
(tokens as attributes). A webhook or Kafka tool sends its attempt's ``traceparent`` on, so a
trace crosses reflexd.

Nothing is done per event that fires nothing: the rules ask :class:`OtelTracer` for a span only
when they fire (the protocols are in :mod:`streams.tracing`), and with ``daemon.tracing`` unset
the OpenTelemetry SDK is never imported. Spans are batched and exported from the SDK's own
thread, so a slow or absent collector costs the loop nothing; what the SDK cannot send it drops
(logged by the SDK), it never blocks a rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from daemon.logs import get_logger
from streams.event import Event
from streams.tracing import TRACEPARENT

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import Tracer as OtelTracerApi

__all__ = ["OtelSpanHandle", "OtelTracer", "TracingConfig", "start_tracing"]

log = get_logger("tracing")

TRACES_PATH = "/v1/traces"


class TracingConfig(BaseModel):
    """``daemon.tracing``: export a trace of every event that fires a rule over OTLP/HTTP."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    endpoint: str = Field(
        description="OTLP/HTTP collector, e.g. `http://127.0.0.1:4318` (`/v1/traces` is added unless "
        "the URL already ends with it)."
    )
    service_name: str = Field("reflexd", min_length=1, description="The traces' `service.name`.")
    sample_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of fired events traced when the event carries no sampled `traceparent` "
        "(one that does follows its caller's decision).",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Headers of each export request (e.g. a collector's API key from `${VAR}`; never shown).",
    )
    timeout_seconds: float = Field(10.0, gt=0, le=300, description="Timeout of one export request.")

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        return value

    def traces_url(self) -> str:
        url = self.endpoint.rstrip("/")
        return url if url.endswith(TRACES_PATH) else url + TRACES_PATH


def _value(value: Any) -> Any:
    """An attribute value OpenTelemetry takes (str, bool, int, float); anything else as text."""
    return value if isinstance(value, str | bool | int | float) else str(value)


class OtelSpanHandle:
    """A :class:`streams.tracing.Span` over an OpenTelemetry span."""

    __slots__ = ("_span", "_tracer")

    def __init__(self, tracer: OtelTracerApi, span: OtelSpan) -> None:
        self._tracer = tracer
        self._span = span

    @property
    def traceparent(self) -> str:
        ctx = self._span.get_span_context()
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def child(self, name: str, attributes: dict[str, Any]) -> OtelSpanHandle:
        from opentelemetry import trace

        parent = trace.set_span_in_context(self._span)
        span = self._tracer.start_span(
            name, context=parent, attributes={k: _value(v) for k, v in attributes.items()}
        )
        return OtelSpanHandle(self._tracer, span)

    def set(self, attributes: dict[str, Any]) -> None:
        self._span.set_attributes({k: _value(v) for k, v in attributes.items()})

    def end(self, error: str | None = None) -> None:
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, error[:500]))
        self._span.end()


def _field(data: Any, path: str) -> Any:
    """``data[path]``, or the dotted path's value (``meta.trace``) when there is no such top-level key."""
    if not isinstance(data, dict):
        return None
    if path in data:
        return data[path]
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


class OtelTracer:
    """The :class:`streams.tracing.Tracer` the daemon gives its rules when ``daemon.tracing`` is set."""

    def __init__(self, provider: TracerProvider, trace_fields: Mapping[str, str] | None = None) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self._tracer = provider.get_tracer("reflexd")
        self._propagator = TraceContextTextMapPropagator()
        #: source name → the payload field holding a traceparent (the source's ``trace_field``)
        self._fields = dict(trace_fields or {})

    def parent_of(self, event: Event) -> str | None:
        """The ``traceparent`` an event carries: its Kafka record header, else its source's field."""
        headers = event.meta.get("headers")
        if isinstance(headers, dict):
            value = headers.get(TRACEPARENT)
            if isinstance(value, str):
                return value
        field = self._fields.get(event.source)
        if field is not None:
            value = _field(event.data, field)
            if isinstance(value, str):
                return value
        return None

    def fired(self, rule: str, event: Event) -> OtelSpanHandle:
        carried = self.parent_of(event)
        context = self._propagator.extract({TRACEPARENT: carried}) if carried is not None else None
        attributes: dict[str, Any] = {"reflexd.rule": rule, "reflexd.source": event.source}
        if event.key is not None:
            attributes["reflexd.key"] = _value(event.key)
        for name in ("topic", "partition", "offset"):
            if name in event.meta:
                attributes[f"messaging.kafka.{name}"] = _value(event.meta[name])
        span = self._tracer.start_span(f"rule {rule}", context=context, attributes=attributes)
        return OtelSpanHandle(self._tracer, span)

    def shutdown(self) -> None:
        """Export what is left (bounded by the exporter's timeout) and stop the export thread."""
        try:
            self.provider.force_flush(5_000)
        finally:
            self.provider.shutdown()


def start_tracing(config: TracingConfig, trace_fields: Mapping[str, str] | None = None) -> OtelTracer:
    """Import the SDK (only now) and build the tracer; spans go out in batches from the SDK's thread."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name}),
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
    )
    exporter = OTLPSpanExporter(
        endpoint=config.traces_url(),
        headers={k: v.get_secret_value() for k, v in config.headers.items()},
        timeout=config.timeout_seconds,
    )
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
    where = urlsplit(config.traces_url())  # no credentials a URL may carry
    shown = f"{where.scheme}://{where.hostname}" + (f":{where.port}" if where.port else "") + where.path
    log.info("tracing on", extra={"fields": {"endpoint": shown, "sample_ratio": config.sample_ratio}})
    return OtelTracer(provider, trace_fields)
