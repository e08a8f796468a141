"""Conversations over the native HTTP API, on a real server on 127.0.0.1: where they came
from (``source``), title search (``q``), rename (``PATCH``) and edit-and-resend or
regenerate (``from_message_id`` of ``POST /v1/chat``); another user gets 404."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.servers import uvicorn_thread
from tests.support.sse import read_sse, text_of
from tokenwire import Settings, create_app

ALICE = {"Authorization": "Bearer token-of-alice"}
BOB = {"Authorization": "Bearer token-of-bob"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir: Path = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TOKENWIRE_FAKE_PROVIDER", "1")  # fake: models, wherever that is a setting
        settings = Settings(
            data_dir=data_dir,
            default_model="fake:echo",
            auth_tokens={"token-of-alice": "alice", "token-of-bob": "bob"},
            allow_anonymous=True,  # anonymous callers beside alice and bob
        )
    with uvicorn_thread(create_app(settings)) as url:
        yield url


@pytest.fixture
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=30) as c:
        yield c


def start(client: httpx.Client, text: str = "hello", **body: Any) -> dict[str, Any]:
    headers = body.pop("headers", None)
    body.setdefault("messages", [{"role": "user", "content": text}])
    response = client.post("/v1/chat", json=body, headers=headers)
    assert response.status_code == 202, response.text
    started: dict[str, Any] = response.json()
    read_sse(client, "GET", started["events_url"], headers=headers)
    return started


def listed(client: httpx.Client, headers: dict[str, str] | None = None, **query: str) -> list[str]:
    response = client.get("/v1/conversations", params=query, headers=headers)
    assert response.status_code == 200, response.text
    return [c["id"] for c in response.json()["data"]]


def test_source_is_recorded_and_filters_the_list(client: httpx.Client) -> None:
    page = start(client, "from the page", source="page")["conversation_id"]
    api = start(client, "from the api")["conversation_id"]
    assert client.get(f"/v1/conversations/{page}").json()["source"] == "page"
    assert client.get(f"/v1/conversations/{api}").json()["source"] == "api"
    only_page = listed(client, source="page")
    assert page in only_page and api not in only_page
    assert {page, api} <= set(listed(client))
    # a later message does not change where the conversation came from
    start(client, "more", conversation_id=api, source="page")
    assert client.get(f"/v1/conversations/{api}").json()["source"] == "api"


def test_openai_surface_records_its_source(client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={"model": "fake:echo", "messages": [{"role": "user", "content": "via openai"}]},
    )
    assert response.status_code == 200, response.text
    data = client.get("/v1/conversations", params={"source": "openai"}).json()["data"]
    assert "via openai" in [c["title"] for c in data]


@pytest.mark.parametrize("source", ["", "Page", "a" * 33, "pa ge"])
def test_invalid_source_is_422(client: httpx.Client, source: str) -> None:
    response = client.post(
        "/v1/chat", json={"messages": [{"role": "user", "content": "x"}], "source": source}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "source"]


def test_search_titles(client: httpx.Client) -> None:
    needle = start(client, "Quarterly ZEBRA report, 100% done_now")["conversation_id"]
    other = start(client, "Something else")["conversation_id"]
    assert listed(client, q="zebra") == [needle]
    assert listed(client, q="  ZeBrA ") == [needle]
    assert listed(client, q="100%") == [needle]  # % and _ match themselves
    assert listed(client, q="0%_") == []
    assert other not in listed(client, q="zebra")
    assert listed(client, q="no-such-title-anywhere") == []


def test_rename(client: httpx.Client) -> None:
    cid = start(client, "old name")["conversation_id"]
    before = client.get(f"/v1/conversations/{cid}").json()
    response = client.patch(f"/v1/conversations/{cid}", json={"title": "  New name  "})
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "New name" and response.json()["id"] == cid
    after = client.get(f"/v1/conversations/{cid}").json()
    assert after["title"] == "New name" and after["updated_at"] == before["updated_at"]
    assert listed(client, q="new name") == [cid]


@pytest.mark.parametrize(
    "body", [{"title": ""}, {"title": "   "}, {"title": "x" * 201}, {}, {"title": "a", "x": 1}]
)
def test_rename_invalid_is_422(client: httpx.Client, body: dict[str, Any]) -> None:
    cid = start(client)["conversation_id"]
    response = client.patch(f"/v1/conversations/{cid}", json=body)
    assert response.status_code == 422, response.text


def test_another_users_conversation_is_404(client: httpx.Client) -> None:
    cid = start(client, "alice's secret", headers=ALICE, source="page")["conversation_id"]
    assert client.get(f"/v1/conversations/{cid}", headers=ALICE).status_code == 200
    renamed = client.patch(f"/v1/conversations/{cid}", json={"title": "bob was here"}, headers=BOB)
    assert renamed.status_code == 404
    assert client.patch(f"/v1/conversations/{cid}", json={"title": "x"}).status_code == 404
    assert client.get(f"/v1/conversations/{cid}", headers=ALICE).json()["title"] == "alice's secret"
    assert cid not in listed(client, BOB, q="secret")
    assert cid not in listed(client, None, source="page")
    assert listed(client, ALICE, q="secret", source="page") == [cid]
    messages = client.get(f"/v1/conversations/{cid}", headers=ALICE).json()["messages"]
    resend = client.post(
        "/v1/chat",
        json={
            "conversation_id": cid,
            "from_message_id": messages[0]["id"],
            "messages": [{"role": "user", "content": "bob's edit"}],
        },
        headers=BOB,
    )
    assert resend.status_code == 404
    assert len(client.get(f"/v1/conversations/{cid}", headers=ALICE).json()["messages"]) == 2
    assert client.patch("/v1/conversations/nope", json={"title": "x"}).status_code == 404


def test_edit_and_resend_replaces_the_message_and_what_follows(client: httpx.Client) -> None:
    first = start(client, "first question")
    cid = first["conversation_id"]
    start(client, "second question", conversation_id=cid)
    messages = client.get(f"/v1/conversations/{cid}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    edited = start(
        client,
        "second question, edited",
        conversation_id=cid,
        from_message_id=messages[2]["id"],
    )
    events, _ = read_sse(client, "GET", edited["events_url"])
    assert text_of(events) == "second question, edited"
    after = client.get(f"/v1/conversations/{cid}").json()["messages"]
    assert [m["id"] for m in after[:2]] == [messages[0]["id"], messages[1]["id"]]
    assert [m["role"] for m in after] == ["user", "assistant", "user", "assistant"]
    assert after[2]["parts"] == [{"type": "text", "text": "second question, edited"}]
    assert after[3]["id"] == edited["message_id"]


def test_regenerate_supersedes_the_running_answer(client: httpx.Client) -> None:
    running = client.post(
        "/v1/chat",
        json={
            "model": "fake:lorem",
            "params": {"stall_after": 1},
            "messages": [{"role": "user", "content": "again please"}],
        },
    ).json()
    cid = running["conversation_id"]
    messages = client.get(f"/v1/conversations/{cid}").json()["messages"]
    again = start(
        client,
        "again please",
        model="fake:echo",
        conversation_id=cid,
        from_message_id=messages[0]["id"],
    )
    events, _ = read_sse(client, "GET", running["events_url"])
    assert events[-1]["type"] == "cancelled" and events[-1]["reason"] == "superseded"
    after = client.get(f"/v1/conversations/{cid}").json()["messages"]
    assert [m["role"] for m in after] == ["user", "assistant"]
    assert after[1]["id"] == again["message_id"] and after[1]["status"] == "completed"
    assert after[1]["parts"] == [{"type": "text", "text": "again please"}]


@pytest.mark.parametrize(
    ("extra", "status", "field"),
    [
        ({"from_message_id": "nope"}, 422, "conversation_id"),
        ({"from_message_id": "nope", "conversation_id": "CID"}, 422, "from_message_id"),
        ({"from_message_id": "MID", "conversation_id": "CID", "model": "nope:x"}, 422, "model"),
        ({"from_message_id": "MID", "conversation_id": "missing"}, 404, None),
    ],
)
def test_from_message_id_errors_delete_nothing(
    client: httpx.Client, extra: dict[str, str], status: int, field: str | None
) -> None:
    started = start(client, "keep me")
    cid = started["conversation_id"]
    mid = client.get(f"/v1/conversations/{cid}").json()["messages"][0]["id"]
    body = {k: v.replace("CID", cid).replace("MID", mid) for k, v in extra.items()}
    response = client.post(
        "/v1/chat", json={"messages": [{"role": "user", "content": "x"}], **body}
    )
    assert response.status_code == status, response.text
    if field is not None:
        assert response.json()["detail"][0]["loc"] == ["body", field]
    assert len(client.get(f"/v1/conversations/{cid}").json()["messages"]) == 2


def test_regenerate_with_no_new_message_answers_the_history_again(client: httpx.Client) -> None:
    first = start(client, "say this back")
    cid = first["conversation_id"]
    again = start(client, conversation_id=cid, from_message_id=first["message_id"], messages=[])
    events, _ = read_sse(client, "GET", again["events_url"])
    assert text_of(events) == "say this back"
    after = client.get(f"/v1/conversations/{cid}").json()["messages"]
    assert [m["role"] for m in after] == ["user", "assistant"]
    assert after[1]["id"] == again["message_id"] != first["message_id"]
    empty = client.post("/v1/chat", json={"messages": [], "conversation_id": cid})
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "messages"]
