"""``web/tokenwire-pusher.js``: a Pusher client cut off mid-stream recovers every missed
token, with no gap and no duplicate.

Unmodified ``laravel-echo`` and ``pusher-js`` (``tests/pusher/recovery.mjs``) follow a
conversation through :class:`TcpProxy`, which forwards bytes to the real server on
127.0.0.1 and can sever every connection and hold new ones back; the helper fills the
gaps from ``GET /v1/streams/{id}/events?after=N``. Every wait has a deadline; nothing
sleeps a fixed time.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.node import node_with_pusher, start_node
from tests.support.servers import uvicorn_thread
from tokenwire import Settings, create_app
from tokenwire.settings import PusherApp

APP = PusherApp(id="app1", key="key1", secret="secret1")
TOKEN = "token-alice"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WORDS = ["żółw", "日本語", "🎉", "naïve", "lorem", "straße", "Ωmega", "ipsum"]
"""Multi-byte words: SSE bodies split inside a character must still decode."""
HELPER = Path(__file__).resolve().parents[1] / "src" / "tokenwire" / "web" / "tokenwire-pusher.js"
CHROMIUM = Path("/usr/bin/chromium")
WAIT = 30.0
"""Seconds any one expected step may take."""

Line = dict[str, Any]


# -------------------------------------------------------------------- the TCP proxy


class TcpProxy:
    """Forwards connections to ``127.0.0.1:upstream_port`` byte for byte.

    :meth:`sever` closes every connection on both sides (each peer sees its socket
    die, as when a network path drops). While :meth:`hold` is in force new
    connections are not accepted: they wait in the listen backlog, so a client's
    reconnection attempt goes through as soon as :meth:`release` is called.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port: int = self._listener.getsockname()[1]
        self._accepting = threading.Event()
        self._accepting.set()
        self._closed = False
        self._lock = threading.Lock()
        self._pairs: list[list[Any]] = []  # [client, upstream, pumps finished]
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self._start(self._accept_loop)

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._closed:
                # Timeouts only let close() and hold() take effect; they time nothing.
                if not self._accepting.wait(0.1) or not selector.select(0.1):
                    continue
                with self._lock:
                    if self._closed or not self._accepting.is_set():
                        continue
                    client, _ = self._listener.accept()
                    try:
                        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                    except OSError:
                        client.close()
                        continue
                    pair = [client, upstream, 0]
                    self._pairs.append(pair)
                    self.accepted += 1
                self._start(self._pump, pair, client, upstream)
                self._start(self._pump, pair, upstream, client)

    def _pump(self, pair: list[Any], source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            pair[2] += 1
            if pair[2] == 2:  # both directions are done: nobody uses the sockets now
                pair[0].close()
                pair[1].close()
                self._pairs.remove(pair)

    def sever(self) -> None:
        """Cut every open connection, both sides."""
        with self._lock:
            for client, upstream, _ in self._pairs:
                for sock in (client, upstream):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def hold(self) -> None:
        """Accept no new connection until :meth:`release`."""
        with self._lock:
            self._accepting.clear()

    def release(self) -> None:
        self._accepting.set()

    def close(self) -> None:
        self._closed = True
        self.sever()
        for thread in self._threads:
            thread.join(timeout=10)
        self._listener.close()


@contextlib.contextmanager
def tcp_proxy(base: str) -> Iterator[TcpProxy]:
    proxy = TcpProxy(int(base.rsplit(":", 1)[1]))
    try:
        yield proxy
    finally:
        proxy.close()


# -------------------------------------------------------------------- the Node client


class NodeClient:
    """``tests/pusher/recovery.mjs``: its JSON lines as they come, waited for with deadlines."""

    def __init__(self, node: str, config: dict[str, Any]) -> None:
        self.proc = start_node(node, "recovery.mjs", config)
        self.lines: list[Line] = []
        self.stderr: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if raw.startswith("{"):
                with self._changed:
                    self.lines.append(json.loads(raw))
                    self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def wait_for(self, check: Callable[[list[Line]], bool], what: str) -> None:
        """Until ``check(lines)`` holds; fails after ``WAIT`` s or if Node exits first."""
        with self._changed:
            self._changed.wait_for(lambda: check(self.lines) or self._eof, timeout=WAIT)
            if not check(self.lines):
                tail = "".join(self.stderr[-20:])
                state = "exited" if self._eof else f"not within {WAIT} s"
                pytest.fail(f"{what}: {state}; last lines {self.lines[-5:]}; stderr {tail}")

    def close(self) -> list[Line]:
        """Close stdin (the script exits), read everything it printed; its lines."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.lines


@contextlib.contextmanager
def node_client(config: dict[str, Any]) -> Iterator[NodeClient]:
    client = NodeClient(node_with_pusher(), config)
    try:
        yield client
    finally:
        client.close()


def of_kind(lines: list[Line], kind: str) -> list[Line]:
    return [line for line in lines if line["kind"] == kind]


def delivered(lines: list[Line], stream_id: str) -> list[dict[str, Any]]:
    """The events the helper delivered for ``stream_id``, in delivery order."""
    return [
        line["event"] for line in of_kind(lines, "event") if line["event"]["stream_id"] == stream_id
    ]


def live_seqs(lines: list[Line], stream_id: str) -> list[int]:
    """The seqs the Pusher channel itself carried for ``stream_id``."""
    return [line["seq"] for line in of_kind(lines, "live") if line["stream_id"] == stream_id]


# -------------------------------------------------------------------- the server


@pytest.fixture
def base(tmp_path: Path) -> Iterator[str]:
    settings = Settings(
        fake_provider=True,
        data_dir=tmp_path,
        default_model="fake:echo",
        models=["fake:echo", "fake:lorem"],
        pusher_apps=[APP],
        auth_tokens={TOKEN: "alice"},
        coalesce_ms=0,
    )
    with uvicorn_thread(create_app(settings)) as url:
        yield url


def chat(base: str, conversation_id: str | None = None, **params: Any) -> dict[str, str]:
    """``POST /v1/chat`` as alice: ``fake:lorem`` with ``params``; its 202 body."""
    body: dict[str, Any] = {
        "model": "fake:lorem",
        "messages": [{"role": "user", "content": "hi"}],
        "params": params,
    }
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    response = httpx.post(base + "/v1/chat", json=body, headers=AUTH, timeout=10)
    assert response.status_code == 202, response.text
    return dict(response.json())


def words(count: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(count))


def log_state(base: str, stream_id: str) -> dict[str, Any]:
    """``GET /v1/streams/{id}?after=0``: ``{events, last_seq, status}``."""
    response = httpx.get(f"{base}/v1/streams/{stream_id}?after=0", headers=AUTH, timeout=10)
    response.raise_for_status()
    return dict(response.json())


def wait_log(base: str, stream_id: str, check: Callable[[dict[str, Any]], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check(log_state(base, stream_id)):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {WAIT} s")
        time.sleep(0.02)


def ended(state: dict[str, Any]) -> bool:
    return state["status"] in {"completed", "failed", "cancelled"}


def stored_text(base: str, conversation_id: str, message_id: str) -> str:
    """The assistant message's text in the store, once it is completed."""
    found: list[str] = []

    def completed() -> bool:
        response = httpx.get(f"{base}/v1/conversations/{conversation_id}", headers=AUTH)
        response.raise_for_status()
        for message in response.json()["messages"]:
            if message["id"] == message_id and message["status"] == "completed":
                found[:] = ["".join(p["text"] for p in message["parts"] if p["type"] == "text")]
        return bool(found)

    deadline = time.monotonic() + WAIT
    while not completed():
        if time.monotonic() > deadline:
            pytest.fail(f"message {message_id} not completed within {WAIT} s")
        time.sleep(0.02)
    return found[0]


def new_conversation(base: str) -> str:
    """A conversation of alice's whose only stream has ended (nothing of it goes live)."""
    started = chat(base, text="hello")
    wait_log(base, started["stream_id"], ended, "the first answer")
    return started["conversation_id"]


def follow(base: str, proxy: TcpProxy, conversation_id: str, via: str) -> dict[str, Any]:
    return {
        "mode": via,
        "key": APP.key,
        "wsPort": proxy.port,
        "base": base,
        "token": TOKEN,
        "conversation_id": conversation_id,
    }


def assert_exactly_once(base: str, lines: list[Line], started: dict[str, str]) -> list[int]:
    """The helper delivered seq 1..N of the stream once each, in order, ending with its
    terminal ``finish``, and its text is the stored message's; returns the seqs."""
    stream_id = started["stream_id"]
    events = delivered(lines, stream_id)
    seqs = [e["seq"] for e in events]
    last_seq = log_state(base, stream_id)["last_seq"]
    assert seqs == list(range(1, last_seq + 1))
    assert events[-1]["type"] == "finish"
    assert [e["type"] for e in events].count("finish") == 1
    assert of_kind(lines, "error") == []
    assert {line["event"]["stream_id"] for line in of_kind(lines, "event")} == {stream_id}
    text = "".join(e["delta"] for e in events if e["type"] == "text-delta")
    assert text == stored_text(base, started["conversation_id"], started["message_id"])
    return seqs


def cut_off(client: NodeClient, proxy: TcpProxy, subscriptions: int) -> None:
    """Sever the client's connection and hold its reconnection back until pusher-js
    is trying again (state ``connecting``)."""
    proxy.hold()
    proxy.sever()
    states_before = len(of_kind(client.lines, "state"))
    client.wait_for(
        lambda lines: any(
            line["current"] == "connecting" for line in of_kind(lines, "state")[states_before:]
        ),
        "pusher-js to notice and try to reconnect",
    )
    assert len(of_kind(client.lines, "subscribed")) == subscriptions


def reconnect(client: NodeClient, proxy: TcpProxy) -> None:
    proxy.release()
    client.wait_for(lambda lines: len(of_kind(lines, "subscribed")) == 2, "re-subscription")


# -------------------------------------------------------------------- the tests


@pytest.mark.parametrize("via", ["echo", "pusher"])
def test_a_client_cut_off_mid_stream_recovers_every_missed_token(base: str, via: str) -> None:
    conversation_id = new_conversation(base)
    with tcp_proxy(base) as proxy, node_client(follow(base, proxy, conversation_id, via)) as client:
        client.wait_for(lambda lines: bool(of_kind(lines, "subscribed")), "subscription")
        started = chat(base, conversation_id, text=words(160), delay_ms=25)
        stream_id = started["stream_id"]
        client.wait_for(
            lambda lines: any(e["seq"] >= 10 for e in delivered(lines, stream_id)),
            "the first tokens",
        )
        cut_off(client, proxy, subscriptions=1)
        cut_at = log_state(base, stream_id)["last_seq"]
        wait_log(base, stream_id, lambda s: s["last_seq"] >= cut_at + 10, "10 tokens missed")
        assert not ended(log_state(base, stream_id)), "the stream must still run at reconnection"
        reconnect(client, proxy)
        client.wait_for(
            lambda lines: any(e["type"] == "finish" for e in delivered(lines, stream_id)),
            "the helper's finish",
        )
        last_seq = log_state(base, stream_id)["last_seq"]
        client.wait_for(
            lambda lines: last_seq in live_seqs(lines, stream_id), "the channel's own finish"
        )
    lines = client.lines
    seqs = assert_exactly_once(base, lines, started)
    live = live_seqs(lines, stream_id)
    missed = sorted(set(seqs) - set(live))
    assert len(missed) >= 10, "the channel alone must have missed tokens"
    assert max(live) > max(missed), "live events must have resumed after the gap"
    assert proxy.accepted >= 2, "the reconnection went through the proxy"


@pytest.mark.parametrize("via", ["pusher", "echo"])
def test_a_stream_that_ends_while_the_client_is_away_is_recovered_on_resubscribe(
    base: str, via: str
) -> None:
    conversation_id = new_conversation(base)
    with tcp_proxy(base) as proxy, node_client(follow(base, proxy, conversation_id, via)) as client:
        client.wait_for(lambda lines: bool(of_kind(lines, "subscribed")), "subscription")
        started = chat(base, conversation_id, text=words(40), delay_ms=25)
        stream_id = started["stream_id"]
        client.wait_for(
            lambda lines: any(e["seq"] >= 10 for e in delivered(lines, stream_id)),
            "the first tokens",
        )
        cut_off(client, proxy, subscriptions=1)
        wait_log(base, stream_id, ended, "the stream to end while the client is away")
        reconnect(client, proxy)
        client.wait_for(
            lambda lines: any(e["type"] == "finish" for e in delivered(lines, stream_id)),
            "the helper's finish",
        )
    lines = client.lines
    seqs = assert_exactly_once(base, lines, started)
    live = live_seqs(lines, stream_id)
    assert max(live) < seqs[-1], "no live event could have revealed the gap"


def test_the_helpers_ordering_and_gap_filling_on_a_fake_channel(base: str) -> None:
    first = chat(base, text=words(12))
    wait_log(base, first["stream_id"], ended, "the first stream")
    second = chat(base, first["conversation_id"], text="a second answer")
    wait_log(base, second["stream_id"], ended, "the second stream")
    sid, other = first["stream_id"], second["stream_id"]
    events = log_state(base, sid)["events"]
    last = len(events)
    config = {
        "mode": "fake",
        "base": base,
        "token": TOKEN,
        "stream_id": sid,
        "other_stream_id": other,
    }
    with node_client(config) as client:
        client.wait_for(lambda lines: bool(of_kind(lines, "done")), "the scenarios")
    scenarios = {line["name"]: line for line in of_kind(client.lines, "scenario")}

    def seqs(name: str, stream_id: str = sid) -> list[int]:
        return [seq for s, seq, _ in scenarios[name]["delivered"] if s == stream_id]

    def urls(name: str) -> list[tuple[str, bool]]:
        return [(r["url"], r["aborted"]) for r in scenarios[name]["requests"]]

    def url(stream_id: str, after: int) -> str:
        return f"/v1/streams/{stream_id}/events?after={after}"

    # Live events in order, duplicates among them: each once, no request.
    assert seqs("in-order-and-duplicates") == [1, 2, 3]
    assert urls("in-order-and-duplicates") == []
    # 1, 2, then 5: 3 and 4 fetched after=2, and the request aborted at 5, not read on.
    gap = scenarios["gap-fill-stops-when-caught-up"]
    assert gap["delivered_when_aborted"] == 5
    assert seqs("gap-fill-stops-when-caught-up") == [1, 2, 3, 4, 5, 6]
    assert urls("gap-fill-stops-when-caught-up") == [(url(sid, 2), True)]
    # A stream first seen at seq 4: 1..3 are fetched.
    assert seqs("mid-stream-join") == [1, 2, 3, 4, 5]
    assert urls("mid-stream-join") == [(url(sid, 0), True)]
    # Re-subscribed after the stream ended: caught up to its terminal event, once.
    resubscribed = scenarios["resubscribe-catch-up"]
    assert seqs("resubscribe-catch-up") == list(range(1, last + 1))
    assert resubscribed["delivered"][-1][2] == "finish"
    assert urls("resubscribe-catch-up") == [(url(sid, 2), True)]
    # Two streams, each with its own gap: independent, each in order.
    assert seqs("two-streams") == [1, 2, 3]
    assert seqs("two-streams", other) == [1, 2, 3, 4]
    assert sorted(urls("two-streams")) == sorted([(url(other, 0), True), (url(sid, 1), True)])
    # A failed request (network error): reported, retried, the gap filled.
    retried = scenarios["retry-after-network-error"]
    assert seqs("retry-after-network-error") == [1, 2, 3]
    assert urls("retry-after-network-error") == [(url(sid, 0), True)] * 2
    assert [(e["status"], e["stream_id"]) for e in retried["errors"]] == [(None, sid)]
    # A stream the server does not know: reported (404), then ignored.
    unreadable = scenarios["unreadable-stream"]
    assert unreadable["delivered"] == []
    assert [(e["status"], e["stream_id"]) for e in unreadable["errors"]] == [
        (404, "no-such-stream")
    ]
    # stop(): unbound from the channel, nothing delivered after it.
    stopped = scenarios["stop"]
    assert (stopped["handlers_before"], stopped["handlers_after"]) == (2, 0)
    assert seqs("stop") == [1]
    assert urls("stop") == []
    for name, scenario in scenarios.items():
        if name not in {"retry-after-network-error", "unreadable-stream", "sse-decoder"}:
            assert scenario["errors"] == [], name

    # The SSE decoder: the server's own bytes, whole, one byte at a time (splitting
    # multi-byte characters), and with CRLF and CR line ends, decode alike.
    decoded = scenarios["sse-decoder"]
    assert decoded["has_multibyte"]
    variants = decoded["variants"]
    assert [json.loads(f["data"]) for f in variants["whole"]] == events
    assert [(f["id"], f["event"]) for f in variants["whole"]] == [
        (str(e["seq"]), e["type"]) for e in events
    ]
    for name in ("bytewise", "crlf_bytewise", "cr_bytewise"):
        assert variants[name] == variants["whole"], name
    assert variants["extras"] == [{"id": "7", "event": "x", "data": "a\nb"}]


def test_the_server_serves_the_helper_as_a_javascript_module(base: str) -> None:
    response = httpx.get(base + "/tokenwire-pusher.js")
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] in {
        "text/javascript",
        "application/javascript",
    }
    assert response.content == HELPER.read_bytes()
    assert "export function followConversation(" in response.text


