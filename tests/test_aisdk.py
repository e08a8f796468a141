"""The Vercel AI SDK adapter (``/api/chat``): pure encoder tables, then end to end
with the AI SDK's own client code (``ai`` 5, 6 and 7 from npm, ``tests/aisdk/``)
against a real tokenwire server on 127.0.0.1 fed by the mock provider."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

from tests.support.node import node_with, run_script
from tests.support.recordings import RECORDINGS, expected
from tests.support.servers import uvicorn_thread
from tests.support.sse import read_sse
from tests.support.tools import explode
from tokenwire import ProviderRegistry, Settings, Tokenwire, create_app
from tokenwire.events import (
    Cancelled,
    Error,
    Event,
    Finish,
    ReasoningDelta,
    Source,
    Start,
    StepFinish,
    StepStart,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    Usage,
)
from tokenwire.protocol.aisdk import (
    ChatRequestError,
    UIMessageStreamEncoder,
    frame_chunks,
    parse_dialect,
)
from tokenwire.providers.anthropic import AnthropicProvider
from tokenwire.providers.base import Message
from tokenwire.providers.openai_chat import OpenAIChatProvider
from tokenwire.server.aisdk_request import ChatRequest, parse_chat_request
from tokenwire.testing import get_time

AISDK_DIR = Path(__file__).resolve().parent / "aisdk"
VERSIONS = ["5", "6", "7"]

# --- pure encoder and parser tables ------------------------------------------------

START = Start(stream_id="s", message_id="m1", conversation_id="c", model="fake:x", created_at=1.0)
BEGIN = [{"type": "start", "messageId": "m1"}, {"type": "start-step"}]


def _encode(events: list[Event], dialect: Any = "7") -> list[dict[str, Any]]:
    return UIMessageStreamEncoder(dialect).encode([START, *events])


ENCODER_TABLE: list[tuple[str, list[Event], str, list[dict[str, Any]]]] = [
    (
        "reasoning-then-text",
        [
            ReasoningDelta(part=0, delta="Hm"),
            ReasoningDelta(part=0, delta="."),
            TextDelta(part=1, delta="Hi"),
            Usage(input_tokens=1, output_tokens=2),
            Finish(finish_reason="stop"),
        ],
        "7",
        [
            *BEGIN,
            {"type": "reasoning-start", "id": "reasoning-0"},
            {"type": "reasoning-delta", "id": "reasoning-0", "delta": "Hm"},
            {"type": "reasoning-delta", "id": "reasoning-0", "delta": "."},
            {"type": "reasoning-end", "id": "reasoning-0"},
            {"type": "text-start", "id": "text-1"},
            {"type": "text-delta", "id": "text-1", "delta": "Hi"},
            {"type": "text-end", "id": "text-1"},
            {"type": "finish-step"},
            {"type": "finish", "finishReason": "stop"},
        ],
    ),
    (
        "v5-finish-is-bare",
        [TextDelta(part=0, delta="x"), Finish(finish_reason="length")],
        "5",
        [
            *BEGIN,
            {"type": "text-start", "id": "text-0"},
            {"type": "text-delta", "id": "text-0", "delta": "x"},
            {"type": "text-end", "id": "text-0"},
            {"type": "finish-step"},
            {"type": "finish"},
        ],
    ),
    (
        "tool-call",
        [
            TextDelta(part=0, delta="Let me look."),
            ToolCallStart(part=1, tool_call_id="c1", name="w"),
            ToolCallDelta(part=1, tool_call_id="c1", delta='{"a"'),
            ToolCallDelta(part=1, tool_call_id="c1", delta=": 1}"),
            ToolCall(part=1, tool_call_id="c1", name="w", arguments={"a": 1}),
            Finish(finish_reason="tool_calls"),
        ],
        "6",
        [
            *BEGIN,
            {"type": "text-start", "id": "text-0"},
            {"type": "text-delta", "id": "text-0", "delta": "Let me look."},
            {"type": "text-end", "id": "text-0"},
            {"type": "tool-input-start", "toolCallId": "c1", "toolName": "w"},
            {"type": "tool-input-delta", "toolCallId": "c1", "inputTextDelta": '{"a"'},
            {"type": "tool-input-delta", "toolCallId": "c1", "inputTextDelta": ": 1}"},
            {
                "type": "tool-input-available",
                "toolCallId": "c1",
                "toolName": "w",
                "input": {"a": 1},
            },
            {"type": "finish-step"},
            {"type": "finish", "finishReason": "tool-calls"},
        ],
    ),
    (
        "provider-executed-complete-call-and-invalid-call",
        [
            ToolCall(part=0, tool_call_id="p", name="web", arguments={}, provider_executed=True),
            ToolCall(
                part=1, tool_call_id="b", name="f", arguments=None, arguments_text="{", invalid=True
            ),
            Finish(finish_reason="content_filter"),
        ],
        "7",
        [
            *BEGIN,
            {
                "type": "tool-input-start",
                "toolCallId": "p",
                "toolName": "web",
                "providerExecuted": True,
            },
            {
                "type": "tool-input-available",
                "toolCallId": "p",
                "toolName": "web",
                "input": {},
                "providerExecuted": True,
            },
            {"type": "tool-input-start", "toolCallId": "b", "toolName": "f"},
            {
                "type": "tool-input-error",
                "toolCallId": "b",
                "toolName": "f",
                "input": "{",
                "errorText": "The tool call's arguments are not valid JSON.",
            },
            {"type": "finish-step"},
            {"type": "finish", "finishReason": "content-filter"},
        ],
    ),
    (
        "source",
        [
            Source(part=0, url="https://a.example", title="A"),
            Source(part=1, url="https://b.example"),
            Finish(finish_reason="other"),
        ],
        "5",
        [
            *BEGIN,
            {
                "type": "source-url",
                "sourceId": "source-0",
                "url": "https://a.example",
                "title": "A",
            },
            {"type": "source-url", "sourceId": "source-1", "url": "https://b.example"},
            {"type": "finish-step"},
            {"type": "finish"},
        ],
    ),
    (
        "error-is-masked",
        [TextDelta(part=0, delta="a"), Error(code="provider_error", message="secret upstream")],
        "6",
        [
            *BEGIN,
            {"type": "text-start", "id": "text-0"},
            {"type": "text-delta", "id": "text-0", "delta": "a"},
            {"type": "text-end", "id": "text-0"},
            {"type": "finish-step"},
            {"type": "error", "errorText": "An error occurred."},
        ],
    ),
    (
        "cancelled-v7",
        [Cancelled(reason="user")],
        "7",
        [*BEGIN, {"type": "finish-step"}, {"type": "abort", "reason": "user"}],
    ),
    (
        "cancelled-v5-has-no-reason",
        [Cancelled(reason="user")],
        "5",
        [*BEGIN, {"type": "finish-step"}, {"type": "abort"}],
    ),
    (
        "agent-loop-steps-and-tool-results",
        [
            StepStart(step=1),
            ToolCall(part=0, tool_call_id="c1", name="t", arguments={}),
            ToolCall(part=1, tool_call_id="c2", name="u", arguments={"x": 1}),
            ToolResult(part=2, tool_call_id="c1", output={"ok": True}),
            ToolResult(part=3, tool_call_id="c2", output="u failed (ValueError)", is_error=True),
            StepFinish(step=1, finish_reason="tool_calls"),
            StepStart(step=2),
            TextDelta(part=4, delta="done"),
            StepFinish(step=2),
            Finish(finish_reason="stop"),
        ],
        "7",
        [
            *BEGIN,
            {"type": "tool-input-start", "toolCallId": "c1", "toolName": "t"},
            {"type": "tool-input-available", "toolCallId": "c1", "toolName": "t", "input": {}},
            {"type": "tool-input-start", "toolCallId": "c2", "toolName": "u"},
            {
                "type": "tool-input-available",
                "toolCallId": "c2",
                "toolName": "u",
                "input": {"x": 1},
            },
            {"type": "tool-output-available", "toolCallId": "c1", "output": {"ok": True}},
            {"type": "tool-output-error", "toolCallId": "c2", "errorText": "u failed (ValueError)"},
            {"type": "finish-step"},
            {"type": "start-step"},
            {"type": "text-start", "id": "text-4"},
            {"type": "text-delta", "id": "text-4", "delta": "done"},
            {"type": "text-end", "id": "text-4"},
            {"type": "finish-step"},
            {"type": "finish", "finishReason": "stop"},
        ],
    ),
]


@pytest.mark.parametrize(
    ("events", "dialect", "chunks"),
    [row[1:] for row in ENCODER_TABLE],
    ids=[row[0] for row in ENCODER_TABLE],
)
def test_encoder_table(events: list[Event], dialect: str, chunks: list[dict[str, Any]]) -> None:
    assert _encode(events, dialect) == chunks


def test_unmasked_errors_and_batches_split_anywhere() -> None:
    enc = UIMessageStreamEncoder("7", mask_errors=False)
    events: list[Event] = [START, TextDelta(part=0, delta="a"), TextDelta(part=0, delta="b")]
    whole = UIMessageStreamEncoder("7").encode(events)
    split = [c for e in events for c in enc.encode([e])]
    assert split == whole
    assert enc.encode([Error(code="provider_error", message="boom")])[-1] == {
        "type": "error",
        "errorText": "boom",
    }


def test_frame_chunks_bytes() -> None:
    chunks = [{"type": "text-delta", "id": "text-0", "delta": "é\n"}, {"type": "finish"}]
    assert frame_chunks(chunks) == (
        b'data: {"type":"text-delta","id":"text-0","delta":"\xc3\xa9\\n"}\n\n'
        b'data: {"type":"finish"}\n\n'
    )


def _ui(role: str, text: str) -> dict[str, Any]:
    return {"id": f"id-{role}", "role": role, "parts": [{"type": "text", "text": text}]}


def test_parse_chat_request_full_and_last_message_variants() -> None:
    body = {
        "id": "chat1",
        "messages": [
            _ui("user", "a"),
            {
                "id": "x",
                "role": "assistant",
                "parts": [{"type": "step-start"}, {"type": "text", "text": "b"}],
            },
            {"id": "y", "role": "user", "parts": [{"type": "text", "text": "c"}, {"type": "file"}]},
        ],
        "trigger": "submit-message",
        "messageId": None,
        "model": "fake:echo",
        "params": {"tokens": 3},
    }
    assert parse_chat_request(body) == ChatRequest(
        chat_id="chat1",
        history=[Message("user", "a"), Message("assistant", "b")],
        text="c",
        model="fake:echo",
        params={"tokens": 3},
    )
    last_only = parse_chat_request({"id": "chat1", "message": _ui("user", "c")})
    assert last_only == ChatRequest(chat_id="chat1", history=[], text="c")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"messages": [_ui("user", "a")]}, "id:"),
        ({"id": "c"}, "messages:"),
        ({"id": "c", "messages": []}, "messages:"),
        ({"id": "c", "messages": "hi"}, "messages:"),
        ({"id": "c", "messages": [{"role": "user", "content": "a"}]}, "messages[0].parts"),
        ({"id": "c", "messages": [{"role": "bot", "parts": []}]}, "messages[0].role"),
        ({"id": "c", "messages": [_ui("assistant", "a")]}, "an assistant message ending with tool"),
        ({"id": "c", "messages": [_ui("user", "")]}, "no text part"),
        ({"id": "c", "messages": [_ui("user", "a")], "trigger": "x"}, "trigger:"),
        ({"id": "c", "messages": [_ui("user", "a")], "model": 3}, "model:"),
        ({"id": "c", "messages": [_ui("user", "a")], "params": []}, "params:"),
    ],
)
def test_parse_chat_request_rejects(body: Any, field: str) -> None:
    with pytest.raises(ChatRequestError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_chat_request(body)


def test_parse_dialect() -> None:
    assert [parse_dialect(v) for v in (None, "", "5", "v6", "7.0.173")] == ["7", "7", "5", "6", "7"]
    with pytest.raises(ChatRequestError):
        parse_dialect("4")


# --- end to end ------------------------------------------------------------------


@pytest.fixture(scope="session")
def node() -> str:
    """``node`` with the pinned ``ai`` versions installed in tests/aisdk (npm ci once)."""
    return node_with(AISDK_DIR, "ai7")


def run_node(node: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return run_script(node, AISDK_DIR / "read.mjs", jobs)  # type: ignore[no-any-return]


def _client(headers: dict[str, str] | None = None) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(headers=headers or {}, timeout=httpx2.Timeout(5.0))


@pytest.fixture(scope="module")
def server(
    mock_provider: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Tokenwire]]:
    registry = ProviderRegistry(fake=True)
    registry.register("openai", OpenAIChatProvider(base_url=mock_provider + "/v1", api_key="k"))
    registry.register("anthropic", AnthropicProvider(base_url=mock_provider, api_key="k"))
    settings = Settings(
        fake_provider=True, data_dir=tmp_path_factory.mktemp("aisdk"), max_retries=0
    )
    tw = Tokenwire(settings, registry=registry, tools=[get_time, explode])
    with uvicorn_thread(create_app(tokenwire=tw)) as url:
        yield url, tw


def native(base: str, stream_id: str) -> dict[str, Any]:
    with httpx.Client(base_url=base, timeout=30) as client:
        events, _ = read_sse(client, "GET", f"/v1/streams/{stream_id}/events")
    return {
        "text": "".join(e["delta"] for e in events if e["type"] == "text-delta"),
        "reasoning": "".join(e["delta"] for e in events if e["type"] == "reasoning-delta"),
        "tool_calls": [(e["name"], e["arguments"]) for e in events if e["type"] == "tool-call"],
        "message_id": events[0]["message_id"],
    }


def ui_view(message: dict[str, Any]) -> dict[str, Any]:
    """What a ``useChat`` page shows of an assistant UI message."""
    parts = message["parts"]
    return {
        "text": "".join(p["text"] for p in parts if p["type"] == "text"),
        "reasoning": "".join(p["text"] for p in parts if p["type"] == "reasoning"),
        "tool_calls": [
            (p["type"].removeprefix("tool-"), p["input"])
            for p in parts
            if p["type"].startswith("tool-")
        ],
        "message_id": message["id"],
    }


MODELS = [
    "openai:openai-chat/gpt-4o_tool_call_include_usage",
    "anthropic:anthropic-messages/claude-haiku-4-5_thinking",
    "openai:openai-chat/gpt-4.1-nano_text_303chunks",
    "fake:think",
]


def test_every_version_reads_the_same_message_as_native(
    node: str, server: tuple[str, Tokenwire]
) -> None:
    base, _ = server
    jobs: list[dict[str, Any]] = [
        {
            "version": v,
            "api": base + "/api/chat",
            "chatId": f"same-{v}-{i}",
            "action": "send",
            "text": "what is the weather?",
            "body": {"model": model},
            "headers": {"x-tokenwire-ai-sdk": v},
        }
        for v in VERSIONS
        for i, model in enumerate(MODELS)
    ]
    results = run_node(node, jobs)
    for job, result in zip(jobs, results, strict=True):
        first = result["first"]
        assert first["errors"] == [] and first["status"] == "ready", (job, first["errors"])
        user, assistant = first["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        (stream_id,) = result["streamIds"]
        want = native(base, stream_id)
        assert ui_view(assistant) == want, job
        model = job["body"]["model"]
        if not model.startswith("fake:"):  # the recording, read independently, agrees too
            rec = expected(RECORDINGS / (model.split(":", 1)[1] + ".sse"))
            assert (want["text"], want["reasoning"], want["tool_calls"]) == (
                rec.text,
                rec.reasoning,
                rec.tool_calls,
            )
        assert first["chunks"][-1]["type"] == "finish"
    covered = {
        (j["version"], bool(ui_view(r["first"]["messages"][1])["tool_calls"]))
        for j, r in zip(jobs, results, strict=True)
    }
    assert {(v, True) for v in VERSIONS} <= covered


def test_every_version_reads_a_server_side_agent_loop(
    node: str, server: tuple[str, Tokenwire]
) -> None:
    """Two steps with a server-side tool, and a failing tool: each SDK version's own
    client validates every chunk and builds one message with a tool part whose state
    is ``output-available`` (or ``output-error``), two steps, then the answer."""
    base, _ = server
    jobs: list[dict[str, Any]] = [
        {
            "version": v,
            "api": base + "/api/chat",
            "chatId": f"agent-{v}-{tool}",
            "action": "send",
            "text": "what time is it?",
            "body": {"model": "fake:tools", "tools": [tool]},
            "headers": {"x-tokenwire-ai-sdk": v},
        }
        for v in VERSIONS
        for tool in ("get_time", "explode")
    ]
    for job, result in zip(jobs, run_node(node, jobs), strict=True):
        first = result["first"]
        assert first["errors"] == [] and first["status"] == "ready", (job, first["errors"])
        parts = first["messages"][1]["parts"]
        assert [p["type"] for p in parts] == [
            "step-start",
            f"tool-{job['body']['tools'][0]}",
            "step-start",
            "text",
        ], job
        tool, text = parts[1], parts[3]["text"]
        if job["body"]["tools"] == ["get_time"]:
            assert tool["state"] == "output-available" and tool["output"] == text
            assert len(text) == len("2026-01-31T12:00:00Z") and text.endswith("Z")
        else:
            assert tool["state"] == "output-error" and tool["errorText"] == text
            assert "RuntimeError" in text


def test_schema_validation_is_really_applied(node: str) -> None:
    """A chunk the schema rejects makes each version's reader fail (so the others pass
    because the chunks are valid, not because nothing is checked)."""
    jobs = [
        {
            "version": v,
            "api": "http://127.0.0.1:9/api/chat",
            "chatId": "x",
            "action": "bad-chunk",
            "chunk": chunk,
        }
        for v in VERSIONS
        for chunk in (
            {"type": "text-delta", "delta": "no id"},
            {"type": "finish", "finishReason": "bogus"},
        )
    ]
    for result in run_node(node, jobs):
        assert result["first"]["status"] == "error"
        assert "Type validation failed" in result["first"]["errors"][0]


def test_errors_are_masked_like_stream_text(node: str, server: tuple[str, Tokenwire]) -> None:
    base, _ = server
    jobs = [
        {
            "version": v,
            "api": base + "/api/chat",
            "chatId": f"err-{v}",
            "action": "send",
            "text": "x",
            "body": {"model": "openai:openai-chat/does-not-exist"},
            "headers": {"x-tokenwire-ai-sdk": v},
        }
        for v in VERSIONS
    ]
    for result in run_node(node, jobs):
        first = result["first"]
        assert first["status"] == "error"
        assert first["errors"] == ["An error occurred."]
        assert first["chunks"][-1] == {"type": "error", "errorText": "An error occurred."}


def test_disconnect_then_resume_gives_one_message(node: str, server: tuple[str, Tokenwire]) -> None:
    """Chat.stop() on the client only hangs up (DESIGN §5): the generation goes on, and a
    reloaded page's resumeStream() replays it from `start` into the same message."""
    base, _ = server
    jobs = [
        {
            "version": v,
            "api": base + "/api/chat",
            "chatId": f"resume-{v}",
            "action": "disconnect",
            "stopAfter": 6,
            "text": "x",
            "body": {"model": "fake:lorem", "params": {"tokens": 60, "delay_ms": 25}},
            "headers": {"x-tokenwire-ai-sdk": v},
        }
        for v in VERSIONS
    ]
    for result in run_node(node, jobs):
        first, resumed = result["first"], result["resumed"]
        assert len(first["chunks"]) == 6 and first["chunks"][0]["type"] == "start"
        assert resumed["errors"] == [] and resumed["status"] == "ready"
        assert [m["role"] for m in resumed["messages"]] == ["user", "assistant"]
        assistant = resumed["messages"][1]
        assert assistant["id"] == first["chunks"][0]["messageId"]
        assert resumed["chunks"][0] == first["chunks"][0]  # replayed from `start`
        assert resumed["chunks"][-1]["type"] == "finish"  # not cancelled by the hang-up
        first_stream, resumed_stream = result["streamIds"]
        assert first_stream == resumed_stream
        assert ui_view(assistant)["text"] == native(base, first_stream)["text"]
        assert len(ui_view(assistant)["text"].split()) == 60


