"""One OpenTelemetry span per generation, with the GenAI semantic conventions.

Spans follow the OpenTelemetry semantic conventions for generative AI client
spans (https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/):
name ``chat {gen_ai.request.model}``, kind ``CLIENT``, attributes
``gen_ai.operation.name`` (``chat``), ``gen_ai.provider.name`` and the older
``gen_ai.system`` (``openai``, ``anthropic`` …; tokenwire's own prefix for the
others), ``gen_ai.request.model``, ``gen_ai.request.max_tokens`` /
``temperature`` / ``top_p`` when given, ``gen_ai.conversation.id``,
``gen_ai.usage.input_tokens`` / ``output_tokens``,
``gen_ai.response.finish_reasons``, and ``error.type`` (the ``error`` event's
``code``) with status ``ERROR`` for a failed generation. tokenwire adds
``tokenwire.stream_id``, ``tokenwire.message_id``, ``tokenwire.outcome`` and span
events ``tokenwire.first_token``, ``tokenwire.cancelled`` (``reason``) and
``tokenwire.error`` (``code``, ``message``).

The span is current while the provider is called, so instrumented HTTP clients
make their spans its children; it is itself a child of whatever span was current
when the generation started (an instrumented HTTP request).

Without ``opentelemetry-api`` installed everything here is a no-op. With the API
and no SDK configured, spans are non-recording (OpenTelemetry's own no-op). The
``tokenwire serve`` and ``tokenwire worker`` commands call
:func:`configure_from_env`, which installs the SDK's tracer provider when
``opentelemetry-sdk`` is installed (``pip install 'tokenwire[otel]'``) and the
standard ``OTEL_*`` variables ask for an exporter; an embedding app configures
OpenTelemetry itself, and these spans use its global tracer provider.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
except ImportError:  # pragma: no cover - exercised without the optional dependency
    trace = None  # type: ignore[assignment]
    otel_context = None  # type: ignore[assignment]

__all__ = ["GenerationSpan", "configure_from_env", "provider_name"]

logger = logging.getLogger("tokenwire.tracing")

_SYSTEMS = {"openai-responses": "openai"}
"""tokenwire provider prefixes whose ``gen_ai.provider.name`` differs from the prefix."""
_REQUEST_PARAMS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_output_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
}


def provider_name(model: str) -> str:
    """``gen_ai.provider.name`` for a ``provider:model`` name."""
    prefix = model.partition(":")[0] or "unknown"
    return _SYSTEMS.get(prefix, prefix)


class GenerationSpan:
    """The span of one generation; every method is a no-op when tracing is off.

    Args:
        model: ``provider:model``.
        request_model: the provider's model name (``gen_ai.request.model``).
        params: the request's provider parameters (``max_tokens`` … become attributes).
        ids: ``stream_id``, ``message_id``, ``conversation_id``.
    """

    __slots__ = ("_span", "_token")

    def __init__(
        self, model: str, request_model: str, params: Mapping[str, object], ids: Mapping[str, str]
    ) -> None:
        self._span: Any = None
        self._token: Any = None
        if trace is None:
            return
        tracer = trace.get_tracer("tokenwire")
        system = provider_name(model)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": system,
            "gen_ai.system": system,
            "gen_ai.request.model": request_model,
            "gen_ai.conversation.id": ids.get("conversation_id", ""),
            "tokenwire.stream_id": ids.get("stream_id", ""),
            "tokenwire.message_id": ids.get("message_id", ""),
        }
        for key, name in _REQUEST_PARAMS.items():
            value = params.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[name] = value
        span = tracer.start_span(
            f"chat {request_model}", kind=trace.SpanKind.CLIENT, attributes=attributes
        )
        # OpenTelemetry's no-op (no SDK, no parent span) carries nothing: not kept, and
        # not made current (its context costs ~420 bytes per held generation).
        if span.is_recording() or span.get_span_context().is_valid:
            self._span = span

    def activate(self) -> None:
        """Make the span current in this task's context (tasks created after inherit it)."""
        if self._span is not None and otel_context is not None:
            self._token = otel_context.attach(trace.set_span_in_context(self._span))

    def first_token(self) -> None:
        """Record the first content delta (event ``tokenwire.first_token``)."""
        if self._span is not None:
            self._span.add_event("tokenwire.first_token")

    def end(
        self,
        outcome: str,
        *,
        usage: Mapping[str, int] | None,
        finish_reason: str | None,
        error: Mapping[str, object] | None,
        cancel_reason: str | None,
    ) -> None:
        """End the span with the generation's result (and detach it if current).

        Args:
            outcome: ``completed``, ``failed`` or ``cancelled``.
            usage: the message's token counts, if reported.
            finish_reason: ``finish_reason`` of the ``finish`` event.
            error: the ``error`` event's ``code`` and ``message``.
            cancel_reason: the ``cancelled`` event's ``reason``.
        """
        span = self._span
        if span is None:
            return
        if self._token is not None and otel_context is not None:
            otel_context.detach(self._token)
            self._token = None
        span.set_attribute("tokenwire.outcome", outcome)
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", int(usage.get("input_tokens", 0)))
            span.set_attribute("gen_ai.usage.output_tokens", int(usage.get("output_tokens", 0)))
        if finish_reason is not None:
            span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
        if cancel_reason is not None:
            span.add_event("tokenwire.cancelled", {"reason": cancel_reason})
        if error is not None:
            code = str(error.get("code", "internal_error"))
            span.add_event(
                "tokenwire.error", {"code": code, "message": str(error.get("message", ""))}
            )
            span.set_attribute("error.type", code)
            span.set_status(trace.Status(trace.StatusCode.ERROR, code))
        span.end()
        self._span = None


def configure_from_env(service_name: str = "tokenwire") -> bool:
    """Install the OpenTelemetry SDK's tracer provider as the standard variables ask.

    Reads ``OTEL_SDK_DISABLED``, ``OTEL_TRACES_EXPORTER`` (comma-separated:
    ``otlp``, ``console``, ``none``, or any installed exporter's entry point name;
    default ``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set), ``OTEL_SERVICE_NAME`` (default
    ``service_name``) and ``OTEL_RESOURCE_ATTRIBUTES``; the exporters and the batch
    processor read their own ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_BSP_*`` variables.
    ``otlp`` is OTLP over HTTP/protobuf (``opentelemetry-exporter-otlp-proto-http``),
    or gRPC when ``OTEL_EXPORTER_OTLP_PROTOCOL`` is ``grpc`` and that exporter is installed.

    Returns:
        ``True`` when a provider was installed; ``False`` when nothing asks for
        traces, the SDK is missing (a warning is logged) or a tracer provider is
        already set (``opentelemetry-instrument``, the embedding app).
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    if not names and endpoint:
        names = ["otlp"]
    names = [n for n in names if n != "none"]
    if not names:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.warning(
            "OTEL_* variables ask for traces but opentelemetry-sdk is not installed: "
            "pip install 'tokenwire[otel]'"
        )
        return False
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return False
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        exporter = _exporter(name)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return True


def _exporter(name: str) -> Any:
    """An instance of the span exporter registered under ``name`` (entry point group
    ``opentelemetry_traces_exporter``), or ``None`` with a warning."""
    if name == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        name = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    for entry in found:
        return entry.load()()
    logger.warning(
        "OTEL_TRACES_EXPORTER names %r, which is not installed (pip install 'tokenwire[otel]')",
        name,
    )
    return None
