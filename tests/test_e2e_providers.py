"""End to end over real sockets: mock provider → official SDK → tokenwire → native SSE.

The mock provider and (for the recordings) ``tokenwire serve`` run as real
processes started by the project's own command; the fault tests run tokenwire
in-process (uvicorn in a thread) to give each provider its own fault headers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

from tests.support.recordings import expected, recordings
from tests.support.servers import tokenwire_process, uvicorn_thread
from tests.support.sse import chat_sse, read_sse, text_of
from tokenwire import ProviderRegistry, Settings, Tokenwire, create_app
from tokenwire.providers.anthropic import AnthropicProvider
from tokenwire.providers.openai_chat import OpenAIChatProvider
from tokenwire.providers.openai_responses import OpenAIResponsesProvider

PREFIX = {"openai-chat": "openai", "openai-responses": "openai-responses"}
PREFIX["anthropic-messages"] = "anthropic"


@pytest.fixture(scope="module")
def server(mock_provider: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "OPENAI_BASE_URL": mock_provider + "/v1",
        "OPENAI_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": mock_provider,
        "ANTHROPIC_API_KEY": "test-key",
        "TOKENWIRE_DATA_DIR": str(tmp_path_factory.mktemp("serve")),
    }
    with tokenwire_process(
        "serve", "--log-level", "warning", env=env, ready_path="/healthz"
    ) as url:
        yield url


def rebuild(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What a client rebuilds from native SSE events."""
    calls = [(e["name"], e["arguments"]) for e in events if e["type"] == "tool-call"]
    reasoning = "".join(e["delta"] for e in events if e["type"] == "reasoning-delta")
    last = events[-1]
    return {
        "text": text_of(events),
        "reasoning": reasoning,
        "tool_calls": calls,
        "terminal": last.get("finish_reason") if last["type"] == "finish" else last["type"],
    }


@pytest.mark.parametrize("path", recordings(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recording_through_tokenwire_equals_independent_reading(server: str, path: Path) -> None:
    api = path.parent.name
    model = f"{PREFIX[api]}:{api}/{path.stem}"
    events = chat_sse(server, model)
    want = expected(path)
    got = rebuild(events)
    assert got["text"] == want.text
    assert got["reasoning"] == want.reasoning
    assert got["tool_calls"] == want.tool_calls
    assert got["terminal"] == ("error" if want.error else want.finish_reason)
    kinds = [e["type"] for e in events]
    assert sum(k in ("finish", "error", "cancelled") for k in kinds) == 1
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_unknown_recording_is_a_provider_error_not_a_500(server: str) -> None:
    with httpx.Client(base_url=server, timeout=60) as client:
        events, _ = read_sse(
            client,
            "POST",
            "/v1/chat",
            json={
                "model": "openai:openai-chat/nope",
                "messages": [{"role": "user", "content": "x"}],
            },
            headers={"accept": "text/event-stream"},
        )
    assert events[-1]["type"] == "error" and events[-1]["code"] == "invalid_request"
    assert "openai-chat/nope" in events[-1]["message"]


FAULTS: dict[str, dict[str, str]] = {
    "slow": {"x-mock-pace-ms": "40"},
    "r429": {"x-mock-status": "429"},
    "r529": {"x-mock-status": "529"},
    "r500": {"x-mock-status": "500"},
    "cut0": {"x-mock-cut-after": "0"},
    "cut1": {"x-mock-cut-after": "1"},
    "cut5": {"x-mock-cut-after": "5"},
    "stall": {"x-mock-stall-after": "4"},
    "inband": {"x-mock-inband-error": "5"},
    "inband0": {"x-mock-inband-error": "0"},
}
API_OF = {"openai": "openai-chat", "openai-responses": "openai-responses"}
API_OF["anthropic"] = "anthropic-messages"


def _provider(kind: str, base: str, headers: dict[str, str]) -> Any:
    client = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(5.0))
    if kind == "anthropic":
        return AnthropicProvider(base_url=base, api_key="k", http_client=client)
    cls = OpenAIResponsesProvider if kind == "openai-responses" else OpenAIChatProvider
    return cls(base_url=base + "/v1", api_key="k", http_client=client)


@pytest.fixture(scope="module")
def faulty(
    mock_provider: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Tokenwire]]:
    """tokenwire in-process; model ``<fault>-<kind>:<recording>`` hits the mock with that fault."""
    registry = ProviderRegistry()
    for fault, headers in FAULTS.items():
        for kind in API_OF:
            registry.register(f"{fault}-{kind}", _provider(kind, mock_provider, headers))
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("faulty"),
        max_retries=1,
        retry_backoff=0.0,
        provider_timeout=2.0,
    )
    tw = Tokenwire(settings, registry=registry)
    with uvicorn_thread(create_app(tokenwire=tw)) as url:
        yield url, tw


