"""Behind real nginx (the configuration of ``docs/deploy.md``): ``tokenwire serve`` in a
subprocess, nginx in the foreground in front of it, clients talking to nginx only.

- SSE is not held back: with ``gzip on`` for ``text/event-stream`` and no
  ``proxy_buffering off``, the first event of a 2 s stream arrives in under 200 ms
  (tokenwire's ``X-Accel-Buffering: no`` turns nginx's buffering off; gzip then
  flushes every chunk).
- Heartbeats (``: ping`` every second here) keep ``proxy_read_timeout 5s`` from
  cutting a stream whose first token comes after 8 s; the control location, whose
  timeout is shorter than the heartbeat interval, is cut without a terminal event.
- pusher-js connects through nginx's WebSocket upgrade, subscribes to a
  conversation's private channel (authorised through nginx) and receives a stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.nginx import nginx_in_front
from tests.support.node import node_with_pusher
from tests.support.servers import tokenwire_process
from tests.support.sse import TERMINAL
from tests.test_pusher_clients import APP_ID, KEY, SECRET, connect, node_clients, subscribe
from tokenwire.protocol.sse import SSEDecoder

pytestmark = pytest.mark.slow

TOKEN = "token-alice"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "TOKENWIRE_DATA_DIR": str(tmp_path_factory.mktemp("serve")),
        "TOKENWIRE_FAKE_PROVIDER": "1",
        "TOKENWIRE_DEFAULT_MODEL": "fake:echo",
        "TOKENWIRE_HEARTBEAT_INTERVAL": "1",
        "TOKENWIRE_COALESCE_MS": "0",
        "TOKENWIRE_AUTH_TOKENS": json.dumps({TOKEN: "alice"}),
        "TOKENWIRE_PUSHER_APPS": json.dumps([{"id": APP_ID, "key": KEY, "secret": SECRET}]),
    }
    with tokenwire_process(
        "serve", "--log-level", "warning", env=env, ready_path="/healthz"
    ) as url:
        yield url


@pytest.fixture(scope="module")
def proxy(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with nginx_in_front(upstream, tmp_path_factory.mktemp("nginx")) as url:
        yield url


Timed = list[tuple[float, dict[str, Any]]]
"""``[(seconds since the request was sent, event)]``."""


def timed_sse(base: str, body: dict[str, Any]) -> tuple[Timed, int, bool]:
    """``POST /v1/chat`` as SSE through ``base``: the events with their arrival times,
    the number of ``: ping`` comments, and whether the body was cut (incomplete
    chunked encoding) before a terminal event. Checks that nginx gzip-compressed it."""
    events: Timed = []
    pings = 0
    decoder = SSEDecoder()
    with httpx.Client(base_url=base, timeout=30) as client:
        sent = time.monotonic()
        with client.stream(
            "POST", "/v1/chat", json=body, headers={**AUTH, "accept": "text/event-stream"}
        ) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers.get("content-encoding") == "gzip"  # nginx compressed it
            try:
                for chunk in response.iter_bytes():  # decompressed, as a browser does
                    for sse in decoder.decode(chunk):
                        if sse.comment is not None:
                            pings += 1
                            continue
                        event = json.loads(sse.data)
                        events.append((time.monotonic() - sent, event))
                        if event["type"] in TERMINAL:
                            return events, pings, False
            except httpx.RemoteProtocolError:
                return events, pings, True
    return events, pings, False


def lorem(tokens: int, delay_ms: float) -> dict[str, Any]:
    return {
        "model": "fake:lorem",
        "messages": [{"role": "user", "content": "hi"}],
        "params": {"tokens": tokens, "delay_ms": delay_ms},
    }


def test_first_event_through_gzip_nginx_in_under_200ms(proxy: str) -> None:
    timed_sse(proxy, lorem(1, 0))  # warm the path (store, connection pool)
    events, _, _ = timed_sse(proxy, lorem(20, 100))  # ~2 s
    first_at, first = events[0]
    end_at, end = events[-1]
    assert first["type"] == "start"
    assert first_at < 0.2, f"first event after {first_at:.3f} s"
    assert end["type"] == "finish" and end_at >= 1.9
    deltas = [at for at, e in events if e["type"] == "text-delta"]
    assert len(deltas) == 20
    assert deltas[0] < 0.4 and deltas[9] < end_at - 0.5  # spread over time, not one burst


def test_heartbeats_outlive_proxy_read_timeout(proxy: str) -> None:
    events, pings, cut = timed_sse(proxy, lorem(1, 8000))
    assert not cut
    kinds = [e["type"] for _, e in events]
    assert kinds == ["start", "text-delta", "usage", "finish"]
    assert events[1][0] >= 7.5  # the first token came after nginx's 5 s read timeout
    assert pings >= 6


def test_without_heartbeats_in_time_nginx_cuts_the_stream(proxy: str) -> None:
    """The control: ``/short/`` times out after 500 ms, less than the heartbeat interval."""
    events, pings, cut = timed_sse(proxy + "/short", lorem(1, 3000))
    assert cut and [e["type"] for _, e in events] == ["start"] and pings == 0


def test_pusher_js_through_nginx_websocket_upgrade(proxy: str) -> None:
    node = node_with_pusher()
    started = httpx.post(
        proxy + "/v1/chat",
        json={"model": "fake:echo", "messages": [{"role": "user", "content": "hello"}]},
        headers=AUTH,
        timeout=10,
    )
    assert started.status_code == 202, started.text
    conversation = started.json()["conversation_id"]
    with node_clients(node, proxy) as nc:
        connect(nc, "alice", TOKEN, via="pusher")
        channel = subscribe(
            nc, "alice", "private", f"conversation.{conversation}", events=["text-delta", "finish"]
        )
        nc.expect("subscribed", client="alice", channel=channel)
        again = httpx.post(
            proxy + "/v1/chat",
            json={
                "model": "fake:echo",
                "conversation_id": conversation,
                "messages": [{"role": "user", "content": "through nginx"}],
            },
            headers=AUTH,
            timeout=10,
        )
        assert again.status_code == 202, again.text
        stream_id = again.json()["stream_id"]
        finish = nc.expect("event", client="alice", channel=channel, event="finish")
        assert finish["data"]["stream_id"] == stream_id
        deltas = nc.seen("event", client="alice", channel=channel, event="text-delta")
        text = "".join(d["data"]["delta"] for d in deltas if d["data"]["stream_id"] == stream_id)
        assert text == "through nginx"


def test_nginx_config_is_the_documented_one() -> None:
    """docs/deploy.md shows the configuration these tests run (its directives)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    for directive in (
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "map $http_upgrade $connection_upgrade",
        "proxy_read_timeout",
        "X-Accel-Buffering",
    ):
        assert directive in doc, directive
