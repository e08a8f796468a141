"""The mock provider (DESIGN §10) on a real socket, through raw httpx and the SDKs."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import anyio
import httpx
import openai
import pytest

from tests.support.recordings import RECORDINGS
from tests.support.servers import uvicorn_thread
from tokenwire.mock_provider import create_app, load_recordings, split_events
from tokenwire.mock_provider_faults import FaultHeaderError, parse_faults

pytestmark = pytest.mark.anyio

REFUSAL = "openai-chat/gpt-4o_refusal"  # 14 events
HAIKU = "anthropic-messages/claude-haiku-4-5_thinking"
RESPONSES = "openai-responses/gpt-4o_function_call"
SMOLLM = "openai-chat/smollm2-135m_local_400tokens_timed"
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with uvicorn_thread(create_app(RECORDINGS)) as url:
        yield url


@pytest.fixture
async def client(base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base, timeout=5) as c:
        yield c


@pytest.fixture
async def oai(base: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def claude(base: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=base, api_key="x", max_retries=0) as sdk:
        yield sdk


def body_of(name: str) -> bytes:
    return (RECORDINGS / (name + ".sse")).read_bytes()


def stream_body(model: str) -> dict[str, Any]:
    return {"model": model, "stream": True, "messages": []}


async def record_of(client: httpx.AsyncClient, tag: str, *outcomes: str) -> dict[str, Any]:
    """Poll ``/_mock/requests`` until the tagged request reaches one of ``outcomes``."""
    with anyio.fail_after(5):
        while True:
            records = (await client.get("/_mock/requests", params={"tag": tag})).json()
            if records and records[-1]["outcome"] in outcomes:
                return dict(records[-1])
            await anyio.sleep(0.01)


# --- sans-I/O pieces ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "units"),
    [
        (b"data: a\n\ndata: b\n\n", "text/event-stream", [b"data: a\n\n", b"data: b\n\n"]),
        (b"data: a\r\n\r\n: c\r\n\r\n", "text/event-stream", [b"data: a\r\n\r\n", b": c\r\n\r\n"]),
        (b"data: a\r\rdata: b\r\r", "text/event-stream", [b"data: a\r\r", b"data: b\r\r"]),
        (
            b": pad   \nevent: x\ndata: {}  \n\ntail",
            "text/event-stream",
            [b": pad   \nevent: x\ndata: {}  \n\n", b"tail"],
        ),
        (b"data: a\n\n\ndata: b\n\n", "text/event-stream", [b"data: a\n\n", b"\n", b"data: b\n\n"]),
        (b'{"a":1}\n{"b":2}\n', "application/x-ndjson", [b'{"a":1}\n', b'{"b":2}\n']),
        (b'[{"a":1}]', "application/json", [b'[{"a":1}]']),
        (b"", "text/event-stream; charset=utf-8", []),
    ],
)
def test_split_events(body: bytes, content_type: str, units: list[bytes]) -> None:
    assert list(split_events(body, content_type)) == units


def test_recordings_load_and_split_losslessly() -> None:
    recordings = load_recordings(RECORDINGS)
    assert len(recordings[REFUSAL].events) == 14
    assert (
        len(recordings["openai-responses/o3-mini_reasoning_summary_text_676events"].events) == 676
    )
    reads = recordings[SMOLLM].reads
    assert reads is not None and len(reads) == 281
    for name, rec in recordings.items():
        suffix = {"text/event-stream": ".sse", "application/json": ".json"}.get(
            rec.content_type, ".ndjson"
        )
        assert rec.body == (RECORDINGS / (name + suffix)).read_bytes(), name


def test_load_recordings_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        load_recordings(tmp_path / "missing")
    (tmp_path / "a.sse").write_bytes(b"data: x\n\n")
    (tmp_path / "a.meta.json").write_text('{"api": "openai-chat"}')
    (tmp_path / "a.reads.json").write_text('[{"t": 0.1, "bytes": 3}]')
    with pytest.raises(ValueError, match="reads"):
        load_recordings(tmp_path)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-mock-status": "200"},
        {"x-mock-cut-after": "-1"},
        {"x-mock-stall-after": "x"},
        {"x-mock-pace-ms": "nan"},
        {"x-mock-cut-after": "1", "x-mock-inband-error": "2"},
        {"x-mock-timing": "fast"},
        {"x-mock-timing": "recorded", "x-mock-pace-ms": "5"},
    ],
)
def test_parse_faults_rejects(headers: dict[str, str]) -> None:
    with pytest.raises(FaultHeaderError):
        parse_faults(headers)


def test_parse_faults_reads_headers() -> None:
    faults = parse_faults({"x-mock-stall-after": "3", "x-mock-pace-ms": "2.5", "x-mock-tag": "t"})
    assert (faults.stall_after, faults.stop_after, faults.pace_ms, faults.tag) == (3, 3, 2.5, "t")
    assert parse_faults({}).stop_after is None


# --- replay ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "path"),
    [
        (REFUSAL, CHAT),
        ("openai-chat/mistral-small_text", CHAT),
        ("openai-chat/groq_deepseek-r1-distill_reasoning_1507chunks", CHAT),
        (SMOLLM, CHAT),
        (RESPONSES, "/v1/responses"),
        (HAIKU, MESSAGES),
    ],
)
async def test_replay_is_byte_exact(client: httpx.AsyncClient, model: str, path: str) -> None:
    response = await client.post(path, json=stream_body(model))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.content == body_of(model)


async def test_crlf_comments_and_pace_ms_default(tmp_path: Path) -> None:
    body = b': hello\r\n\r\ndata: {"a":1}   \r\n\r\ndata: [DONE]\r\n\r\n'
    (tmp_path / "openai-chat").mkdir()
    (tmp_path / "openai-chat" / "crlf.sse").write_bytes(body)
    meta = {"api": "openai-chat", "content_type": "text/event-stream", "status": 200}
    (tmp_path / "openai-chat" / "crlf.meta.json").write_text(json.dumps(meta))
    with uvicorn_thread(create_app(tmp_path, pace_ms=40)) as url:
        async with httpx.AsyncClient(base_url=url) as c:
            started = time.monotonic()
            response = await c.post(CHAT, json=stream_body("openai-chat/crlf"))
            elapsed = time.monotonic() - started
            records = (await c.get("/_mock/requests")).json()
    assert response.content == body
    assert elapsed >= 2 * 0.040
    assert (records[-1]["outcome"], records[-1]["events_sent"]) == ("completed", 3)


async def test_sdks_parse_the_replay(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    chunks = [
        c async for c in await oai.chat.completions.create(model=REFUSAL, messages=[], stream=True)
    ]
    assert chunks[0].id == "chatcmpl-ABfw4IfQfCCrcuybFm41wJyxjbkz7"
    stream = await claude.messages.create(model=HAIKU, messages=[], max_tokens=1, stream=True)
    assert [e.type async for e in stream][-1] == "message_stop"
    events = [
        e.type async for e in await oai.responses.create(model=RESPONSES, input="x", stream=True)
    ]
    assert events[-1] == "response.completed"


async def test_pacing_spaces_events(client: httpx.AsyncClient) -> None:
    arrivals: list[float] = []
    started = time.monotonic()
    headers = {"x-mock-pace-ms": "25"}
    async with client.stream("POST", CHAT, json=stream_body(REFUSAL), headers=headers) as response:
        async for _ in response.aiter_raw():
            arrivals.append(time.monotonic())
    assert arrivals[-1] - started >= 13 * 0.025
    assert len(arrivals) >= 5  # written one event at a time, not as one block


async def test_recorded_timing(client: httpx.AsyncClient) -> None:
    headers = {"x-mock-timing": "recorded", "x-mock-cut-after": "3", "x-mock-tag": "timed"}
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post(CHAT, json=stream_body(SMOLLM), headers=headers)
    assert time.monotonic() - started >= 0.5  # third read at 0.5085 s
    record = await record_of(client, "timed", "cut")
    assert (record["events_sent"], record["events_total"]) == (3, 281)
    response = await client.post(
        CHAT, json=stream_body(REFUSAL), headers={"x-mock-timing": "recorded"}
    )
    assert response.status_code == 400
    assert "no recorded timing" in response.json()["error"]["message"]


# --- errors before the body ----------------------------------------------------------


async def test_unknown_model_and_api_mismatch_are_404(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    with pytest.raises(openai.NotFoundError, match="openai-chat/nope"):
        await oai.chat.completions.create(model="openai-chat/nope", messages=[], stream=True)
    with pytest.raises(openai.NotFoundError, match=HAIKU):
        await oai.responses.create(model=HAIKU, input="x", stream=True)
    with pytest.raises(anthropic.NotFoundError, match=REFUSAL) as caught:
        await claude.messages.create(model=REFUSAL, messages=[], max_tokens=1, stream=True)
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


async def test_non_streaming_and_bad_headers_are_400(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    with pytest.raises(openai.BadRequestError, match="Only streams"):
        await oai.chat.completions.create(model=REFUSAL, messages=[])
    with pytest.raises(anthropic.BadRequestError, match="x-mock-cut-after"):
        await claude.messages.create(
            model=HAIKU,
            messages=[],
            max_tokens=1,
            stream=True,
            extra_headers={"x-mock-cut-after": "x"},
        )


@pytest.mark.parametrize(
    ("status", "openai_error", "anthropic_error", "anthropic_type"),
    [
        (429, openai.RateLimitError, anthropic.RateLimitError, "rate_limit_error"),
        (529, openai.InternalServerError, anthropic.OverloadedError, "overloaded_error"),
        (500, openai.InternalServerError, anthropic.InternalServerError, "api_error"),
    ],
)
async def test_injected_status(
    oai: openai.AsyncOpenAI,
    claude: anthropic.AsyncAnthropic,
    status: int,
    openai_error: type[Exception],
    anthropic_error: type[Exception],
    anthropic_type: str,
) -> None:
    headers = {"x-mock-status": str(status)}
    with pytest.raises(openai_error) as caught_openai:
        await oai.chat.completions.create(
            model=REFUSAL, messages=[], stream=True, extra_headers=headers
        )
    with pytest.raises(anthropic_error) as caught_anthropic:
        await claude.messages.create(
            model=HAIKU, messages=[], max_tokens=1, stream=True, extra_headers=headers
        )
    assert caught_anthropic.value.body["error"]["type"] == anthropic_type  # type: ignore[attr-defined]
    response = caught_openai.value.response  # type: ignore[attr-defined]
    assert response.status_code == status
    assert response.headers.get("retry-after") == ("1" if status == 429 else None)


# --- faults in the body ------------------------------------------------------------


async def test_cut_is_an_incomplete_body(
    client: httpx.AsyncClient, oai: openai.AsyncOpenAI
) -> None:
    received = b""
    headers = {"x-mock-cut-after": "4", "x-mock-tag": "cut"}
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream(
            "POST", CHAT, json=stream_body(REFUSAL), headers=headers
        ) as response:
            async for piece in response.aiter_raw():
                received += piece
    assert received == b"".join(split_events(body_of(REFUSAL))[:4])
    record = await record_of(client, "cut", "cut")
    assert record["events_sent"] == 4
    stream = await oai.chat.completions.create(
        model=REFUSAL, messages=[], stream=True, extra_headers={"x-mock-cut-after": "2"}
    )
    with pytest.raises(openai.APIConnectionError):
        async for _ in stream:
            pass


async def test_stall_then_client_timeout(client: httpx.AsyncClient) -> None:
    headers = {"x-mock-stall-after": "2", "x-mock-tag": "stall"}
    timeout = httpx.Timeout(5, read=0.3)
    received = b""
    with pytest.raises(httpx.ReadTimeout):
        async with client.stream(
            "POST", CHAT, json=stream_body(REFUSAL), headers=headers, timeout=timeout
        ) as r:
            async for piece in r.aiter_raw():
                received += piece
    assert received == b"".join(split_events(body_of(REFUSAL))[:2])
    record = await record_of(client, "stall", "client_disconnected")
    assert (record["events_sent"], record["events_total"]) == (2, 14)


async def test_stall_is_observable_before_the_client_leaves(client: httpx.AsyncClient) -> None:
    headers = {"x-mock-stall-after": "1", "x-mock-tag": "stalling"}
    async with client.stream(
        "POST", MESSAGES, json=stream_body(HAIKU), headers=headers
    ) as response:
        assert response.status_code == 200
        record = await record_of(client, "stalling", "stalling")
        assert record["events_sent"] == 1
    await record_of(client, "stalling", "client_disconnected")


async def test_inband_errors_raise_in_the_sdks(
    client: httpx.AsyncClient, oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    headers = {"x-mock-inband-error": "3"}
    stream = await oai.chat.completions.create(
        model=REFUSAL, messages=[], stream=True, extra_headers=headers
    )
    with pytest.raises(openai.APIError, match="x-mock-inband-error"):
        async for _ in stream:
            pass
    astream = await claude.messages.create(
        model=HAIKU, messages=[], max_tokens=1, stream=True, extra_headers=headers
    )
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        async for _ in astream:
            pass
    rstream = await oai.responses.create(
        model=RESPONSES, input="x", stream=True, extra_headers=headers
    )
    last = [e async for e in rstream][-1]
    assert (last.type, last.sequence_number) == ("error", 3)
    response = await client.post(
        CHAT, json=stream_body(REFUSAL), headers={**headers, "x-mock-tag": "inband"}
    )
    events = split_events(response.content)
    assert events[:3] == split_events(body_of(REFUSAL))[:3] and events[3].startswith(
        b'data: {"error":'
    )
    record = await record_of(client, "inband", "inband_error")
    assert record["events_sent"] == 3


async def test_client_disconnect_is_recorded(
    client: httpx.AsyncClient, oai: openai.AsyncOpenAI
) -> None:
    headers = {"x-mock-pace-ms": "50", "x-mock-tag": "leave"}
    stream = await oai.chat.completions.create(
        model=REFUSAL, messages=[], stream=True, extra_headers=headers
    )
    async for _ in stream:
        break
    await stream.close()
    record = await record_of(client, "leave", "client_disconnected")
    assert 1 <= record["events_sent"] < record["events_total"] == 14
    assert record["headers"]["authorization"] == "<redacted>"


# --- observation endpoints -----------------------------------------------------------


async def test_health_models_and_requests(client: httpx.AsyncClient) -> None:
    assert (await client.get("/")).json() == {"ok": True}
    assert (await client.get("/_mock/health")).json() == {"ok": True}
    models = (await client.get("/_mock/models")).json()
    assert REFUSAL in models["openai-chat"] and HAIKU in models["anthropic-messages"]
    await client.post(CHAT, json=stream_body(REFUSAL), headers={"x-mock-tag": "listed"})
    record = await record_of(client, "listed", "completed")
    assert {"id", "model", "path", "outcome", "events_sent", "headers"} <= record.keys()
    assert (record["model"], record["path"], record["status"]) == (REFUSAL, CHAT, 200)
    assert (await client.delete("/_mock/requests")).status_code == 200
    assert (await client.get("/_mock/requests")).json() == []
