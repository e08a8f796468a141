"""The AG-UI adapter (``/api/agui``): the pure encoder and parser, then end to end
against a real tokenwire server on 127.0.0.1 (Redis stream log, PostgreSQL store,
``fake:`` models), the answers parsed with the ``ag-ui-protocol`` package's own
pydantic event types; and ``HttpAgent`` from ``@ag-ui/client`` in Node
(``tests/js/agui/``)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from ag_ui.core import BaseEvent, EventType
from ag_ui.core import Event as AguiEvent

from tests.support.cluster import services_env, unavailable
from tests.support.node import node_with, run_script
from tests.support.servers import uvicorn_thread
from tokenwire import ProviderRegistry, Settings, Tokenwire, create_app
from tokenwire.errors import InvalidRequestError
from tokenwire.events import (
    Cancelled,
    Error,
    Event,
    Finish,
    ReasoningDelta,
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
from tokenwire.protocol.agui import AguiEncoder, frame_events, parse_run_input
from tokenwire.protocol.sse import SSEDecoder
from tokenwire.providers.base import (
    GenerationRequest,
    MessageToolCall,
    ProviderEvent,
)
from tokenwire.providers.fake import FakeProvider
from tokenwire.testing import get_time

AGUI_DIR = Path(__file__).resolve().parent / "js" / "agui"
EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(AguiEvent)
TOKENS = {"ta": "alice", "tb": "bob"}
ALICE = {"authorization": "Bearer ta"}
BOB = {"authorization": "Bearer tb"}
START = Start(stream_id="s", message_id="m", conversation_id="t", model="fake:x", created_at=1.0)
TIME_TOOL = {
    "name": "get_time",
    "description": "The current time",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
}

AGENT_LOOP = [  # a two-step server-side agent loop, runs of one type counted once
    "RUN_STARTED",
    "STEP_STARTED",
    "TOOL_CALL_START",
    "TOOL_CALL_ARGS",
    "TOOL_CALL_END",
    "TOOL_CALL_RESULT",
    "STEP_FINISHED",
    "STEP_STARTED",
    "TEXT_MESSAGE_START",
    "TEXT_MESSAGE_CONTENT",
    "TEXT_MESSAGE_END",
    "STEP_FINISHED",
    "RUN_FINISHED",
]

# --- pure encoder and parser ---------------------------------------------------------


def _runs(types: list[str]) -> list[str]:
    """``types`` with each run of one type as one."""
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


def _types(events: list[Event]) -> list[str]:
    encoded = AguiEncoder("t", "r").encode([START, *events])
    return [e.type.value for e in encoded]


def test_encoder_text_reasoning_and_finish() -> None:
    events = [
        ReasoningDelta(part=0, delta="hm"),
        TextDelta(part=1, delta="a"),
        TextDelta(part=1, delta="b"),
        Usage(input_tokens=3, output_tokens=2),
        Finish(finish_reason="stop"),
    ]
    encoded = AguiEncoder("t", "r").encode([START, *events])
    assert [e.type.value for e in encoded] == [
        "RUN_STARTED",
        "REASONING_START",
        "REASONING_MESSAGE_START",
        "REASONING_MESSAGE_CONTENT",
        "REASONING_MESSAGE_END",
        "REASONING_END",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    assert encoded[6].message_id == "m"  # type: ignore[attr-defined]
    finished = encoded[-1].model_dump(by_alias=True)
    assert finished["threadId"] == "t" and finished["runId"] == "r"
    assert finished["outcome"] == {"type": "success"}
    assert finished["usage"] == [
        {
            "model": "fake:x",
            "inputTokens": 3,
            "outputTokens": 2,
            "totalTokens": 5,
            "reasoningTokens": 0,
            "cachedInputTokens": 0,
        }
    ]


def test_encoder_agent_loop_steps_and_tool_results() -> None:
    events: list[Event] = [
        StepStart(step=1),
        ToolCallStart(part=0, tool_call_id="c1", name="get_time"),
        ToolCallDelta(part=0, tool_call_id="c1", delta='{"zone"'),
        ToolCallDelta(part=0, tool_call_id="c1", delta=': "UTC"}'),
        ToolCall(part=0, tool_call_id="c1", name="get_time", arguments={"zone": "UTC"}),
        ToolResult(part=1, tool_call_id="c1", output={"time": "12:00"}),
        StepFinish(step=1, finish_reason="tool_calls"),
        StepStart(step=2),
        TextDelta(part=2, delta="noon"),
        StepFinish(step=2),
        Finish(finish_reason="stop"),
    ]
    encoded = AguiEncoder("t", "r").encode([START, *events])
    types = [e.type.value for e in encoded]
    assert _runs(types) == AGENT_LOOP and types.count("TOOL_CALL_ARGS") == 2
    result = encoded[6].model_dump(by_alias=True)
    assert result["toolCallId"] == "c1" and json.loads(result["content"]) == {"time": "12:00"}
    assert [e.step_name for e in encoded if "STEP" in e.type.value] == ["step-1"] * 2 + [  # type: ignore[attr-defined]
        "step-2"
    ] * 2
    assert encoded[-1].outcome.pending_tool_call_ids is None  # type: ignore[attr-defined]


def test_encoder_tool_call_without_deltas_and_pending_ids() -> None:
    encoded = AguiEncoder("t", "r").encode(
        [
            START,
            ToolCall(part=0, tool_call_id="c9", name="f", arguments={"a": 1}),
            Finish(finish_reason="tool_calls"),
        ]
    )
    assert [e.type.value for e in encoded] == [
        "RUN_STARTED",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "RUN_FINISHED",
    ]
    assert json.loads(encoded[2].delta) == {"a": 1}  # type: ignore[attr-defined]
    assert encoded[-1].outcome.pending_tool_call_ids == ["c9"]  # type: ignore[attr-defined]
    searched = AguiEncoder("t", "r").encode(
        [
            START,
            ToolCall(
                part=0, tool_call_id="ws", name="web_search", arguments={}, provider_executed=True
            ),
            Finish(finish_reason="stop"),
        ]
    )
    assert searched[-1].outcome.pending_tool_call_ids is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("terminal", "last"),
    [
        (Error(code="provider_error", message="boom"), "RUN_ERROR"),
        (Cancelled(reason="user"), "RUN_FINISHED"),
    ],
)
def test_encoder_closes_everything_before_the_one_terminal_event(
    terminal: Event, last: str
) -> None:
    types = _types(
        [
            StepStart(step=1),
            TextDelta(part=0, delta="a"),
            ToolCallStart(part=1, tool_call_id="c", name="f"),
            terminal,
        ]
    )
    assert types[-4:] == ["TOOL_CALL_START", "TOOL_CALL_END", "STEP_FINISHED", last]
    assert types.count("TEXT_MESSAGE_END") == 1
    assert sum(t in ("RUN_FINISHED", "RUN_ERROR") for t in types) == 1


def test_frames_are_the_package_encoders() -> None:
    body = frame_events(AguiEncoder("t", "r").encode([START])).decode()
    assert body == 'data: {"type":"RUN_STARTED","threadId":"t","runId":"r"}\n\n'


def _input(messages: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    return {
        "threadId": "t",
        "runId": "r",
        "messages": messages,
        "tools": [],
        "context": [],
        "state": {},
        "forwardedProps": {},
        **more,
    }


def _tool_call_message(call_id: str = "c1") -> dict[str, Any]:
    function = {"name": "get_time", "arguments": "{}"}
    return {
        "id": "a1",
        "role": "assistant",
        "toolCalls": [{"id": call_id, "type": "function", "function": function}],
    }


def test_parse_run_input_maps_messages_tools_and_forwarded_props() -> None:
    run = parse_run_input(
        _input(
            [
                {"id": "s", "role": "system", "content": "Be brief."},
                {"id": "u", "role": "user", "content": [{"type": "text", "text": "time?"}]},
                _tool_call_message(),
                {"id": "x", "role": "tool", "toolCallId": "c1", "content": "12:00"},
            ],
            tools=[TIME_TOOL],
            context=[{"description": "city", "value": "Paris"}],
            forwardedProps={
                "model": "fake:tools",
                "params": {"k": 1},
                "system": "Hi.",
                "tools": ["get_time"],
                "max_steps": 2,
            },
        )
    )
    assert (run.server_tools, run.max_steps) == (["get_time"], 2)
    assert [m.role for m in run.history] == ["user", "assistant", "tool"]
    assert run.history[1].tool_calls[0].id == "c1" and run.history[2].tool_call_id == "c1"
    assert [m.role for m in run.new] == ["assistant", "tool"]  # the server drops stored ones
    assert run.system == "Hi.\n\nBe brief.\n\ncity: Paris"
    assert run.tools[0].name == "get_time" and run.tools[0].parameters == TIME_TOOL["parameters"]
    assert (run.model, run.params) == ("fake:tools", {"k": 1})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"threadId": "t", "messages": []}, "runId"),
        (_input([{"id": "1", "role": "user"}]), "messages.0.user.content"),
        (_input([{"id": "1", "role": "nobody", "content": "x"}]), "messages.0"),
        (_input([]), "messages"),
        (_input([{"id": "1", "role": "assistant", "content": "x"}]), "messages"),
        (_input([{"id": "1", "role": "user", "content": "x"}], threadId=""), "threadId"),
        (_input([{"id": "1", "role": "user", "content": "x"}], forwardedProps=3), "forwardedProps"),
        (
            _input([{"id": "1", "role": "user", "content": "x"}], forwardedProps={"model": 1}),
            "forwardedProps.model",
        ),
        (
            _input(
                [{"id": "1", "role": "user", "content": "x"}], forwardedProps={"max_steps": True}
            ),
            "forwardedProps.max_steps",
        ),
    ],
)
def test_parse_run_input_rejects_naming_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_run_input(body)
    assert caught.value.field == field


# --- end to end ----------------------------------------------------------------------


class RecordingFake(FakeProvider):
    """The ``fake:`` scripts, keeping every request the adapter made (``rec:<script>``)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[GenerationRequest] = []

    def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        self.requests.append(request)
        return super().stream(request)


