"""Unmodified ``laravel-echo`` and ``pusher-js`` (Node, ``tests/pusher/clients.mjs``)
and the Python ``pusher`` library against a real tokenwire server on 127.0.0.1.

``clients.mjs`` speaks JSON lines: :class:`NodeClients` writes commands on its stdin
(``{"do": "subscribe", …}``) and waits, with a deadline, for the observations it prints
(``{"on": "subscribed", …}``). Nothing here sleeps to synchronise: absence is proven
with a barrier (a later event that would have come after the unwanted one on the same
connection), except where a client must be shown *not* to reconnect (a quiet window
longer than every ``pusher-js`` retry delay).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pusher.errors import PusherError
from pusher.http import POST, Request
from pusher.pusher import Pusher
from pusher.pusher_client import PusherClient

from tests.support.node import node_with_pusher, start_node
from tests.support.servers import free_port, uvicorn_thread, wait_for_http
from tokenwire import Settings, create_app
from tokenwire.settings import PusherApp

pytestmark = pytest.mark.slow

APP_ID, KEY, SECRET = "1001", "key1", "secret1"  # the Python pusher library wants a numeric id
TOKENS = {"token-alice": "alice", "token-bob": "bob"}
STREAM_EVENTS = [
    "start",
    "text-delta",
    "reasoning-delta",
    "tool-call-start",
    "tool-call-delta",
    "tool-call",
    "source",
    "usage",
    "finish",
    "error",
    "cancelled",
]
WAIT = 20.0
"""Seconds to wait for one expected observation."""
QUIET = 3.0
"""Seconds a refused client must stay disconnected: longer than pusher-js's retry
delays (0 s for 4200-4299, 1 s for 4100-4199 and after an unexpected close)."""


def settings_for(data_dir: Path, **app: Any) -> Settings:
    return Settings(
        fake_provider=True,
        data_dir=data_dir,
        default_model="fake:echo",
        models=["fake:echo", "fake:lorem"],
        pusher_apps=[PusherApp(id=APP_ID, key=KEY, secret=SECRET, **app)],
        auth_tokens=TOKENS,
        allow_anonymous=True,  # some tests need conversations nobody owns
        coalesce_ms=0,
    )


@pytest.fixture(scope="module")
def node() -> str:
    return node_with_pusher()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with uvicorn_thread(create_app(settings_for(tmp_path_factory.mktemp("data")))) as url:
        yield url


def api(base: str) -> Pusher:
    """The Python ``pusher`` library, pointed at ``base``."""
    port = urlsplit(base).port
    assert port is not None
    return Pusher(APP_ID, KEY, SECRET, host="127.0.0.1", port=port, ssl=False)


def new_conversation(base: str, token: str | None) -> str:
    """``POST /v1/chat`` (fake:echo): a conversation owned by ``token``'s user, or by
    nobody without a token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(
        base + "/v1/chat",
        json={"messages": [{"role": "user", "content": "hello"}]},
        headers=headers,
        timeout=10,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["conversation_id"])


