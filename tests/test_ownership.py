"""Identity and ownership on every surface, against a real server on 127.0.0.1.

alice and bob have tokens (and alice a JWT). For every route that reaches a
conversation, stream or channel: bob gets what an unknown id gets (404), a caller
without identity gets 401, nothing of alice's changes, and alice herself succeeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.servers import free_port, uvicorn_thread
from tokenwire import AuthenticationError, Identity, Settings, Tokenwire, create_app
from tokenwire.engine.identity import JWTVerifier
from tokenwire.errors import ConfigurationError
from tokenwire.server.identity import is_loopback

TOKENS = {"ta": "alice", "tb": "bob"}
ALICE = {"authorization": "Bearer ta"}
BOB = {"authorization": "Bearer tb"}
NOBODY: dict[str, str] = {}
SECRET = "s3cret-for-the-tests-of-tokenwire-0123456789"
SLOW = {"tokens": 3000, "delay_ms": 20}
"""A generation that runs for about a minute unless stopped."""


def _rsa() -> tuple[Any, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, _public_pem(key)


def _ec() -> tuple[Any, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _public_pem(key)


def _public_pem(key: Any) -> str:
    return str(
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


RSA_KEY, RSA_PEM = _rsa()


def token(key: Any = SECRET, alg: str = "HS256", **claims: Any) -> str:
    claims.setdefault("sub", "alice")
    claims.setdefault("exp", int(time.time()) + 600)
    return jwt.encode(claims, key, algorithm=alg)


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


def settings(data_dir: Path, **more: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        default_model="fake:echo",
        models=["fake:echo", "fake:lorem"],
        fake_provider=True,  # TOKENWIRE_FAKE_PROVIDER (ignored where it does not exist yet)
        auth_tokens=TOKENS,
        jwt_secret=SECRET,
        jwt_public_key=RSA_PEM,
        orphan_timeout=None,
        limit_concurrent_streams=0,  # this module runs many stalled generations per user
        coalesce_ms=0,
        heartbeat_interval=0.5,
        **more,
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with uvicorn_thread(create_app(settings(tmp_path_factory.mktemp("owned")))) as url:
        yield url


@pytest.fixture(scope="module")
def open_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same, with ``allow_anonymous``."""
    data_dir = tmp_path_factory.mktemp("open")
    with uvicorn_thread(create_app(settings(data_dir, allow_anonymous=True))) as url:
        yield url


@pytest.fixture
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=15) as c:
        yield c


@dataclass
class Alice:
    """What alice has running, started on each surface."""

    cid: str
    """conversation of the native API, with ``sid`` streaming in it"""
    sid: str
    openai_sid: str
    """stream started by ``/v1/chat/completions`` (its ``x-tokenwire-stream-id``)"""
    openai_cid: str
    chat: str
    """AI SDK chat id, with ``chat_sid`` streaming in it"""
    chat_sid: str


