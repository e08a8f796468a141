"""The I/O shells on the official SDKs, fed real recordings through httpx2.MockTransport.

Every recording of the three APIs is replayed whole and in 7-byte pieces (splitting
UTF-8 characters and lines); the events must agree with the independent reading in
``tests/support/recordings.py``. Then errors before and inside the body, cuts, and
closing the adapter mid-stream (which must close the HTTP response).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tokenwire.errors import ProviderError
from tokenwire.events import (
    Finish,
    ReasoningDelta,
    Source,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
)
from tokenwire.providers.anthropic import AnthropicProvider
from tokenwire.providers.base import GenerationRequest, Message, Provider, ProviderEvent
from tokenwire.providers.openai_chat import OpenAIChatProvider
from tokenwire.providers.openai_responses import OpenAIResponsesProvider

from .support.recordings import expected, recordings

pytestmark = pytest.mark.anyio

REQUEST = GenerationRequest(model="m", messages=[Message("user", "hi")])
API_OF: dict[str, Callable[..., Provider]] = {
    "openai-chat": OpenAIChatProvider,
    "openai-responses": OpenAIResponsesProvider,
    "anthropic-messages": AnthropicProvider,
}
APIS = list(API_OF)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Body(httpx2.AsyncByteStream):
    """A response body in pieces; optionally ends with an exception or blocks forever."""

    def __init__(
        self, data: bytes, size: int | None = None, *, then: Exception | None = None
    ) -> None:
        size = size or max(len(data), 1)
        self.pieces = [data[i : i + size] for i in range(0, len(data), size)]
        self.then = then
        self.block = False
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        if self.then is not None:
            raise self.then
        if self.block:
            await anyio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


def body_of(path: Path, piece: int | None = None) -> Body:
    return Body(path.read_bytes(), piece)


def make(api: str, respond: Callable[[httpx2.Request], httpx2.Response]) -> Provider:
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(respond))
    base = "http://provider.test" + ("" if api == "anthropic-messages" else "/v1")
    provider: Provider = API_OF[api](api_key="test-key", base_url=base, http_client=client)
    return provider


def sse(body: Body, status: int = 200) -> Callable[[httpx2.Request], httpx2.Response]:
    def respond(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, headers={"content-type": "text/event-stream"}, stream=body)

    return respond


async def collect(provider: Provider) -> list[ProviderEvent]:
    return [event async for event in provider.stream(REQUEST)]


def summary(events: list[ProviderEvent]) -> dict[str, Any]:
    """Text, reasoning, tool calls and finish reason, as the independent reader has them."""
    finishes = [e for e in events if isinstance(e, Finish)]
    assert len(finishes) == 1 and events[-1] is finishes[0]
    return {
        "text": "".join(e.delta for e in events if isinstance(e, TextDelta)),
        "reasoning": "".join(e.delta for e in events if isinstance(e, ReasoningDelta)),
        "tool_calls": [(e.name, e.arguments) for e in events if isinstance(e, ToolCall)],
        "finish_reason": finishes[0].finish_reason,
    }


def check_tool_calls(events: list[ProviderEvent]) -> None:
    """Each call: one start before its deltas, deltas add up to the complete call's text."""
    started: dict[str, str] = {}
    for event in events:
        if isinstance(event, ToolCallStart):
            assert event.tool_call_id not in started
            started[event.tool_call_id] = ""
        elif isinstance(event, ToolCallDelta):
            started[event.tool_call_id] += event.delta
        elif isinstance(event, ToolCall):
            assert event.tool_call_id in started
            assert not event.invalid
            if started[event.tool_call_id]:
                assert json.loads(started[event.tool_call_id]) == event.arguments


RECORDED = [pytest.param(p, id=f"{p.parent.name}/{p.stem}") for p in recordings()]


def crlf_with_comments(data: bytes) -> bytes:
    """The same stream with CRLF line ends and a keep-alive comment before every event."""
    events = data.replace(b"\r\n", b"\n").split(b"\n\n")
    return b"".join(
        b": keep-alive\r\n\r\n" + e.replace(b"\n", b"\r\n") + b"\r\n\r\n" for e in events
    )


