"""Server-side tools and the agent loop through a real ``tokenwire serve --tools`` process
on PostgreSQL and Redis, over HTTP: native SSE, the AI SDK's ``/api/chat``, errors,
timeouts, ``max_steps``, resume, the next turn's history, and ownership."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cluster import Cluster, services_env, unavailable
from tests.support.servers import tokenwire_process
from tests.support.sse import read_sse, text_of

ALICE = {"Authorization": "Bearer token-of-alice"}
BOB = {"Authorization": "Bearer token-of-bob"}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir: Path = tmp_path_factory.mktemp("agent")
    with services_env("agent", data_dir) as env:
        env["TOKENWIRE_AUTH_TOKENS"] = json.dumps(
            {"token-of-alice": "alice", "token-of-bob": "bob"}
        )
        env["TOKENWIRE_TOOL_TIMEOUT"] = "1"
        with tokenwire_process(
            "serve", "--tools", "tests.support.tools:TOOLS", env=env, ready_path="/v1/models"
        ) as url:
            yield url


@pytest.fixture
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=30, headers=ALICE) as c:
        yield c


def chat(
    client: httpx.Client, tools: list[str], text: str = "what time is it?", **body: Any
) -> list[dict[str, Any]]:
    body = {
        "model": "fake:tools",
        "messages": [{"role": "user", "content": text}],
        "tools": tools,
        **body,
    }
    events, _ = read_sse(
        client, "POST", "/v1/chat", json=body, headers={"accept": "text/event-stream"}
    )
    return events


def kinds(events: list[dict[str, Any]]) -> list[str]:
    """Event types, without ``usage`` and with runs of text deltas as one."""
    out: list[str] = []
    for event in events:
        kind = event["type"]
        if kind != "usage" and not (kind == "text-delta" and out and out[-1] == kind):
            out.append(kind)
    return out


def ai_sdk_body(chat_id: str, tools: list[str], text: str = "go") -> dict[str, Any]:
    """What ``DefaultChatTransport`` POSTs for a new chat, plus tokenwire's fields."""
    return {
        "id": chat_id,
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]}],
        "trigger": "submit-message",
        "model": "fake:tools",
        "tools": tools,
    }


def results(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "tool-result"]


def test_two_step_agent_over_native_sse(client: httpx.Client) -> None:
    events = chat(client, ["get_time"])
    assert kinds(events) == [
        "start",
        "step-start",
        "tool-call-start",
        "tool-call-delta",
        "tool-call",
        "tool-result",
        "step-finish",
        "step-start",
        "text-delta",
        "step-finish",
        "finish",
    ]
    call = next(e for e in events if e["type"] == "tool-call")
    (result,) = results(events)
    assert call["name"] == "get_time" and result["tool_call_id"] == call["tool_call_id"]
    assert result["is_error"] is False and TIME.match(result["output"])
    assert text_of(events) == result["output"]
    steps = [e for e in events if e["type"] == "step-finish"]
    assert [s["step"] for s in steps] == [1, 2]
    assert [s["finish_reason"] for s in steps] == ["tool_calls", "stop"]
    # parts never collide across steps
    text_parts = {e["part"] for e in events if e["type"] == "text-delta"}
    assert len({call["part"], result["part"], *text_parts}) == 3
    finish = events[-1]
    assert finish["finish_reason"] == "stop"
    total = sum(s["usage"]["output_tokens"] for s in steps)
    assert finish["usage"]["output_tokens"] == total > 0


def test_two_step_agent_over_ai_sdk(client: httpx.Client) -> None:
    response = client.post("/api/chat", json=ai_sdk_body("agent-chat-1", ["get_time"]))
    assert response.status_code == 200, response.text
    frames = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    types = [c["type"] for c in chunks if c["type"] not in ("text-delta", "tool-input-delta")]
    assert types == [
        "start",
        "start-step",
        "tool-input-start",
        "tool-input-available",
        "tool-output-available",
        "finish-step",
        "start-step",
        "text-start",
        "text-end",
        "finish-step",
        "finish",
    ]
    output = next(c for c in chunks if c["type"] == "tool-output-available")
    assert TIME.match(output["output"])
    text = "".join(c["delta"] for c in chunks if c["type"] == "text-delta")
    assert text == output["output"]


def test_tool_exception_is_an_error_result_and_the_loop_goes_on(client: httpx.Client) -> None:
    events = chat(client, ["explode"])
    (result,) = results(events)
    assert result["is_error"] is True
    assert "RuntimeError" in result["output"] and "secret" not in result["output"]
    assert text_of(events) == result["output"]  # step 2 saw the error result
    assert events[-1]["type"] == "finish" and events[-1]["finish_reason"] == "stop"


