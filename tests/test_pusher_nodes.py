"""The Pusher server on several nodes: real ``tokenwire serve`` processes sharing a
Redis stream log and Pusher bus (key prefix unique to this module) and a PostgreSQL
store (a database created for this module, dropped after it).

Clients connect to different nodes: what is published on one arrives on the
other, presence is one member list for all nodes, channel counts and
``terminate_connections`` span the nodes, and a node that dies (SIGKILL) has its
presence members removed by the others within ``3 x heartbeat`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pusher
import pytest
import redis

from tests.support.cluster import REDIS_URL, Process, pg_admin, poll, unavailable
from tests.support.servers import free_port
from tests.test_pusher_server import (
    ALICE,
    APP_ID,
    BOB,
    KEY,
    MASTER_B64,
    SECRET,
    TOKENS,
    as_logged,
    call,
    chat,
    collect_stream,
    conversation,
    join,
    log_events,
    payload,
    pusher_socket,
    signin,
    stored_answer,
    subscribe,
    text_of,
    unique,
    wait_for_subscriptions,
)
from tokenwire.settings import PusherApp

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WHY_NOT = unavailable()
HEARTBEAT = 5.0
"""Seconds: RedisBus's default heartbeat; a dead node's members go within 3 x that."""
START_TIMEOUT = 30.0


class Nodes:
    """``tokenwire serve`` processes (local producers) sharing one environment."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = {**os.environ, **env}
        self.workdir = workdir
        self.processes: list[Process] = []

    def start(self) -> Process:
        """Start a node; return once ``/readyz`` says 200 (Redis and the store answer)."""
        port = free_port()
        cmd = [sys.executable, "-m", "tokenwire", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--log-level", "warning"]
        with (self.workdir / f"node-{port}.log").open("wb") as out:
            popen = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        node = Process(popen, url=f"http://127.0.0.1:{port}")
        self.processes.append(node)

        def ready() -> bool:
            if not node.alive:
                raise RuntimeError(f"node exited with {popen.returncode}; see {self.workdir}")
            try:
                return httpx.get(node.url + "/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        poll(ready, START_TIMEOUT, f"node {node.url}")
        return node

    def close(self) -> None:
        for node in self.processes:
            if node.alive:
                node.popen.terminate()
        for node in self.processes:
            try:
                node.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.kill()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    if WHY_NOT is not None:
        pytest.skip(WHY_NOT)
    tag = uuid.uuid4().hex[:10]
    database = f"tw_pusher_{tag}"
    prefix = f"tw-test-{tag}:"
    asyncio.run(pg_admin(f'CREATE DATABASE "{database}"'))
    app = PusherApp(id=APP_ID, key=KEY, secret=SECRET, encryption_master_key_base64=MASTER_B64)
    env = {
        "TOKENWIRE_LOG_URL": REDIS_URL,
        "TOKENWIRE_LOG_PREFIX": prefix,
        "TOKENWIRE_QUEUE_NAME": f"tw-test-{tag}",
        "TOKENWIRE_STORE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
        "TOKENWIRE_DATA_DIR": str(tmp_path_factory.mktemp("pusher-nodes")),
        "TOKENWIRE_PUSHER_APPS": json.dumps([app.model_dump()]),
        "TOKENWIRE_AUTH_TOKENS": json.dumps(TOKENS),
        "TOKENWIRE_ALLOW_ANONYMOUS": "1",  # presence on conversations nobody owns
        "TOKENWIRE_DEFAULT_MODEL": "fake:echo",
        "TOKENWIRE_FAKE_PROVIDER": "1",
        "TOKENWIRE_MODELS": json.dumps(["fake:echo", "fake:lorem"]),
        "TOKENWIRE_COALESCE_MS": "0",
    }
    group = Nodes(env, tmp_path_factory.mktemp("pusher-node-logs"))
    try:
        group.start()
        group.start()
        yield group
    finally:
        group.close()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
        client.close()
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


@pytest.fixture
def a(nodes: Nodes) -> str:
    return nodes.processes[0].url


@pytest.fixture
def b(nodes: Nodes) -> str:
    return nodes.processes[1].url


def library_on(base: str) -> pusher.Pusher:
    return pusher.Pusher(
        app_id=APP_ID,
        key=KEY,
        secret=SECRET,
        host="127.0.0.1",
        port=int(base.rsplit(":", 1)[1]),
        ssl=False,
        encryption_master_key_base64=MASTER_B64,
    )


@pytest.fixture
def library_a(a: str) -> Iterator[pusher.Pusher]:
    client = library_on(a)
    yield client
    client._pusher_client.http.session.close()


@pytest.fixture
async def http_a(a: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=a, timeout=10) as client:
        yield client


@pytest.fixture
async def http_b(b: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=b, timeout=10) as client:
        yield client


async def test_library_publish_on_a_reaches_b(
    a: str,
    b: str,
    http_a: httpx.AsyncClient,
    http_b: httpx.AsyncClient,
    library_a: pusher.Pusher,
) -> None:
    public = unique("news-")
    private = f"private-conversation.{await conversation(http_a, ALICE)}"
    async with pusher_socket(b) as on_b, pusher_socket(a) as on_a:
        await subscribe(on_b, public)
        await subscribe(on_a, public)
        await join(http_b, on_b, private, ALICE)  # the conversation is in the shared store
        await call(library_a.trigger, public, "headline", {"n": 1})
        await call(library_a.trigger, private, "secret", {"n": 2})
        first = await on_b.next_on(public)
        assert (first["event"], payload(first)) == ("headline", {"n": 1})
        second = await on_b.next_on(private)
        assert (second["event"], payload(second)) == ("secret", {"n": 2})
        assert (await on_a.next_on(public))["event"] == "headline"
        # socket_id exclusion holds across nodes
        await call(library_a.trigger, public, "not-for-b", "x", on_b.socket_id)
        await call(library_a.trigger, public, "for-all", "y")
        assert (await on_b.next_on(public))["event"] == "for-all"
        assert (await on_a.next_on(public))["event"] == "not-for-b"


async def test_client_events_cross_nodes(
    a: str, b: str, http_a: httpx.AsyncClient, http_b: httpx.AsyncClient
) -> None:
    channel = f"private-conversation.{await conversation(http_a, ALICE)}"
    async with pusher_socket(a) as on_a, pusher_socket(b) as on_b:
        await join(http_a, on_a, channel, ALICE)
        await join(http_b, on_b, channel, ALICE)
        await on_a.send("client-typing", {"from": "a"}, channel)
        frame = await on_b.next_on(channel)
        assert (frame["event"], payload(frame)) == ("client-typing", {"from": "a"})
        await on_a.ping()  # not echoed to the sender by the other node either
    presence = f"presence-conversation.{await conversation(http_a, None)}"
    async with pusher_socket(a) as alice, pusher_socket(b) as bob:
        await join(http_a, alice, presence, ALICE)
        await join(http_b, bob, presence, BOB)
        await alice.send("client-typing", {"from": "a"}, presence)
        while (frame := await bob.next_on(presence))["event"] != "client-typing":
            pass  # member_added of alice's join may come first
        assert frame["user_id"] == "alice"  # the sender, carried to the other node


async def test_conversation_stream_started_on_a_reaches_b(
    a: str, b: str, http_a: httpx.AsyncClient, http_b: httpx.AsyncClient
) -> None:
    cid = await conversation(http_a, ALICE)
    channel = f"private-conversation.{cid}"
    async with pusher_socket(b) as on_b:
        await join(http_b, on_b, channel, ALICE)
        started = await chat(
            http_a,
            ALICE,
            conversation_id=cid,
            model="fake:lorem",
            params={"tokens": 40, "delay_ms": 20},
        )
        events = await collect_stream(on_b, channel)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "start" and events[-1]["type"] == "finish"
    assert all(e["stream_id"] == started["stream_id"] for e in events)
    assert as_logged(events) == await log_events(http_b, started["stream_id"], ALICE)
    assert len(text_of(events).split()) == 40
    assert text_of(events) == await stored_answer(http_b, cid, ALICE)


async def test_presence_is_one_member_list_across_nodes(
    a: str, b: str, http_a: httpx.AsyncClient, http_b: httpx.AsyncClient
) -> None:
    channel = f"presence-conversation.{await conversation(http_a, None)}"
    async with pusher_socket(b) as bob:
        async with pusher_socket(a) as alice:
            assert (await join(http_a, alice, channel, ALICE))["presence"]["ids"] == ["alice"]
            members = (await join(http_b, bob, channel, BOB))["presence"]
            assert sorted(members["ids"]) == ["alice", "bob"] and members["count"] == 2
            added = await alice.next_on(channel)
            assert added["event"] == "pusher_internal:member_added"
            assert payload(added) == {"user_id": "bob", "user_info": {"name": "bob"}}
        removed = await bob.next_on(channel)  # alice's connection on A closed
        assert removed["event"] == "pusher_internal:member_removed"
        assert payload(removed) == {"user_id": "alice"}
        async with pusher_socket(a) as alice:
            members = (await join(http_a, alice, channel, ALICE))["presence"]
            assert sorted(members["ids"]) == ["alice", "bob"]
            assert payload(await bob.next_on(channel))["user_id"] == "alice"
            await bob.ws.close()
            removed = await alice.next_on(channel)
            assert removed["event"] == "pusher_internal:member_removed"
            assert payload(removed) == {"user_id": "bob"}


async def test_channel_counts_span_nodes(
    a: str,
    b: str,
    http_a: httpx.AsyncClient,
    http_b: httpx.AsyncClient,
    library_a: pusher.Pusher,
) -> None:
    public = unique("counted-")
    presence = f"presence-conversation.{await conversation(http_a, None)}"
    async with pusher_socket(a) as one, pusher_socket(b) as two, pusher_socket(b) as three:
        for sock in (one, two, three):
            await subscribe(sock, public)
        await join(http_a, one, presence, ALICE)
        await join(http_b, two, presence, BOB)
        await join(http_b, three, presence, BOB)
        info = await call(library_a.channel_info, public, ["subscription_count"])
        assert info == {"occupied": True, "subscription_count": 3}
        info = await call(library_a.channel_info, presence, ["user_count", "subscription_count"])
        assert info == {"occupied": True, "user_count": 2, "subscription_count": 3}
        listed = await call(library_a.channels_info, presence, ["user_count"])
        assert listed == {"channels": {presence: {"user_count": 2}}}
        users = await call(library_a.users_info, presence)
        assert sorted(u["id"] for u in users["users"]) == ["alice", "bob"]
    await wait_for_subscriptions(library_a, public, 0)


async def test_terminate_on_a_closes_alice_on_b(
    a: str, b: str, http_b: httpx.AsyncClient, library_a: pusher.Pusher
) -> None:
    async with pusher_socket(b) as alice, pusher_socket(b) as bob:
        await signin(http_b, alice, ALICE)
        await signin(http_b, bob, BOB)
        client = library_a._pusher_client
        request = pusher.http.Request(
            client, "POST", f"/apps/{APP_ID}/users/alice/terminate_connections", {}
        )
        async with httpx.AsyncClient(base_url=a, timeout=10) as http_a:
            response = await http_a.post(
                request.signed_path, content=request.body, headers=request.headers
            )
        assert response.status_code == 200, response.text
        close_code, frames = await alice.closed()
        assert close_code == 4009
        assert [(f["event"], f["data"]["code"]) for f in frames] == [("pusher:error", 4009)]
        await bob.ping()


async def test_dead_nodes_presence_members_are_removed(
    nodes: Nodes, a: str, http_a: httpx.AsyncClient, library_a: pusher.Pusher
) -> None:
    doomed = nodes.start()
    channel = f"presence-conversation.{await conversation(http_a, None)}"
    async with pusher_socket(a) as alice:
        await join(http_a, alice, channel, ALICE)
        async with (
            pusher_socket(doomed.url) as bob,
            httpx.AsyncClient(base_url=doomed.url, timeout=10) as http_doomed,
        ):
            await join(http_doomed, bob, channel, BOB)
            assert payload(await alice.next_on(channel))["user_id"] == "bob"
            doomed.kill()  # SIGKILL: no shutdown code runs
            killed_at = time.monotonic()
            removed = await alice.expect(
                "pusher_internal:member_removed", channel, timeout=3 * HEARTBEAT + 10
            )
            took = time.monotonic() - killed_at
        assert payload(removed) == {"user_id": "bob"}
        # dead once its last renewal (score: renewal + 3 x heartbeat) is past, then
        # swept by a live node within one more heartbeat
        assert took <= 4 * HEARTBEAT + 3, f"member_removed {took:.1f} s after the kill"
        assert await call(library_a.users_info, channel) == {"users": [{"id": "alice"}]}
        info = await call(library_a.channel_info, channel, ["subscription_count"])
        assert info == {"occupied": True, "subscription_count": 1}
        await alice.ping()