RECORDER = RecordingFake()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Tokenwire]]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with (
        services_env("agui", tmp_path_factory.mktemp("agui")) as env,
        pytest.MonkeyPatch.context() as mp,
    ):
        for key, value in env.items():
            mp.setenv(key, value)
        settings = Settings(
            auth_tokens=TOKENS,
            max_retries=0,
            default_model="fake:echo",
            heartbeat_interval=0.05,  # heartbeats between slow deltas: clients must skip them
            coalesce_ms=0,  # one event a delta, so the counts below are exact
        )
        registry = ProviderRegistry(settings)
        registry.register("rec", RECORDER)
        tw = Tokenwire(settings, registry=registry, tools=[get_time])  # server-side tool
        with uvicorn_thread(create_app(tokenwire=tw)) as url:
            yield url, tw


def run_agent(
    base: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    comments: list[str] | None = None,
) -> list[BaseEvent]:
    """POST the run and parse every frame with the package's event union (SSE comments,
    the heartbeats, go to ``comments``)."""
    decoder = SSEDecoder()
    events: list[BaseEvent] = []
    with (
        httpx.Client(base_url=base, timeout=30) as client,
        client.stream("POST", "/api/agui", json=body, headers=headers or ALICE) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for chunk in response.iter_raw():
            for sse in decoder.decode(chunk):
                if sse.comment is not None and comments is not None:
                    comments.append(sse.comment)
                elif sse.data:
                    events.append(EVENTS.validate_json(sse.data))
    return events


def _thread() -> str:
    return f"thread-{uuid.uuid4().hex}"


def _user(text: str, id: str = "u1") -> dict[str, Any]:
    return {"id": id, "role": "user", "content": text}


def _stored_parts(base: str, thread: str) -> list[tuple[str, list[str]]]:
    """The thread's stored messages as ``(role, part types)``."""
    with httpx.Client(base_url=base, headers=ALICE, timeout=10) as client:
        stored = client.get(f"/v1/conversations/{thread}").json()["messages"]
    return [(m["role"], [p["type"] for p in m["parts"]]) for m in stored]


def test_one_turn_streams_the_text_and_creates_the_thread(server: tuple[str, Tokenwire]) -> None:
    base, _ = server
    thread = _thread()
    slow = {"model": "fake:echo", "params": {"delay_ms": 150}}
    comments: list[str] = []
    body = _input([_user("hello there")], threadId=thread, forwardedProps=slow)
    events = run_agent(base, body, comments=comments)
    assert comments  # heartbeats between the slow deltas, which the parsers skip
    assert [e.type for e in events] == [
        EventType.RUN_STARTED,
        EventType.TEXT_MESSAGE_START,
        EventType.TEXT_MESSAGE_CONTENT,
        EventType.TEXT_MESSAGE_CONTENT,
        EventType.TEXT_MESSAGE_END,
        EventType.RUN_FINISHED,
    ]
    text = "".join(e.delta for e in events if e.type == EventType.TEXT_MESSAGE_CONTENT)  # type: ignore[attr-defined]
    assert text == "hello there"
    assert events[0].thread_id == thread and events[0].run_id == "r"  # type: ignore[attr-defined]
    with httpx.Client(base_url=base, headers=ALICE, timeout=10) as client:
        stored = client.get(f"/v1/conversations/{thread}").json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]


