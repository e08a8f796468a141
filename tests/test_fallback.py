"""Fallback models (``providers/fallback.py``): the next model is asked only when the
previous one failed before its first event, never after.

tokenwire runs in-process (uvicorn in a thread) with ``openai:``-family providers
pointed at the real ``mock_provider`` process, each with its own ``x-mock-*`` fault
headers and ``x-mock-tag``, so the mock's request records show which were asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.mock_faults import FAULTS, asked, fault_base
from tests.support.sse import chat_sse, text_of

pytestmark = pytest.mark.slow

REC = "openai-chat/gpt-4.1-nano_text_303chunks"


@pytest.fixture(scope="module")
def base(mock_provider: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fault_base(mock_provider, tmp_path_factory) as url:
        yield url


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in FAULTS if after[name] != before[name]}


@pytest.mark.parametrize("first", ["r500", "r429"])
def test_a_failure_before_the_first_token_falls_back(
    base: str, mock_provider: str, first: str
) -> None:
    before = asked(mock_provider)
    events = chat_sse(base, f"{first}:{REC}", models=[f"ok:{REC}"])
    assert delta(before, asked(mock_provider)) == {first: 1, "ok": 1}
    assert events[0]["type"] == "start" and events[0]["model"] == f"{first}:{REC},ok:{REC}"
    assert events[-1]["type"] == "finish" and events[-1]["model"] == f"ok:{REC}"
    assert text_of(events)
    assert [e["type"] for e in events].count("error") == 0


def test_a_failure_after_the_first_token_does_not_fall_back(base: str, mock_provider: str) -> None:
    before = asked(mock_provider)
    events = chat_sse(base, f"inband:{REC}", models=[f"ok:{REC}"])
    assert delta(before, asked(mock_provider)) == {"inband": 1}
    assert text_of(events)  # the tokens before the failure stay, once
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "error" and sum(k in ("finish", "error", "cancelled") for k in kinds) == 1


def test_when_every_model_fails_the_last_error_ends_the_stream(
    base: str, mock_provider: str
) -> None:
    before = asked(mock_provider)
    events = chat_sse(base, f"r500:{REC}", models=[f"r429:{REC}"])
    assert delta(before, asked(mock_provider)) == {"r500": 1, "r429": 1}
    assert events[-1]["type"] == "error" and events[-1]["code"] == "provider_rate_limited"


def test_models_alone_and_the_healthy_first_model(base: str, mock_provider: str) -> None:
    before = asked(mock_provider)
    events = chat_sse(base, None, models=[f"ok:{REC}", f"r500:{REC}"])  # type: ignore[arg-type]
    assert delta(before, asked(mock_provider)) == {"ok": 1}
    assert events[-1]["type"] == "finish" and events[-1]["model"] == f"ok:{REC}"


def test_finish_has_no_model_without_fallbacks(base: str) -> None:
    events = chat_sse(base, f"ok:{REC}")
    assert events[-1]["type"] == "finish" and "model" not in events[-1]


@pytest.mark.parametrize(
    ("models", "field"),
    [
        ([], "models"),
        ([""], "models[0]"),
        ([f"ok:{REC},r500:{REC}"], "models[0]"),
        (["nope:x"], "model"),
        ("ok:x", "models"),
    ],
)
def test_bad_models_are_422_naming_the_field(base: str, models: Any, field: str) -> None:
    response = httpx.post(
        base + "/v1/chat",
        json={
            "model": f"ok:{REC}",
            "models": models,
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert ".".join(str(x) for x in detail["loc"][1:]) == field


def test_openai_sdk_with_openrouters_models_array(base: str, mock_provider: str) -> None:
    client = openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0)
    before = asked(mock_provider)
    chunks = list(
        client.chat.completions.create(
            model=f"r429:{REC}",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_body={"models": [f"ok:{REC}"]},
        )
    )
    assert delta(before, asked(mock_provider)) == {"r429": 1, "ok": 1}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=f"ok:{REC}",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"models": [7]},
        )
    assert info.value.body["param"] == "models[0]"  # type: ignore[index]
