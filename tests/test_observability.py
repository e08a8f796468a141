"""Observability over real servers: OpenTelemetry spans (the SDK's in-memory exporter,
and OTLP/HTTP export from ``tokenwire serve`` by the ``OTEL_*`` variables), Prometheus
``/metrics`` after a generation, JSON log lines, request ids, and the cost of a
message replayed from the mock provider as ``openai:gpt-4o``."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from genai_prices import Usage, calc_price
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import REDIS_URL, drop_queue_keys, unavailable
from tests.support.servers import free_port, tokenwire_process, uvicorn_thread, wait_for_http
from tests.support.sse import chat_sse
from tokenwire import Settings, create_app
from tokenwire.mock_provider import BUNDLED_RECORDINGS
from tokenwire.observability.cost import message_cost
from tokenwire.worker import GenerationWorker

T = TypeVar("T")
RECORDING = BUNDLED_RECORDINGS / "openai-chat" / "gpt-4o_tool_call_include_usage"
"""A real gpt-4o stream with usage (448 in, 62 out), served below as model ``gpt-4o``."""

_EXPORTER: InMemorySpanExporter | None = None


def memory_exporter() -> InMemorySpanExporter:
    """The process's tracer provider, with an in-memory exporter (set once: OpenTelemetry
    allows one global provider per process)."""
    global _EXPORTER
    if _EXPORTER is None:
        _EXPORTER = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    return _EXPORTER


def eventually(probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Poll ``probe`` until it returns something (the producer ends its span and
    stores the message just after the terminal event reaches readers)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def gpt4o_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The mock provider serving a real gpt-4o recording under the model name ``gpt-4o``,
    its 57 events 1 ms apart: a generation then streams for longer than the 10 ms
    below which ``tokenwire_output_tokens_per_second`` observes nothing (replayed
    at full speed, it sometimes ended sooner)."""
    folder = tmp_path_factory.mktemp("recordings")
    for suffix in (".sse", ".meta.json"):
        shutil.copy(RECORDING.with_name(RECORDING.name + suffix), folder / f"gpt-4o{suffix}")
    with tokenwire_process(
        "mock-provider", "--recordings", str(folder), "--pace-ms", "1", ready_path="/_mock/health"
    ) as url:
        yield url