def test_reasoning_becomes_reasoning_events(server: tuple[str, Tokenwire]) -> None:
    base, _ = server
    body = _input([_user("why")], threadId=_thread(), forwardedProps={"model": "fake:think"})
    events = run_agent(base, body)
    types = [e.type.value for e in events]
    assert types[:3] == ["RUN_STARTED", "REASONING_START", "REASONING_MESSAGE_START"]
    reasoning = "".join(
        e.delta  # type: ignore[attr-defined]
        for e in events
        if e.type == EventType.REASONING_MESSAGE_CONTENT
    )
    assert reasoning == "Let me think."
    assert types.index("REASONING_END") < types.index("TEXT_MESSAGE_START")


def test_client_tool_round_trip(server: tuple[str, Tokenwire]) -> None:
    """Step 1 calls the client's tool and finishes with it pending; the client sends
    the assistant call and the tool result back; step 2 answers with the result."""
    base, _ = server
    thread = _thread()
    params = {"model": "rec:tools", "params": {"tool_args": {"zone": "UTC"}}}
    first = _input([_user("what time is it")], threadId=thread, tools=[TIME_TOOL])
    step1 = run_agent(base, {**first, "forwardedProps": params})
    assert [e.type.value for e in step1] == [
        "RUN_STARTED",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "RUN_FINISHED",
    ]
    start, args = step1[1].model_dump(by_alias=True), step1[2].model_dump(by_alias=True)
    call_id = start["toolCallId"]
    assert start["toolCallName"] == "get_time" and json.loads(args["delta"]) == {"zone": "UTC"}
    assert step1[-1].outcome.pending_tool_call_ids == [call_id]  # type: ignore[attr-defined]
    messages = [
        _user("what time is it"),
        _tool_call_message(call_id),
        {"id": "t1", "role": "tool", "toolCallId": call_id, "content": "It is 12:00 UTC."},
    ]
    step2 = run_agent(
        base, {**_input(messages, threadId=thread, tools=[TIME_TOOL]), "forwardedProps": params}
    )
    types = [e.type.value for e in step2]
    assert types[0] == "RUN_STARTED" and types[-1] == "RUN_FINISHED"
    assert "TOOL_CALL_START" not in types
    text = "".join(e.delta for e in step2 if e.type == EventType.TEXT_MESSAGE_CONTENT)  # type: ignore[attr-defined]
    assert text == "It is 12:00 UTC."
    sent = RECORDER.requests[-1]  # what the model saw in step 2
    exchange = [
        ("user", "what time is it"),
        ("assistant", ""),
        ("tool", "It is 12:00 UTC."),
    ]
    assert [(m.role, m.content) for m in sent.messages] == exchange  # the call once
    # the stored call (step 1's arguments), not the client's copy of it ("{}")
    assert sent.messages[1].tool_calls == (MessageToolCall(call_id, "get_time", '{"zone": "UTC"}'),)
    assert sent.messages[2].tool_call_id == call_id
    assert [t.name for t in sent.tools] == ["get_time"]
    assert _stored_parts(base, thread) == [
        ("user", ["text"]),
        ("assistant", ["tool-call"]),
        ("tool", ["tool-result"]),
        ("assistant", ["text"]),
    ]  # no empty assistant message: the re-sent call was already stored
    messages += [
        {"id": "a2", "role": "assistant", "content": text},
        _user("thanks", "u2"),
    ]
    run_agent(base, {**_input(messages, threadId=thread), "forwardedProps": params})
    assert [(m.role, m.content) for m in RECORDER.requests[-1].messages] == [
        *exchange,
        ("assistant", "It is 12:00 UTC."),
        ("user", "thanks"),
    ]  # the stored history with the call and its result, then only the new message
    assert RECORDER.requests[-1].messages[2].tool_call_id == call_id


