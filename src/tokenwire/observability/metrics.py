"""Process-wide Prometheus instruments (``GET /metrics``; ``docs/observability.md``).

Counters and histograms live in :data:`REGISTRY`, one per process, so the
producer and the transports record into them wherever they run; the
``/metrics`` endpoint writes them after the gauges it samples at scrape time
(running generations, live readers, Pusher connections, queue depth).

Labels are bounded: ``provider`` is the part of a model name before ``:``
(``openai``, ``anthropic`` …), never the free-form model name.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "EVENTS_APPENDED",
    "GENERATIONS",
    "GENERATION_SECONDS",
    "OUTPUT_TOKENS",
    "REGISTRY",
    "SLOW_READERS_DROPPED",
    "TIME_TO_FIRST_TOKEN",
    "TOKENS_PER_SECOND",
]

REGISTRY = CollectorRegistry(auto_describe=True)
"""The registry of every instrument below (not the ``prometheus_client`` global one,
so an embedding app's own metrics stay apart)."""

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_RATE_BUCKETS = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0)

TIME_TO_FIRST_TOKEN = Histogram(
    "tokenwire_time_to_first_token_seconds",
    "Seconds from the start of a generation to its first content delta appended.",
    ["provider"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
GENERATION_SECONDS = Histogram(
    "tokenwire_generation_duration_seconds",
    "Seconds from the start of a generation to its terminal event.",
    ["provider", "outcome"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
TOKENS_PER_SECOND = Histogram(
    "tokenwire_output_tokens_per_second",
    "Output tokens per second of a generation, from its first delta to its end "
    "(generations that report usage and streamed for at least 10 ms).",
    ["provider"],
    buckets=_RATE_BUCKETS,
    registry=REGISTRY,
)
OUTPUT_TOKENS = Counter(
    "tokenwire_output_tokens",
    "Output tokens generated (as the providers' usage reports them).",
    ["provider"],
    registry=REGISTRY,
)
GENERATIONS = Counter(
    "tokenwire_generations",
    "Generations ended, by outcome: completed, failed or cancelled.",
    ["provider", "outcome"],
    registry=REGISTRY,
)


class _LoopCounter(Collector):
    """A counter without labels incremented only on the event loop's thread, so
    without ``prometheus_client``'s lock (~370 ns per ``inc``, ~60 ns here): for
    what is counted per appended event. Exposed as ``<name>_total`` and
    ``<name>_created``, like a :class:`prometheus_client.Counter`."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0
        self.created = time.time()
        registry.register(self)

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, created=self.created)
        family.add_metric([], self.value, created=self.created)
        yield family


EVENTS_APPENDED = _LoopCounter(
    "tokenwire_events_appended",
    "Events appended by this process's producers (rate() = events per second).",
    REGISTRY,
)
SLOW_READERS_DROPPED = Counter(
    "tokenwire_slow_readers_dropped",
    "Readers disconnected for not keeping up (WebSocket backlog full: close 4100); "
    "they resume from the log.",
    ["transport"],
    registry=REGISTRY,
)


def provider_label(model: str) -> str:
    """The ``provider`` label of a ``provider:model`` name (``unknown`` when empty)."""
    return model.partition(":")[0] or "unknown"


def record_end(
    model: str,
    outcome: str,
    started: float,
    first_token_at: float | None,
    usage: dict[str, int] | None,
) -> None:
    """Count one ended generation: outcome, duration, output tokens and tokens per
    second (from the first token; times are :func:`time.monotonic` seconds)."""
    provider = provider_label(model)
    now = time.monotonic()
    GENERATIONS.labels(provider, outcome).inc()
    GENERATION_SECONDS.labels(provider, outcome).observe(now - started)
    if usage is not None and usage["output_tokens"] > 0:
        OUTPUT_TOKENS.labels(provider).inc(usage["output_tokens"])
        if first_token_at is not None and now - first_token_at >= 0.01:
            TOKENS_PER_SECOND.labels(provider).observe(
                usage["output_tokens"] / (now - first_token_at)
            )