@pytest.fixture
def server(gpt4o_provider: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("OPENAI_BASE_URL", gpt4o_provider + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("TOKENWIRE_FAKE_PROVIDER", "1")
    settings = Settings(data_dir=tmp_path, default_model="fake:echo")
    with uvicorn_thread(create_app(settings)) as base:
        yield base


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``GET /metrics``: (name, sorted labels) -> value."""
    text = httpx.get(base + "/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _span_of(stream_id: str) -> ReadableSpan | None:
    for span in memory_exporter().get_finished_spans():
        if span.attributes and span.attributes.get("tokenwire.stream_id") == stream_id:
            return span
    return None


def test_generation_span_metrics_and_cost(server: str) -> None:
    exporter = memory_exporter()
    before = scrape(server)
    events = chat_sse(server, "openai:gpt-4o", params={"max_tokens": 64})
    start, finish = events[0], events[-1]
    assert finish["type"] == "finish" and finish["finish_reason"] == "tool_calls"
    usage = finish["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (448, 62)

    span = eventually(lambda: _span_of(start["stream_id"]))
    assert span.name == "chat gpt-4o"
    assert span.kind == trace.SpanKind.CLIENT
    assert span.attributes is not None
    assert dict(span.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.request.max_tokens": 64,
        "gen_ai.conversation.id": start["conversation_id"],
        "tokenwire.stream_id": start["stream_id"],
        "tokenwire.message_id": start["message_id"],
        "tokenwire.outcome": "completed",
        "gen_ai.usage.input_tokens": 448,
        "gen_ai.usage.output_tokens": 62,
        "gen_ai.response.finish_reasons": ("tool_calls",),
    }
    assert [e.name for e in span.events] == ["tokenwire.first_token"]
    assert span.status.status_code == trace.StatusCode.UNSET
    exporter.clear()

    # The price genai-prices gives for these tokens, stored and served.
    want = float(
        calc_price(
            Usage(input_tokens=448, output_tokens=62), "gpt-4o", provider_id="openai"
        ).total_price
    )
    assert want > 0
    conversation = eventually(
        lambda: (
            c
            if (c := httpx.get(f"{server}/v1/conversations/{start['conversation_id']}").json())[
                "messages"
            ][-1]["status"]
            == "completed"
            else None
        )
    )
    stored = conversation["messages"][-1]
    assert stored["cost"]["currency"] == "USD"
    assert stored["cost"]["total"] == pytest.approx(want)
    assert stored["cost"]["input"] + stored["cost"]["output"] == pytest.approx(want)
    snapshot = httpx.get(f"{server}/v1/streams/{start['stream_id']}").json()
    assert snapshot["cost"] == stored["cost"]

    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("tokenwire_time_to_first_token_seconds_count", provider="openai") == 1
    assert delta("tokenwire_output_tokens_total", provider="openai") == 62
    assert delta("tokenwire_output_tokens_per_second_count", provider="openai") == 1
    assert delta("tokenwire_generations_total", provider="openai", outcome="completed") == 1
    assert (
        delta("tokenwire_generation_duration_seconds_count", provider="openai", outcome="completed")
        == 1
    )
    # every event but `start` (appended by the request) is appended by the producer
    assert delta("tokenwire_events_appended_total") == len(events) - 1
    for gauge in ("tokenwire_generations_active", "tokenwire_readers_active"):
        assert after[(gauge, ())] >= 0
    families = {f.name for f in text_string_to_metric_families(httpx.get(server + "/metrics").text)}
    assert {"tokenwire_rate_limited", "tokenwire_slow_readers_dropped"} <= families


def test_unpriced_model_has_null_cost_and_error_span(server: str) -> None:
    memory_exporter()
    events = chat_sse(server, "fake:lorem", params={"tokens": 3})
    start = events[0]
    conversation = eventually(
        lambda: (
            c
            if (c := httpx.get(f"{server}/v1/conversations/{start['conversation_id']}").json())[
                "messages"
            ][-1]["status"]
            == "completed"
            else None
        )
    )
    assert conversation["messages"][-1]["cost"] is None
    assert httpx.get(f"{server}/v1/streams/{start['stream_id']}").json()["cost"] is None

    failed = chat_sse(server, "fake:lorem", params={"tokens": 5, "crash_after": 2})
    assert failed[-1]["type"] == "error"
    span = eventually(lambda: _span_of(failed[0]["stream_id"]))
    assert span.attributes is not None
    assert span.attributes["gen_ai.provider.name"] == "fake"
    assert span.attributes["error.type"] == "internal_error"
    assert span.status.status_code == trace.StatusCode.ERROR
    assert [e.name for e in span.events] == ["tokenwire.first_token", "tokenwire.error"]


def test_cancel_is_a_span_event(server: str) -> None:
    memory_exporter()
    with httpx.Client(base_url=server, timeout=30) as client:
        started = client.post(
            "/v1/chat",
            json={
                "model": "fake:lorem",
                "messages": [{"role": "user", "content": "hi"}],
                "params": {"tokens": 5, "stall_after": 1},
            },
        ).json()
        client.post(f"/v1/streams/{started['stream_id']}/cancel")
    span = eventually(lambda: _span_of(started["stream_id"]))
    assert span.attributes is not None and span.attributes["tokenwire.outcome"] == "cancelled"
    cancelled = [e for e in span.events if e.name == "tokenwire.cancelled"]
    assert cancelled and cancelled[0].attributes == {"reason": "user"}


def test_request_id_is_echoed_or_made(server: str) -> None:
    given = httpx.get(server + "/healthz", headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = httpx.get(server + "/healthz", headers={"x-request-id": b"bad id\xe9"})
    assert len(made.headers["x-request-id"]) == 32 and made.headers["x-request-id"] != "bad id"
    assert len(httpx.get(server + "/healthz").headers["x-request-id"]) == 32


def test_message_cost_table() -> None:
    usage = {"input_tokens": 1000, "output_tokens": 100, "cached_input_tokens": 0}
    priced = message_cost("openai:gpt-4o", usage)
    assert priced is not None and priced["total"] == pytest.approx(0.0035)
    assert message_cost("openai-responses:gpt-4o", usage) == priced
    for unpriced in ("local:smollm2", "fake:lorem", "ollama:llama3.2", "openai:no-such-model", ""):
        assert message_cost(unpriced, usage) is None
    assert message_cost("openai:gpt-4o", None) is None


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: keeps every ``POST /v1/traces`` body, decoded."""

    received: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.received.append(request)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_serve_exports_spans_and_writes_json_logs(tmp_path: Path) -> None:
    """``tokenwire serve`` with ``OTEL_EXPORTER_OTLP_ENDPOINT`` sends its spans over
    OTLP/HTTP; with ``TOKENWIRE_LOG_FORMAT=json`` every stderr line is a JSON object
    carrying the request id (and the stream id in the generation's lines)."""
    received: list[ExportTraceServiceRequest] = []
    handler = type("Handler", (_Collector,), {"received": received})
    collector = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "tokenwire-test",
        "TOKENWIRE_LOG_FORMAT": "json",
        "TOKENWIRE_FAKE_PROVIDER": "1",
        "TOKENWIRE_DEFAULT_MODEL": "fake:echo",
        "TOKENWIRE_DATA_DIR": str(tmp_path),
    }
    stderr_path = tmp_path / "stderr.log"
    cmd = [sys.executable, "-m", "tokenwire", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(cmd, env=env, stderr=stderr)
    try:
        wait_for_http(base + "/healthz", proc=proc)
        with httpx.Client(base_url=base, timeout=30) as client:
            crashed = client.post(
                "/v1/chat",
                json={
                    "model": "fake:lorem",
                    "messages": [{"role": "user", "content": "hi"}],
                    "params": {"tokens": 4, "crash_after": 1},
                },
                headers={"x-request-id": "req-crash-1"},
            )
        assert crashed.headers["x-request-id"] == "req-crash-1"
        stream_id = crashed.json()["stream_id"]

        def exported() -> Any:
            for request in list(received):
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            attrs = {a.key: a.value for a in span.attributes}
                            found = attrs.get("tokenwire.stream_id")
                            if found is not None and found.string_value == stream_id:
                                return resource_spans.resource, span, attrs
            return None

        resource, span, attrs = eventually(exported)
        assert span.name == "chat lorem"
        assert attrs["gen_ai.provider.name"].string_value == "fake"
        assert attrs["error.type"].string_value == "internal_error"
        service = {a.key: a.value.string_value for a in resource.attributes}["service.name"]
        assert service == "tokenwire-test"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        collector.shutdown()
        collector.server_close()
    lines = [json.loads(line) for line in stderr_path.read_text().splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(e) for e in lines)
    failure = [e for e in lines if e["message"] == f"generation {stream_id} failed"]
    assert len(failure) == 1
    assert failure[0]["request_id"] == "req-crash-1" and failure[0]["stream_id"] == stream_id
    assert "RuntimeError" in failure[0]["exception"]
    access = [e for e in lines if e["logger"] == "uvicorn.access" and e["path"] == "/v1/chat"]
    assert access[0]["request_id"] == "req-crash-1" and access[0]["status"] == 202


# -- tokenwire worker: the span and metrics come from where the generation runs -------

SAQ_ON_REDIS_8 = "ignore:Call to deprecated setex:DeprecationWarning"
"""saq 0.26 calls ``setex``, which redis-py 8 deprecates (as in tests/test_cluster.py)."""


@pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")
@pytest.mark.filterwarnings(SAQ_ON_REDIS_8)
def test_worker_generation_has_its_span_and_the_gateway_its_queue_depth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = memory_exporter()
    monkeypatch.setenv("TOKENWIRE_FAKE_PROVIDER", "1")
    name = f"tw-obs-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        data_dir=tmp_path,
        default_model="fake:echo",
        producers="queue",
        log_url=REDIS_URL,
        log_prefix=f"{name}:",
        queue_name=name,
        coalesce_ms=0,
    )
    body = {"model": "fake:lorem", "messages": [{"role": "user", "content": "hi"}]}
    try:
        with uvicorn_thread(create_app(settings)) as gateway:
            queued = httpx.post(gateway + "/v1/chat", json={**body, "params": {"tokens": 3}})
            assert queued.status_code == 202
            assert scrape(gateway)[("tokenwire_queue_depth", ())] == 1  # no worker yet

            async def work() -> None:
                worker = GenerationWorker(settings)
                running = asyncio.create_task(worker.run())
                try:
                    with anyio.fail_after(30):
                        # the exporter has no event to wait on: poll it
                        while _span_of(queued.json()["stream_id"]) is None:  # noqa: ASYNC110
                            await asyncio.sleep(0.02)
                    # taken by the worker (stopping it below may re-queue an unfinished job)
                    depth = (await asyncio.to_thread(scrape, gateway))[
                        ("tokenwire_queue_depth", ())
                    ]
                    assert depth == 0
                finally:
                    running.cancel()
                    await asyncio.gather(running, return_exceptions=True)

            asyncio.run(work())
            span = _span_of(queued.json()["stream_id"])
            assert span is not None and span.attributes is not None
            assert span.attributes["gen_ai.request.model"] == "lorem"
            assert span.attributes["gen_ai.provider.name"] == "fake"
            assert span.attributes["gen_ai.usage.output_tokens"] == 3
            assert span.attributes["tokenwire.outcome"] == "completed"
    finally:
        exporter.clear()
        asyncio.run(drop_queue_keys(name))


@pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")
def test_worker_command_serves_its_metrics(tmp_path: Path) -> None:
    """``tokenwire worker --metrics-port``: the generations it ran, on its own /metrics."""
    name = f"tw-obs-{uuid.uuid4().hex[:8]}"
    shared = {
        "TOKENWIRE_DATA_DIR": str(tmp_path),
        "TOKENWIRE_LOG_URL": REDIS_URL,
        "TOKENWIRE_LOG_PREFIX": f"{name}:",
        "TOKENWIRE_QUEUE_NAME": name,
        "TOKENWIRE_FAKE_PROVIDER": "1",
        "TOKENWIRE_DEFAULT_MODEL": "fake:echo",
    }
    metrics_port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "tokenwire", "worker", "--metrics-port", str(metrics_port)],
        env={**os.environ, **shared},
    )
    worker_metrics = f"http://127.0.0.1:{metrics_port}"
    try:
        wait_for_http(worker_metrics + "/metrics", proc=worker)
        gateway_env = {**shared, "TOKENWIRE_PRODUCERS": "queue"}
        with tokenwire_process(
            "serve", "--log-level", "warning", env=gateway_env, ready_path="/healthz"
        ) as gateway:
            events = chat_sse(gateway, "fake:lorem", params={"tokens": 4})
        assert events[-1]["type"] == "finish"

        def counted() -> dict[Any, float] | None:
            samples = scrape(worker_metrics)
            key = ("tokenwire_generations_total", (("outcome", "completed"), ("provider", "fake")))
            return samples if samples.get(key) == 1 else None

        samples = eventually(counted)
        assert samples[("tokenwire_output_tokens_total", (("provider", "fake"),))] == 4
        assert samples[("tokenwire_generations_active", ())] == 0
    finally:
        worker.terminate()
        worker.wait(timeout=15)
        asyncio.run(drop_queue_keys(name))