def test_a_tool_call_the_thread_does_not_store_is_kept(server: tuple[str, Tokenwire]) -> None:
    """A client's own assistant tool-call message (not tokenwire's answer) on a known
    thread is sent and stored with its call, so its result is not an orphan."""
    base, _ = server
    thread = _thread()
    run_agent(base, _input([_user("hi")], threadId=thread, forwardedProps={"model": "rec:echo"}))
    messages = [
        _user("hi"),
        {"id": "a1", "role": "assistant", "content": "hi"},
        {**_tool_call_message("c-client"), "id": "a-client"},
        {"id": "t1", "role": "tool", "toolCallId": "c-client", "content": "42"},
    ]
    run_agent(base, _input(messages, threadId=thread, forwardedProps={"model": "rec:tools"}))
    sent = RECORDER.requests[-1].messages
    assert [(m.role, m.content) for m in sent] == [
        ("user", "hi"),
        ("assistant", "hi"),
        ("assistant", ""),
        ("tool", "42"),
    ]
    assert sent[2].tool_calls == (MessageToolCall("c-client", "get_time", "{}"),)
    assert _stored_parts(base, thread) == [
        ("user", ["text"]),
        ("assistant", ["text"]),
        ("assistant", ["tool-call"]),
        ("tool", ["tool-result"]),
        ("assistant", ["text"]),
    ]


