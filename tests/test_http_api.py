"""The native HTTP API against a real server on 127.0.0.1 (uvicorn in a thread)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.servers import uvicorn_thread
from tests.support.sse import read_sse, text_of
from tokenwire import Settings, create_app
from tokenwire.protocol.sse import SSEDecoder


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir: Path = tmp_path_factory.mktemp("data")
    settings = Settings(
        fake_provider=True,
        data_dir=data_dir,
        heartbeat_interval=0.2,
        default_model="fake:echo",
        retry_backoff=0.01,
    )
    app = create_app(settings)
    with uvicorn_thread(app) as url:
        yield url


@pytest.fixture
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=30) as c:
        yield c


def start(client: httpx.Client, **body: Any) -> dict[str, Any]:
    body.setdefault("messages", [{"role": "user", "content": "hello"}])
    response = client.post("/v1/chat", json=body)
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def test_post_chat_streams_sse_with_the_contract_framing(client: httpx.Client) -> None:
    events, _ = read_sse(
        client,
        "POST",
        "/v1/chat",
        json={"model": "fake:think", "messages": [{"role": "user", "content": "naïve café ☕"}]},
        headers={"accept": "text/event-stream"},
    )
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "start" and events[-1]["type"] == "finish"
    assert text_of(events) == "naïve café ☕"
    assert "".join(e["delta"] for e in events if e["type"] == "reasoning-delta") == "Let me think."


def test_202_then_events_snapshot_and_history(client: httpx.Client) -> None:
    started = start(client, model="fake:echo")
    assert set(started) == {
        "stream_id",
        "message_id",
        "conversation_id",
        "events_url",
        "cancel_url",
    }
    events, _ = read_sse(client, "GET", started["events_url"])
    assert events[0]["message_id"] == started["message_id"]
    snapshot = client.get(f"/v1/streams/{started['stream_id']}").json()
    assert snapshot["status"] == "completed" and snapshot["text"] == "hello"
    assert snapshot["last_seq"] == events[-1]["seq"] and snapshot["finish_reason"] == "stop"
    conversation = client.get(f"/v1/conversations/{started['conversation_id']}").json()
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"]
    assert conversation["messages"][1]["parts"] == [{"type": "text", "text": "hello"}]
    assert conversation["messages"][1]["status"] == "completed"


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    k=st.integers(min_value=0, max_value=40),
    use_header=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=30),
)
def test_reconnect_resumes_exactly_after_k(
    client: httpx.Client, k: int, use_header: bool, cuts: list[int]
) -> None:
    """Drop after k events, resume: events k+1 … end, none lost, none repeated, however
    the resumed bytes are split into reads (multi-byte text included); a resume after
    the terminal event gets the terminal event again."""
    started = start(client, model="fake:lorem", params={"tokens": 40, "delay_ms": 2, "text": TEXT})
    url = started["events_url"]
    first, _ = read_sse(client, "GET", url, stop_after=k) if k else ([], [])
    last = first[-1]["seq"] if first else 0
    resume = (
        {"headers": {"last-event-id": str(last)}} if use_header else {"params": {"after": last}}
    )
    with client.stream("GET", url, **resume) as response:  # type: ignore[arg-type]
        raw = response.read()
    decoder = SSEDecoder()
    rest = []
    for a, b in itertools.pairwise([0, *sorted(cuts), len(raw)]):
        rest += [json.loads(e.data) for e in decoder.decode(raw[a:b]) if e.comment is None]
    full, _ = read_sse(client, "GET", url)
    if first and first[-1]["seq"] == full[-1]["seq"]:  # resumed after the end: the
        assert rest == [full[-1]]  # terminal event is replayed, never an empty body
        rest = []
    combined = first + rest
    assert combined == full
    assert [e["seq"] for e in combined] == list(range(1, len(full) + 1))
    assert text_of(combined) == TEXT


TEXT = " ".join(f"wörd{i}·🎈" for i in range(40))


def test_cancel_reaches_every_reader_and_stores_partial(client: httpx.Client) -> None:
    started = start(client, model="fake:lorem", params={"stall_after": 3})
    url = started["events_url"]
    # Wait (by reading) until the three deltas are in the log.
    seen, _ = read_sse(client, "GET", url, stop_after=2)
    while text_of(seen).count(" ") < 2:
        seen = client.get(
            f"/v1/streams/{started['stream_id']}", params={"after": 0, "wait": 5}
        ).json()["events"]
    response = client.post(started["cancel_url"])
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    assert client.post(started["cancel_url"]).json()["cancel_requested"] is False
    for _ in range(2):
        events, _ = read_sse(client, "GET", url)
        assert events[-1]["type"] == "cancelled" and events[-1]["reason"] == "user"
        assert text_of(events) == "lorem ipsum dolor"
    conversation = client.get(f"/v1/conversations/{started['conversation_id']}").json()
    message = conversation["messages"][-1]
    assert message["status"] == "cancelled"
    assert message["parts"] == [{"type": "text", "text": "lorem ipsum dolor"}]


def test_new_message_supersedes_the_running_answer(client: httpx.Client) -> None:
    first = start(client, model="fake:lorem", params={"stall_after": 1})
    second = start(
        client,
        model="fake:echo",
        conversation_id=first["conversation_id"],
        messages=[{"role": "user", "content": "again"}],
    )
    events, _ = read_sse(client, "GET", first["events_url"])
    assert events[-1] == {**events[-1], "type": "cancelled", "reason": "superseded"}
    events, _ = read_sse(client, "GET", second["events_url"])
    assert text_of(events) == "again"
    roles = [
        m["role"]
        for m in client.get(f"/v1/conversations/{first['conversation_id']}").json()["messages"]
    ]
    assert roles == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"fail_before": "error"}, "provider_error"),
        ({"fail_before": "rate_limited"}, "provider_rate_limited"),
        ({"fail_after": 0}, "provider_error"),
        ({"fail_after": 3}, "provider_error"),
        ({"crash_after": 2}, "internal_error"),
    ],
)
def test_failures_end_with_exactly_one_error(
    client: httpx.Client, params: dict[str, Any], code: str
) -> None:
    events, _ = read_sse(
        client,
        "POST",
        "/v1/chat",
        json={
            "model": "fake:lorem",
            "messages": [{"role": "user", "content": "x"}],
            "params": params,
        },
        headers={"accept": "text/event-stream"},
    )
    kinds = [e["type"] for e in events]
    assert kinds.count("error") == 1 and kinds[-1] == "error" and "finish" not in kinds
    assert events[-1]["code"] == code
    assert "Traceback" not in events[-1]["message"] and "fake crash" not in events[-1]["message"]


def test_heartbeat_comments_while_silent(client: httpx.Client) -> None:
    started = start(client, model="fake:lorem", params={"stall_after": 1})
    with client.stream("GET", started["events_url"]) as response:
        assert response.headers["cache-control"] == "no-cache, no-transform"
        assert response.headers["x-accel-buffering"] == "no"
        body = b""
        for chunk in response.iter_raw():
            body += chunk
            if b": ping\n\n" in body:
                break
    client.post(started["cancel_url"])
    assert body.startswith(b"retry: 1000\n\nid: 1\nevent: start\n")


@pytest.mark.parametrize("resume", [None, "1"])
def test_native_stream_sends_retry_once_at_the_start(
    client: httpx.Client, resume: str | None
) -> None:
    """``retry: 1000`` first (EventSource then reconnects within 1 s), never again."""
    started = start(client, model="fake:lorem", params={"tokens": 5})
    headers = {} if resume is None else {"last-event-id": resume}
    body = client.get(started["events_url"], headers=headers).content
    first = b"id: 1\n" if resume is None else b"id: 2\n"
    assert body.startswith(b"retry: 1000\n\n" + first)
    assert body.count(b"retry:") == 1 and body.endswith(b"\n\n")
    posted = client.post(
        "/v1/chat",
        json={"model": "fake:echo", "messages": [{"role": "user", "content": "hi"}]},
        headers={"accept": "text/event-stream"},
    ).content
    assert posted.startswith(b"retry: 1000\n\nid: 1\nevent: start\n")
    assert posted.count(b"retry:") == 1


def test_long_poll(client: httpx.Client) -> None:
    started = start(client, model="fake:lorem", params={"tokens": 3})
    sid = started["stream_id"]
    events: list[dict[str, Any]] = []
    status = "running"
    while status == "running":
        page = client.get(f"/v1/streams/{sid}", params={"after": len(events), "wait": 5}).json()
        events += page["events"]
        status = page["status"]
        assert page["last_seq"] >= len(events)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "finish"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user"}]}, "content"),
        ({"model": "nocolon", "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "nope:x", "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"messages": [{"role": "user", "content": "x"}], "extra": 1}, "extra"),
    ],
)
def test_invalid_bodies_get_422_naming_the_field(
    client: httpx.Client, body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/chat", json=body)
    assert response.status_code == 422
    assert field in str(response.json()["detail"])


def test_errors_are_4xx_not_500(client: httpx.Client) -> None:
    assert client.get("/v1/streams/unknown/events").status_code == 404
    assert client.get("/v1/streams/unknown").status_code == 404
    assert client.post("/v1/streams/unknown/cancel").status_code == 404
    assert client.get("/v1/conversations/unknown").status_code == 404
    assert client.delete("/v1/conversations/unknown").status_code == 404
    bad = client.post(
        "/v1/chat", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 422
    started = start(client, model="fake:echo")
    assert client.get(started["events_url"], headers={"last-event-id": "abc"}).status_code == 400
    assert client.get(started["events_url"], params={"after": -1}).status_code == 422
    huge = client.post(
        "/v1/chat", json={"messages": [{"role": "user", "content": "x" * 2_000_000}]}
    )
    assert huge.status_code == 413
    assert (
        client.post(
            "/v1/chat",
            json={"conversation_id": "nope", "messages": [{"role": "user", "content": "x"}]},
        ).status_code
        == 404
    )


def test_operations_endpoints(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert "tokenwire_log_streams" in client.get("/metrics").text
    models = client.get("/v1/models").json()
    assert models["default"] == "fake:echo" and "local:smollm2" in [m["id"] for m in models["data"]]


def test_delete_conversation(client: httpx.Client) -> None:
    started = start(client, model="fake:echo")
    read_sse(client, "GET", started["events_url"])
    cid = started["conversation_id"]
    assert cid in [c["id"] for c in client.get("/v1/conversations").json()["data"]]
    assert client.delete(f"/v1/conversations/{cid}").status_code == 204
    assert client.get(f"/v1/conversations/{cid}").status_code == 404


@pytest.mark.anyio
async def test_expired_stream_answers_410_and_store_keeps_message(tmp_path: Path) -> None:
    from tokenwire import Tokenwire
    from tokenwire.providers import Message

    tw = Tokenwire(Settings(fake_provider=True, data_dir=tmp_path, retention=0.0))
    app = create_app(tokenwire=tw)
    async with tw:
        stream = await tw.start("fake:echo", [Message("user", "kept")])
        await stream.wait()
        await tw.wait_idle()  # the producer stores the message after logging the terminal
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tw") as client:
            assert (await client.get(f"/v1/streams/{stream.stream_id}/events")).status_code == 410
            assert (await client.get(f"/v1/streams/{stream.stream_id}")).status_code == 410
            conversation = (await client.get(f"/v1/conversations/{stream.conversation_id}")).json()
    assert conversation["messages"][-1]["parts"] == [{"type": "text", "text": "kept"}]
