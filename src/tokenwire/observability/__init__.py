"""Observability: Prometheus instruments, OpenTelemetry spans, JSON logs, cost.

- :mod:`~tokenwire.observability.metrics`: process-wide Prometheus counters and
  histograms, served by ``GET /metrics`` (``docs/observability.md``).
- :mod:`~tokenwire.observability.tracing`: one span per generation with the
  OpenTelemetry GenAI semantic conventions (a no-op without ``opentelemetry-api``).
- :mod:`~tokenwire.observability.logs`: ``TOKENWIRE_LOG_FORMAT=json`` and the
  request and stream ids every log line carries.
- :mod:`~tokenwire.observability.cost`: a message's price from ``genai-prices``.

This package sits beside :mod:`tokenwire.events` in the layering: it imports
nothing of tokenwire but :mod:`tokenwire.events`, so every layer may use it.
"""
