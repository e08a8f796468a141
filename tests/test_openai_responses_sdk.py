"""OpenAI Responses API ``POST /v1/responses`` end to end: the official ``openai``
SDK against a real tokenwire server on 127.0.0.1 (``fake:`` models), every event
and response parsed strictly with the SDK's own pydantic types (not the SDK's
lenient construction)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response

from tests.support.recordings import expected, recordings
from tests.support.responses import TERMINAL, TOOL, validate
from tests.support.servers import uvicorn_thread
from tokenwire import ProviderRegistry, Settings, Tokenwire, create_app
from tokenwire.providers.openai_responses import OpenAIResponsesProvider

TOKENS = {"alice-key": "alice", "bob-key": "bob"}


@pytest.fixture(scope="module")
def server(mock_provider: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``fake:`` models, and ``openai-responses:`` replaying the recorded OpenAI
    Responses streams of the ``tokenwire mock-provider`` process."""
    settings = Settings(
        fake_provider=True,
        data_dir=tmp_path_factory.mktemp("responses"),
        max_retries=0,
        auth_tokens=TOKENS,
    )
    registry = ProviderRegistry(fake=True)
    registry.register(
        "openai-responses", OpenAIResponsesProvider(base_url=mock_provider + "/v1", api_key="k")
    )
    tw = Tokenwire(settings, registry=registry)
    with uvicorn_thread(create_app(tokenwire=tw)) as url:
        yield url


def client(server: str, key: str = "alice-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def sdk(server: str) -> Iterator[openai.OpenAI]:
    with client(server) as c:
        yield c


def checked(events: Any) -> list[Any]:
    """Every event of an SDK stream, each validated strictly by the SDK's types."""
    out = list(events)
    for e in out:
        validate(e.model_dump(mode="json", exclude_unset=True))
    assert [e.sequence_number for e in out] == list(range(len(out)))
    assert [e.type in TERMINAL for e in out] == [False] * (len(out) - 1) + [True]
    return out


def test_sdk_streams_text(sdk: openai.OpenAI) -> None:
    events = checked(sdk.responses.create(model="fake:echo", input="hello stream", stream=True))
    assert events[0].type == "response.created" and events[0].response.status == "in_progress"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "hello stream"
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == "hello stream"
    assert done.response.id.startswith("resp_") and done.response.model == "fake:echo"
    assert done.response.usage.output_tokens > 0
    assert done.response.usage.total_tokens == (
        done.response.usage.input_tokens + done.response.usage.output_tokens
    )


def test_sdk_non_streamed_response(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(
        model="fake:echo", input="hello object", instructions="be brief", metadata={"k": "v"}
    )
    Response.model_validate(response.model_dump(mode="json", exclude_unset=True))
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == "hello object"
    assert response.metadata == {"k": "v"} and response.instructions == "be brief"
    assert response.usage is not None and response.usage.output_tokens > 0
    again = sdk.responses.retrieve(response.id)
    assert again.output_text == "hello object" and again.status == "completed"


def test_sdk_reasoning_summary(sdk: openai.OpenAI) -> None:
    events = checked(sdk.responses.create(model="fake:think", input="why", stream=True))
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert summary == "Let me think."
    done = [e for e in events if e.type == "response.reasoning_summary_text.done"]
    assert [e.text for e in done] == ["Let me think."]
    final = events[-1].response
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].summary[0].text == "Let me think."
    assert final.output_text == "why"


def test_sdk_function_call_and_the_second_step(sdk: openai.OpenAI) -> None:
    events = checked(
        sdk.responses.create(
            model="fake:tools",
            input="what time is it?",
            tools=[TOOL],  # type: ignore[list-item]
            stream=True,
            extra_body={"params": {"tool_args": {"tz": "UTC"}}},
        )
    )
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert args == '{"tz":"UTC"}'
    (call,) = events[-1].response.output
    assert (call.type, call.name, call.arguments) == ("function_call", "get_time", args)
    answer = sdk.responses.create(
        model="fake:tools",
        input=[
            {"role": "user", "content": "what time is it?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": "get_time",
                "arguments": args,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "12:00"},
        ],
        tools=[TOOL],  # type: ignore[list-item]
    )
    assert answer.output_text == "12:00"


def test_sdk_bad_request_names_the_param(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="fake:echo", input="x", background=True)
    assert caught.value.param == "background"
    assert caught.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as unknown:
        sdk.responses.create(model="fake:echo", input="x", extra_body={"bogus": 1})
    assert unknown.value.body == {
        "message": "Unknown parameter: 'bogus'.",
        "type": "invalid_request_error",
        "param": "bogus",
        "code": "unknown_parameter",
    }


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": "x" * 100_001}, "input"),
        ({"input": "x", "instructions": "x" * 100_001}, "instructions"),
        ({"input": "x", "extra_body": {"params": {"tokens": -1}}}, "params.tokens"),
    ],
)
def test_sdk_limits_name_the_responses_param(
    sdk: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="fake:lorem", **fields)
    assert caught.value.param == param