@pytest.mark.parametrize("variant", ["whole", "7-bytes", "crlf-comments-7-bytes"])
@pytest.mark.parametrize("path", RECORDED)
async def test_recording_matches_independent_reading(path: Path, variant: str) -> None:
    want = expected(path)
    assert not want.error
    body = body_of(path, None if variant == "whole" else 7)
    if variant.startswith("crlf"):
        body = Body(crlf_with_comments(b"".join(body.pieces)), 7)
    events = await collect(make(path.parent.name, sse(body)))
    assert summary(events) == {
        "text": want.text,
        "reasoning": want.reasoning,
        "tool_calls": want.tool_calls,
        "finish_reason": want.finish_reason,
    }
    check_tool_calls(events)


async def test_recordings_cover_the_quirks() -> None:
    """The recordings exercise what they are meant to (guards against a silent no-op)."""
    by_name = {p.stem: expected(p) for p in recordings()}
    assert by_name["hf-router_deepseek-r1_think_tags_956chunks"].reasoning.startswith("Okay")
    assert by_name["groq_deepseek-r1-distill_reasoning_1507chunks"].reasoning
    assert by_name["gpt-4o_refusal"].text.startswith("I'm sorry")
    assert by_name["deepseek-chat_text_402chunks"].finish_reason == "length"
    assert by_name["claude_tool_use_input_json_delta"].tool_calls[-1] == (
        "get_exchange_rate",
        {"from_currency": "USD", "to_currency": "EUR"},
    )
    assert len(by_name["gpt-5_web_search_long_text_264events"].tool_calls) == 7


async def test_usage_and_sources_from_recordings() -> None:
    path = recordings("openai-responses")[2]
    assert "web_search" in path.stem
    events = await collect(make("openai-responses", sse(body_of(path))))
    final = events[-1]
    assert isinstance(final, Finish) and final.usage is not None
    assert (final.usage.reasoning_tokens, final.usage.cached_input_tokens) == (2624, 4352)
    urls = [e.url for e in events if isinstance(e, Source)]
    assert len(urls) == len(set(urls)) == 2
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert all(c.provider_executed for c in calls)

    path = next(p for p in recordings("anthropic-messages") if "web_search" in p.stem)
    events = await collect(make("anthropic-messages", sse(body_of(path, 7))))
    assert sum(isinstance(e, Source) for e in events) > 5
    final = events[-1]
    assert isinstance(final, Finish) and final.usage is not None
    assert final.usage.input_tokens == 482529 and final.usage.output_tokens == 1310


# -- errors -------------------------------------------------------------------------

ERROR_BODIES = {
    "openai-chat": {"error": {"message": "Slow down", "type": "requests", "code": None}},
    "openai-responses": {"error": {"message": "Slow down", "type": "requests", "code": None}},
    "anthropic-messages": {"type": "error", "error": {"type": "x_error", "message": "Slow down"}},
}


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "provider_rate_limited"),
        (529, "provider_overloaded"),
        (500, "provider_error"),
        (400, "invalid_request"),
    ],
)
@pytest.mark.parametrize("api", APIS)
async def test_http_error_before_the_body(api: str, status: int, code: str) -> None:
    def respond(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, json=ERROR_BODIES[api])

    with pytest.raises(ProviderError) as caught:
        await collect(make(api, respond))
    assert (caught.value.code, caught.value.message, caught.value.status) == (
        code,
        "Slow down",
        status,
    )


