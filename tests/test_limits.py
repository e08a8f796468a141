"""Limits (docs/api.md "Limits"): requests per period, concurrent streams and output
tokens per UTC day, per identity (or client IP), against real servers on 127.0.0.1;
the Redis-backed limits across two app instances sharing a prefix."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.support.cluster import REDIS_URL
from tests.support.servers import uvicorn_thread
from tests.support.sse import read_sse
from tokenwire import Settings, create_app
from tokenwire.engine.limits import parse_rate

TOKENS = {"ta": "alice", "tb": "bob"}
ALICE = {"authorization": "Bearer ta"}
BOB = {"authorization": "Bearer tb"}
USER: Any = {"role": "user", "content": "hi"}
HI = [USER]
STALL = {"model": "fake:lorem", "messages": HI, "params": {"stall_after": 1, "delay_ms": 0}}


@pytest.fixture(autouse=True)
def fake_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWIRE_FAKE_PROVIDER", "1")


@contextlib.contextmanager
def server(tmp_path: Path, **options: Any) -> Iterator[httpx.Client]:
    settings = Settings(
        data_dir=tmp_path / uuid.uuid4().hex,
        default_model="fake:echo",
        auth_tokens=TOKENS,
        allow_anonymous=True,  # anonymous callers (limited by IP) beside the identities
        coalesce_ms=0,
        **options,
    )
    with uvicorn_thread(create_app(settings)) as base, httpx.Client(base_url=base) as client:
        yield client


def retry_after(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    value = response.headers["retry-after"]
    assert value.isdigit(), value
    return int(value)


def run_to_end(client: httpx.Client, headers: dict[str, str], **body: Any) -> list[dict[str, Any]]:
    body.setdefault("messages", HI)
    events, _ = read_sse(
        client,
        "POST",
        "/v1/chat",
        json=body,
        headers={**headers, "accept": "text/event-stream"},
    )
    return events


def conversations(client: httpx.Client, headers: dict[str, str]) -> int:
    response = client.get("/v1/conversations", headers=headers)
    assert response.status_code == 200
    return len(response.json()["data"])


@pytest.mark.parametrize("value", ["120/minute", "1/second", " 3 / hour ", "5/day"])
def test_rate_grammar_accepts(value: str) -> None:
    assert Settings(limit_requests=value).limit_requests == value
    assert parse_rate(value).amount == int(value.split("/")[0])


@pytest.mark.parametrize("value", ["120", "0/minute", "10/week", "10 per minute", "x/second"])
def test_rate_grammar_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="N/second"):
        Settings(limit_requests=value)


def test_request_limit_per_identity(tmp_path: Path) -> None:
    with server(tmp_path, limit_requests="2/minute") as client:
        for _ in range(2):
            assert client.post("/v1/chat", json={"messages": HI}, headers=ALICE).status_code == 202
        refused = client.post("/v1/chat", json={"messages": HI}, headers=ALICE)
        assert 1 <= retry_after(refused) <= 60
        assert refused.json() == {"detail": "request limit of 2 per minute reached"}
        assert conversations(client, ALICE) == 2  # nothing was created
        # another identity, and the anonymous caller (by IP), are not affected
        assert client.post("/v1/chat", json={"messages": HI}, headers=BOB).status_code == 202
        assert client.post("/v1/chat", json={"messages": HI}).status_code == 202
        metrics = client.get("/metrics").text
        assert 'tokenwire_rate_limited_total{limit="requests"} 1.0' in metrics
        assert 'tokenwire_rate_limited_total{limit="concurrent_streams"} 0.0' in metrics


def test_each_surface_answers_429_in_its_own_shape(tmp_path: Path) -> None:
    with server(tmp_path, limit_requests="1/hour") as client:
        assert client.post("/v1/chat", json={"messages": HI}, headers=ALICE).status_code == 202
        # OpenAI-compatible: OpenAI's error object, and the SDK raises RateLimitError
        body = {"model": "fake:echo", "messages": HI}
        refused = client.post("/v1/chat/completions", json=body, headers=ALICE)
        assert 1 <= retry_after(refused) <= 3600
        error = refused.json()["error"]
        assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
        assert error["message"] == "request limit of 1 per hour reached"
        sdk = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key="ta", max_retries=0)
        with pytest.raises(openai.RateLimitError) as raised:
            sdk.chat.completions.create(model="fake:echo", messages=[USER])
        assert raised.value.code == "rate_limit_exceeded"
        assert raised.value.response.headers["retry-after"].isdigit()
        sdk.close()
        # AI SDK: {"detail": ...} as its other errors, and no chat is created
        chat_id = uuid.uuid4().hex
        ui = {
            "id": chat_id,
            "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
        }
        refused = client.post("/api/chat", json=ui, headers=ALICE)
        retry_after(refused)
        assert refused.json() == {"detail": "request limit of 1 per hour reached"}
        assert client.get(f"/v1/conversations/{chat_id}", headers=ALICE).status_code == 404
        assert conversations(client, ALICE) == 1
        # bob starts on every surface
        assert client.post("/v1/chat/completions", json=body, headers=BOB).status_code == 200
        assert 'tokenwire_rate_limited_total{limit="requests"} 3.0' in client.get("/metrics").text


def test_concurrent_streams_are_released_after_cancel_and_finish(tmp_path: Path) -> None:
    with server(tmp_path, limit_concurrent_streams=2) as client:
        started = [client.post("/v1/chat", json=STALL, headers=ALICE) for _ in range(2)]
        assert [r.status_code for r in started] == [202, 202]
        refused = client.post("/v1/chat", json=STALL, headers=ALICE)
        assert retry_after(refused) == 1
        assert "2 concurrent generations" in refused.json()["detail"]
        assert conversations(client, ALICE) == 2
        assert client.post("/v1/chat", json=STALL, headers=BOB).status_code == 202
        # cancel one: once its stream has ended, the slot is free
        first = started[0].json()
        assert client.post(first["cancel_url"], headers=ALICE).status_code == 202
        events, _ = read_sse(client, "GET", first["events_url"], headers=ALICE)
        assert events[-1]["type"] == "cancelled"
        assert client.post("/v1/chat", json={"messages": HI}, headers=ALICE).status_code == 202
        # finish: a generation that ran to its end frees its slot too
        second = started[1].json()
        client.post(second["cancel_url"], headers=ALICE)
        read_sse(client, "GET", second["events_url"], headers=ALICE)
        for _ in range(3):  # each finishes before the next starts
            assert run_to_end(client, ALICE)[-1]["type"] == "finish"


def test_tokens_per_day(tmp_path: Path) -> None:
    lorem = {"model": "fake:lorem", "params": {"tokens": 20}}
    with server(tmp_path, limit_tokens_per_day=30) as client:
        for _ in range(2):  # 0, then 20 < 30: admitted; 40 used after
            assert run_to_end(client, ALICE, **lorem)[-1]["usage"]["output_tokens"] == 20
        refused = client.post("/v1/chat", json=lorem | {"messages": HI}, headers=ALICE)
        assert 1 <= retry_after(refused) <= 86_400
        assert refused.json()["detail"] == "output token limit of 30 per UTC day reached"
        assert run_to_end(client, BOB, **lorem)[-1]["type"] == "finish"
        completions = client.post(
            "/v1/chat/completions", json={"model": "fake:echo", "messages": HI}, headers=ALICE
        )
        retry_after(completions)
        assert completions.json()["error"]["type"] == "tokens"


# -- across nodes: two apps on one Redis prefix ---------------------------------------


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at {REDIS_URL} does not answer ({exc!r})")
    prefix = f"twtest-limits-{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


@contextlib.contextmanager
def two_nodes(tmp_path: Path, prefix: str, **options: Any) -> Iterator[list[httpx.Client]]:
    with (
        server(tmp_path, log_url=REDIS_URL, log_prefix=prefix, **options) as a,
        server(tmp_path, log_url=REDIS_URL, log_prefix=prefix, **options) as b,
    ):
        yield [a, b]


def test_request_limit_holds_across_nodes(tmp_path: Path, redis_prefix: str) -> None:
    with two_nodes(tmp_path, redis_prefix, limit_requests="3/minute") as (a, b):
        statuses = [
            node.post("/v1/chat", json={"messages": HI}, headers=ALICE).status_code
            for node in (a, b, a, b)
        ]
        assert statuses == [202, 202, 202, 429]
        assert b.post("/v1/chat", json={"messages": HI}, headers=BOB).status_code == 202


def test_concurrent_streams_across_nodes(tmp_path: Path, redis_prefix: str) -> None:
    with two_nodes(tmp_path, redis_prefix, limit_concurrent_streams=1) as (a, b):
        running = a.post("/v1/chat", json=STALL, headers=ALICE)
        assert running.status_code == 202
        retry_after(b.post("/v1/chat", json=STALL, headers=ALICE))
        assert b.post("/v1/chat", json=STALL, headers=BOB).status_code == 202
        # cancelled through node b; its end frees the slot on either node
        stream_id = running.json()["stream_id"]
        assert b.post(f"/v1/streams/{stream_id}/cancel", headers=ALICE).status_code == 202
        events, _ = read_sse(b, "GET", f"/v1/streams/{stream_id}/events", headers=ALICE)
        assert events[-1]["type"] == "cancelled"
        assert b.post("/v1/chat", json={"messages": HI}, headers=ALICE).status_code == 202


def test_tokens_per_day_across_nodes(tmp_path: Path, redis_prefix: str) -> None:
    lorem = {"model": "fake:lorem", "params": {"tokens": 20}}
    with two_nodes(tmp_path, redis_prefix, limit_tokens_per_day=20) as (a, b):
        assert run_to_end(a, ALICE, **lorem)[-1]["type"] == "finish"
        # node a charges alice's 20 tokens (at the latest when she asks again there) ...
        retry_after(a.post("/v1/chat", json={"messages": HI}, headers=ALICE))
        # ... and node b sees them
        refused = b.post("/v1/chat", json={"messages": HI}, headers=ALICE)
        retry_after(refused)
        assert refused.json()["detail"] == "output token limit of 20 per UTC day reached"
        assert b.post("/v1/chat", json={"messages": HI}, headers=BOB).status_code == 202


def test_the_native_router_alone_answers_429(tmp_path: Path) -> None:
    """An app embedding only ``tw.router`` (no ``create_app`` handlers) gets the 429 too."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    from tokenwire import Tokenwire

    tw = Tokenwire(
        Settings(data_dir=tmp_path, default_model="fake:echo", limit_concurrent_streams=1)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        async with tw:
            yield

    app = FastAPI(lifespan=lifespan)
    app.include_router(tw.router, prefix="/ai")
    with uvicorn_thread(app) as base, httpx.Client(base_url=base) as client:
        assert client.post("/ai/v1/chat", json=STALL).status_code == 202
        refused = client.post("/ai/v1/chat", json=STALL)
        assert retry_after(refused) == 1 and "1 concurrent" in refused.json()["detail"]


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")  # saq
async def test_generations_run_by_a_worker_are_accounted_for(
    tmp_path: Path, redis_prefix: str
) -> None:
    """With ``producers="queue"`` the node learns of the end from the log: the slot is
    freed and the tokens charged by the next admission at the latest."""
    import asyncio

    import anyio

    from tokenwire import Message, Tokenwire
    from tokenwire.engine.limits import RateLimitedError
    from tokenwire.worker import GenerationWorker

    name = redis_prefix.rstrip(":")
    settings = Settings(
        data_dir=tmp_path,
        log_url=REDIS_URL,
        log_prefix=redis_prefix,
        producers="queue",
        queue_name=name,
        coalesce_ms=0,
        limit_concurrent_streams=1,
        limit_tokens_per_day=7,
    )
    tw = Tokenwire(settings)
    worker = GenerationWorker(settings, concurrency=2, tokenwire=tw)
    await tw.open()
    running = asyncio.create_task(worker.run())
    try:
        with anyio.fail_after(20):
            ticket = await tw.limits.admit("id:alice", uuid.uuid4().hex)
            stream = await tw.start(
                "fake:lorem", [Message("user", "hi")], params={"tokens": 7}, ticket=ticket
            )
            with pytest.raises(RateLimitedError) as concurrent:
                await tw.limits.admit("id:alice", uuid.uuid4().hex)
            assert concurrent.value.limit == "concurrent_streams"
            await stream.wait()
            with pytest.raises(RateLimitedError) as tokens:  # 7 of 7 used
                await tw.limits.admit("id:alice", uuid.uuid4().hex)
            assert tokens.value.limit == "tokens_per_day"
            assert tw.limits.statistics()["held"] == 0
            await tw.limits.admit("id:bob", uuid.uuid4().hex)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await tw.aclose()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"saq:{name}*"):
            client.delete(key)
        client.close()