def test_sdk_unknown_model_is_404(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.responses.create(model="nope:model", input="x")
    assert caught.value.param == "model" and caught.value.code == "model_not_found"


def test_sdk_without_a_key_is_401(server: str) -> None:
    with client(server, "wrong-key") as c, pytest.raises(openai.AuthenticationError):
        c.responses.create(model="fake:echo", input="x")


def test_a_failure_streams_response_failed(sdk: openai.OpenAI) -> None:
    events = checked(
        sdk.responses.create(
            model="fake:echo",
            input="x y z",
            stream=True,
            extra_body={"params": {"fail_after": 1}},
        )
    )
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed" and events[-1].response.error.message


@pytest.mark.parametrize("stream", [False, True], ids=["object", "streamed"])
def test_a_failure_before_the_stream_is_an_http_error(sdk: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.RateLimitError):
        sdk.responses.create(
            model="fake:echo",
            input="x",
            stream=stream,
            extra_body={"params": {"fail_before": "rate_limited"}},
        )


def test_another_user_cannot_see_or_cancel_a_response(server: str, sdk: openai.OpenAI) -> None:
    stream = sdk.responses.create(
        model="fake:lorem",
        input="x",
        stream=True,
        extra_body={"params": {"tokens": 50, "stall_after": 2}},
    )
    events = stream.__iter__()
    first = next(events)
    rid = first.response.id
    with client(server, "bob-key") as bob:
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(rid)
        with pytest.raises(openai.NotFoundError):
            bob.responses.cancel(rid)
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve("resp_not-a-stream")
    assert sdk.responses.retrieve(rid).status == "in_progress"
    cancelled = sdk.responses.cancel(rid)
    assert cancelled.status == "cancelled"
    rest = [first, *events]
    assert rest[-1].type == "response.incomplete" and rest[-1].response.status == "cancelled"
    # a resumed reader gets the same events after the sequence number it had
    replay = list(sdk.responses.retrieve(rid, stream=True, starting_after=2))
    assert [e.sequence_number for e in replay] == [e.sequence_number for e in rest[3:]]
    assert [e.type for e in replay] == [e.type for e in rest[3:]]


def conversation_of(server: str, response_id: str) -> list[tuple[str, str]]:
    """``(role, text)`` of the stored messages of a response's conversation (native API)."""
    auth = {"authorization": "Bearer alice-key"}
    stream_id = response_id.removeprefix("resp_")
    events = httpx.get(f"{server}/v1/streams/{stream_id}?after=0", headers=auth).json()["events"]
    conversation = events[0]["conversation_id"]
    body = httpx.get(f"{server}/v1/conversations/{conversation}", headers=auth).json()
    return [(m["role"], "".join(p.get("text", "") for p in m["parts"])) for m in body["messages"]]


def test_item_references_are_resolved_for_their_owner_only(server: str, sdk: openai.OpenAI) -> None:
    first = sdk.responses.create(model="fake:think", input="first answer")
    reasoning, message = first.output
    second = sdk.responses.create(
        model="fake:echo",
        input=[
            {"role": "user", "content": "first answer"},
            {"type": "item_reference", "id": reasoning.id},
            {"type": "item_reference", "id": message.id},
            {"role": "user", "content": "next"},
        ],
    )
    assert second.output_text == "next"
    assert conversation_of(server, second.id) == [
        ("user", "first answer"),
        ("assistant", "first answer"),
        ("user", "next"),
        ("assistant", "next"),
    ]
    with client(server, "bob-key") as bob:
        for item_id in (message.id, "msg_nothing_0", "nonsense"):
            with pytest.raises(openai.NotFoundError) as caught:
                bob.responses.create(
                    model="fake:echo", input=[{"type": "item_reference", "id": item_id}]
                )
            assert caught.value.param == "input[0].id"


@pytest.mark.parametrize("path", recordings("openai-responses"), ids=lambda p: p.stem)
def test_sdk_reads_recorded_openai_streams_relayed(sdk: openai.OpenAI, path: Path) -> None:
    """Real OpenAI Responses streams (the mock provider replays them to tokenwire's
    ``openai-responses:`` adapter), re-encoded by tokenwire, read by the SDK."""
    want = expected(path)
    events = checked(
        sdk.responses.create(
            model=f"openai-responses:openai-responses/{path.stem}", input="x", stream=True
        )
    )
    final = events[-1].response
    assert events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    reasoning = "".join(
        e.delta for e in events if e.type == "response.reasoning_summary_text.delta"
    )
    calls = [
        (item.name, json.loads(item.arguments))
        for item in final.output
        if item.type == "function_call"
    ]
    assert (text, reasoning) == (want.text, want.reasoning)
    assert final.output_text == want.text
    assert calls == [c for c in want.tool_calls if c[0] != "web_search"]  # provider-run: not sent
    assert text or calls
    assert final.usage.output_tokens > 0


def test_a_form_post_is_415_in_openai_shape(server: str) -> None:
    response = httpx.post(
        f"{server}/v1/responses",
        content=b'{"model": "fake:echo", "input": "x"}',
        headers={"authorization": "Bearer alice-key", "content-type": "text/plain"},
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]["message"]


def test_the_request_limit_is_a_429_the_sdk_understands(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings = Settings(
        fake_provider=True,
        data_dir=tmp_path_factory.mktemp("responses-limits"),
        auth_tokens=TOKENS,
        limit_requests="1/hour",
    )
    app = create_app(tokenwire=Tokenwire(settings, registry=ProviderRegistry(fake=True)))
    with uvicorn_thread(app) as url, client(url) as alice:
        assert alice.responses.create(model="fake:echo", input="one").output_text == "one"
        with pytest.raises(openai.RateLimitError) as caught:
            alice.responses.create(model="fake:echo", input="two")
        assert caught.value.code == "rate_limit_exceeded"
        assert caught.value.response.headers["retry-after"].isdigit()


def test_previous_response_id_continues_the_conversation(server: str, sdk: openai.OpenAI) -> None:
    first = sdk.responses.create(model="fake:echo", input="turn one")
    second = sdk.responses.create(
        model="fake:echo", input="turn two", previous_response_id=first.id
    )
    assert second.output_text == "turn two" and second.previous_response_id == first.id
    assert conversation_of(server, second.id) == [
        ("user", "turn one"),
        ("assistant", "turn one"),
        ("user", "turn two"),
        ("assistant", "turn two"),
    ]
    # a conversation does not branch: only its latest answer can be continued
    with pytest.raises(openai.BadRequestError) as older:
        sdk.responses.create(model="fake:echo", input="x", previous_response_id=first.id)
    assert older.value.param == "previous_response_id"
    with client(server, "bob-key") as bob:
        for response_id in (second.id, "resp_unknown", "nonsense"):
            with pytest.raises(openai.NotFoundError) as caught:
                bob.responses.create(model="fake:echo", input="x", previous_response_id=response_id)
            assert caught.value.param == "previous_response_id"


def test_a_running_response_cannot_be_continued(sdk: openai.OpenAI) -> None:
    stream = sdk.responses.create(
        model="fake:lorem", input="x", stream=True, extra_body={"params": {"stall_after": 1}}
    )
    events = iter(stream)
    rid = next(events).response.id
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="fake:echo", input="x", previous_response_id=rid)
    assert caught.value.param == "previous_response_id"
    assert "in progress" in caught.value.message
    sdk.responses.cancel(rid)
    assert [e.type for e in events][-1] == "response.incomplete"
