"""The main job: ``tokenwire serve`` with no API key answers with the bundled model."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.support.servers import tokenwire_process
from tests.support.sse import read_sse, text_of

pytestmark = pytest.mark.slow


def test_serve_streams_a_real_answer_from_the_bundled_model(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["TOKENWIRE_DATA_DIR"] = str(tmp_path)
    # No proxy and no provider: nothing may leave the machine.
    env["OPENAI_BASE_URL"] = env["ANTHROPIC_BASE_URL"] = "http://127.0.0.1:9"
    with (
        tokenwire_process("serve", "--log-level", "warning", env=env) as base,
        httpx.Client(base_url=base, timeout=120) as client,
    ):
        models = client.get("/v1/models").json()
        assert models["default"] == "local:smollm2"
        page = client.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        events, _ = read_sse(
            client,
            "POST",
            "/v1/chat",
            json={
                "messages": [{"role": "user", "content": "Name three colours."}],
                "params": {"max_tokens": 32, "seed": 7, "temperature": 0},
            },
            headers={"accept": "text/event-stream"},
        )
        assert events[0]["type"] == "start" and events[0]["model"] == "local:smollm2"
        assert events[-1]["type"] == "finish", events[-1]
        assert events[-1]["finish_reason"] in ("stop", "length")
        assert len(text_of(events).strip()) > 0
        assert events[-1]["usage"]["output_tokens"] > 0
        stored = client.get(f"/v1/conversations/{events[0]['conversation_id']}").json()
    assert stored["messages"][-1]["status"] == "completed"
    assert stored["messages"][-1]["parts"][0]["text"] == text_of(events)
