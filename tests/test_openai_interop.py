"""OpenAI-compatible streaming as the official ``openai`` SDK expects it from OpenAI:
a failure before the first token is a real HTTP status (429 with ``Retry-After``, 4xx,
5xx) in OpenAI's error shape, one after it stays in-band; chunks carry the fields of
OpenAI's recorded chunks (``service_tier``, ``system_fingerprint``, ``delta.refusal``).

tokenwire runs in-process (uvicorn in a thread) with ``openai:`` providers pointed at
the real ``mock_provider`` process, each with its own ``x-mock-*`` fault headers and a
``x-mock-tag`` to count the requests the mock received.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.support.mock_faults import asked, fault_base

pytestmark = pytest.mark.slow

RECORDING = "openai-chat/gpt-4.1-nano_text_303chunks"


@pytest.fixture(scope="module")
def base(mock_provider: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fault_base(mock_provider, tmp_path_factory) as url:
        yield url


def sdk(base: str, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="anything", max_retries=retries)


def stream(client: openai.OpenAI, fault: str) -> list[Any]:
    chunks = client.chat.completions.create(
        model=f"{fault}:{RECORDING}",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    return list(chunks)


def test_a_429_before_the_first_token_raises_rate_limit_error(base: str) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        stream(sdk(base), "r429")
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "1"  # the mock provider's
    assert info.value.response.headers["x-tokenwire-stream-id"]
    assert info.value.response.headers["content-type"].startswith("application/json")
    error = info.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "rate_limit_error" and error["code"] == "provider_rate_limited"


def test_the_sdk_retries_a_429_before_the_first_token(base: str, mock_provider: str) -> None:
    before = asked(mock_provider)["r429"]
    with pytest.raises(openai.RateLimitError):
        stream(sdk(base, retries=2), "r429")
    assert asked(mock_provider)["r429"] - before == 3  # the first and 2 retries


@pytest.mark.parametrize(
    ("fault", "exc_type", "status"),
    [
        ("r500", openai.InternalServerError, 502),
        ("r400", openai.BadRequestError, 400),
    ],
)
def test_other_failures_before_the_first_token_are_http_statuses(
    base: str, fault: str, exc_type: type[openai.APIStatusError], status: int
) -> None:
    with pytest.raises(exc_type) as info:
        stream(sdk(base), fault)
    assert info.value.status_code == status
    assert "retry-after" not in info.value.response.headers
    assert set(info.value.response.json()["error"]) == {"message", "type", "param", "code"}


def test_a_failure_after_the_first_token_stays_in_band(base: str) -> None:
    client = sdk(base)
    chunks = client.chat.completions.create(
        model=f"inband:{RECORDING}", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    seen = []
    with pytest.raises(openai.APIError) as info:
        for chunk in chunks:
            seen.append(chunk)
    assert not isinstance(info.value, openai.APIStatusError)  # the status line was 200
    assert "Overloaded" in info.value.message
    assert any(c.choices and c.choices[0].delta.content for c in seen)


def test_a_healthy_stream_still_streams(base: str) -> None:
    chunks = stream(sdk(base), "ok")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].choices[0].finish_reason == "stop"


# --- chunk fields ----------------------------------------------------------------------

RECORDED = Path(__file__).parent.parent / "src/tokenwire/recordings/openai-chat"
NOT_OURS = {"obfuscation"}
"""Recorded chunk keys tokenwire does not send: OpenAI's random padding against
length side channels, meaningless once the text went through tokenwire."""


def sse_chunks(body: str) -> list[dict[str, Any]]:
    lines = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


def test_chunks_carry_openais_fields(base: str) -> None:
    recorded = sse_chunks((RECORDED / f"{RECORDING.split('/')[1]}.sse").read_text())
    with httpx.stream(
        "POST",
        base + "/v1/chat/completions",
        json={
            "model": f"ok:{RECORDING}",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        timeout=30,
    ) as response:
        ours = sse_chunks(response.read().decode())
    for chunk in ours:  # the SDK's own types accept every chunk
        ChatCompletionChunk.model_validate(chunk)
    assert set(recorded[0]) - NOT_OURS == set(ours[0])
    assert set(recorded[0]["choices"][0]["delta"]) == set(ours[0]["choices"][0]["delta"])
    assert ours[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert {c["service_tier"] for c in ours} == {"default"} == {c["service_tier"] for c in recorded}
    fingerprints = {c["system_fingerprint"] for c in ours}
    assert len(fingerprints) == 1 and fingerprints.pop().startswith("fp_")
    parsed = [ChatCompletionChunk.model_validate(c) for c in ours]
    assert parsed[0].system_fingerprint == "fp_tokenwire" and parsed[0].service_tier == "default"


def test_the_whole_completion_carries_openais_fields(base: str) -> None:
    completion = sdk(base).chat.completions.create(
        model=f"ok:{RECORDING}", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.system_fingerprint == "fp_tokenwire"
    assert completion.service_tier == "default"
    assert completion.choices[0].message.refusal is None


REFUSAL = "openai-chat/gpt-4o_refusal"


def test_a_refusal_is_delta_refusal_as_openai_sends_it(base: str) -> None:
    recorded = sse_chunks((RECORDED / "gpt-4o_refusal.sse").read_text())
    want = "".join(c["choices"][0]["delta"].get("refusal") or "" for c in recorded if c["choices"])
    assert want  # the recording is a refusal
    client = sdk(base)
    streamed = list(
        client.chat.completions.create(
            model=f"ok:{REFUSAL}", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    deltas = [c.choices[0].delta for c in streamed if c.choices]
    assert "".join(d.refusal or "" for d in deltas) == want
    assert not "".join(d.content or "" for d in deltas)
    whole = client.chat.completions.create(
        model=f"ok:{REFUSAL}", messages=[{"role": "user", "content": "hi"}]
    )
    assert whole.choices[0].message.refusal == want
    assert whole.choices[0].message.content is None