def test_the_helper_fills_gaps_in_a_browser(base: str) -> None:
    """In headless Chromium, the served module joins a stream mid-way (a fake channel)
    and catches up on re-subscription: fetch's body stream and TextDecoder as browsers
    have them."""
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    started = chat(base, text=words(12))
    stream_id = started["stream_id"]
    wait_log(base, stream_id, ended, "the stream")
    events = log_state(base, stream_id)["events"]
    script = """async ([streamId, events, token]) => {
        const { followConversation } = await import("/tokenwire-pusher.js");
        const handlers = { global: [], subscribed: [] };
        const channel = {
            bind_global: (fn) => handlers.global.push(fn),
            unbind_global: () => {},
            bind: (name, fn) => handlers.subscribed.push(fn),
            unbind: () => {},
        };
        const delivered = [];
        let done;
        const finished = new Promise((resolve) => { done = resolve; });
        followConversation(channel, {
            headers: { Authorization: `Bearer ${token}` },
            onEvent: (event) => {
                delivered.push(event.seq);
                if (delivered.length === 4) handlers.subscribed.forEach((fn) => fn({}));
                if (event.type === "finish") done();
            },
        });
        const fourth = { stream_id: streamId, ...events[3] };
        handlers.global.forEach((fn) => fn(fourth.type, fourth));
        const late = new Promise((_, reject) => {
            setTimeout(() => reject(new Error(`only ${delivered}`)), 30000);
        });
        await Promise.race([finished, late]);
        return delivered;
    }"""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(WAIT * 1000)
            page.goto(base + "/healthz")
            seqs = page.evaluate(script, [stream_id, events, TOKEN])
        finally:
            browser.close()
    assert seqs == list(range(1, len(events) + 1))