def _frames(response: httpx.Response) -> Iterator[dict[str, Any] | None]:
    """The chunks of a UI message stream response; ``None`` for ``[DONE]``."""
    assert response.status_code == 200, response.read()
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert response.headers["content-type"].startswith("text/event-stream")
    buffer = b""
    for raw in response.iter_raw():
        buffer += raw
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            if frame.startswith(b":"):
                continue
            assert frame.startswith(b"data: "), frame
            yield None if frame == b"data: [DONE]" else json.loads(frame[6:])


def _ui_chunks(
    client: httpx.Client, method: str, url: str, **kw: Any
) -> tuple[list[dict[str, Any]], bool]:
    """``(chunks, saw [DONE])`` of a whole UI message stream response."""
    chunks: list[dict[str, Any]] = []
    with client.stream(method, url, **kw) as response:
        for chunk in _frames(response):
            if chunk is None:
                return chunks, True
            chunks.append(chunk)
    return chunks, False


def _mock_record(mock: str, tag: str) -> dict[str, Any]:
    data = httpx.get(f"{mock}/_mock/requests", params={"tag": tag}).json()
    (record,) = data if isinstance(data, list) else data["requests"]
    return record  # type: ignore[no-any-return]


@pytest.mark.parametrize("dialect", ["5", "7"])
def test_stop_aborts_closes_the_provider_connection_and_resume_is_204(
    server: tuple[str, Tokenwire], mock_provider: str, dialect: str
) -> None:
    base, tw = server
    tag = f"aisdk-stop-{dialect}"
    headers = {"x-mock-pace-ms": "40", "x-mock-tag": tag}
    tw.registry.register(
        f"slow{dialect}",
        OpenAIChatProvider(
            base_url=mock_provider + "/v1", api_key="k", http_client=_client(headers)
        ),
    )
    chat_id = f"stop-{dialect}"
    body = {
        "id": chat_id,
        "messages": [_ui("user", "go")],
        "trigger": "submit-message",
        "model": f"slow{dialect}:openai-chat/gpt-4.1-nano_text_303chunks",
    }
    h = {"x-tokenwire-ai-sdk": dialect}
    chunks: list[dict[str, Any] | None] = []
    with (
        httpx.Client(base_url=base, timeout=30) as client,
        httpx.Client(base_url=base, timeout=30) as other,
    ):
        with client.stream("POST", "/api/chat", json=body, headers=h) as response:
            for chunk in _frames(response):
                chunks.append(chunk)
                if len(chunks) == 4:  # mid-stream: the stop button, from another connection
                    stopped = other.post(f"/api/chat/{chat_id}/stop", json={})
                    assert stopped.json()["stopped"] is True
        assert chunks[-1] is None and chunks.count(None) == 1
        abort = {"type": "abort"} if dialect == "5" else {"type": "abort", "reason": "user"}
        assert chunks[-2] == abort
        assert [c["type"] for c in chunks[-4:-2] if c] == ["text-end", "finish-step"]
        # The abort came from the log's terminal event, so nothing is active any more.
        assert client.get(f"/api/chat/{chat_id}/stream").status_code == 204
        assert client.post(f"/api/chat/{chat_id}/stop", json={}).json()["stopped"] is False
    deadline = time.monotonic() + 10
    while (record := _mock_record(mock_provider, tag))["outcome"] == "streaming":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert record["outcome"] == "client_disconnected"
    assert record["events_sent"] < record["events_total"]