RECORDING = {
    "openai": "openai-chat/gpt-4.1-nano_text_303chunks",
    "openai-responses": "openai-responses/o3-mini_reasoning_summary_text_676events",
    "anthropic": "anthropic-messages/claude-sonnet-4_thinking_signature_text_118events",
}


@pytest.mark.parametrize("kind", list(API_OF))
@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("r429", "provider_rate_limited"),
        ("r529", "provider_overloaded"),
        ("r500", "provider_error"),
        ("cut0", "provider_error"),
        ("cut1", "provider_error"),
        ("cut5", "provider_error"),
        ("stall", "provider_timeout"),
        ("inband", None),
        ("inband0", None),
    ],
)
def test_every_fault_ends_with_exactly_one_error(
    faulty: tuple[str, Tokenwire], kind: str, fault: str, code: str | None
) -> None:
    events = chat_sse(faulty[0], f"{fault}-{kind}:{RECORDING[kind]}")
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start"
    assert kinds.count("error") == 1 and kinds[-1] == "error", kinds[-3:]
    assert "finish" not in kinds and "cancelled" not in kinds
    if code is not None:
        assert events[-1]["code"] == code
    else:  # in-band: the provider's own error type decides the code
        assert events[-1]["code"].startswith("provider_")
    assert "Traceback" not in events[-1]["message"]


def _mock_requests(mock: str, tag: str) -> list[dict[str, Any]]:
    data = httpx.get(f"{mock}/_mock/requests", params={"tag": tag}).json()
    return data if isinstance(data, list) else data["requests"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", list(API_OF))
def test_cancel_closes_the_upstream_connection(
    faulty: tuple[str, Tokenwire], mock_provider: str, kind: str
) -> None:
    base, tw = faulty
    tag = f"cancel-{kind}"
    headers = {**FAULTS["slow"], "x-mock-tag": tag}
    tw.registry.register(f"tag-{kind}", _provider(kind, mock_provider, headers))
    with httpx.Client(base_url=base, timeout=60) as client:
        started = client.post(
            "/v1/chat",
            json={
                "model": f"tag-{kind}:{RECORDING[kind]}",
                "messages": [{"role": "user", "content": "x"}],
            },
        ).json()
        seen, _ = read_sse(client, "GET", started["events_url"], stop_after=4)
        assert client.post(started["cancel_url"]).status_code == 202
        readers = [read_sse(client, "GET", started["events_url"])[0] for _ in range(2)]
        conversation = client.get(f"/v1/conversations/{started['conversation_id']}").json()
    for events in readers:
        assert events[-1]["type"] == "cancelled" and events[-1]["reason"] == "user"
        assert events[: len(seen)] == seen
    message = conversation["messages"][-1]
    assert message["status"] == "cancelled"
    partial = rebuild(readers[0])
    stored = "".join(p.get("text", "") for p in message["parts"] if p["type"] == "text")
    assert stored == partial["text"]
    deadline = time.monotonic() + 10
    while True:
        (record,) = _mock_requests(mock_provider, tag)
        if record["outcome"] != "streaming" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert record["outcome"] == "client_disconnected"
    assert record["events_sent"] < record["events_total"]