def test_ai_sdk_tool_error_chunk(client: httpx.Client) -> None:
    response = client.post("/api/chat", json=ai_sdk_body("agent-chat-error", ["explode"]))
    assert response.status_code == 200, response.text
    chunks = [
        json.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: {")
    ]
    error = next(c for c in chunks if c["type"] == "tool-output-error")
    assert "RuntimeError" in error["errorText"]
    assert not any(c["type"] == "tool-output-available" for c in chunks)


def test_tool_timeout_is_an_error_result(client: httpx.Client) -> None:
    events = chat(client, ["wait_forever"])
    (result,) = results(events)
    assert result["is_error"] is True and "timed out" in result["output"]
    assert events[-1]["type"] == "finish"


def test_invalid_arguments_are_an_error_result(client: httpx.Client) -> None:
    events = chat(client, ["add"], params={"tool_args": {"a": "not a number"}})
    (result,) = results(events)
    assert result["is_error"] is True and result["output"].startswith(
        "invalid arguments for add: a:"
    )
    good = chat(client, ["add"], params={"tool_args": {"a": 40, "b": 2}})
    assert results(good)[0] == {**results(good)[0], "output": 42, "is_error": False}


def test_max_steps_reached_ends_after_the_tools(client: httpx.Client) -> None:
    events = chat(client, ["get_time"], max_steps=1)
    assert kinds(events)[-3:] == ["tool-result", "step-finish", "finish"]
    assert kinds(events).count("step-start") == 1
    assert events[-1]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tools": ["nope"]}, "tools[0]"),
        ({"tools": ["get_time"], "max_steps": 0}, "max_steps"),
        ({"tools": ["get_time"], "max_steps": 51}, "max_steps"),
    ],
)
def test_bad_tools_request_is_422(client: httpx.Client, body: dict[str, Any], field: str) -> None:
    payload = {"model": "fake:tools", "messages": [{"role": "user", "content": "x"}], **body}
    response = client.post("/v1/chat", json=payload)
    assert response.status_code == 422, response.text
    assert field in response.text
    if body["tools"] == ["nope"]:
        assert "nope" in response.text


def test_unknown_tool_on_ai_sdk_is_422(client: httpx.Client) -> None:
    response = client.post("/api/chat", json=ai_sdk_body("agent-chat-unknown", ["nope"]))
    assert response.status_code == 422
    assert "nope" in response.json()["detail"]


def test_local_model_refuses_tools(client: httpx.Client) -> None:
    payload = {
        "model": "local:smollm2",
        "messages": [{"role": "user", "content": "x"}],
        "tools": ["get_time"],
    }
    response = client.post("/v1/chat", json=payload)
    assert response.status_code == 422
    assert "cannot call tools" in response.text


def test_resume_replays_the_whole_loop(client: httpx.Client) -> None:
    payload = {
        "model": "fake:tools",
        "messages": [{"role": "user", "content": "x"}],
        "tools": ["get_time"],
    }
    started = client.post("/v1/chat", json=payload).json()
    first, _ = read_sse(client, "GET", started["events_url"])
    again, _ = read_sse(client, "GET", started["events_url"])
    assert again == first and kinds(first).count("step-start") == 2
    seq = results(first)[0]["seq"]
    rest, _ = read_sse(client, "GET", started["events_url"], headers={"last-event-id": str(seq)})
    assert rest == [e for e in first if e["seq"] > seq]


def test_store_keeps_steps_and_next_turn_sees_tool_messages(client: httpx.Client) -> None:
    events = chat(client, ["get_time"])
    conversation = events[0]["conversation_id"]
    stored = client.get(f"/v1/conversations/{conversation}").json()["messages"]
    answer = stored[-1]
    assert [p["type"] for p in answer["parts"]] == ["tool-call", "tool-result", "text"]
    assert answer["parts"][1]["name"] == "get_time" and answer["status"] == "completed"
    # fake:tools numbers its call after the calls in the history it is sent
    second = chat(client, ["get_time"], conversation_id=conversation)
    assert next(e for e in second if e["type"] == "tool-call")["tool_call_id"] == "call_2"


def test_another_user_gets_404(base: str, client: httpx.Client) -> None:
    events = chat(client, ["get_time"])
    stream_id, conversation = events[0]["stream_id"], events[0]["conversation_id"]
    with httpx.Client(base_url=base, timeout=30, headers=BOB) as bob:
        assert bob.get(f"/v1/streams/{stream_id}/events").status_code == 404
        assert bob.get(f"/v1/conversations/{conversation}").status_code == 404
        payload = {
            "model": "fake:tools",
            "messages": [{"role": "user", "content": "x"}],
            "tools": ["get_time"],
            "conversation_id": conversation,
        }
        assert bob.post("/v1/chat", json=payload).status_code == 404


def test_queued_generation_runs_the_loop_on_a_worker(tmp_path: Path) -> None:
    """``serve --no-producers`` checks the names; a ``tokenwire worker`` with the same
    ``TOKENWIRE_TOOLS`` runs the loop (the generation, tools and ``max_steps``
    included, crosses the queue)."""
    with services_env("agentq", tmp_path) as env:
        env["TOKENWIRE_TOOLS"] = "tests.support.tools:TOOLS"
        env["TOKENWIRE_ALLOW_ANONYMOUS"] = "1"
        cluster = Cluster(env, tmp_path)
        try:
            node = cluster.start_node()
            worker = cluster.start_worker()
            with httpx.Client(base_url=node.url, timeout=30) as client:
                events = chat(client, ["get_time", "add"], max_steps=1)
                assert client.post("/v1/chat", json={
                    "model": "fake:tools", "messages": [{"role": "user", "content": "x"}],
                    "tools": ["nope"],
                }).status_code == 422  # fmt: skip
            assert cluster.worker_of(events[0]["stream_id"]) is worker
        finally:
            cluster.close()
    assert kinds(events).count("step-start") == 1 and events[-1]["finish_reason"] == "tool_calls"
    (result,) = results(events)
    assert TIME.match(result["output"])
