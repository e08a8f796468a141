"""Acceptance (scale-out): Redis restarted mid-stream.

"Clients see an ``error`` terminal or resume, never a hang; nodes recover without
restart." A private ``redis-server`` without persistence (``--save ""
--appendonly no``, as in production here) carries the stream log of one real
``tokenwire serve`` process (local producers, SQLite store in ``tmp_path``). A paced
``fake:lorem`` generation is read over SSE in a thread; after a few events Redis is
SIGKILLed, ``/readyz`` must say 503, and Redis is started again on the same port.

What happens (asserted exactly below): the reader keeps its connection through the
outage (``: ping`` heartbeats); once Redis answers again the stream is gone (nothing
was persisted), so the node ends the SSE response without a terminal event (the
chunked body ends) and a reconnect with ``Last-Event-ID`` answers 404. The
producer's append failed, so the generation ended on the node (``internal_error``)
and its message is stored ``failed``. Afterwards the
same node, never restarted, is ready again and streams a new generation to ``finish``.

Every wait polls with a deadline; every process is killed at teardown.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cluster import poll, start_lorem
from tests.support.servers import free_port, tokenwire_process
from tests.support.sse import TERMINAL, read_sse, text_of
from tokenwire.protocol.sse import SSEDecoder

pytestmark = pytest.mark.slow

LEASE_TTL = 3.0
"""Seconds: a lost producer would be noticed quickly."""
READER_BOUND = 40.0
"""Seconds after the kill within which the first reader's response must have ended."""
SETTLE_BOUND = 5.0
"""Seconds the node gets, after the reader ended, to store the message as ended."""