def test_resume_with_nothing_running_is_204(server: tuple[str, Tokenwire]) -> None:
    base, _ = server
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/api/chat/never-seen/stream").status_code == 204
        chunks, done = _ui_chunks(
            client,
            "POST",
            "/api/chat",
            json={"id": "done1", "message": _ui("user", "hi")},
            headers={"x-tokenwire-model": "fake:echo"},
        )
        assert done and chunks[-1] == {"type": "finish", "finishReason": "stop"}
        deadline = time.monotonic() + 10
        while (status := client.get("/api/chat/done1/stream").status_code) != 204:
            assert time.monotonic() < deadline and status == 200
        assert status == 204


def test_chat_id_is_a_conversation_with_history(server: tuple[str, Tokenwire]) -> None:
    base, _ = server
    with httpx.Client(base_url=base, timeout=30) as client:
        seed = [_ui("user", "first"), _ui("assistant", "reply")]
        body: dict[str, Any] = {
            "id": "hist",
            "messages": [*seed, _ui("user", "second")],
            "model": "fake:echo",
        }
        chunks, _ = _ui_chunks(client, "POST", "/api/chat", json=body)
        assert {"type": "text-delta", "id": "text-0", "delta": "second"} in chunks
        body = {"id": "hist", "message": _ui("user", "third"), "model": "fake:echo"}
        _ui_chunks(client, "POST", "/api/chat", json=body)
        stored = client.get("/v1/conversations/hist").json()["messages"]
    texts = [(m["role"], "".join(p.get("text", "") for p in m["parts"])) for m in stored]
    assert texts == [
        ("user", "first"),
        ("assistant", "reply"),
        ("user", "second"),
        ("assistant", "second"),
        ("user", "third"),
        ("assistant", "third"),
    ]


