"""Scale-out (DESIGN §11) with real processes on 127.0.0.1.

Two gateways (``tokenwire serve --no-producers``) and two ``tokenwire worker``
processes share a Redis stream log, a Redis job queue (key prefix and queue name
unique to this module) and a PostgreSQL database created for this module and
dropped after it. Paced generations use ``fake:lorem`` (``delay_ms`` per token),
deterministic and offline; provider variables point at the mock provider.

The first two tests need only Redis (memory log, in-process worker); the cluster
tests also need the Redis stream log (``tokenwire.log.redis``) and are skipped,
saying so, while it is missing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.support.cluster import (
    REDIS_URL,
    Cluster,
    drop_queue_keys,
    poll,
    services_env,
    start_lorem,
    unavailable,
)
from tests.support.sse import TERMINAL, read_sse, text_of
from tokenwire import Message, Settings, Tokenwire, create_app
from tokenwire.events import TextDelta
from tokenwire.protocol.sse import SSEDecoder
from tokenwire.providers.base import GenerationRequest
from tokenwire.providers.fake import FakeProvider
from tokenwire.queue import GenerationJob, encode_job
from tokenwire.worker import GenerationWorker

pytestmark = pytest.mark.slow
LEASE_TTL = 8.0
"""Seconds. Not 2: on 2 cores, 50 generations per worker delay the producer's lease
renewals by about 2 s (its ticker renews them one by one), so 100 streams would end
with ``producer_lost`` (see docs/scale-out.md, "Known limits")."""
WHY_NOT = unavailable()
needs_services = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
SAQ_ON_REDIS_8 = "ignore:Call to deprecated setex:DeprecationWarning"
"""saq 0.26 calls ``setex``, which redis-py 8 deprecates (saq's ``redis`` extra pins < 8)."""


def lorem(tokens: int) -> str:
    """The text ``fake:lorem`` answers with ``tokens`` words."""

    async def collect() -> str:
        request = GenerationRequest(
            model="lorem", messages=[Message("user", "hi")], params={"tokens": tokens}
        )
        events = FakeProvider().stream(request)
        return "".join([e.delta async for e in events if isinstance(e, TextDelta)])

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # callable from a running loop
        return pool.submit(asyncio.run, collect()).result()


def assert_whole(events: list[dict[str, Any]], terminal: str = "finish") -> None:
    """``seq`` 1..N without gaps or repeats, ``start`` first, one terminal event last."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "start"
    assert events[-1]["type"] == terminal
    assert sum(e["type"] in TERMINAL for e in events) == 1


# -- without the Redis log: the queue and the worker in one process ------------------


@needs_services
@pytest.mark.anyio
@pytest.mark.filterwarnings(SAQ_ON_REDIS_8)
async def test_queue_round_trip_in_one_process(tmp_path: Path) -> None:
    name = f"tw-test-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        fake_provider=True,
        data_dir=tmp_path,
        producers="queue",
        queue_url=REDIS_URL,
        queue_name=name,
        coalesce_ms=0,
    )
    tw = Tokenwire(settings)
    worker = GenerationWorker(settings, concurrency=2, tokenwire=tw)
    await tw.open()
    running = asyncio.create_task(worker.run())
    try:
        with anyio.fail_after(20):
            stream = await tw.start("fake:lorem", [Message("user", "hi")], params={"tokens": 7})
            await stream.wait()
            assert stream.text == lorem(7) and stream.finish_reason == "stop"
            assert stream.message_id is not None
            stored = await tw.store.get_message(stream.message_id)
            while stored is None or stored.status != "completed":  # written after `finish`
                await asyncio.sleep(0.02)
                stored = await tw.store.get_message(stream.message_id)
        # a second delivery of the same job runs nothing: the stream has ended and is claimed
        assert not await worker.queue.claim(stream.stream_id)
        generation = (await tw.log.info(stream.stream_id)).meta
        job = GenerationJob(model="fake:lorem", generation=_generation_of(stream, generation))
        assert await worker._generate({}, job=encode_job(job)) == "ended"
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await drop_queue_keys(name)


def _generation_of(stream: Any, meta: Any) -> Any:
    from tokenwire.producer import Generation

    request = GenerationRequest(model="lorem", messages=[Message("user", "hi")])
    return Generation(
        stream_id=stream.stream_id,
        message_id=meta["message_id"],
        conversation_id=meta["conversation_id"],
        request=request,
    )


@needs_services
@pytest.mark.anyio
async def test_readyz_names_the_unreachable_queue(tmp_path: Path) -> None:
    settings = Settings(
        fake_provider=True, data_dir=tmp_path, producers="queue", queue_url="redis://127.0.0.1:1/0"
    )
    tw = Tokenwire(settings)
    app = create_app(tokenwire=tw)
    await tw.open()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tw") as client:
            response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable", "queue": "unreachable"}
    finally:
        await tw.aclose()


# -- the cluster -------------------------------------------------------------------------


def _redis_log_missing() -> str | None:
    from tokenwire.engine.core import _open_log

    try:
        _open_log(Settings(log_url=REDIS_URL))
    except (ValueError, ImportError) as exc:
        return f"waits on the Redis stream log ({exc})"
    return None


@pytest.fixture(scope="module")
def cluster(mock_provider: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if WHY_NOT is not None:
        pytest.skip(WHY_NOT)
    missing = _redis_log_missing()
    if missing is not None:
        pytest.skip(missing)
    with services_env("cluster", tmp_path_factory.mktemp("cluster")) as env:
        env.update(
            {
                "TOKENWIRE_LEASE_TTL": str(LEASE_TTL),
                "TOKENWIRE_CHECKPOINT_INTERVAL": "1",
                "TOKENWIRE_ORPHAN_TIMEOUT": "600",
                # 100 streams from one client address
                "TOKENWIRE_LIMIT_CONCURRENT_STREAMS": "0",
                "TOKENWIRE_HEARTBEAT_INTERVAL": "1",
                "OPENAI_BASE_URL": mock_provider + "/v1",
                "OPENAI_API_KEY": "x",
                "ANTHROPIC_BASE_URL": mock_provider,
                "ANTHROPIC_API_KEY": "x",
            }
        )
        group = Cluster(env, tmp_path_factory.mktemp("cluster-logs"))
        try:
            group.heal()
            yield group
        finally:
            group.close()


@pytest.fixture
def nodes(cluster: Cluster) -> Cluster:
    """The cluster with two live gateways and two live workers (restarting dead ones)."""
    cluster.heal()
    return cluster


def read(base: str, stream_id: str, after: int = 0) -> list[dict[str, Any]]:
    with httpx.Client(base_url=base, timeout=30) as client:
        events, _ = read_sse(client, "GET", f"/v1/streams/{stream_id}/events?after={after}")
    return events


def assistant(base: str, conversation_id: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/v1/conversations/{conversation_id}", timeout=10)
    response.raise_for_status()
    return dict(response.json()["messages"][-1])


def stored_text(message: dict[str, Any]) -> str:
    return "".join(p.get("text", "") for p in message["parts"] if p.get("type") == "text")


def wait_stored(
    base: str, conversation_id: str, status: str, timeout: float = 10.0
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def check() -> bool:
        found.update(assistant(base, conversation_id))
        return bool(found["status"] == status)

    poll(check, timeout, f"stored message {status}")
    return found


def test_stream_started_on_a_is_read_live_and_late_on_b(nodes: Cluster) -> None:
    a, b = nodes.nodes[:2]
    started = start_lorem(a.url, tokens=40, delay_ms=20)
    live = read(b.url, started["stream_id"])
    late = read(b.url, started["stream_id"])
    assert live == late
    assert_whole(live)
    assert text_of(live) == lorem(40)


def test_gateway_killed_client_resumes_on_another(nodes: Cluster) -> None:
    a, b = nodes.nodes[:2]
    started = start_lorem(a.url, tokens=60, delay_ms=20)
    seen: list[dict[str, Any]] = []
    decoder = SSEDecoder()
    url = f"{a.url}/v1/streams/{started['stream_id']}/events"
    with (
        pytest.raises(httpx.HTTPError),
        httpx.stream("GET", url, timeout=30) as response,
    ):
        for chunk in response.iter_raw():
            for sse in decoder.decode(chunk):
                if sse.comment is None:
                    seen.append(json.loads(sse.data))
            if len(seen) >= 5 and a.alive:
                a.kill()
    assert len(seen) >= 5 and seen[-1]["type"] not in TERMINAL
    rest = read(b.url, started["stream_id"], after=seen[-1]["seq"])
    events = seen + rest
    assert_whole(events)
    assert text_of(events) == lorem(60)
    message = wait_stored(b.url, started["conversation_id"], "completed")
    assert stored_text(message) == lorem(60)


def test_cancel_on_b_stops_the_worker(nodes: Cluster) -> None:
    a, b = nodes.nodes[:2]
    started = start_lorem(a.url, tokens=1000, delay_ms=20)
    stream_id = started["stream_id"]
    nodes.worker_of(stream_id)  # running on a worker, not on a gateway
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        readers = [pool.submit(read, node.url, stream_id) for node in (a, b)]
        poll(lambda: _last_seq(b.url, stream_id) >= 5, 10, "a few events")
        response = httpx.post(f"{b.url}/v1/streams/{stream_id}/cancel", timeout=10)
        assert response.status_code == 202
        results = [r.result(timeout=10) for r in readers]
    for events in results:
        assert_whole(events, "cancelled")
        assert events[-1]["reason"] == "user"
    assert results[0] == results[1]
    partial = text_of(results[0])
    assert partial and lorem(1000).startswith(partial) and partial != lorem(1000)
    message = wait_stored(b.url, started["conversation_id"], "cancelled")
    assert stored_text(message) == partial


def _last_seq(base: str, stream_id: str) -> int:
    return int(httpx.get(f"{base}/v1/streams/{stream_id}", timeout=5).json()["last_seq"])


@pytest.fixture(scope="module")
def worker_killed(cluster: Cluster) -> dict[str, Any]:
    """A generation whose worker is SIGKILLed mid-stream, read on both gateways."""
    cluster.heal()
    a, b = cluster.nodes[:2]
    started = start_lorem(a.url, tokens=1000, delay_ms=20)
    stream_id = started["stream_id"]
    owner = cluster.worker_of(stream_id)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        readers = [pool.submit(read, node.url, stream_id) for node in (a, b)]
        poll(lambda: _last_seq(b.url, stream_id) >= 5, 10, "a few events")
        owner.kill()
        killed_at = time.monotonic()
        results = [r.result(timeout=LEASE_TTL + 10) for r in readers]
        ended_after = time.monotonic() - killed_at
    return {"started": started, "results": results, "ended_after": ended_after, "node": b}


def test_worker_killed_readers_get_producer_lost(worker_killed: dict[str, Any]) -> None:
    results = worker_killed["results"]
    for events in results:
        assert_whole(events, "error")
        assert events[-1]["code"] == "producer_lost"
    assert results[0] == results[1]
    assert worker_killed["ended_after"] < LEASE_TTL + 2.0


def test_worker_killed_stored_message_ends_failed(worker_killed: dict[str, Any]) -> None:
    """The node whose reader appended producer_lost stores what the log holds."""
    node, started = worker_killed["node"], worker_killed["started"]
    message = wait_stored(node.url, started["conversation_id"], "failed", timeout=5)
    assert message["error"]["code"] == "producer_lost"
    assert stored_text(message) == text_of(worker_killed["results"][0])


@pytest.mark.anyio
async def test_hundred_concurrent_streams(nodes: Cluster) -> None:
    tokens, count = 100, 100  # 50 tokens/s: 2 s each
    urls = [n.url for n in nodes.nodes[:2]]
    expected = lorem(tokens)
    # No keep-alive: a pooled connection that a node closes as idle (uvicorn's 5 s) at the
    # moment it is reused fails with "Server disconnected" under load.
    limits = httpx.Limits(max_connections=2 * count + 10, max_keepalive_connections=0)
    seen: dict[int, tuple[str, list[dict[str, Any]]]] = {}  # to say what hung, if any
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(index: int) -> list[dict[str, Any]]:
            body = {
                "model": "fake:lorem",
                "messages": [{"role": "user", "content": f"n{index}"}],
                "params": {"tokens": tokens, "delay_ms": 20},
            }
            response = await client.post(urls[index % 2] + "/v1/chat", json=body)
            assert response.status_code == 202, response.text
            stream_id = response.json()["stream_id"]
            events: list[dict[str, Any]] = []
            seen[index] = (stream_id, events)
            decoder = SSEDecoder()
            url = f"{urls[(index + 1) % 2]}/v1/streams/{stream_id}/events"
            async with client.stream("GET", url) as stream:
                async for chunk in stream.aiter_raw():
                    for sse in decoder.decode(chunk):
                        if sse.comment is None:
                            events.append(json.loads(sse.data))
                    if events and events[-1]["type"] in TERMINAL:
                        break
            return events

        try:
            with anyio.fail_after(40):
                results = await asyncio.gather(*(one(i) for i in range(count)))
        except TimeoutError:
            unfinished = {
                stream_id: (len(events), events[-1]["type"] if events else None)
                for stream_id, events in seen.values()
                if not events or events[-1]["type"] not in TERMINAL
            }
            started = len(seen)
            state = await _where_stuck(client, urls[0], nodes.queue_name, list(unfinished)[:3])
            raise AssertionError(
                f"{started}/{count} started; unfinished: {unfinished}; {state}"
            ) from None
    assert len({r[0]["stream_id"] for r in results}) == count
    ends = [(e[-1]["type"], e[-1].get("code"), e[-1].get("message"), len(e)) for e in results]
    assert all(end[0] == "finish" for end in ends), ends
    for events in results:
        assert_whole(events)
        assert text_of(events) == expected


async def _where_stuck(
    client: httpx.AsyncClient, base: str, queue_name: str, stream_ids: list[str]
) -> str:
    """What a hang looked like (this test has hung intermittently with streams left at
    ``start``, cause not yet found): the polling snapshot of a few stuck streams and the
    sizes of saq's queue keys, so a failure says whether the jobs were still queued,
    running, or done with events the readers never got."""
    import redis.asyncio as aioredis

    snapshots = {}
    for stream_id in stream_ids:
        response = await client.get(f"{base}/v1/streams/{stream_id}")
        snapshot = response.json() if response.status_code == 200 else response.status_code
        snapshots[stream_id] = (
            {k: snapshot.get(k) for k in ("status", "last_seq")}
            if isinstance(snapshot, dict)
            else snapshot
        )
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        sizes = {}
        async for key in redis.scan_iter(match=f"saq:{queue_name}:*", count=1000):
            kind = await redis.type(key)
            length = {b"list": redis.llen, b"zset": redis.zcard}.get(kind)
            sizes[key.decode()] = await length(key) if length else kind.decode()
    finally:
        await redis.aclose()
    return f"snapshots: {snapshots}; saq keys: {sizes}"