class PrivateRedis:
    """A ``redis-server`` of our own on ``port``, keeping nothing on disk."""

    def __init__(self, binary: str, port: int, directory: Path) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.args = [binary, "--port", str(port), "--bind", "127.0.0.1"]
        self.args += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        poll(self._answers, 10, f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
            return True
        return False

    def kill(self) -> None:
        """SIGKILL: nothing is flushed, every connection is cut."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary")
    server = PrivateRedis(binary, free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def node(private_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``tokenwire serve`` with local producers and the private Redis as its log."""
    env = {
        "TOKENWIRE_LOG_URL": private_redis.url,
        "TOKENWIRE_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "TOKENWIRE_PRODUCERS": "local",
        "TOKENWIRE_DEFAULT_MODEL": "fake:lorem",
        "TOKENWIRE_FAKE_PROVIDER": "1",
        "TOKENWIRE_LEASE_TTL": str(LEASE_TTL),
        "TOKENWIRE_CHECKPOINT_INTERVAL": "1",
        "TOKENWIRE_HEARTBEAT_INTERVAL": "1",
        "TOKENWIRE_ORPHAN_TIMEOUT": "600",
    }
    with tokenwire_process(
        "serve", "--log-level", "warning", env=env, ready_path="/healthz"
    ) as url:
        poll(lambda: _readyz(url)[0] == 200, 30, "/readyz 200 at start")
        yield url


def _readyz(base: str) -> tuple[int, dict[str, Any]]:
    try:
        response = httpx.get(base + "/readyz", timeout=10)
    except httpx.HTTPError:
        return 0, {}
    return response.status_code, response.json()


def assistant(base: str, conversation_id: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/v1/conversations/{conversation_id}", timeout=10)
    response.raise_for_status()
    return dict(response.json()["messages"][-1])


class Reader:
    """Reads one SSE response in a thread, recording events, heartbeats and how it ended."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[dict[str, Any]] = []
        self.pings = 0
        self.ended: str | None = None
        """``terminal``, ``eof`` (body ended without a terminal event) or ``cut: <exc>``."""
        self.ended_at: float | None = None
        self._lock = threading.Lock()

    def __call__(self) -> None:
        decoder = SSEDecoder()
        try:
            # the read timeout only guards the test itself: heartbeats come every second
            with httpx.stream("GET", self.url, timeout=httpx.Timeout(10, read=60)) as response:
                assert response.status_code == 200
                for chunk in response.iter_raw():
                    for sse in decoder.decode(chunk):
                        with self._lock:
                            if sse.comment is not None:
                                self.pings += 1
                            else:
                                self.events.append(json.loads(sse.data))
                    if self.events and self.events[-1]["type"] in TERMINAL:
                        self.ended = "terminal"
                        return
            self.ended = "eof"
        except httpx.HTTPError as exc:
            self.ended = f"cut: {type(exc).__name__}"
        finally:
            self.ended_at = time.monotonic()

    def count(self) -> int:
        with self._lock:
            return len(self.events)


@pytest.fixture(scope="module")
def restarted(private_redis: PrivateRedis, node: str) -> dict[str, Any]:
    """The scenario, run once: a generation read over SSE while Redis is SIGKILLed and
    started again; what was observed, for the tests below to check one by one."""
    seen: dict[str, Any] = {}
    started = seen["started"] = start_lorem(node, tokens=400, delay_ms=25)  # 10 s
    reader = seen["reader"] = Reader(started["events_url"])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reading = pool.submit(reader)
        poll(lambda: reader.count() >= 5, 10, "a few events")

        private_redis.kill()
        killed_at = seen["killed_at"] = time.monotonic()
        # while Redis is down: /readyz, and the reader still connected and pinged
        poll(lambda: _readyz(node)[0] == 503, 10, "/readyz 503 while Redis is down")
        seen["readyz_down"] = _readyz(node)
        pings = reader.pings
        poll(lambda: reader.pings > pings, 5, "a heartbeat to the reader during the outage")
        seen["reading_during_outage"] = not reading.done()

        private_redis.start()  # same port, empty: nothing was persisted
        reading.result(timeout=max(0.0, killed_at + READER_BOUND - time.monotonic()))

    events = reader.events
    last = str(events[-1]["seq"]) if events else "0"
    seen["resumed"] = httpx.get(started["events_url"], headers={"last-event-id": last}, timeout=10)

    # the stored message, once the node has had a bounded time to end it
    message: dict[str, Any] = {}

    def settled() -> bool:
        message.update(assistant(node, started["conversation_id"]))
        return message["status"] not in ("pending", "streaming")

    with contextlib.suppress(TimeoutError):
        poll(settled, SETTLE_BOUND, "stored message ended")
    seen["stored"] = message

    # recovery of the same node, never restarted
    poll(lambda: _readyz(node)[0] == 200, 10, "/readyz 200 after the restart")
    seen["readyz_after"] = _readyz(node)
    again = seen["again"] = start_lorem(node, tokens=20, delay_ms=5)
    with httpx.Client(timeout=30) as client:
        seen["again_events"], _ = read_sse(client, "GET", again["events_url"])
    poll(
        lambda: assistant(node, again["conversation_id"])["status"] == "completed",
        10,
        "the new generation stored as completed",
    )
    return seen


def test_readyz_is_503_naming_the_log_while_redis_is_down(restarted: dict[str, Any]) -> None:
    assert restarted["readyz_down"] == (503, {"status": "unavailable", "log": "unreachable"})


def test_reader_rides_out_the_outage_then_is_cut_off_never_hangs(
    restarted: dict[str, Any],
) -> None:
    reader: Reader = restarted["reader"]
    # during the outage the response stays open and heartbeats keep coming
    assert restarted["reading_during_outage"]
    # then it ends within the bound: the stream is gone from the new Redis, so the node
    # breaks off the chunked body (no terminal event, no clean end of body)
    assert reader.ended_at is not None
    assert reader.ended_at - restarted["killed_at"] < READER_BOUND
    assert reader.ended == "eof", reader.ended
    events = reader.events
    assert len(events) >= 5 and events[-1]["type"] not in TERMINAL
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "start"


def test_resume_with_last_event_id_answers_404(restarted: dict[str, Any]) -> None:
    """Nothing persisted, no tombstone either: 404 (not 410)."""
    resumed: httpx.Response = restarted["resumed"]
    assert resumed.status_code == 404, resumed.text
    assert resumed.json() == {"detail": "stream not found"}


def test_stored_message_ends_failed(restarted: dict[str, Any]) -> None:
    stored = restarted["stored"]
    assert stored["status"] == "failed", stored


def test_node_recovers_without_restart(restarted: dict[str, Any]) -> None:
    assert restarted["readyz_after"] == (200, {"status": "ready"})
    events = restarted["again_events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "start" and events[-1]["type"] == "finish"
    assert sum(e["type"] in TERMINAL for e in events) == 1
    assert len(text_of(events).split()) == 20
