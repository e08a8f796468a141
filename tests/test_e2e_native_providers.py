"""The shared Gemini and Ollama recordings, and the presets, end to end over real sockets:
``tokenwire mock-provider`` → ``tokenwire serve`` (both real processes) → native SSE.

The expected values come from the recordings themselves
(``tests/support/native_recordings.py``), not from tokenwire's parsers. The mock
provider's replay is checked byte for byte, and its faults go through an in-process
tokenwire to the stream's one terminal event.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

from tests.support.native_recordings import native_expected, native_recordings
from tests.support.recordings import expected
from tests.support.servers import tokenwire_process, uvicorn_thread
from tests.support.sse import chat_sse
from tests.test_e2e_providers import rebuild
from tokenwire import ProviderRegistry, Settings, Tokenwire, create_app
from tokenwire.providers.gemini import GeminiProvider
from tokenwire.providers.ollama import OllamaProvider

NATIVE = native_recordings("gemini") + native_recordings("ollama-generate")
PRESET_RECORDINGS = {
    "groq": "groq_llama-3.3_text_663chunks",
    "deepseek": "deepseek-chat_text_402chunks",
    "mistral": "mistral-small_text",
    "openrouter": "gpt-4.1-nano_text_303chunks",
}
RECORDINGS_DIR = Path(__file__).resolve().parents[1] / "src" / "tokenwire" / "recordings"


def model_of(path: Path) -> str:
    prefix = "ollama" if path.suffix == ".ndjson" else "gemini"
    return f"{prefix}:{path.parent.name}/{path.stem}"


@pytest.fixture(scope="module")
def server(mock_provider: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "GEMINI_BASE_URL": mock_provider,
        "GEMINI_API_KEY": "test-key",
        "OLLAMA_BASE_URL": mock_provider,
        "TOKENWIRE_DATA_DIR": str(tmp_path_factory.mktemp("serve")),
    }
    for name in PRESET_RECORDINGS:
        env[f"{name.upper()}_BASE_URL"] = mock_provider + "/v1"
        env[f"{name.upper()}_API_KEY"] = "test-key"
    with tokenwire_process(
        "serve", "--log-level", "warning", env=env, ready_path="/healthz"
    ) as url:
        yield url


def check_stream(events: list[dict[str, Any]]) -> None:
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start"
    assert sum(k in ("finish", "error", "cancelled") for k in kinds) == 1
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize("path", NATIVE, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_native_recording_streams_exactly_through_serve(server: str, path: Path) -> None:
    events = chat_sse(server, model_of(path))
    check_stream(events)
    want = native_expected(path)
    got = rebuild(events)
    assert (got["text"], got["reasoning"]) == (want.text, want.reasoning)
    assert got["tool_calls"] == want.tool_calls
    assert got["terminal"] == want.finish_reason
    usage = events[-1]["usage"]
    assert want.usage == (usage["input_tokens"], usage["output_tokens"], usage["reasoning_tokens"])
    signatures = [
        e["tool_call_id"].partition("~")[2] or None for e in events if e["type"] == "tool-call"
    ]
    assert signatures == want.signatures


@pytest.mark.parametrize("name", sorted(PRESET_RECORDINGS))
def test_preset_streams_through_serve(server: str, name: str) -> None:
    recording = PRESET_RECORDINGS[name]
    events = chat_sse(server, f"{name}:openai-chat/{recording}")
    check_stream(events)
    want = expected(RECORDINGS_DIR / "openai-chat" / f"{recording}.sse")
    got = rebuild(events)
    assert (got["text"], got["reasoning"], got["terminal"]) == (
        want.text,
        want.reasoning,
        want.finish_reason,
    )


@pytest.mark.parametrize("path", NATIVE, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_mock_replays_the_recording_byte_for_byte(mock_provider: str, path: Path) -> None:
    name = f"{path.parent.name}/{path.stem}"
    if path.suffix == ".ndjson":
        urls = [("/api/chat", {"model": name, "messages": []}), ("/api/generate", {"model": name})]
    else:
        urls = [(f"/v1beta/models/{name}:streamGenerateContent?alt=sse", {"contents": []})]
    for url, body in urls:
        response = httpx.post(mock_provider + url, json=body, headers={"x-mock-tag": "bytes"})
        assert response.status_code == 200
        assert response.content == path.read_bytes()


def test_mock_refuses_in_each_api_shape(mock_provider: str) -> None:
    gemini = httpx.post(
        f"{mock_provider}/v1beta/models/gemini/nope:streamGenerateContent?alt=sse", json={}
    )
    assert gemini.status_code == 404
    assert gemini.json()["error"]["status"] == "NOT_FOUND"
    assert "gemini/nope" in gemini.json()["error"]["message"]
    wrong = httpx.post(f"{mock_provider}/v1beta/models/x:generateContent", json={})
    assert wrong.status_code == 404 and "streamGenerateContent" in wrong.json()["error"]["message"]
    name = native_recordings("ollama-generate")[0]
    model = f"ollama-generate/{name.stem}"
    unstreamed = httpx.post(f"{mock_provider}/api/chat", json={"model": model, "stream": False})
    assert unstreamed.status_code == 400 and "stream" in unstreamed.json()["error"]
    other_api = httpx.post(
        f"{mock_provider}/api/chat", json={"model": "openai-chat/gpt-4o_refusal"}
    )
    assert other_api.status_code == 404 and "/v1/chat/completions" in other_api.json()["error"]


FAULTS = {
    "r429": ({"x-mock-status": "429"}, "provider_rate_limited"),
    "r503": ({"x-mock-status": "503"}, "provider_overloaded"),
    "r400": ({"x-mock-status": "400"}, "invalid_request"),
    "cut3": ({"x-mock-cut-after": "3"}, "provider_error"),
    "inband3": ({"x-mock-inband-error": "3"}, None),
}
NATIVE_SSE = {
    "gemini": "gemini/gemini-2.5-pro_thoughts",
    "ollama": "ollama-generate/gpt-oss-20b_thinking_timed",
}


@pytest.fixture(scope="module")
def faulty(mock_provider: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """tokenwire in-process; model ``<fault>-<kind>:<recording>`` hits the mock with that fault."""
    registry = ProviderRegistry()
    for fault, (headers, _) in FAULTS.items():
        client = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(5.0))
        registry.register(
            f"{fault}-gemini",
            GeminiProvider(api_key="k", base_url=mock_provider, http_client=client),
        )
        client = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(5.0))
        registry.register(
            f"{fault}-ollama", OllamaProvider(base_url=mock_provider, http_client=client)
        )
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("faulty"),
        max_retries=1,
        retry_backoff=0.0,
        provider_timeout=2.0,
    )
    with uvicorn_thread(create_app(tokenwire=Tokenwire(settings, registry=registry))) as url:
        yield url


@pytest.mark.parametrize("kind", sorted(NATIVE_SSE))
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_every_fault_ends_with_exactly_one_error(faulty: str, kind: str, fault: str) -> None:
    events = chat_sse(faulty, f"{fault}-{kind}:{NATIVE_SSE[kind]}")
    check_stream(events)
    last = events[-1]
    assert last["type"] == "error"
    code = FAULTS[fault][1]
    assert last["code"] == (
        code or ("provider_overloaded" if kind == "gemini" else "provider_error")
    )
    assert "Traceback" not in last["message"]


def test_missing_key_is_a_422_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for variable in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "MISTRAL_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    tw = Tokenwire(Settings(data_dir=tmp_path))
    with uvicorn_thread(create_app(tokenwire=tw)) as url:
        for model, variable in (("gemini:g", "GEMINI_API_KEY"), ("mistral:m", "MISTRAL_API_KEY")):
            response = httpx.post(
                url + "/v1/chat",
                json={"model": model, "messages": [{"role": "user", "content": "x"}]},
                headers={"accept": "text/event-stream"},
            )
            assert response.status_code == 422 and variable in response.text