class NodeClients:
    """One ``clients.mjs`` process: any number of named Echo / pusher-js clients."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self._taken: set[int] = set()
        self._stderr: collections.deque[str] = collections.deque(maxlen=500)
        self._cond = threading.Condition()
        self._eof = False
        self._ids = 0
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.expect("ready")

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                item = json.loads(line)
            except ValueError:
                item = {"on": "garbage", "line": line}
            with self._cond:
                self.lines.append(item)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def send(self, command: str, **fields: Any) -> int:
        assert self.proc.stdin is not None
        self._ids += 1
        self.proc.stdin.write(json.dumps({"do": command, "id": self._ids, **fields}) + "\n")
        self.proc.stdin.flush()
        return self._ids

    def do(self, command: str, **fields: Any) -> dict[str, Any]:
        """Run a command; its acknowledgement (``clients.mjs`` runs them in order)."""
        ident = self.send(command, **fields)
        done = self.expect(
            lambda line: line.get("id") == ident and line["on"] in {"done", "failed"}
        )
        assert done["on"] == "done", f"{command} failed in node: {done.get('error')}"
        return done

    def _matches(self, line: dict[str, Any], on: Any, fields: dict[str, Any]) -> bool:
        if callable(on):
            if not on(line):
                return False
        elif line.get("on") != on:
            return False
        return all(
            (want(line.get(k)) if callable(want) else line.get(k) == want)
            for k, want in fields.items()
        )

    def _find(
        self, on: str | Callable[[dict[str, Any]], bool], timeout: float, fields: dict[str, Any]
    ) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index, line in enumerate(self.lines):
                    if line.get("on") == "fatal":
                        raise AssertionError(f"node client crashed: {line['error']}")
                    if index not in self._taken and self._matches(line, on, fields):
                        self._taken.add(index)
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    return None
                self._cond.wait(left)

    def expect(
        self, on: str | Callable[[dict[str, Any]], bool], timeout: float = WAIT, **fields: Any
    ) -> dict[str, Any]:
        """The first observation not yet taken matching ``on`` (its ``on`` value or a
        predicate) and ``fields`` (values or predicates), waiting up to ``timeout`` s."""
        line = self._find(on, timeout, fields)
        if line is None:
            state = "exited" if self._eof else "running"
            raise AssertionError(
                f"no {on!r} {fields} within {timeout} s (node {state}); "
                f"last lines: {self.lines[-15:]}; stderr: {''.join(self._stderr)[-2000:]}"
            )
        return line

    def seen(self, on: str, **fields: Any) -> list[dict[str, Any]]:
        """Every observation so far matching ``on`` and ``fields``, taken or not."""
        with self._cond:
            return [line for line in self.lines if self._matches(line, on, fields)]

    def stays_quiet(self, on: str, seconds: float, **fields: Any) -> None:
        """Assert no observation matching ``on``/``fields`` arrives within ``seconds``."""
        line = self._find(on, seconds, fields)
        assert line is None, f"unexpected {line}; all lines: {self.lines}"

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    self.send("exit")
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()
            for thread in self._threads:
                thread.join(timeout=5)


@contextlib.contextmanager
def node_clients(node: str, base: str) -> Iterator[NodeClients]:
    port = urlsplit(base).port
    config = {"host": "127.0.0.1", "port": port, "key": KEY, "base": base}
    config["debug"] = bool(os.environ.get("TOKENWIRE_TEST_PUSHER_DEBUG"))
    proc = start_node(node, "clients.mjs", config)
    clients = None
    try:
        clients = NodeClients(proc)
        yield clients
    finally:
        if clients is not None:
            clients.close()
        else:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def connect(
    nc: NodeClients, client: str, token: str | None, via: str = "echo", **extra: Any
) -> str:
    """Start a client; its ``socket_id`` once connected."""
    nc.do("connect", client=client, via=via, token=token, **extra)
    return str(nc.expect("state", client=client, current="connected")["socket_id"])


def subscribe(
    nc: NodeClients,
    client: str,
    kind: str,
    name: str,
    events: list[str] | None = None,
    whispers: list[str] | None = None,
) -> str:
    """Subscribe (Echo: ``channel``/``private``/``join``); the full channel name."""
    nc.do(
        "subscribe",
        client=client,
        type=kind,
        name=name,
        events=events or [],
        whispers=whispers or [],
    )
    return {"public": "", "private": "private-", "presence": "presence-"}[kind] + name


# -- 1. Echo subscribes to public, private and presence channels -------------------------


def test_echo_subscribes_public_private_and_presence(node: str, base: str) -> None:
    conversation = new_conversation(base, "token-alice")
    with node_clients(node, base) as nc:
        connect(nc, "alice", "token-alice")
        public = subscribe(nc, "alice", "public", "news")
        private = subscribe(nc, "alice", "private", f"conversation.{conversation}")
        presence = subscribe(nc, "alice", "presence", f"conversation.{conversation}")
        assert private == f"private-conversation.{conversation}"
        assert presence == f"presence-conversation.{conversation}"
        for channel in (public, private, presence):
            nc.expect("subscribed", client="alice", channel=channel)
        assert nc.expect("here", channel=presence)["members"] == [{"name": "alice"}]
        assert nc.seen("subscription_error") == []

        client = api(base)
        assert {public, private, presence} <= set(client.channels_info()["channels"])
        for channel in (public, private, presence):
            info = client.channel_info(channel, ["subscription_count"])
            assert info == {"occupied": True, "subscription_count": 1}, info
        assert client.users_info(presence) == {"users": [{"id": "alice"}]}


# -- 2. events from the Python pusher library ---------------------------------------------


def test_python_pusher_trigger_reaches_echo_with_exact_data(node: str, base: str) -> None:
    conversation = new_conversation(base, "token-alice")
    payload = {
        "text": 'naïve café ☕ \u2028 "quoted"',
        "n": [1, 2.5, None, True],
        "nested": {"a": {}},
    }
    with node_clients(node, base) as nc:
        alice = connect(nc, "alice", "token-alice")
        connect(nc, "tab2", "token-alice")
        channels = []
        for client in ("alice", "tab2"):
            channels = [
                subscribe(nc, client, "public", "t2-news", events=["Posted", "plain", "batched"]),
                subscribe(
                    nc,
                    client,
                    "private",
                    f"conversation.{conversation}",
                    events=["Posted", "batched"],
                ),
            ]
            for channel in channels:
                nc.expect("subscribed", client=client, channel=channel)
        public, private = channels

        client = api(base)
        client.trigger([public, private], "Posted", payload)
        client.trigger(public, "plain", "just text, not JSON")
        for who in ("alice", "tab2"):
            for channel in (public, private):
                got = nc.expect("event", client=who, channel=channel, event="Posted")
                assert got["data"] == payload
            assert nc.expect("event", client=who, event="plain")["data"] == "just text, not JSON"

        # socket_id excludes that connection (Laravel's broadcast()->toOthers())
        client.trigger(private, "Posted", {"to": "others"}, socket_id=alice)
        client.trigger_batch(
            [
                {"channel": public, "name": "batched", "data": {"i": 1}},
                {"channel": private, "name": "batched", "data": {"i": 2}},
            ]
        )
        assert nc.expect("event", client="tab2", event="Posted")["data"] == {"to": "others"}
        for who in ("alice", "tab2"):
            assert nc.expect("event", client=who, channel=public, event="batched")["data"] == {
                "i": 1
            }
            assert nc.expect("event", client=who, channel=private, event="batched")["data"] == {
                "i": 2
            }
        # alice got the batch, sent after the excluded event, on the same connection
        assert nc.seen("event", client="alice", data={"to": "others"}) == []


# -- 3. a tokenwire stream on private-conversation.{id} ------------------------------------


def test_echo_receives_a_tokenwire_stream_on_the_conversation_channel(node: str, base: str) -> None:
    token = "token-alice"
    conversation = new_conversation(base, token)
    headers = {"Authorization": f"Bearer {token}"}
    with node_clients(node, base) as nc:
        connect(nc, "alice", token)
        channel = subscribe(
            nc, "alice", "private", f"conversation.{conversation}", events=STREAM_EVENTS
        )
        nc.expect("subscribed", channel=channel)
        response = httpx.post(
            base + "/v1/chat",
            json={
                "conversation_id": conversation,
                "model": "fake:lorem",
                "params": {"tokens": 50, "delay_ms": 20},
                "messages": [{"role": "user", "content": "more please"}],
            },
            headers=headers,
            timeout=10,
        )
        assert response.status_code == 202, response.text
        started = response.json()
        assert started["conversation_id"] == conversation
        nc.expect("event", channel=channel, event="finish", timeout=60)
        events = [
            line["data"] | {"type": line["event"]}
            for line in nc.seen("event", channel=channel)
            if line["data"]["stream_id"] == started["stream_id"]
        ]

    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert seqs[0] == 1 and events[0]["type"] == "start", events[0]
    assert events[0]["message_id"] == started["message_id"]
    assert events[-1]["type"] == "finish" and events[-1]["finish_reason"] == "stop"
    text = "".join(e["delta"] for e in events if e["type"] == "text-delta")
    assert len(text.split(" ")) == 50

    with httpx.Client(base_url=base, headers=headers, timeout=10) as http:
        snapshot = http.get(f"/v1/streams/{started['stream_id']}").json()
        assert snapshot["text"] == text and snapshot["last_seq"] == seqs[-1]
        deadline = time.monotonic() + WAIT
        while True:  # the store's copy is written when the generation ends
            messages = http.get(f"/v1/conversations/{conversation}").json()["messages"]
            stored = next(m for m in messages if m["id"] == started["message_id"])
            if stored["status"] != "streaming" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert stored["status"] == "completed", stored
        assert stored["parts"] == [{"type": "text", "text": text}]


# -- 4. client events (whisper) -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["private", "presence"])
def test_whisper_reaches_the_other_client_not_the_sender(node: str, base: str, kind: str) -> None:
    if kind == "private":  # two tabs of the owner
        conversation = new_conversation(base, "token-alice")
        sender, receiver = ("alice-1", "token-alice"), ("alice-2", "token-alice")
    else:  # two users on a conversation nobody owns
        conversation = new_conversation(base, None)
        sender, receiver = ("bob", "token-bob"), ("alice", "token-alice")
    typing = {"user": sender[0], "typing": True, "at": [1, 2]}
    with node_clients(node, base) as nc:
        channel = ""
        for name, token in (sender, receiver):
            connect(nc, name, token)
            channel = subscribe(
                nc,
                name,
                kind,
                f"conversation.{conversation}",
                events=["barrier"],
                whispers=["typing"],
            )
            nc.expect("subscribed", client=name, channel=channel)
        nc.do("whisper", client=sender[0], channel=channel, event="typing", data=typing)
        got = nc.expect("whisper", client=receiver[0], channel=channel)
        assert got["event"] == "typing" and got["data"] == typing
        assert got["user_id"] == ("bob" if kind == "presence" else None)

        # the sender's own whisper would have reached it before this later event
        api(base).trigger(channel, "barrier", {})
        nc.expect("event", client=sender[0], event="barrier")
        assert nc.seen("whisper", client=sender[0]) == []


# -- 5. presence: who may join, here / joining / leaving -----------------------------------


def test_presence_refuses_a_foreign_user_and_tracks_members(node: str, base: str) -> None:
    owned = new_conversation(base, "token-alice")
    shared = new_conversation(base, None)  # no owner: any identified user may join
    client = api(base)
    with node_clients(node, base) as nc:
        connect(nc, "bob-1", "token-bob")
        refused = subscribe(nc, "bob-1", "presence", f"conversation.{owned}")
        error = nc.expect("subscription_error", client="bob-1", channel=refused)
        assert error["status"] == 404 and error["type"] == "AuthError", error

        connect(nc, "alice", "token-alice")
        channel = subscribe(nc, "alice", "presence", f"conversation.{shared}", events=["barrier"])
        assert nc.expect("here", client="alice", channel=channel)["members"] == [{"name": "alice"}]

        subscribe(nc, "bob-1", "presence", f"conversation.{shared}")
        here = nc.expect("here", client="bob-1", channel=channel)["members"]
        assert sorted(here, key=str) == [{"name": "alice"}, {"name": "bob"}]
        assert nc.expect("joining", client="alice", channel=channel)["member"] == {"name": "bob"}
        assert member_ids(client, channel) == ["alice", "bob"]

        # a second connection of bob is not a new member ...
        connect(nc, "bob-2", "token-bob")
        subscribe(nc, "bob-2", "presence", f"conversation.{shared}")
        nc.expect("subscribed", client="bob-2", channel=channel)
        client.trigger(channel, "barrier", {"n": 1})
        nc.expect("event", client="alice", data={"n": 1})
        assert len(nc.seen("joining", client="alice")) == 1

        # ... and its leaving is not bob's leaving while bob-1 stays
        nc.do("disconnect", client="bob-2")
        poll_subscriptions(client, channel, 2)
        client.trigger(channel, "barrier", {"n": 2})
        nc.expect("event", client="alice", data={"n": 2})
        assert nc.seen("leaving", client="alice") == []

        nc.do("disconnect", client="bob-1")
        assert nc.expect("leaving", client="alice", channel=channel)["member"] == {"name": "bob"}
        assert member_ids(client, channel) == ["alice"]
        client.trigger(channel, "barrier", {"n": 3})
        nc.expect("event", client="alice", data={"n": 3})
        assert len(nc.seen("leaving", client="alice")) == 1


def member_ids(client: Pusher, channel: str) -> list[str]:
    return sorted(user["id"] for user in client.users_info(channel)["users"])


def poll_subscriptions(client: Pusher, channel: str, count: int) -> None:
    """Wait until the server counts ``count`` subscriptions of ``channel``."""
    deadline = time.monotonic() + WAIT
    while True:
        info = client.channel_info(channel, ["subscription_count"])
        if info.get("subscription_count") == count:
            return
        assert time.monotonic() < deadline, f"{channel}: {info}, want {count} subscriptions"
        time.sleep(0.05)


# -- 6. close codes and pusher-js reconnects ------------------------------------------------


def terminate(base: str, user_id: str, how: str) -> None:
    """``terminate_connections`` for ``user_id``, through the Python pusher library."""
    if how == "library method":
        try:
            api(base).terminate_user_connections(user_id)
        except PusherError as exc:
            raise AssertionError(
                "Pusher.terminate_user_connections() (pusher 3.3.4) signs and POSTs "
                f"/users/{user_id}/terminate_connections (no /apps/{{app_id}} prefix); "
                f"tokenwire answered {exc!r}. The server should also accept that path "
                "(the app found by the auth_key query parameter)."
            ) from exc
    else:  # the documented path, signed by the library's own Request
        port = urlsplit(base).port
        pc = PusherClient(APP_ID, KEY, SECRET, ssl=False, host="127.0.0.1", port=port)
        path = f"/apps/{APP_ID}/users/{user_id}/terminate_connections"
        assert pc.http.send_request(Request(pc, POST, path, {})) == {}


@pytest.mark.parametrize("how", ["documented path", "library method"])
def test_terminated_user_is_closed_4009_and_not_reconnected(node: str, base: str, how: str) -> None:
    client = api(base)
    with node_clients(node, base) as nc:
        connect(nc, "alice", "token-alice", via="pusher")
        connect(nc, "bob", "token-bob", via="pusher")
        connect(nc, "anonymous-alice", "token-alice")  # same token, never signed in
        for name in ("alice", "bob"):
            nc.do("signin", client=name)
        assert nc.expect("signin_success", client="alice")["user_data"]["id"] == "alice"
        assert nc.expect("signin_success", client="bob")["user_data"]["id"] == "bob"
        for name in ("alice", "anonymous-alice", "bob"):
            subscribe(nc, name, "public", "t6a", events=["barrier"])
            nc.expect("subscribed", client=name, channel="t6a")

        client.send_to_user("alice", "hello", {"only": "alice"})
        assert nc.expect("user_event", client="alice", event="hello")["data"] == {"only": "alice"}

        terminate(base, "alice", how)
        assert nc.expect("error", client="alice", code=4009)["type"] == "PusherError"
        nc.expect("state", client="alice", previous="connected", current="disconnected")
        nc.stays_quiet("state", QUIET, client="alice")
        assert nc.do("state", client="alice")["state"] == "disconnected"

        client.trigger("t6a", "barrier", {})
        for name in ("anonymous-alice", "bob"):
            nc.expect("event", client=name, channel="t6a", event="barrier")
        assert nc.seen("user_event", client="bob") == []
        assert [s["current"] for s in nc.seen("state", client="bob")] == ["connected"]
        assert [s["current"] for s in nc.seen("state", client="anonymous-alice")] == ["connected"]


def test_over_capacity_4100_backs_off_and_connects_when_room(node: str, tmp_path: Path) -> None:
    with (
        uvicorn_thread(create_app(settings_for(tmp_path, max_connections=1))) as base,
        node_clients(node, base) as nc,
    ):
        connect(nc, "first", None)
        nc.do("connect", client="second", via="pusher", token=None)
        for _ in range(2):  # refused, and it keeps trying after backing off
            assert nc.expect("error", client="second", code=4100)["type"] == "WebSocketError"
            assert nc.expect("connecting_in", client="second")["delay"] >= 1
        nc.do("disconnect", client="first")
        nc.expect("state", client="second", current="connected")
        assert all(
            s["current"] in {"connecting", "connected", "unavailable"}
            for s in nc.seen("state", client="second")
        )
        subscribe(nc, "second", "public", "t6b", events=["hello"])
        nc.expect("subscribed", client="second", channel="t6b")
        api(base).trigger("t6b", "hello", {"room": True})
        assert nc.expect("event", client="second", event="hello")["data"] == {"room": True}


def _serve(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    """``tokenwire serve`` on a fixed port, ready (its shutdown is the CLI's: 4200 first)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
    env |= {
        "TOKENWIRE_DATA_DIR": str(data_dir),
        "TOKENWIRE_DEFAULT_MODEL": "fake:echo",
        "TOKENWIRE_FAKE_PROVIDER": "1",
        "TOKENWIRE_MODELS": json.dumps(["fake:echo", "fake:lorem"]),
        "TOKENWIRE_PUSHER_APPS": json.dumps([{"id": APP_ID, "key": KEY, "secret": SECRET}]),
        "TOKENWIRE_AUTH_TOKENS": json.dumps(TOKENS),
        "TOKENWIRE_ALLOW_ANONYMOUS": "1",
    }
    cmd = [sys.executable, "-m", "tokenwire", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], env=env)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM (uvicorn's graceful shutdown); the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_server_restart_closes_4200_and_the_client_comes_back_subscribed(
    node: str, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    servers = [_serve(port, tmp_path)]
    try:
        conversation = new_conversation(base, "token-alice")
        with node_clients(node, base) as nc:
            first_socket = connect(nc, "alice", "token-alice")
            public = subscribe(nc, "alice", "public", "t6c", events=["hello"])
            private = subscribe(
                nc, "alice", "private", f"conversation.{conversation}", events=["hello"]
            )
            for channel in (public, private):
                nc.expect("subscribed", channel=channel)

            # uvicorn re-raises the SIGTERM it handled once shut down: -15 is a clean exit
            assert _stop(servers[0]) in (0, -signal.SIGTERM)
            error = nc.expect("error", client="alice", code=lambda c: c is not None)
            assert error["code"] == 4200, (
                f"graceful shutdown must close Pusher connections with 4200 (reconnect at once); "
                f"pusher-js saw {error}"
            )
            nc.expect("state", client="alice", previous="connected", current="connecting")

            servers.append(_serve(port, tmp_path))
            # pusher-js tried at once, while no server listened: its ws transport then
            # waits out its fixed 15 s attempt timeout (30 s for the next) before retrying
            reconnected = nc.expect("state", client="alice", current="connected", timeout=75)
            second_socket = reconnected["socket_id"]
            assert second_socket != first_socket
            for channel in (public, private):
                nc.expect("subscribed", channel=channel)
            api(base).trigger([public, private], "hello", {"after": "restart"})
            for channel in (public, private):
                got = nc.expect("event", channel=channel, event="hello")
                assert got["data"] == {"after": "restart"}

            states = [s["current"] for s in nc.seen("state", client="alice")]
            assert "disconnected" not in states and "failed" not in states, states
    finally:
        for proc in servers:
            _stop(proc)


# -- 7. a refused subscription leaves the connection and the others alone ------------------


@pytest.mark.parametrize("refusal", ["foreign conversation", "wrong signature"])
def test_refused_subscription_does_not_break_the_connection(
    node: str, base: str, refusal: str
) -> None:
    mine = new_conversation(base, "token-alice")
    if refusal == "foreign conversation":  # the auth endpoint answers 404 (Echo's ajax)
        target, via, extra = new_conversation(base, "token-bob"), "echo", {}
        status = 404
    else:  # the server checks the signature of pusher:subscribe itself
        target, via = new_conversation(base, "token-alice"), "pusher"
        extra = {"tamper": [f"private-conversation.{target}"]}
        status = 401
    client = api(base)
    with node_clients(node, base) as nc:
        socket_id = connect(nc, "alice", "token-alice", via=via, **extra)
        public = subscribe(nc, "alice", "public", "t7-news", events=["hello"])
        private = subscribe(nc, "alice", "private", f"conversation.{mine}", events=["hello"])
        refused = subscribe(nc, "alice", "private", f"conversation.{target}", events=["hello"])
        error = nc.expect("subscription_error", channel=refused)
        assert error["type"] == "AuthError" and error["status"] == status, error
        for channel in (public, private):
            nc.expect("subscribed", channel=channel)

        client.trigger(refused, "hello", {"to": "refused"})
        client.trigger([public, private], "hello", {"to": "others"})
        for channel in (public, private):
            assert nc.expect("event", channel=channel)["data"] == {"to": "others"}
        assert nc.seen("event", channel=refused) == []
        assert nc.do("socket_id", client="alice")["socket_id"] == socket_id
        assert [s["current"] for s in nc.seen("state")] == ["connected"]
        assert nc.seen("error") == []