def test_regenerate_replaces_the_answer(server: tuple[str, Tokenwire]) -> None:
    base, _ = server
    with httpx.Client(base_url=base, timeout=30) as client:
        body: dict[str, Any] = {"id": "regen", "message": _ui("user", "once"), "model": "fake:echo"}
        chunks, _ = _ui_chunks(client, "POST", "/api/chat", json=body)
        first = next(c for c in chunks if c and c["type"] == "start")["messageId"]
        body = {
            "id": "regen",
            "messages": [_ui("user", "once")],
            "trigger": "regenerate-message",
            "messageId": first,
            "model": "fake:think",
        }
        chunks, _ = _ui_chunks(client, "POST", "/api/chat", json=body)
        again = next(c for c in chunks if c and c["type"] == "start")["messageId"]
        stored = client.get("/v1/conversations/regen").json()["messages"]
    assert again != first
    assert [(m["role"], m["id"] == again) for m in stored] == [("user", False), ("assistant", True)]
    assert stored[1]["parts"][-1] == {"type": "text", "text": "once"}


@pytest.mark.parametrize(
    ("content", "headers", "status", "needle"),
    [
        (b"{not json", {}, 400, "JSON"),
        (json.dumps({"id": "b", "messages": "hi"}).encode(), {}, 422, "messages"),
        (
            json.dumps({"id": "b", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            {},
            422,
            "parts",
        ),
        (
            json.dumps({"id": "b", "message": _ui("user", "x"), "model": "nope:x"}).encode(),
            {},
            422,
            "model",
        ),
        (
            json.dumps({"id": "b", "message": _ui("user", "x")}).encode(),
            {"x-tokenwire-model": "bad"},
            422,
            "model",
        ),
        (
            json.dumps({"id": "b", "message": _ui("user", "x")}).encode(),
            {"x-tokenwire-ai-sdk": "4"},
            400,
            "x-tokenwire-ai-sdk",
        ),
    ],
)
def test_bad_requests_are_4xx_with_a_message(
    server: tuple[str, Tokenwire], content: bytes, headers: dict[str, str], status: int, needle: str
) -> None:
    base, _ = server
    response = httpx.post(
        base + "/api/chat", content=content, headers={"content-type": "application/json", **headers}
    )
    assert response.status_code == status
    assert needle in response.json()["detail"]


def test_client_sees_the_bad_request_message(node: str, server: tuple[str, Tokenwire]) -> None:
    base, _ = server
    jobs = [
        {
            "version": v,
            "api": base + "/api/chat",
            "chatId": "bad",
            "action": "send",
            "text": "x",
            "body": {"model": "nope:x"},
        }
        for v in VERSIONS
    ]
    for result in run_node(node, jobs):
        first = result["first"]
        assert first["status"] == "error" and len(first["messages"]) == 1
        assert json.loads(first["errors"][0])["detail"].startswith("model:")