def test_server_side_tools_run_the_agent_loop(server: tuple[str, Tokenwire]) -> None:
    """``forwardedProps.tools`` names registered tools: tokenwire runs them (the agent
    loop, two steps) and the run finishes with nothing left for the client."""
    base, _ = server
    thread = _thread()
    props = {"model": "rec:tools", "tools": ["get_time"], "max_steps": 3}
    events = run_agent(
        base, _input([_user("what time is it")], threadId=thread, forwardedProps=props)
    )
    types = [e.type.value for e in events]
    assert _runs(types) == AGENT_LOOP and types.count("TOOL_CALL_ARGS") == 1
    start, result = events[2].model_dump(by_alias=True), events[5].model_dump(by_alias=True)
    assert start["toolCallName"] == "get_time" and result["toolCallId"] == start["toolCallId"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", result["content"])
    steps = [e.step_name for e in events if e.type.value.startswith("STEP_")]  # type: ignore[attr-defined]
    assert steps == ["step-1", "step-1", "step-2", "step-2"]
    text = "".join(e.delta for e in events if e.type == EventType.TEXT_MESSAGE_CONTENT)  # type: ignore[attr-defined]
    assert text == result["content"]  # step 2 answers with the tool's result
    assert events[-1].outcome.type == "success"  # type: ignore[attr-defined]
    assert events[-1].outcome.pending_tool_call_ids is None  # type: ignore[attr-defined]
    second = RECORDER.requests[-1]  # step 2: the call and its result, the tool offered
    assert [m.role for m in second.messages] == ["user", "assistant", "tool"]
    assert [t.name for t in second.tools] == ["get_time"]


def test_a_provider_error_ends_with_run_error(server: tuple[str, Tokenwire]) -> None:
    base, _ = server
    props = {"model": "fake:lorem", "params": {"tokens": 10, "fail_after": 2}}
    events = run_agent(base, _input([_user("x")], threadId=_thread(), forwardedProps=props))
    types = [e.type.value for e in events]
    assert types == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_ERROR",
    ]
    assert events[-1].code == "provider_error" and events[-1].message  # type: ignore[attr-defined]


