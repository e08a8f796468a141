"""The AI SDK's own OpenAI provider (``@ai-sdk/openai``, whose default model calls
the Responses API) against ``POST /v1/responses`` of ``tokenwire serve``:
``generateText``, ``streamText``, a client-side two-step tool loop and a second
turn that refers to the first one's output items (``item_reference``), in Node
with the versions pinned in ``tests/openai_js/package-lock.json``."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.node import node_with
from tests.support.servers import tokenwire_process

JS_DIR = Path(__file__).resolve().parent / "openai_js"


@pytest.fixture(scope="module")
def node() -> str:
    """``node`` with tests/openai_js installed (npm ci once)."""
    return node_with(JS_DIR, "@ai-sdk/openai")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``tokenwire serve`` (a real process) with ``fake:`` models and one API key."""
    env = {
        "TOKENWIRE_DATA_DIR": str(tmp_path_factory.mktemp("responses-js")),
        "TOKENWIRE_FAKE_PROVIDER": "1",
        "TOKENWIRE_MAX_RETRIES": "0",
        "TOKENWIRE_AUTH_TOKENS": json.dumps({"js-key": "js-user"}),
    }
    with tokenwire_process(
        "serve", "--log-level", "warning", env=env, ready_path="/healthz"
    ) as url:
        yield {"baseURL": url + "/v1", "apiKey": "js-key"}


def run(node: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [node, str(JS_DIR / "responses.mjs"), json.dumps(jobs)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=JS_DIR,
        check=True,
    )
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


def test_generate_text(node: str, base: dict[str, str]) -> None:
    (result,) = run(node, [{**base, "action": "generate", "model": "fake:echo", "prompt": "hi js"}])
    assert result["text"] == "hi js" and result["finishReason"] == "stop"
    assert result["responseId"].startswith("resp_")
    assert result["usage"]["outputTokens"] > 0


def test_stream_text_with_reasoning(node: str, base: dict[str, str]) -> None:
    jobs = [
        {**base, "action": "stream", "model": "fake:think", "prompt": "why"},
        {**base, "action": "generate", "model": "fake:think", "prompt": "why"},
    ]
    streamed, generated = run(node, jobs)
    assert streamed["text"] == "why" and streamed["reasoning"] == "Let me think."
    assert {"reasoning-start", "reasoning-delta", "text-delta", "finish"} <= set(streamed["parts"])
    assert streamed["finishReason"] == "stop"
    assert (generated["text"], generated["reasoning"]) == ("why", "Let me think.")


def test_client_side_tool_loop(node: str, base: dict[str, str]) -> None:
    job = {
        **base,
        "action": "tools",
        "model": "fake:tools",
        "prompt": "time?",
        "toolOutput": "12:00",
    }
    (result,) = run(node, [job])
    assert result == {"text": "12:00", "steps": ["tool-calls", "stop"], "calls": [{}]}


def test_a_second_turn_refers_to_the_first_by_item_reference(
    node: str, base: dict[str, str]
) -> None:
    job = {**base, "action": "multiturn", "model": "fake:think", "prompt": "one", "second": "two"}
    (result,) = run(node, [job])
    assert (result["first"], result["text"]) == ("one", "two")


def test_errors_reach_the_sdk(node: str, base: dict[str, str]) -> None:
    unknown = {**base, "action": "generate", "model": "nope:x", "prompt": "x"}
    wrong_key = {
        **base,
        "apiKey": "wrong",
        "action": "generate",
        "model": "fake:echo",
        "prompt": "x",
    }
    missing, unauthorized = run(node, [unknown, wrong_key])
    assert missing["status"] == 404 and "does not exist" in missing["error"]
    assert unauthorized["status"] == 401