def start_native(client: httpx.Client, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    body.setdefault("messages", [{"role": "user", "content": "hello"}])
    body.setdefault("model", "fake:lorem")
    body.setdefault("params", SLOW)
    response = client.post("/v1/chat", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def ui_body(chat: str, text: str = "hi", **more: Any) -> dict[str, Any]:
    message = {"id": f"u-{text}", "role": "user", "parts": [{"type": "text", "text": text}]}
    return {
        "id": chat,
        "messages": [message],
        "trigger": "submit-message",
        "model": "fake:lorem",
        "params": SLOW,
        **more,
    }


def agui_body(thread: str) -> dict[str, Any]:
    """An AG-UI ``RunAgentInput`` adding a user message to ``thread``."""
    return {
        "threadId": thread,
        "runId": "r",
        "messages": [{"id": "u", "role": "user", "content": "injected"}],
        "forwardedProps": {"model": "fake:lorem", "params": SLOW},
    }


def started_stream_id(client: httpx.Client, path: str, body: dict[str, Any]) -> str:
    """POST a streaming request, keep its stream id header, hang up (not a stop)."""
    with client.stream("POST", path, json=body, headers=ALICE) as response:
        assert response.status_code == 200, response.read()
        return response.headers["x-tokenwire-stream-id"]


@pytest.fixture
def alice(client: httpx.Client) -> Alice:
    native = start_native(client, ALICE)
    openai_sid = started_stream_id(
        client,
        "/v1/chat/completions",
        {"model": "fake:lorem", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    )
    first = client.get(f"/v1/streams/{openai_sid}?after=0", headers=ALICE).json()["events"][0]
    chat = f"chat-{time.monotonic_ns()}"
    chat_sid = started_stream_id(client, "/api/chat", ui_body(chat))
    return Alice(
        native["conversation_id"],
        native["stream_id"],
        openai_sid,
        first["conversation_id"],
        chat,
        chat_sid,
    )


def state_of(client: httpx.Client, a: Alice) -> dict[str, Any]:
    """What bob or an anonymous caller must not be able to change."""
    return {
        "streams": [
            client.get(f"/v1/streams/{sid}", headers=ALICE).json()["status"]
            for sid in (a.sid, a.openai_sid, a.chat_sid)
        ],
        "messages": [
            [
                (m["id"], m["role"])
                for m in client.get(f"/v1/conversations/{cid}", headers=ALICE).json()["messages"]
            ]
            for cid in (a.cid, a.openai_cid, a.chat)
        ],
    }


Request = Callable[[Alice], tuple[str, str, dict[str, Any]]]
SOCKET = {"socket_id": "123.456"}
ROUTES: dict[str, tuple[Request, int, int]] = {
    # name: (request, bob's status (= an unknown id's), alice's status)
    "POST /v1/chat into her conversation": (
        lambda a: (
            "POST",
            "/v1/chat",
            {"json": {"messages": [{"role": "user", "content": "x"}], "conversation_id": a.cid}},
        ),
        404,
        202,
    ),
    "GET events": (lambda a: ("GET", f"/v1/streams/{a.sid}/events", {}), 404, 200),
    "GET events ?after (gap filling)": (
        lambda a: ("GET", f"/v1/streams/{a.sid}/events?after=1", {}),
        404,
        200,
    ),
    "GET snapshot": (lambda a: ("GET", f"/v1/streams/{a.sid}", {}), 404, 200),
    "long poll": (lambda a: ("GET", f"/v1/streams/{a.sid}?after=0&wait=0.2", {}), 404, 200),
    "cancel": (lambda a: ("POST", f"/v1/streams/{a.sid}/cancel", {}), 404, 202),
    "GET conversation": (lambda a: ("GET", f"/v1/conversations/{a.cid}", {}), 404, 200),
    "DELETE conversation": (lambda a: ("DELETE", f"/v1/conversations/{a.cid}", {}), 404, 204),
    "openai stream: events by x-tokenwire-stream-id": (
        lambda a: ("GET", f"/v1/streams/{a.openai_sid}/events", {}),
        404,
        200,
    ),
    "openai stream: cancel": (
        lambda a: ("POST", f"/v1/streams/{a.openai_sid}/cancel", {}),
        404,
        202,
    ),
    "openai conversation": (
        lambda a: ("GET", f"/v1/conversations/{a.openai_cid}", {}),
        404,
        200,
    ),
    "POST /api/chat into her chat": (
        lambda a: ("POST", "/api/chat", {"json": ui_body(a.chat, "injected")}),
        404,
        200,
    ),
    "POST /api/chat regenerate-message": (
        lambda a: (
            "POST",
            "/api/chat",
            {"json": ui_body(a.chat, trigger="regenerate-message", messageId="whatever")},
        ),
        404,
        200,
    ),
    "GET /api/chat/{id}/stream": (
        lambda a: ("GET", f"/api/chat/{a.chat}/stream", {}),
        204,  # what an unknown chat answers: nothing to resume (the AI SDK protocol)
        200,
    ),
    "POST /api/chat/{id}/stop": (
        lambda a: ("POST", f"/api/chat/{a.chat}/stop", {"json": {}}),
        404,
        200,
    ),
    "POST /api/agui into her thread": (
        lambda a: ("POST", "/api/agui", {"json": agui_body(a.chat)}),
        404,
        200,
    ),
    "GET /api/agui/{id}/stream": (
        lambda a: ("GET", f"/api/agui/{a.chat}/stream", {}),
        204,  # what an unknown thread answers: nothing to reconnect to
        200,
    ),
    "AI SDK stream: events by x-tokenwire-stream-id": (
        lambda a: ("GET", f"/v1/streams/{a.chat_sid}/events", {}),
        404,
        200,
    ),
    "/broadcasting/auth private": (
        lambda a: (
            "POST",
            "/broadcasting/auth",
            {"data": {**SOCKET, "channel_name": f"private-conversation.{a.cid}"}},
        ),
        404,
        200,
    ),
    "/broadcasting/auth presence": (
        lambda a: (
            "POST",
            "/broadcasting/auth",
            {"data": {**SOCKET, "channel_name": f"presence-conversation.{a.chat}"}},
        ),
        404,
        200,
    ),
    "/broadcasting/auth encrypted": (
        lambda a: (
            "POST",
            "/broadcasting/auth",
            {"data": {**SOCKET, "channel_name": f"private-encrypted-conversation.{a.cid}"}},
        ),
        404,
        # the test server's Pusher app has no encryption master key: 400 after the check
        400,
    ),
}


def status(client: httpx.Client, request: tuple[str, str, dict[str, Any]], **kw: Any) -> int:
    """The status of a request, hanging up at once on a streamed answer."""
    method, url, options = request
    with client.stream(method, url, **options, **kw) as response:
        return response.status_code


def unknown(a: Alice) -> Alice:
    return Alice("nope1", "nope2", "nope3", "nope4", "nope5", "nope6")


CREATES = {
    "POST /api/chat into her chat",
    "POST /api/chat regenerate-message",
    "POST /api/agui into her thread",
}
"""Routes where an unknown id is created (the AI SDK's and AG-UI's clients pick the ids)."""


@pytest.mark.parametrize("route", ROUTES)
def test_another_user_gets_404_and_nobody_gets_401(
    client: httpx.Client, alice: Alice, route: str
) -> None:
    request, bob_status, alice_status = ROUTES[route]
    before = state_of(client, alice)
    if route not in CREATES:
        assert status(client, request(unknown(alice)), headers=BOB) == bob_status
    assert status(client, request(alice), headers=BOB) == bob_status
    anonymous = client.request(*request(alice)[:2], **request(alice)[2])
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert "authentication required" in anonymous.text
    assert state_of(client, alice) == before  # nothing cancelled, injected or deleted
    assert status(client, request(alice), headers=ALICE) == alice_status
    alice_jwt = bearer(token())  # the same user, by JWT
    if route not in ("DELETE conversation", "POST /api/chat regenerate-message"):
        assert status(client, request(alice), headers=alice_jwt) == alice_status


def test_bob_404_is_the_unknown_ids_404(client: httpx.Client, alice: Alice) -> None:
    for path in (f"/v1/streams/{alice.sid}", f"/v1/conversations/{alice.cid}"):
        foreign = client.get(path, headers=BOB)
        missing = client.get(path.replace(alice.sid, "x").replace(alice.cid, "x"), headers=BOB)
        assert (foreign.status_code, foreign.json()) == (missing.status_code, missing.json())
    chat = client.post(f"/api/chat/{alice.chat}/stop", json={}, headers=BOB)
    assert chat.status_code == 404 and chat.json() == {"detail": "chat not found"}


def test_every_surface_makes_the_creator_the_owner(client: httpx.Client, alice: Alice) -> None:
    listed = "/v1/conversations?limit=200"
    mine = {c["id"] for c in client.get(listed, headers=ALICE).json()["data"]}
    assert {alice.cid, alice.openai_cid, alice.chat} <= mine
    theirs = {c["id"] for c in client.get(listed, headers=BOB).json()["data"]}
    assert not theirs & mine
    assert client.get("/v1/conversations", headers=NOBODY).status_code == 401


def test_models_and_user_auth_need_an_identity(client: httpx.Client) -> None:
    assert client.get("/v1/models", headers=NOBODY).status_code == 401
    assert client.get("/v1/models", headers=BOB).status_code == 200
    refused = client.post("/broadcasting/user-auth", data=SOCKET)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["error"].startswith("authentication required")
    signed = client.post("/broadcasting/user-auth", data=SOCKET, headers=BOB)
    assert signed.status_code == 200 and json.loads(signed.json()["user_data"])["id"] == "bob"
    assert client.get("/healthz").status_code == 200  # operations stay open


def test_openai_surface_answers_401_in_openais_shape(client: httpx.Client) -> None:
    body = {"model": "fake:echo", "messages": [{"role": "user", "content": "x"}]}
    response = client.post("/v1/chat/completions", json=body, headers=bearer("wrong"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    error = response.json()["error"]
    assert (
        error["code"] == "invalid_api_key" and error["message"] == "the bearer token is not valid"
    )
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


# -- JWT --------------------------------------------------------------------------------------


JWT_CASES: dict[str, tuple[Callable[[], str], int, str]] = {
    "HS256": (lambda: token(), 200, ""),
    "RS256": (lambda: token(RSA_KEY, "RS256"), 200, ""),
    "expired": (lambda: token(exp=int(time.time()) - 5), 401, "expired"),
    "not yet valid": (lambda: token(nbf=int(time.time()) + 300), 401, "not valid yet"),
    "wrong secret": (lambda: token("another-secret-another-secret-0123"), 401, "signature"),
    "wrong RSA key": (lambda: token(_rsa()[0], "RS256"), 401, "signature"),
    "an algorithm not configured": (lambda: token(_ec()[0], "ES256"), 401, "ES256"),
    "no sub": (lambda: jwt.encode({"exp": time.time() + 60}, SECRET, "HS256"), 401, "sub"),
    "an aud nobody asked for": (lambda: token(aud="elsewhere"), 401, "audience"),
    "garbage": (lambda: "a.b.c", 401, "not a valid JWT"),
    "unsigned": (lambda: jwt.encode({"sub": "alice"}, None, algorithm="none"), 401, "'none'"),
}


@pytest.mark.parametrize("case", JWT_CASES)
def test_jwt(client: httpx.Client, case: str) -> None:
    make, expected, reason = JWT_CASES[case]
    response = client.get("/v1/conversations", headers=bearer(make()))
    assert response.status_code == expected, response.text
    if expected == 401:
        assert reason in response.json()["detail"]
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_jwt_subject_owns_what_it_starts(client: httpx.Client) -> None:
    carol = bearer(token(sub="carol", name="Carol"))
    started = start_native(client, carol, model="fake:echo", params={})
    assert client.get(f"/v1/streams/{started['stream_id']}", headers=carol).status_code == 200
    assert client.get(f"/v1/streams/{started['stream_id']}", headers=ALICE).status_code == 404
    auth = client.post(
        "/broadcasting/auth",
        data={**SOCKET, "channel_name": f"presence-conversation.{started['conversation_id']}"},
        headers=carol,
    ).json()
    assert json.loads(auth["channel_data"]) == {"user_id": "carol", "user_info": {"name": "Carol"}}


def test_jwt_verifier_algorithms() -> None:
    ec_key, ec_pem = _ec()
    verifier = JWTVerifier(public_key=ec_pem, audience="tw", issuer="https://issuer")
    good = token(ec_key, "ES256", aud="tw", iss="https://issuer")
    assert verifier.verify(good) == Identity("alice", {"name": "alice"})
    for bad, reason in [
        (token(ec_key, "ES256", aud="other", iss="https://issuer"), "audience"),
        (token(ec_key, "ES256", aud="tw", iss="https://other"), "issuer"),
        (token(SECRET, "HS256", aud="tw", iss="https://issuer"), "HS256"),
        (token(ec_key, "ES256", aud="tw", iss="https://issuer", sub=""), "sub"),
    ]:
        with pytest.raises(AuthenticationError, match=reason) as caught:
            verifier.verify(bad)
        assert caught.value.invalid_token
    with pytest.raises(ConfigurationError, match="PEM"):
        JWTVerifier(public_key="-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----")
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        JWTVerifier(secret="short")
    with pytest.raises(ConfigurationError, match="readable file"):
        JWTVerifier(public_key="/no/such/key.pem")


def test_jwt_public_key_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text(RSA_PEM)
    verifier = JWTVerifier(public_key=str(path))
    assert verifier.verify(token(RSA_KEY, "RS256", sub="dan")).id == "dan"


# -- anonymous callers allowed ------------------------------------------------------------


def test_anonymous_allowed_still_cannot_touch_owned_things(open_base: str) -> None:
    with httpx.Client(base_url=open_base, timeout=15) as client:
        owned = start_native(client, ALICE)
        body = {
            "messages": [{"role": "user", "content": "x"}],
            "conversation_id": owned["conversation_id"],
        }
        refused = client.post("/v1/chat", json=body)
        assert refused.status_code == 404
        # her answer was not superseded, her history not sent anywhere
        assert client.get(f"/v1/streams/{owned['stream_id']}", headers=ALICE).json()["status"] == (
            "running"
        )
        messages = client.get(f"/v1/conversations/{owned['conversation_id']}", headers=ALICE)
        assert [m["role"] for m in messages.json()["messages"]] == ["user", "assistant"]
        assert client.get(f"/v1/streams/{owned['stream_id']}/events").status_code == 404
        assert client.post(f"/v1/streams/{owned['stream_id']}/cancel").status_code == 404
        assert client.post(f"/api/chat/{owned['conversation_id']}/stop", json={}).status_code == 404
        shared = start_native(client, NOBODY, model="fake:echo", params={})
        assert client.get(f"/v1/conversations/{shared['conversation_id']}").status_code == 200
        assert (
            client.get(f"/v1/conversations/{shared['conversation_id']}", headers=BOB).status_code
            == 200
        )  # nobody's: anybody's who knows the id
        client.post(f"/v1/streams/{owned['stream_id']}/cancel", headers=ALICE)


@pytest.mark.parametrize(
    "credentials",
    [
        bearer("unknown-token"),
        bearer(token(exp=int(time.time()) - 5)),
        bearer("a.b.c"),
        {"authorization": "Bearer"},
    ],
)
def test_anonymous_allowed_but_a_bad_token_is_401(
    open_base: str, credentials: dict[str, str]
) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "model": "fake:echo"}
    response = httpx.post(open_base + "/v1/chat", json=body, headers=credentials)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_paging_skips_only_what_the_caller_may_not_see(open_base: str) -> None:
    with httpx.Client(base_url=open_base, timeout=15) as client:
        user = bearer(token(sub=f"pager-{time.monotonic_ns()}"))
        echo = {"model": "fake:echo", "params": {}}
        mine = [start_native(client, user, **echo)["conversation_id"] for _ in range(3)]
        for who in (NOBODY, NOBODY, NOBODY, BOB, BOB):  # newer, others' (bob's newest)
            start_native(client, who, **echo)
        page = client.get("/v1/conversations?limit=2", headers=user).json()["data"]
        assert [c["id"] for c in page] == [mine[2], mine[1]]
        rest = client.get(
            "/v1/conversations", params={"limit": 2, "before": page[-1]["updated_at"]}, headers=user
        ).json()["data"]
        assert [c["id"] for c in rest] == [mine[0]]
        anonymous = client.get("/v1/conversations?limit=2").json()["data"]
        assert len(anonymous) == 2  # the newest conversations nobody owns, not []
        for conversation in anonymous:
            assert client.get(f"/v1/conversations/{conversation['id']}").status_code == 200


# -- the identify hook ---------------------------------------------------------------------


def test_identify_hook(tmp_path: Path) -> None:
    async def by_header(request: Any) -> Identity | None:
        user = request.headers.get("x-user")
        if user == "mallory":
            raise AuthenticationError("mallory is banned", invalid_token=True)
        return Identity(user, {"name": user.title()}) if user else None

    tw = Tokenwire(
        Settings(
            data_dir=tmp_path,
            default_model="fake:echo",
            models=["fake:echo"],
            fake_provider=True,
        ),
        identify=by_header,
    )
    with uvicorn_thread(create_app(tokenwire=tw)) as url, httpx.Client(base_url=url) as client:
        started = start_native(client, {"x-user": "erin"}, model="fake:echo", params={})
        cid = started["conversation_id"]
        assert client.get(f"/v1/conversations/{cid}", headers={"x-user": "erin"}).status_code == 200
        assert (
            client.get(f"/v1/conversations/{cid}", headers={"x-user": "frank"}).status_code == 404
        )
        assert client.get(f"/v1/conversations/{cid}").status_code == 401  # a hook is a source
        banned = client.get("/v1/conversations", headers={"x-user": "mallory"})
        assert banned.status_code == 401 and banned.json() == {"detail": "mallory is banned"}


# -- cross-site requests: JSON only ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/chat", "text/plain"),
        ("/v1/chat", None),
        ("/v1/chat", "application/x-www-form-urlencoded"),
        ("/v1/chat/completions", "text/plain"),
        ("/api/chat", "text/plain"),
        ("/api/chat", "multipart/form-data; boundary=x"),
        ("/api/chat/{chat}/stop", None),
        ("/api/chat/{chat}/stop", "text/plain"),
    ],
)
def test_json_endpoints_refuse_other_content_types(
    client: httpx.Client, alice: Alice, path: str, kind: str | None
) -> None:
    body = {
        "/v1/chat": {"messages": [{"role": "user", "content": "x"}], "model": "fake:echo"},
        "/v1/chat/completions": {
            "model": "fake:echo",
            "messages": [{"role": "user", "content": "x"}],
        },
        "/api/chat": ui_body(alice.chat),
    }.get(path, {})
    headers = {**ALICE, **({"content-type": kind} if kind else {})}
    before = state_of(client, alice)
    response = client.post(
        path.format(chat=alice.chat), content=json.dumps(body).encode(), headers=headers
    )
    assert response.status_code == 415, response.text
    message = (
        response.json()["error"]["message"] if "completions" in path else response.json()["detail"]
    )
    assert "application/json" in message
    assert state_of(client, alice) == before
    ok = (path.format(chat=alice.chat), {"json": body, "headers": ALICE})
    assert status(client, ("POST", *ok)) in (200, 202)


# -- tokenwire serve on a reachable interface ------------------------------------------------


def _serve(host: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
    return subprocess.run(
        [sys.executable, "-m", "tokenwire", "serve", "--host", host, "--port", str(free_port())],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_refuses_a_non_loopback_host_without_identity(tmp_path: Path) -> None:
    result = _serve("0.0.0.0", TOKENWIRE_DATA_DIR=str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "0.0.0.0" in lines[0] and "TOKENWIRE_AUTH_TOKENS" in lines[0]
    assert "TOKENWIRE_ALLOW_ANONYMOUS=1" in lines[0]


def test_serve_refuses_an_unreadable_jwt_key(tmp_path: Path) -> None:
    result = _serve(
        "127.0.0.1", TOKENWIRE_DATA_DIR=str(tmp_path), TOKENWIRE_JWT_PUBLIC_KEY="not a key"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tokenwire: TOKENWIRE_JWT_PUBLIC_KEY is neither a PEM public key nor a readable file "
        "(No such file or directory)"
    ]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.2", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