def test_another_users_thread_is_404_and_untouched(server: tuple[str, Tokenwire]) -> None:
    base, _ = server
    thread = _thread()
    run_agent(base, _input([_user("mine")], threadId=thread))
    with httpx.Client(base_url=base, timeout=10) as client:
        refused = client.post(
            "/api/agui", json=_input([_user("yours?", "u2")], threadId=thread), headers=BOB
        )
        assert refused.status_code == 404, refused.text
        assert client.get(f"/api/agui/{thread}/stream", headers=BOB).status_code == 204
        assert client.post("/api/agui", json=_input([_user("x")])).status_code == 401
        stored = client.get(f"/v1/conversations/{thread}", headers=ALICE).json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]


def test_refusing_another_users_thread_holds_no_concurrent_slot(
    server: tuple[str, Tokenwire],
) -> None:
    """The 404 for another owner's conversation comes after the limits admitted the
    caller (the shared start, server/turns.py): the slot is given back, on both
    surfaces, so more refusals than the concurrent limit (8) still leave Bob free."""
    base, tw = server
    thread = _thread()
    run_agent(base, _input([_user("mine")], threadId=thread))
    chat = {
        "id": thread,
        "messages": [{"id": "u9", "role": "user", "parts": [{"type": "text", "text": "x"}]}],
        "trigger": "submit-message",
    }
    limit = tw.settings.limit_concurrent_streams
    with httpx.Client(base_url=base, headers=BOB, timeout=10) as client:
        for _ in range(limit + 1):
            agui = client.post("/api/agui", json=_input([_user("x", "u9")], threadId=thread))
            assert agui.status_code == 404, agui.text
            assert client.post("/api/chat", json=chat).status_code == 404
    events = run_agent(base, _input([_user("bob's own")], threadId=_thread()), headers=BOB)
    assert events[-1].type == EventType.RUN_FINISHED


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"threadId": "t", "messages": []}, ["body", "runId"]),
        (_input([{"id": "1", "role": "user"}]), ["body", "messages", "0", "user", "content"]),
        (
            _input([_user("x")], forwardedProps={"model": "nope:x"}),
            ["body", "forwardedProps", "model"],
        ),
        (_input([_user("x")], forwardedProps={"params": []}), ["body", "forwardedProps", "params"]),
        (
            _input([_user("x")], forwardedProps={"tools": "get_time"}),
            ["body", "forwardedProps", "tools"],
        ),
        (
            _input([_user("x")], forwardedProps={"tools": ["get_time", "nope"]}),
            ["body", "forwardedProps", "tools", "1"],
        ),
        (
            _input([_user("x")], forwardedProps={"tools": ["get_time"], "max_steps": 0}),
            ["body", "forwardedProps", "max_steps"],
        ),
        (
            _input([_user("x")], forwardedProps={"model": "fake:lorem", "params": {"tokens": -1}}),
            ["body", "forwardedProps", "params", "tokens"],
        ),
    ],
)
def test_bad_input_is_422_naming_the_field(
    server: tuple[str, Tokenwire], body: dict[str, Any], loc: list[str]
) -> None:
    base, _ = server
    response = httpx.post(f"{base}/api/agui", json=body, headers=ALICE, timeout=10)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def test_not_json_is_400_and_not_declared_json_is_415(server: tuple[str, Tokenwire]) -> None:
    base, _ = server
    with httpx.Client(base_url=base, headers=ALICE, timeout=10) as client:
        bad = client.post("/api/agui", content=b"{", headers={"content-type": "application/json"})
        assert bad.status_code == 400
        form = client.post("/api/agui", content=b"{}", headers={"content-type": "text/plain"})
        assert form.status_code == 415


