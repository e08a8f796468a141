"""Unmodified ``pysher`` (the Python Pusher WebSocket client, which asks for protocol 6)
against a real tokenwire server on 127.0.0.1: it connects, authorizes a private
conversation channel through ``/broadcasting/auth``, and receives a stream's events.

pysher runs its own threads; the test waits on ``threading.Event``/``queue.Queue`` with
deadlines, never sleeps.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pysher
import pytest

from tests.support.servers import uvicorn_thread
from tokenwire import Settings, create_app
from tokenwire.settings import PusherApp

pytestmark = pytest.mark.slow

APP_ID, KEY, SECRET = "1001", "key1", "secret1"
TOKENS = {"token-alice": "alice", "token-bob": "bob"}
WAIT = 20.0
"""Seconds to wait for one expected observation."""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(
        fake_provider=True,
        data_dir=Path(tmp_path_factory.mktemp("data")),
        default_model="fake:echo",
        models=["fake:echo"],
        pusher_apps=[PusherApp(id=APP_ID, key=KEY, secret=SECRET)],
        auth_tokens=TOKENS,
        coalesce_ms=0,
    )
    with uvicorn_thread(create_app(settings)) as url:
        yield url


@contextlib.contextmanager
def pysher_client(base: str, token: str) -> Iterator[pysher.Pusher]:
    """A connected ``pysher.Pusher`` that authorizes private channels as ``token``'s user."""
    client = pysher.Pusher(
        KEY,
        secure=False,
        port=urlsplit(base).port,
        custom_host="127.0.0.1",
        auth_endpoint=base + "/broadcasting/auth",
        auth_endpoint_headers={"Authorization": f"Bearer {token}"},
    )
    established = threading.Event()
    client.connection.bind("pusher:connection_established", lambda _data: established.set())
    client.connect()
    try:
        assert established.wait(WAIT), "pysher did not connect"
        yield client
    finally:
        client.disconnect(timeout=WAIT)


def chat(base: str, token: str, text: str, conversation_id: str | None = None) -> dict[str, Any]:
    """``POST /v1/chat`` (202): the stream's ids."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    response = httpx.post(
        base + "/v1/chat", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


def test_pysher_connects_with_protocol_6(base: str) -> None:
    assert pysher.Pusher.protocol == 6  # the unmodified client's own choice
    with pysher_client(base, "token-alice") as client:
        assert client.connection.state == "connected"
        assert "protocol=6" in client.url
        assert client.connection.socket_id.count(".") == 1


def test_pysher_receives_a_streams_events(base: str) -> None:
    conversation_id = str(chat(base, "token-alice", "first")["conversation_id"])
    channel_name = f"private-conversation.{conversation_id}"
    received: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    ponged = threading.Event()
    with pysher_client(base, "token-alice") as client:
        # pysher sends pusher:subscribe before it creates the Channel object, so a
        # quick pusher_internal:subscription_succeeded can arrive with nothing bound
        # yet and be dropped. A ping sent after the subscribe is answered after it
        # (one connection's messages are handled in order): its pong means the
        # server holds the subscription.
        client.connection.bind("pusher:pong", lambda _data: ponged.set())
        channel = client.subscribe(channel_name)
        for name in ("start", "text-delta", "usage", "finish", "error"):
            channel.bind(name, lambda data, name=name: received.put((name, json.loads(data))))
        client.connection.send_event("pusher:ping", {})
        assert ponged.wait(WAIT), "no pong after the subscribe"
        stream = chat(base, "token-alice", "hello pysher", conversation_id)
        events = []
        while not events or events[-1][0] not in ("finish", "error"):
            events.append(received.get(timeout=WAIT))
    assert events[0][0] == "start"
    assert events[-1][0] == "finish"
    assert {data["stream_id"] for _, data in events} == {stream["stream_id"]}
    assert [data["seq"] for _, data in events] == list(range(1, len(events) + 1))
    text = "".join(data["delta"] for name, data in events if name == "text-delta")
    assert text == "hello pysher"


def test_pysher_cannot_authorize_another_users_conversation(base: str) -> None:
    conversation_id = str(chat(base, "token-alice", "mine")["conversation_id"])
    with pysher_client(base, "token-bob") as client, pytest.raises(AssertionError, match="auth"):
        client.subscribe(f"private-conversation.{conversation_id}")  # its auth POST is refused
