"""A ``tokenwire serve`` process killed (SIGKILL) after the first byte of a turn whose
store writes it had not committed yet (issue #12, ``tokenwire.store.turns``).

The test holds PostgreSQL's ``messages`` table locked (``LOCK TABLE … IN EXCLUSIVE
MODE`` in an open transaction), so the process's turn writer cannot commit; it reads
the first tokens from another node, kills the producing process, releases the lock,
and the other node's lease sweep ends the stream with ``producer_lost`` and writes
the whole turn from the log: the conversation, the user message and the answer so far.

Every wait polls the HTTP API or the process; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support.cluster import Cluster, Process, poll, services_env, unavailable
from tests.support.servers import free_port
from tests.test_cluster import lorem

pytestmark = pytest.mark.slow

LEASE_TTL = 2.0
"""Seconds; short, for the sweep to find the dead process soon."""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    why_not = unavailable()
    if why_not is not None:
        pytest.skip(why_not)
    with services_env("firstbyte", tmp_path / "data") as env:
        env.update(
            {
                "TOKENWIRE_MODELS": '["fake:lorem"]',
                "TOKENWIRE_LEASE_TTL": str(LEASE_TTL),
                "TOKENWIRE_LEASE_SWEEP_INTERVAL": "0.5",
                "TOKENWIRE_ORPHAN_TIMEOUT": "600",
                "TOKENWIRE_COALESCE_MS": "0",
            }
        )
        yield env


def _start_producing_node(cluster: Cluster) -> Process:
    """A ``serve`` process that runs its generations itself (not ``--no-producers``)."""
    port = free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    node = Process(cluster._spawn("producer", args))
    node.url = f"http://127.0.0.1:{port}"
    cluster.nodes.append(node)

    def ready() -> bool:
        if not node.alive:
            raise RuntimeError(f"serve exited with {node.popen.returncode}")
        try:
            return httpx.get(node.url + "/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    poll(ready, 60, f"serve {node.url}")
    return node


def _messages(base: str, conversation_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base}/v1/conversations/{conversation_id}", timeout=10)
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return list(response.json()["messages"])


def test_killed_process_turn_is_restored_from_the_log(env: dict[str, str], tmp_path: Path) -> None:
    cluster = Cluster(env, tmp_path)
    runner = asyncio.Runner()
    try:
        producing = _start_producing_node(cluster)
        gateway = cluster.start_node()  # its lease sweep finds the dead producer
        dsn = env["TOKENWIRE_STORE_URL"].replace("postgresql+asyncpg://", "postgresql://")
        locker = runner.run(asyncpg.connect(dsn))
        runner.run(locker.execute("BEGIN; LOCK TABLE messages IN EXCLUSIVE MODE"))
        body = {
            "model": "fake:lorem",
            "messages": [{"role": "user", "content": "what is lorem?"}],
            "params": {"tokens": 50, "stall_after": 2},
        }
        response = httpx.post(producing.url + "/v1/chat", json=body, timeout=10)
        assert response.status_code == 202, response.text
        started = response.json()
        stream = f"{gateway.url}/v1/streams/{started['stream_id']}"
        poll(lambda: httpx.get(stream, timeout=10).json()["last_seq"] >= 3, 10, "two deltas")
        count = runner.run(locker.fetchval("SELECT count(*) FROM messages"))
        assert count == 0  # the turn is not written: its writer waits for the lock
        producing.kill()
        runner.run(locker.execute("COMMIT"))
        runner.run(locker.close())
        poll(lambda: httpx.get(stream, timeout=10).json()["status"] == "failed", 15, "swept")
        found: list[dict[str, Any]] = []

        def stored() -> bool:
            found[:] = _messages(gateway.url, started["conversation_id"])
            return bool(found) and found[-1]["status"] == "failed"

        poll(stored, 10, "the restored turn")
        user, answer = found
        assert user["role"] == "user" and user["parts"][0]["text"] == "what is lorem?"
        assert answer["id"] == started["message_id"]
        assert answer["error"]["code"] == "producer_lost"
        assert "".join(p["text"] for p in answer["parts"]) == lorem(2)
    finally:
        cluster.close()
        runner.close()