def test_reconnect_replays_the_running_run(server: tuple[str, Tokenwire]) -> None:
    base, _ = server
    thread = _thread()
    props = {"model": "fake:lorem", "params": {"tokens": 5, "stall_after": 2}}
    body = _input([_user("x")], threadId=thread, forwardedProps=props)
    with (
        httpx.Client(base_url=base, headers=ALICE, timeout=30) as client,
        client.stream("POST", "/api/agui", json=body) as first,
    ):
        stream_id = first.headers["x-tokenwire-stream-id"]
        decoder = SSEDecoder()
        seen: list[BaseEvent] = []
        for chunk in first.iter_raw():  # until the two deltas before the stall arrived
            seen += [EVENTS.validate_json(s.data) for s in decoder.decode(chunk) if s.data]
            if sum(e.type == EventType.TEXT_MESSAGE_CONTENT for e in seen) == 2:
                break
    decoder = SSEDecoder()
    replay: list[BaseEvent] = []
    cancelled = False
    with (
        httpx.Client(base_url=base, headers=ALICE, timeout=30) as client,
        client.stream("GET", f"/api/agui/{thread}/stream?runId=r2") as again,
    ):
        assert again.status_code == 200
        for chunk in again.iter_raw():
            replay += [EVENTS.validate_json(s.data) for s in decoder.decode(chunk) if s.data]
            stopped = sum(e.type == EventType.TEXT_MESSAGE_CONTENT for e in replay) == 2
            if stopped and not cancelled:  # the replay reached the stall: stop the run
                cancelled = client.post(f"/v1/streams/{stream_id}/cancel", json={}).is_success
    assert replay[0].run_id == "r2"  # type: ignore[attr-defined]
    assert [e.type.value for e in replay][-2:] == ["TEXT_MESSAGE_END", "RUN_FINISHED"]
    assert replay[-1].outcome.type == "cancelled"  # type: ignore[attr-defined]
    assert [e.model_dump() for e in replay[1:4]] == [e.model_dump() for e in seen[1:4]]
    with httpx.Client(base_url=base, headers=ALICE, timeout=10) as client:
        assert client.get(f"/api/agui/{thread}/stream").status_code == 204


# --- @ag-ui/client in Node -------------------------------------------------------------


def run_http_agent(base: str, **config: Any) -> dict[str, Any]:
    node = node_with(AGUI_DIR, "@ag-ui/client")
    config = {"url": f"{base}/api/agui", "token": "ta", "threadId": _thread(), **config}
    return run_script(node, AGUI_DIR / "run.mjs", config)  # type: ignore[no-any-return]


def test_http_agent_runs_one_turn(server: tuple[str, Tokenwire]) -> None:
    base, _ = server
    result = run_http_agent(
        base, text="hi agent", model="fake:echo", params={"delay_ms": 150}
    )  # slower than the heartbeats
    [types] = [r["types"] for r in result["runs"]]
    assert types[0] == "RUN_STARTED" and types[-1] == "RUN_FINISHED"
    assert "TEXT_MESSAGE_CONTENT" in types
    assert [(m["role"], m.get("content")) for m in result["messages"]] == [
        ("user", "hi agent"),
        ("assistant", "hi agent"),
    ]


def test_http_agent_reasoning_and_errors(server: tuple[str, Tokenwire]) -> None:
    base, _ = server
    think = run_http_agent(base, text="why", model="fake:think")["runs"][0]
    assert think["error"] is None and think["outcome"] == "success"
    assert think["types"][1:3] == ["REASONING_START", "REASONING_MESSAGE_START"]
    failing = run_http_agent(
        base, text="x", model="fake:lorem", params={"tokens": 10, "fail_after": 2}
    )["runs"][0]
    assert failing["types"][-1] == "RUN_ERROR" and failing["outcome"] is None
    assert failing["error"]["code"] == "provider_error"


def test_http_agent_client_tool_loop(server: tuple[str, Tokenwire]) -> None:
    base, _ = server
    result = run_http_agent(
        base, text="time?", model="fake:tools", tool=TIME_TOOL, toolResult="12:00 UTC"
    )
    first, second = result["runs"]
    assert first["types"][-2:] == ["TOOL_CALL_END", "RUN_FINISHED"] and first["pending"]
    assert second["pending"] == [] and "TEXT_MESSAGE_CONTENT" in second["types"]
    roles = [m["role"] for m in result["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert result["messages"][1]["toolCalls"][0]["function"]["name"] == "get_time"
    assert result["messages"][-1]["content"] == "12:00 UTC"