@pytest.mark.parametrize("text", ["", "<html><h1>502 Bad Gateway</h1></html>"])
async def test_http_error_with_a_non_json_body_names_the_status(text: str) -> None:
    def respond(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(502, text=text)

    with pytest.raises(ProviderError) as caught:
        await collect(make("openai-chat", respond))
    assert caught.value.code == "provider_error"
    assert caught.value.message == "the provider answered HTTP 502"


IN_BAND = {
    "openai-chat": (
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
        b'data: {"error":{"message":"Server overloaded","type":"overloaded_error"}}\n\n'
    ),
    "openai-responses": (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        b'"item_id":"m","output_index":0,"content_index":0,"delta":"Hi"}\n\n'
        b'event: error\ndata: {"type":"error","code":"server_is_overloaded",'
        b'"message":"Server overloaded","param":null}\n\n'
    ),
    "anthropic-messages": (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hi"}}\n\n'
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Server overloaded"}}\n\n'
    ),
}


@pytest.mark.parametrize("api", APIS)
async def test_in_band_error_after_200(api: str) -> None:
    got: list[ProviderEvent] = []
    with pytest.raises(ProviderError) as caught:
        async for event in make(api, sse(Body(IN_BAND[api], 5))).stream(REQUEST):
            got.append(event)
    assert caught.value.code == "provider_overloaded"
    assert caught.value.message == "Server overloaded"
    assert caught.value.retryable
    assert [e.delta for e in got if isinstance(e, TextDelta)] == ["Hi"]


def _half(api: str) -> bytes:
    data = recordings(api)[0].read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("api", APIS)
async def test_connection_cut_mid_stream(api: str) -> None:
    cut = httpx2.RemoteProtocolError("peer closed connection without sending complete message")
    with pytest.raises(ProviderError) as caught:
        await collect(make(api, sse(Body(_half(api), 64, then=cut))))
    assert (caught.value.code, caught.value.retryable) == ("provider_error", True)
    assert "peer" not in caught.value.message


@pytest.mark.parametrize("api", APIS)
async def test_stream_ending_without_a_finish_reason(api: str) -> None:
    with pytest.raises(ProviderError) as caught:
        await collect(make(api, sse(Body(_half(api), 64))))
    assert caught.value.code == "provider_error"
    assert caught.value.message == "the provider closed the stream before it finished"


@pytest.mark.parametrize("api", APIS)
async def test_read_timeout(api: str) -> None:
    timeout = httpx2.ReadTimeout("timed out")
    with pytest.raises(ProviderError) as caught:
        await collect(make(api, sse(Body(_half(api), 64, then=timeout))))
    assert caught.value.code == "provider_timeout"


@pytest.mark.parametrize("api", APIS)
async def test_connect_error(api: str) -> None:
    def respond(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused")

    with pytest.raises(ProviderError) as caught:
        await collect(make(api, respond))
    assert (caught.value.code, caught.value.retryable) == ("provider_error", True)


# -- closing --------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
async def test_aclose_mid_stream_closes_the_response(api: str) -> None:
    body = Body(_half(api), 200)
    body.block = True
    stream = make(api, sse(body)).stream(REQUEST)
    assert isinstance(stream, AsyncIterator)
    async for _ in stream:
        break
    assert not body.closed
    await stream.aclose()  # type: ignore[attr-defined]
    assert body.closed


@pytest.mark.parametrize("api", APIS)
async def test_cancelling_the_reader_closes_the_response(api: str) -> None:
    body = Body(_half(api), 200)
    body.block = True
    provider = make(api, sse(body))
    first = anyio.Event()

    async def read() -> None:
        async for _ in provider.stream(REQUEST):
            first.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read)
            await first.wait()
            await anyio.wait_all_tasks_blocked()
            tasks.cancel_scope.cancel()
    assert body.closed


@pytest.mark.parametrize("api", APIS)
async def test_request_carries_system_and_params(api: str) -> None:
    seen: dict[str, Any] = {}
    data = body_of(recordings(api)[0]).pieces[0]

    def respond(request: httpx2.Request) -> httpx2.Response:
        seen.update(json.loads(request.content), path=request.url.path)
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=data)

    request = GenerationRequest(
        model="the-model",
        messages=[Message("user", "hi")],
        system="Be brief.",
        params={"max_tokens": 50, "temperature": 0.2},
    )
    events = [e async for e in make(api, respond).stream(request)]
    assert isinstance(events[-1], Finish)
    assert (seen["model"], seen["stream"], seen["temperature"]) == ("the-model", True, 0.2)
    if api == "openai-chat":
        assert seen["path"] == "/v1/chat/completions"
        assert seen["messages"][0] == {"role": "system", "content": "Be brief."}
        assert seen["stream_options"] == {"include_usage": True}
    elif api == "openai-responses":
        assert seen["path"] == "/v1/responses"
        assert seen["instructions"] == "Be brief."
        assert seen["input"] == [{"role": "user", "content": "hi"}]
    else:
        assert seen["path"] == "/v1/messages"
        assert (seen["system"], seen["max_tokens"]) == ("Be brief.", 50)
