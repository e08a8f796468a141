"""Shutdown and lost producers with gateways (``serve --no-producers``) and ``tokenwire
worker`` processes sharing the real Redis and PostgreSQL (issue 9, items 5 and 6).

- A worker killed with SIGKILL while nobody reads its stream: the lease sweep of the
  gateways ends the stream with exactly one ``producer_lost`` and stores the message
  as failed (the gateways only answer snapshots, which never look at leases).
- A worker sent SIGTERM: its running generation ends with ``cancelled{shutdown}``
  after the grace, its short one finishes, a generation started meanwhile is left to
  the next worker; readers on the gateways get their terminal events.
- A gateway sent SIGTERM while a long poll waits on a stream a worker runs: the long
  poll answers JSON (not a 500) before the gateway exits.

Every wait polls the HTTP API, Redis or the process; nothing sleeps a fixed time.
"""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.support.cluster import REDIS_URL, Cluster, poll, services_env, unavailable
from tests.test_cluster import assert_whole, lorem, read, wait_stored

pytestmark = pytest.mark.slow

LEASE_TTL = 2.0
"""Seconds; short, for the sweep to find the dead worker soon (few streams here)."""
SWEEP = 0.5
"""TOKENWIRE_LEASE_SWEEP_INTERVAL, seconds."""
GRACE = 3.0
"""TOKENWIRE_SHUTDOWN_GRACE, seconds."""
STALL = {"tokens": 50, "stall_after": 2}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    why_not = unavailable()
    if why_not is not None:
        pytest.skip(why_not)
    with services_env("shutdown", tmp_path_factory.mktemp("cluster")) as env:
        env.update(
            {
                "TOKENWIRE_MODELS": '["fake:lorem"]',
                "TOKENWIRE_LEASE_TTL": str(LEASE_TTL),
                "TOKENWIRE_LEASE_SWEEP_INTERVAL": str(SWEEP),
                "TOKENWIRE_SHUTDOWN_GRACE": str(GRACE),
                "TOKENWIRE_CHECKPOINT_INTERVAL": "1",
                "TOKENWIRE_ORPHAN_TIMEOUT": "600",
                "TOKENWIRE_HEARTBEAT_INTERVAL": "1",
                "TOKENWIRE_COALESCE_MS": "0",
            }
        )
        group = Cluster(env, tmp_path_factory.mktemp("cluster-logs"), concurrency=8)
        try:
            group.heal(nodes=2, workers=1)
            yield group
        finally:
            group.close()


