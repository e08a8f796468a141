"""The native Gemini and Ollama adapters and the OpenAI-compatible presets.

The I/O shells get the real recordings through ``httpx2.MockTransport``, whole and
in 7-byte pieces (cutting UTF-8 characters, lines and JSON objects); the events must
agree with the independent reading in ``tests/support/native_recordings.py``. Then
the request bodies, errors before and inside the body, and preset resolution.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.native_recordings import native_expected, native_recordings
from tests.test_providers_recordings import Body, body_of, check_tool_calls, summary
from tokenwire.errors import ProviderError, UnknownModelError
from tokenwire.events import Finish, ToolCall, Usage
from tokenwire.providers import ProviderRegistry
from tokenwire.providers.base import (
    GenerationRequest,
    Message,
    MessageToolCall,
    ProviderEvent,
    ToolSpec,
)
from tokenwire.providers.gemini import GeminiParser, GeminiProvider, build_request, split_call_id
from tokenwire.providers.ollama import OllamaProvider
from tokenwire.providers.ollama import build_request as ollama_request
from tokenwire.providers.presets import PRESETS, OpenAIPreset

pytestmark = pytest.mark.anyio

GEMINI = native_recordings("gemini")
OLLAMA = native_recordings("ollama-generate")
CONTENT_TYPES = {".sse": "text/event-stream", ".json": "application/json"}
CONTENT_TYPES[".ndjson"] = "application/x-ndjson"
SIGNED = next(p for p in GEMINI if "thought_signature" in p.name)


def respond_with(
    body: Body, status: int = 200, content_type: str = "text/event-stream", **headers: str
) -> tuple[Callable[[httpx2.Request], httpx2.Response], list[httpx2.Request]]:
    seen: list[httpx2.Request] = []

    def respond(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(
            status, headers={"content-type": content_type, **headers}, stream=body
        )

    return respond, seen


def provider_for(path: Path, respond: Callable[[httpx2.Request], httpx2.Response]) -> Any:
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(respond))
    if path.suffix == ".ndjson":
        return OllamaProvider(base_url="http://ollama.test", http_client=client)
    return GeminiProvider(api_key="k", base_url="http://gemini.test", http_client=client)


async def run(provider: Any, request: GenerationRequest | None = None) -> list[ProviderEvent]:
    request = request or GenerationRequest(model="m", messages=[Message("user", "hi")])
    return [event async for event in provider.stream(request)]


@pytest.mark.parametrize("piece", [None, 7])
@pytest.mark.parametrize("path", GEMINI + OLLAMA, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_recording_equals_independent_reading(path: Path, piece: int | None) -> None:
    body = body_of(path, piece)
    respond, seen = respond_with(body, content_type=CONTENT_TYPES[path.suffix])
    events = await run(provider_for(path, respond))
    want = native_expected(path)
    got = summary(events)
    assert (got["text"], got["reasoning"]) == (want.text, want.reasoning)
    assert got["tool_calls"] == want.tool_calls
    assert got["finish_reason"] == want.finish_reason
    check_tool_calls(events)
    finish = events[-1]
    assert isinstance(finish, Finish) and finish.usage is not None and want.usage is not None
    usage = finish.usage
    assert (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens) == want.usage
    assert want.text or want.tool_calls  # the reading itself found something
    assert body.closed
    if path.suffix == ".ndjson":
        assert seen[0].url.path == "/api/chat"
    else:
        assert seen[0].url.path == "/v1beta/models/m:streamGenerateContent"
        assert seen[0].url.params["alt"] == "sse" and seen[0].headers["x-goog-api-key"] == "k"


async def test_thought_signature_goes_back_with_the_call() -> None:
    respond, _ = respond_with(body_of(SIGNED, 5), content_type="application/json")
    events = await run(provider_for(SIGNED, respond))
    call = next(e for e in events if isinstance(e, ToolCall))
    recorded = native_expected(SIGNED).signatures[0]
    assert recorded and split_call_id(call.tool_call_id) == ("gc_0", recorded)
    history = [
        Message("user", "What is 5 times 3?"),
        Message(
            "assistant",
            "",
            tool_calls=(MessageToolCall(call.tool_call_id, call.name, json.dumps(call.arguments)),),
        ),
        Message("tool", "15", tool_call_id=call.tool_call_id),
    ]
    body = build_request(GenerationRequest(model="m", messages=history))
    model_turn, tool_turn = body["contents"][1], body["contents"][2]
    assert model_turn == {
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "multiply", "args": {"x": 5, "y": 3}},
                "thoughtSignature": recorded,
            }
        ],
    }
    assert tool_turn == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "multiply", "response": {"output": "15"}}}],
    }


def test_gemini_request_body() -> None:
    request = GenerationRequest(
        model="m",
        system="Be brief.",
        messages=[
            Message("system", "Use metric units."),
            Message("user", "a"),
            Message("user", "b"),
            Message("assistant", "c"),
            Message(
                "assistant",
                "",
                tool_calls=(
                    MessageToolCall("fc-1", "t", '{"q": 1}'),
                    MessageToolCall("gc_2", "u", "not json"),
                ),
            ),
            Message("tool", "boom", tool_call_id="fc-1", is_error=True),
            Message("tool", "ok", tool_call_id="gc_2", name="u"),
        ],
        params={
            "max_tokens": 100,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": "END",
            "reasoning_effort": "low",
            "safetySettings": [],
        },
        tools=[ToolSpec("t", "a tool", {"type": "object", "properties": {}})],
    )
    body = build_request(request)
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nUse metric units."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][0]["parts"] == [{"text": "a"}, {"text": "b"}]
    assert body["contents"][1]["parts"] == [
        {"text": "c"},
        {"functionCall": {"name": "t", "args": {"q": 1}, "id": "fc-1"}},
        {"functionCall": {"name": "u", "args": {}}},
    ]
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"name": "t", "response": {"error": "boom"}, "id": "fc-1"}},
        {"functionResponse": {"name": "u", "response": {"output": "ok"}}},
    ]
    assert body["generationConfig"] == {
        "maxOutputTokens": 100,
        "temperature": 0.5,
        "topP": 0.9,
        "stopSequences": ["END"],
        "thinkingConfig": {"includeThoughts": True},
    }
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "t",
                    "description": "a tool",
                    "parameters": {"type": "object", "properties": {}},
                }
            ]
        }
    ]
    assert body["safetySettings"] == []


def test_ollama_request_body() -> None:
    request = GenerationRequest(
        model="qwen3",
        system="Be brief.",
        messages=[
            Message("user", "a"),
            Message("assistant", "", tool_calls=(MessageToolCall("c1", "t", '{"q": 1}'),)),
            Message("tool", "42", tool_call_id="c1", name="t"),
        ],
        params={"max_tokens": 10, "temperature": 0, "reasoning_effort": "high", "keep_alive": "1m"},
        tools=[ToolSpec("t")],
    )
    body = ollama_request(request)
    assert body["model"] == "qwen3" and body["stream"] is True and body["think"] is True
    assert body["options"] == {"num_predict": 10, "temperature": 0}
    assert body["keep_alive"] == "1m"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "t", "arguments": {"q": 1}}}],
        },
        {"role": "tool", "content": "42", "tool_name": "t"},
    ]
    assert body["tools"][0]["function"]["name"] == "t"


async def test_ollama_chat_shape_with_tool_calls() -> None:
    lines = [
        {"message": {"role": "assistant", "content": "", "thinking": "hmm"}, "done": False},
        {
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "get_time", "arguments": {"tz": "UTC"}}}],
            },
            "done": False,
        },
        {
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 3,
            "eval_count": 4,
        },
    ]
    raw = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    respond, _ = respond_with(Body(raw, 3), content_type="application/x-ndjson")
    events = await run(provider_for(Path("x.ndjson"), respond))
    got = summary(events)
    assert got["reasoning"] == "hmm" and got["tool_calls"] == [("get_time", {"tz": "UTC"})]
    assert got["finish_reason"] == "tool_calls"
    assert any(isinstance(e, Usage) and e.output_tokens == 4 for e in events)


ERRORS = [
    (
        429,
        {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}},
        "provider_rate_limited",
        True,
    ),
    (
        400,
        {"error": {"code": 400, "message": "Bad model", "status": "INVALID_ARGUMENT"}},
        "invalid_request",
        False,
    ),
    (
        503,
        {"error": {"code": 503, "message": "Overloaded", "status": "UNAVAILABLE"}},
        "provider_overloaded",
        True,
    ),
    (500, {"error": "model 'x' not found"}, "provider_error", True),
]


@pytest.mark.parametrize("suffix", [".sse", ".ndjson"])
@pytest.mark.parametrize(("status", "body", "code", "retryable"), ERRORS)
async def test_http_error_status(
    suffix: str, status: int, body: dict[str, Any], code: str, retryable: bool
) -> None:
    raw = json.dumps(body).encode()
    respond, _ = respond_with(Body(raw), status, "application/json", **{"retry-after": "1"})
    with pytest.raises(ProviderError) as caught:
        await run(provider_for(Path("x" + suffix), respond))
    error = caught.value
    assert (error.code, error.retryable, error.status) == (code, retryable, status)
    inner = body["error"]
    assert error.message == (inner if isinstance(inner, str) else inner["message"])


@pytest.mark.parametrize(
    ("suffix", "raw", "code"),
    [
        (
            ".sse",
            b'data: {"candidates": [{"content": {"parts": [{"text": "a"}]}}]}\n\n'
            b'data: {"error": {"code": 429, "message": "slow down",'
            b' "status": "RESOURCE_EXHAUSTED"}}\n\n',
            "provider_rate_limited",
        ),
        (
            ".ndjson",
            b'{"response": "a", "done": false}\n{"error": "out of memory"}\n',
            "provider_error",
        ),
        (
            ".sse",
            b'data: {"candidates": [{"content": {"parts": [{"text": "a"}]}}]}\n\n',
            "provider_error",
        ),
        (".ndjson", b'{"response": "a", "done": false}\n', "provider_error"),
    ],
    ids=["gemini-inband", "ollama-inband", "gemini-cut", "ollama-cut"],
)
async def test_errors_inside_the_body(suffix: str, raw: bytes, code: str) -> None:
    respond, _ = respond_with(Body(raw, 5), content_type=CONTENT_TYPES[suffix])
    events: list[ProviderEvent] = []
    with pytest.raises(ProviderError) as caught:
        async for event in provider_for(Path("x" + suffix), respond).stream(
            GenerationRequest(model="m", messages=[Message("user", "hi")])
        ):
            events.append(event)
    assert caught.value.code == code and caught.value.retryable
    assert summary([*events, Finish(finish_reason="stop")])["text"] == "a"


async def test_connection_failure_is_a_retryable_provider_error() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    with pytest.raises(ProviderError) as caught:
        await run(provider_for(Path("x.sse"), refuse))
    assert caught.value.code == "provider_error" and caught.value.retryable


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_needs_its_key_and_honours_its_base_url(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    preset = PRESETS[name]
    monkeypatch.delenv(preset.key_variable, raising=False)
    monkeypatch.delenv(preset.url_variable, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "not-this-one")
    registry = ProviderRegistry()
    with pytest.raises(UnknownModelError, match=preset.key_variable):
        registry.resolve(f"{name}:some-model")
    monkeypatch.setenv(preset.key_variable, "k")
    provider, model = registry.resolve(f"{name}:some-model")
    assert model == "some-model" and isinstance(provider, OpenAIPreset)
    assert provider.base_url == preset.base_url
    monkeypatch.setenv(preset.url_variable, "http://127.0.0.1:1/v1/")
    assert provider.base_url == "http://127.0.0.1:1/v1"


def test_preset_base_urls() -> None:
    assert {n: (p.base_url, p.key_variable) for n, p in PRESETS.items()} == {
        "groq": ("https://api.groq.com/openai/v1", "GROQ_API_KEY"),
        "deepseek": ("https://api.deepseek.com", "DEEPSEEK_API_KEY"),
        "mistral": ("https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
        "openrouter": ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    }


def test_gemini_needs_a_key_and_ollama_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OLLAMA_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("OLLAMA_HOST", "ollama.lan:11434")
    registry = ProviderRegistry()
    with pytest.raises(UnknownModelError, match="GEMINI_API_KEY"):
        registry.resolve("gemini:gemini-2.5-flash")
    provider, _ = registry.resolve("ollama:llama3.2")
    assert isinstance(provider, OllamaProvider)
    assert provider._base_url == "http://ollama.lan:11434"
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0")
    assert OllamaProvider()._base_url == "http://0.0.0.0:11434"
    monkeypatch.setenv("OLLAMA_BASE_URL", "https://ollama.example/")
    assert OllamaProvider()._base_url == "https://ollama.example"
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    assert isinstance(registry.resolve("gemini:gemini-2.5-flash")[0], GeminiProvider)


@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        (
            [
                {
                    "candidates": [
                        {"content": {"parts": [{"text": "a"}]}, "finishReason": "MAX_TOKENS"}
                    ]
                }
            ],
            "length",
        ),
        ([{"candidates": [{"finishReason": "SAFETY"}]}], "content_filter"),
        ([{"candidates": [{"finishReason": "RECITATION"}]}], "content_filter"),
        ([{"promptFeedback": {"blockReason": "OTHER"}}], "content_filter"),
        ([{"candidates": [{"finishReason": "MALFORMED_FUNCTION_CALL"}]}], "other"),
    ],
)
def test_gemini_finish_reasons(chunks: list[dict[str, Any]], reason: str) -> None:
    parser = GeminiParser()
    events = [e for chunk in chunks for e in parser.feed(chunk)] + parser.end()
    assert summary(events)["finish_reason"] == reason


def test_gemini_follows_candidate_zero_only() -> None:
    parser = GeminiParser()
    chunk = {
        "candidates": [
            {"index": 1, "content": {"parts": [{"text": "other"}]}, "finishReason": "STOP"},
            {"index": 0, "content": {"parts": [{"text": "mine"}]}, "finishReason": "STOP"},
        ]
    }
    assert summary(parser.feed(chunk) + parser.end())["text"] == "mine"


@pytest.mark.parametrize("path", [GEMINI[0], OLLAMA[0]], ids=["gemini", "ollama"])
async def test_closing_the_adapter_closes_the_response(path: Path) -> None:
    body = body_of(path, 200)
    body.block = True  # the provider would go on generating
    respond, _ = respond_with(body, content_type=CONTENT_TYPES[path.suffix])
    stream = provider_for(path, respond).stream(
        GenerationRequest(model="m", messages=[Message("user", "hi")])
    )
    seen = [await stream.__anext__() for _ in range(2)]
    assert len(seen) == 2 and not body.closed
    await stream.aclose()
    assert body.closed