def start(base: str, params: dict[str, Any]) -> dict[str, str]:
    body = {"model": "fake:lorem", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(base + "/v1/chat", json={**body, "params": params}, timeout=10)
    assert response.status_code == 202, response.text
    return dict(response.json())


def snapshot(base: str, stream_id: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/v1/streams/{stream_id}", timeout=10)
    response.raise_for_status()
    return dict(response.json())


def all_events(base: str, stream_id: str) -> list[dict[str, Any]]:
    """The events logged so far (a plain poll: no waiting, not a reader)."""
    response = httpx.get(f"{base}/v1/streams/{stream_id}?after=0", timeout=10)
    response.raise_for_status()
    return list(response.json()["events"])


def test_killed_worker_unread_stream_ends_producer_lost(cluster: Cluster) -> None:
    cluster.heal(nodes=2, workers=1)
    a, b = cluster.nodes[:2]
    started = start(a.url, STALL)
    stream_id = started["stream_id"]
    worker = cluster.worker_of(stream_id)
    poll(lambda: snapshot(b.url, stream_id)["last_seq"] >= 3, 10, "two deltas")
    worker.kill()
    killed = time.monotonic()
    poll(lambda: snapshot(b.url, stream_id)["status"] == "failed", LEASE_TTL + 10, "swept")
    found_after = time.monotonic() - killed
    events = all_events(a.url, stream_id)
    assert_whole(events, "error")
    assert events[-1]["code"] == "producer_lost"
    assert found_after < LEASE_TTL + SWEEP + 3.0
    message = wait_stored(b.url, started["conversation_id"], "failed")
    assert message["error"]["code"] == "producer_lost"
    assert "".join(p["text"] for p in message["parts"]) == lorem(2)


def test_worker_sigterm_finishes_short_cancels_long_and_leaves_new_jobs(
    cluster: Cluster,
) -> None:
    cluster.heal(nodes=2, workers=1)
    a, b = cluster.nodes[:2]
    (worker,) = cluster.workers
    stalled = start(a.url, STALL)
    short = start(a.url, {"tokens": 10, "delay_ms": 100})  # 1 s, shorter than the grace
    for started in (stalled, short):
        assert cluster.worker_of(started["stream_id"]) is worker
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        readers = {
            "stalled": pool.submit(read, a.url, stalled["stream_id"]),
            "stalled_b": pool.submit(read, b.url, stalled["stream_id"]),
            "short": pool.submit(read, b.url, short["stream_id"]),
        }
        poll(lambda: snapshot(a.url, stalled["stream_id"])["last_seq"] >= 3, 10, "deltas")
        poll(lambda: snapshot(a.url, short["stream_id"])["last_seq"] >= 2, 10, "a delta")
        worker.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        late = start(a.url, {"tokens": 5})  # queued while the worker drains
        results = {name: f.result(timeout=GRACE + 20) for name, f in readers.items()}
        ended_after = time.monotonic() - signalled
    assert worker.popen.wait(timeout=20) == 0
    for name in ("stalled", "stalled_b"):
        events = results[name]
        assert_whole(events, "cancelled")
        assert events[-1]["reason"] == "shutdown"
    assert results["stalled"] == results["stalled_b"]
    assert_whole(results["short"], "finish")
    assert GRACE - 0.5 <= ended_after < GRACE + 15
    message = wait_stored(a.url, stalled["conversation_id"], "cancelled")
    assert message["error"] == {
        "code": "cancelled",
        "reason": "shutdown",
        "message": "the generation was stopped (shutdown)",
    }
    wait_stored(a.url, short["conversation_id"], "completed")
    # the generation queued during the shutdown was not run by the draining worker:
    # the next worker runs it in full
    assert snapshot(a.url, late["stream_id"])["status"] == "running"
    cluster.heal(nodes=2, workers=1)
    events = read(b.url, late["stream_id"])
    assert_whole(events, "finish")


def test_gateway_sigterm_answers_a_long_poll_on_a_remote_stream(cluster: Cluster) -> None:
    cluster.heal(nodes=2, workers=1)
    a = cluster.nodes[0]
    leaving = cluster.start_node()
    started = start(a.url, STALL)
    stream_id = started["stream_id"]
    cluster.worker_of(stream_id)
    poll(lambda: snapshot(a.url, stream_id)["last_seq"] >= 3, 10, "two deltas")
    after = snapshot(a.url, stream_id)["last_seq"]
    url = f"{leaving.url}/v1/streams/{stream_id}?after={after}&wait=25"
    client = redis.Redis.from_url(REDIS_URL)
    prefix = cluster.env["TOKENWIRE_LOG_PREFIX"]
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(httpx.get, url, timeout=30)
            # the long poll waits as a reader of the stream (counted in Redis)
            poll(lambda: bool(client.hgetall(f"{prefix}s:{stream_id}:readers")), 10, "waiting")
            leaving.popen.send_signal(signal.SIGTERM)
            response = answer.result(timeout=20)
    finally:
        client.close()
    assert response.status_code == 200, response.text
    assert response.json() == {"events": [], "last_seq": after, "status": "running"}
    leaving.popen.wait(timeout=20)
    cluster.nodes.remove(leaving)
    httpx.post(f"{a.url}/v1/streams/{stream_id}/cancel", timeout=10)
