"""WebSocket fan-out benchmark: tokenwire's Pusher server vs. a bare ``websockets`` server.

Run ``python -m bench.ws_bench`` (1,000 subscribers, 250 tokens, two rounds per
server, about a minute) or ``--quick`` (100 subscribers, 50 tokens, one round). One
stream is fanned out to N WebSocket subscribers of one private channel at one text
delta per 20 ms (50 tokens/s), side by side in one run (both servers started, each
warmed up by a 50-subscriber round, then the measured rounds alternate):

- **bare**: a ``websockets.asyncio.server.serve`` process (this module,
  ``--serve-bare PORT``) speaking just enough Pusher protocol 7
  (``pusher:connection_established``, ``pusher:subscribe`` checked against the
  same HMAC, ``pusher_internal:subscription_succeeded``) and, on a 20 ms timer,
  calling ``broadcast()`` with frames of the same shape as tokenwire's:
  ``{"event":"text-delta","channel":"private-conversation.<32 hex>","data":
  "{\\"stream_id\\":…,\\"type\\":\\"text-delta\\",\\"part\\":0,\\"delta\\":…,\\"seq\\":N}"}``
  (the JSON is encoded once per delta, as ``broadcast()`` expects).
- **tokenwire**: the real server, ``create_app`` run by :func:`tokenwire.server.serving.run`
  as ``tokenwire serve`` runs it (uvicorn with the websockets-sansio protocol that
  lets the hub write one encoded frame to every subscriber), with a Pusher app, a Bearer token,
  ``coalesce_ms=0`` (one event per delta), ``orphan_timeout=None`` and the
  ``bench:`` provider of :mod:`bench.servers` registered. The conversation is
  created by ``POST /v1/chat`` with the Bearer token (so it is the bench user's),
  every client subscribes to ``private-conversation.<id>`` with an ``auth`` it
  computes itself (:func:`tokenwire.protocol.pusher.channel_auth`), then a paced
  generation is started in that conversation with ``POST /v1/chat``.

**Latency.** Neither server stamps its frames, so the *provider* stamps each
delta's text: ``s=<scheduled> e=<emitted> `` (Unix seconds), by the same code
(:meth:`bench.servers.Workload.texts`, absolute deadlines ``start_at + k * 20 ms``)
in tokenwire's ``bench:`` provider and in the bare server's timer. (``fake:lorem``
is not used: it sleeps ``delay_ms`` *between* deltas, so lateness accumulates,
and its deltas carry no time.) Per (subscriber, delta):

- *latency* = client receive time - emission time: for tokenwire the log append,
  the relay task's wake-up, frame encoding and the fan-out to N sockets; for the
  bare server the fan-out only;
- *spread* = receive time - the earliest receipt of the same ``seq`` by any
  subscriber (needs no stamp: how long one fan-out takes to reach the last socket);
- *vs schedule* = receive time - scheduled time (adds timer lateness).

All clocks are ``time.time()`` of one machine.

**CPU per delivered message** = the server process's user + system CPU
(``psutil``) from 50 ms before the first delta is due until every client process
has its stream's terminal frame, divided by the text-delta frames received by
all subscribers; the kernel's part (socket writes, and on loopback the receiving
side's TCP processing too) is reported separately. **Memory per connection** =
(RSS with N subscribed - RSS before the round, clients gone) / N; only the first
round's figure means anything, later rounds reuse the memory freed by the first.
It also counts the free space the server's heaps had before the round (holes that
start-up left, which the connections fill first): a fixed amount, a few hundred KB
that follows the import history (``docs/performance.md``, run 7), so at N = 1,000
two versions whose connections allocate the same may differ by up to 0.5 KB;
compare versions at two N (the slope) rather than at one.

**Processes.** Each server runs alone on CPU 0 (``taskset -c 0``); the client
process(es) and this orchestrator are pinned to CPU 1. The default client is a
raw ``asyncio.Protocol`` WebSocket client on uvloop (hand-written handshake,
unmasked server frames parsed by hand, masked client frames, pings answered,
optional permessage-deflate with ``--deflate``; text-delta frames are kept as
read and parsed after the stream). The ``websockets`` library client
(``--client websockets``) needs about 21 µs of CPU per frame against about 15 µs,
so at 50,000 frames/s it saturates CPU 1 and adds its own queueing to the
latency; a second client process would have to share CPU 1 or the server's core.
Every run is bounded by deadlines; servers and clients are stopped at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import gc
import hashlib
import json
import multiprocessing
import os
import queue as queue_module
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
import zlib
from array import array
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import psutil

from bench.client import prepare_process
from bench.servers import Workload
from bench.sse_bench import (
    BASELINE,
    BASELINE_HELP,
    HTTP,
    LOOP,
    ROOT,
    Server,
    _free_port,
    _quantile,
    _sleep_until,
    server_env,
    set_baseline_src,
    tokenwire_label,
)
from tokenwire.protocol.pusher import channel_auth

__all__ = ["main", "tokenwire_app"]

SERVER_CPU = 0
CLIENT_CPU = 1
PACE_MS = 20.0
APP_ID, APP_KEY, APP_SECRET = "bench", "bench-key", "bench-secret"
TOKEN, USER = "bench-token", "bench-user"
TW_MODEL = "bench:default"
RESULTS = ROOT / "bench" / "results"
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass(frozen=True, slots=True)
class Plan:
    subscribers: int
    tokens: int
    client_procs: int = 1
    client: str = "raw"
    """``raw`` (asyncio.Protocol) or ``websockets`` (the library's asyncio client)."""
    deflate: bool = False
    """Clients offer permessage-deflate (browsers and pusher-js on Node do)."""
    warmup_subscribers: int = 50
    warmup_tokens: int = 25
    repeat: int = 1
    """Measured rounds per server, alternating between the servers."""


# servers ------------------------------------------------------------------


def tokenwire_app() -> Any:
    """The tokenwire server for this benchmark (served by ``--serve-tokenwire PORT``)."""
    from bench.servers import BenchProvider
    from tokenwire import Tokenwire
    from tokenwire.providers import ProviderRegistry
    from tokenwire.server.app import create_app
    from tokenwire.settings import PusherApp, Settings

    registry = ProviderRegistry(fake=True)
    registry.register("bench", BenchProvider())  # type: ignore[arg-type]
    settings = Settings(
        fake_provider=True,
        data_dir=Path(os.environ["BENCH_DATA_DIR"]),
        coalesce_ms=0.0,
        orphan_timeout=None,
        limit_concurrent_streams=0,  # every stream comes from one client address
        default_model="fake:lorem",
        models=[TW_MODEL, "fake:lorem"],
        pusher_apps=[PusherApp(id=APP_ID, key=APP_KEY, secret=APP_SECRET)],
        auth_tokens={TOKEN: USER},
        websocket_compression=os.environ.get("BENCH_DEFLATE") == "1",
    )
    app = create_app(tokenwire=Tokenwire(settings, registry=registry), freeze_gc=True)
    if os.environ.get("BENCH_PROFILE"):
        return _profiled(app, Path(os.environ["BENCH_PROFILE"]))
    return app


def _profiled(app: Any, path: Path) -> Any:
    """``app`` under cProfile from now on; the stats are written to ``path`` when the
    lifespan shuts down (uvicorn re-raises SIGTERM after that, so ``atexit`` is no use)."""
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()

    async def profiled(scope: Any, receive: Any, send: Any) -> None:
        async def on_send(message: Any) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                profiler.disable()
                profiler.dump_stats(str(path))
            await send(message)

        await app(scope, receive, on_send if scope["type"] == "lifespan" else send)

    profiled.state = app.state  # type: ignore[attr-defined]  # what serving.run reads
    return profiled


def _bare_frame(event: str, channel: str | None, data: dict[str, object]) -> str:
    """A Pusher frame: ``data`` JSON-encoded into a string (the protocol's double encoding)."""
    frame: dict[str, object] = {"event": event}
    if channel is not None:
        frame["channel"] = channel
    frame["data"] = json.dumps(data, separators=(",", ":"))
    return json.dumps(frame, separators=(",", ":"))


async def _bare_serve(port: int) -> None:
    """The bare server: Pusher handshake and subscribe, ``broadcast()`` on a timer."""
    from http import HTTPStatus

    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.exceptions import ConnectionClosed
    from websockets.http11 import Request, Response

    channels: dict[str, set[ServerConnection]] = {}
    streams: set[asyncio.Task[None]] = set()

    async def stream(channel: str, workload: Workload) -> None:
        subscribers = channels.get(channel, set())
        stream_id = uuid.uuid4().hex
        start = {"type": "start", "stream_id": stream_id, "created_at": time.time(), "seq": 1}
        broadcast(subscribers, _bare_frame("start", channel, start))
        seq = 1
        async for text in workload.texts():
            seq += 1
            delta = {"stream_id": stream_id, "type": "text-delta", "part": 0, "delta": text}
            broadcast(subscribers, _bare_frame("text-delta", channel, {**delta, "seq": seq}))
        end = {"stream_id": stream_id, "type": "finish", "finish_reason": "stop", "seq": seq + 1}
        broadcast(subscribers, _bare_frame("finish", channel, end))

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        url = urllib.parse.urlsplit(request.path)
        if url.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if url.path == "/start":
            query = dict(urllib.parse.parse_qsl(url.query))
            workload = Workload.from_params({k: float(v) for k, v in query.items() if k != "c"})
            task = asyncio.create_task(stream(query["c"], workload))
            streams.add(task)
            task.add_done_callback(streams.discard)
            return connection.respond(HTTPStatus.ACCEPTED, "started\n")
        return None

    async def handler(ws: ServerConnection) -> None:
        socket_id = f"{uuid.uuid4().int % 10**9}.{uuid.uuid4().int % 10**9}"
        established = {"socket_id": socket_id, "activity_timeout": 120}
        await ws.send(_bare_frame("pusher:connection_established", None, established))
        joined: list[str] = []
        try:
            async for message in ws:
                frame = json.loads(message)
                if frame.get("event") == "pusher:ping":
                    await ws.send(_bare_frame("pusher:pong", None, {}))
                    continue
                if frame.get("event") != "pusher:subscribe":
                    continue
                channel = frame["data"]["channel"]
                if frame["data"].get("auth") != channel_auth(
                    APP_KEY, APP_SECRET, socket_id, channel
                ):
                    error = {"type": "AuthError", "error": "invalid auth", "status": 401}
                    await ws.send(_bare_frame("pusher:subscription_error", channel, error))
                    continue
                channels.setdefault(channel, set()).add(ws)
                joined.append(channel)
                await ws.send(_bare_frame("pusher_internal:subscription_succeeded", channel, {}))
        except ConnectionClosed:
            pass
        finally:
            for channel in joined:
                channels.get(channel, set()).discard(ws)

    async with serve(
        handler, "127.0.0.1", port, process_request=process_request, backlog=4096
    ) as server:
        gc.collect()
        gc.freeze()  # as tokenwire serve does: full collections skip the modules
        await server.serve_forever()


class WsServer(Server):
    """A server under test, alone on CPU 0. Reuses :class:`bench.sse_bench.Server` for
    readiness (``/healthz``) and shutdown; CPU and RSS come from ``psutil``."""

    def __init__(self, kind: str, profile: Path | None = None, deflate: bool = False) -> None:
        self.kind = kind
        self.coalesce_ms = 0.0
        self.port = _free_port()
        self.data_dir = tempfile.mkdtemp(prefix="tokenwire-ws-bench-")
        if kind != "bare":
            command = [sys.executable, "-m", "bench.ws_bench", "--serve-tokenwire", str(self.port)]
        else:
            command = [sys.executable, "-m", "bench.ws_bench", "--serve-bare", str(self.port)]
        if shutil.which("taskset"):
            command = ["taskset", "-c", str(SERVER_CPU), *command]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
        env |= {"BENCH_DATA_DIR": self.data_dir, **server_env(kind)}
        env["BENCH_DEFLATE"] = "1" if deflate else "0"
        if profile is not None:
            env["BENCH_PROFILE"] = str(profile)
        self.process = subprocess.Popen(command, cwd=ROOT, env=env)
        self.pid = self.process.pid
        self.ps = psutil.Process(self.pid)

    @property
    def label(self) -> str:
        return "bare websockets" if self.kind == "bare" else tokenwire_label(self.kind)

    def cpu_seconds(self) -> float:
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """User and system CPU seconds consumed so far."""
        times = self.ps.cpu_times()
        return float(times.user), float(times.system)

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss) / 2**20

    def new_channel(self) -> str:
        """A channel with a fresh stream source: tokenwire, a new conversation of the
        bench user (``POST /v1/chat``, one delta, read to its end); bare, any name."""
        if self.kind == "bare":
            return f"private-conversation.{uuid.uuid4().hex}"
        reply = self._post({"params": {"n": 1}})
        url = f"http://127.0.0.1:{self.port}/v1/streams/{reply['stream_id']}/events"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()  # SSE until the stream's terminal event
        return f"private-conversation.{reply['conversation_id']}"

    def start_stream(self, channel: str, tokens: int, start_at: float) -> None:
        params = {"n": tokens, "interval_ms": PACE_MS, "start_at": start_at}
        if self.kind == "bare":
            query = urllib.parse.urlencode({"c": channel, **params})
            url = f"http://127.0.0.1:{self.port}/start?{query}"
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 202, response.status
            return
        conversation_id = channel.rsplit(".", 1)[1]
        self._post({"conversation_id": conversation_id, "params": params})

    def _post(self, fields: dict[str, Any]) -> dict[str, Any]:
        body = {"model": TW_MODEL, "messages": [{"role": "user", "content": "go"}], **fields}
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/chat",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return cast(dict[str, Any], json.loads(response.read()))


@contextlib.contextmanager
def serving(kind: str, profile: Path | None = None, deflate: bool = False) -> Iterator[WsServer]:
    server = WsServer(kind, profile, deflate)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# clients ------------------------------------------------------------------

_EVENT = re.compile(rb'\{"event":"([^"]*)"')
_STAMP = re.compile(rb"s=(\d+\.\d+) e=(\d+\.\d+) ")
_SEQ = re.compile(rb'\\"seq\\":(\d+)')
_TERMINAL = (b"finish", b"error", b"cancelled")
_DELTA_HEAD = b'{"event":"text-delta"'


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One client process: ``connections`` subscribers of ``channel`` on ``port``."""

    port: int
    channel: str
    connections: int
    connect_deadline: float
    """Unix seconds: subscribers not subscribed by then count as failed."""
    deadline: float
    """Unix seconds: the run is abandoned then."""
    client: str
    deflate: bool
    cpu: int | None
    open_limit: int = 64


@dataclass(slots=True)
class ClientResult:
    """What one client process measured. Times are Unix seconds."""

    subscribed: int = 0
    finished: int = 0
    """Subscribers that received the stream's terminal frame."""
    frames: int = 0
    """Text-delta frames received."""
    frame_bytes: int = 0
    """Their payload bytes (after inflating)."""
    connect_seconds: float = 0.0
    cpu_seconds: float = 0.0
    """Process CPU from all subscribed to all finished."""
    sys_seconds: float = 0.0
    """The kernel's part of ``cpu_seconds``."""
    recv: array[float] = field(default_factory=lambda: array("d"))
    emitted: array[float] = field(default_factory=lambda: array("d"))
    scheduled: array[float] = field(default_factory=lambda: array("d"))
    seqs: array[int] = field(default_factory=lambda: array("q"))
    errors: list[str] = field(default_factory=list)
    unparsed_at: array[float] = field(default_factory=lambda: array("d"))
    unparsed: list[bytes] = field(default_factory=list)
    """Whole text-delta frames (header included) kept as read, parsed after the run."""

    def parse_later(self) -> None:
        """Account the frames kept by the raw client's fast path."""
        for now, frame in zip(self.unparsed_at, self.unparsed, strict=True):
            self.record(frame[4:], now)
        self.unparsed_at, self.unparsed = array("d"), []

    def record(self, payload: bytes, now: float) -> bytes:
        """Account one server message; return its event name."""
        match = _EVENT.match(payload)
        event = match.group(1) if match else b""
        if event == b"text-delta":
            self.frames += 1
            self.frame_bytes += len(payload)
            stamp = _STAMP.search(payload)
            seq = _SEQ.search(payload)
            if stamp is not None and seq is not None:
                self.recv.append(now)
                self.scheduled.append(float(stamp.group(1)))
                self.emitted.append(float(stamp.group(2)))
                self.seqs.append(int(seq.group(1)))
        return event

    def error(self, text: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(text)


def _mask(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.3), FIN set."""
    key = os.urandom(4)
    size = len(payload)
    head = bytes([0x80 | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    masked = int.from_bytes(payload, "big") ^ int.from_bytes((key * (size // 4 + 1))[:size], "big")
    return head + key + masked.to_bytes(size, "big")


class _Subscriber(asyncio.Protocol):
    """One raw WebSocket connection: handshake, then unmasked server frames."""

    def __init__(self, spec: ClientSpec, result: ClientResult) -> None:
        loop = asyncio.get_running_loop()
        self.result = result
        self.transport: asyncio.Transport | None = None
        self.key = base64.b64encode(os.urandom(16))
        self.request = (
            f"GET /app/{APP_KEY}?protocol=7&client=bench&version=1 HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{spec.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
            + ("Sec-WebSocket-Extensions: permessage-deflate\r\n" if spec.deflate else "")
            + "\r\n"
        ).encode()
        self.buffer = bytearray()
        self.upgraded = False
        self.inflater: Any = None
        self.fresh_inflater = False
        self.established: asyncio.Future[str] = loop.create_future()
        self.subscribed: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc!r}")

    def _fail(self, message: str) -> None:
        for future in (self.established, self.subscribed, self.done):
            if not future.done():
                future.set_exception(ConnectionError(message))
        if self.transport is not None:
            self.transport.close()

    def send_json(self, message: object) -> None:
        assert self.transport is not None
        self.transport.write(_mask(0x1, json.dumps(message).encode()))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.buffer
        if (  # fast path: one whole uncompressed text-delta frame (16-bit length)
            not buffer
            and data[0] == 0x81
            and data[1] == 126
            and int.from_bytes(data[2:4], "big") == len(data) - 4
            and data.startswith(_DELTA_HEAD, 4)
        ):
            self.result.unparsed_at.append(now)
            self.result.unparsed.append(data)
            return
        buffer += data
        if not self.upgraded and not self._upgrade():
            return
        pos, size = 0, len(buffer)
        while size - pos >= 2:
            first, length, head = buffer[pos], buffer[pos + 1] & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > size:
                break
            payload = bytes(buffer[pos + head : end])
            pos = end
            opcode = first & 0x0F
            if not first & 0x80 or opcode == 0:
                self._fail("fragmented message")
                return
            if opcode == 0x1:
                if first & 0x40:
                    payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
                    if self.fresh_inflater:
                        self.inflater = zlib.decompressobj(-15)
                self._on_message(payload, now)
            elif opcode == 0x9:
                assert self.transport is not None
                self.transport.write(_mask(0xA, payload))
            elif opcode == 0x8:
                self._fail(f"closed by the server: {payload[:2].hex()} {payload[2:]!r}")
                return
        del buffer[:pos]

    def _upgrade(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[:end]).lower()
        del self.buffer[: end + 4]
        accept = base64.b64encode(hashlib.sha1(self.key + _WS_GUID).digest()).lower()
        if not head.startswith(b"http/1.1 101") or accept not in head:
            self._fail(f"handshake refused: {head[:200]!r}")
            return False
        if b"permessage-deflate" in head:
            self.inflater = zlib.decompressobj(-15)
            self.fresh_inflater = b"server_no_context_takeover" in head
        self.upgraded = True
        return True

    def _on_message(self, payload: bytes, now: float) -> None:
        event = self.result.record(payload, now)
        if event == b"text-delta":
            return
        if event in _TERMINAL:
            if not self.done.done():
                self.done.set_result(None)
        elif event == b"pusher:connection_established":
            data = json.loads(json.loads(payload)["data"])
            self.established.set_result(data["socket_id"])
        elif event == b"pusher_internal:subscription_succeeded":
            self.subscribed.set_result(None)
        elif event == b"pusher:ping":
            self.send_json({"event": "pusher:pong", "data": {}})
        elif event in (b"pusher:error", b"pusher:subscription_error"):
            self._fail(payload[:300].decode(errors="replace"))


async def _raw_subscriber(
    spec: ClientSpec, result: ClientResult, opening: asyncio.Semaphore, ready: asyncio.Future[None]
) -> None:
    loop = asyncio.get_running_loop()
    protocol: _Subscriber | None = None
    try:
        async with opening:
            _, protocol = await loop.create_connection(
                lambda: _Subscriber(spec, result), "127.0.0.1", spec.port
            )
            socket_id = await protocol.established
            auth = channel_auth(APP_KEY, APP_SECRET, socket_id, spec.channel)
            data = {"channel": spec.channel, "auth": auth}
            protocol.send_json({"event": "pusher:subscribe", "data": data})
            await protocol.subscribed
        ready.set_result(None)
        await protocol.done
        result.finished += 1
    finally:
        if protocol is not None:
            if protocol.transport is not None:
                protocol.transport.close()
            for future in (protocol.established, protocol.subscribed, protocol.done):
                if future.done():
                    future.exception()  # retrieved: no "never retrieved" warning


async def _library_subscriber(
    spec: ClientSpec, result: ClientResult, opening: asyncio.Semaphore, ready: asyncio.Future[None]
) -> None:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{spec.port}/app/{APP_KEY}?protocol=7&client=bench&version=1"
    compression = "deflate" if spec.deflate else None
    async with opening:
        ws = await connect(url, compression=compression, ping_interval=None, open_timeout=60)
    try:
        async with opening:
            established = json.loads(await ws.recv())
            socket_id = json.loads(established["data"])["socket_id"]
            auth = channel_auth(APP_KEY, APP_SECRET, socket_id, spec.channel)
            data = {"channel": spec.channel, "auth": auth}
            await ws.send(json.dumps({"event": "pusher:subscribe", "data": data}))
            while result.record(await ws.recv(decode=False), time.time()) != (
                b"pusher_internal:subscription_succeeded"
            ):
                pass
        ready.set_result(None)
        while result.record(await ws.recv(decode=False), time.time()) not in _TERMINAL:
            pass
        result.finished += 1
    finally:
        await ws.close()


async def _run_clients(spec: ClientSpec, report: Any) -> None:
    """Subscribe ``spec.connections`` clients, report ``ready``, read until every
    stream ended (or the deadline), report ``done`` then the result."""
    loop = asyncio.get_running_loop()
    result = ClientResult()
    opening = asyncio.Semaphore(spec.open_limit)
    subscriber: Callable[..., Awaitable[None]] = (
        _raw_subscriber if spec.client == "raw" else _library_subscriber
    )
    readies = [loop.create_future() for _ in range(spec.connections)]

    async def guarded(ready: asyncio.Future[None]) -> None:
        try:
            await subscriber(spec, result, opening, ready)
        except (OSError, ConnectionError, EOFError, ValueError, KeyError) as exc:
            result.error(repr(exc))
        except Exception as exc:  # the library client's ConnectionClosed and kin
            result.error(repr(exc))
        finally:
            if not ready.done():
                ready.set_exception(ConnectionError("never subscribed"))

    started = time.time()
    tasks = [asyncio.create_task(guarded(ready)) for ready in readies]
    await asyncio.wait(readies, timeout=max(0.0, spec.connect_deadline - time.time()))
    result.subscribed = sum(1 for r in readies if r.done() and r.exception() is None)
    result.connect_seconds = time.time() - started
    report.put(("ready", result.subscribed))
    before = os.times()
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, spec.deadline - time.time()))
    after = os.times()
    result.sys_seconds = after.system - before.system
    result.cpu_seconds = after.user - before.user + result.sys_seconds
    report.put(("done", time.time()))
    result.parse_later()
    for task in pending:
        task.cancel()
    if pending:
        result.error(f"{len(pending)} subscribers still reading at the deadline")
    await asyncio.gather(*pending, return_exceptions=True)
    for ready in readies:
        if ready.done() and not ready.cancelled():
            ready.exception()  # retrieved: no "never retrieved" warnings
    report.put(("result", result))


def client_process(spec: ClientSpec, report: Any) -> None:
    """Entry point of a client process."""
    prepare_process(spec.cpu)
    try:
        import uvloop

        uvloop.run(_run_clients(spec, report))
    except ImportError:
        asyncio.run(_run_clients(spec, report))


# measurements -------------------------------------------------------------


@dataclass(slots=True)
class Row:
    """One server's measured round."""

    server: str
    subscribers: int
    tokens: int
    round: int = 0
    subscribed: int = 0
    finished: int = 0
    frames: int = 0
    expected: int = 0
    frame_bytes: float = 0.0
    """Mean text-delta frame size, bytes (the same for both servers)."""
    latency_p50_ms: float = float("nan")
    latency_p99_ms: float = float("nan")
    latency_max_ms: float = float("nan")
    spread_p50_ms: float = float("nan")
    spread_p99_ms: float = float("nan")
    sched_p99_ms: float = float("nan")
    server_cpu_s: float = 0.0
    server_sys_s: float = 0.0
    """The kernel's part of ``server_cpu_s`` (socket writes)."""
    server_cpu_share: float = 0.0
    """Server CPU seconds / wall seconds of the streaming window."""
    cpu_us_per_msg: float = float("nan")
    client_cpu_s: float = 0.0
    client_sys_s: float = 0.0
    client_us_per_msg: float = float("nan")
    rss_idle_mb: float = 0.0
    rss_open_mb: float = 0.0
    kb_per_conn: float = float("nan")
    connect_s: float = 0.0
    window_s: float = 0.0
    others_cpu0: float = 0.0
    """Busy share of CPU 0 (the server's) spent by other processes in the window."""
    busy_cpu1: float = 0.0
    """Busy share of CPU 1 (clients, orchestrator and anything else) in the window."""
    slowest: list[tuple[int, float]] = field(default_factory=list)
    """The 5 deltas (``seq``) with the highest median latency, ms."""
    errors: list[str] = field(default_factory=list)


class _Clients:
    """The client processes of one round and their report queue."""

    def __init__(self, specs: Sequence[ClientSpec]) -> None:
        context = multiprocessing.get_context("spawn")
        self.report: Any = context.Queue()
        self.processes = [
            context.Process(target=client_process, args=(spec, self.report), daemon=True)
            for spec in specs
        ]
        for process in self.processes:
            process.start()
        self.pending: dict[str, list[Any]] = {"ready": [], "done": [], "result": []}

    def wait(self, kind: str, deadline: float) -> list[Any]:
        """Every process's ``kind`` report; raises ``TimeoutError`` after ``deadline``."""
        while len(self.pending[kind]) < len(self.processes):
            try:
                what, value = self.report.get(timeout=max(0.1, min(1.0, deadline - time.time())))
            except queue_module.Empty:
                if time.time() > deadline:
                    raise TimeoutError(f"client processes: no {kind!r} report") from None
                if not any(p.is_alive() for p in self.processes):
                    raise RuntimeError("every client process exited") from None
                continue
            self.pending[what].append(value)
        return self.pending[kind]

    def stop(self) -> None:
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()


def _busy() -> list[float]:
    """Busy seconds of each CPU since boot (everything but idle and iowait)."""
    return [
        sum(t)
        - t.idle
        - getattr(t, "iowait", 0.0)
        - getattr(t, "guest", 0.0)
        - getattr(t, "guest_nice", 0.0)
        for t in psutil.cpu_times(percpu=True)
    ]


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_round(server: WsServer, plan: Plan, subscribers: int, tokens: int) -> Row:
    """Subscribe ``subscribers`` clients to a fresh channel, stream ``tokens`` deltas."""
    row = Row(server=server.label, subscribers=subscribers, tokens=tokens)
    channel = server.new_channel()
    connect_deadline = time.time() + 30 + subscribers * 0.05
    deadline = connect_deadline + 30 + tokens * PACE_MS / 1000
    specs = [
        ClientSpec(
            port=server.port,
            channel=channel,
            connections=count,
            connect_deadline=connect_deadline,
            deadline=deadline,
            client=plan.client,
            deflate=plan.deflate,
            cpu=CLIENT_CPU,
        )
        for count in _split(subscribers, plan.client_procs)
        if count
    ]
    clients = _Clients(specs)
    try:
        row.subscribed = sum(clients.wait("ready", connect_deadline + 30))
        time.sleep(0.3)
        row.rss_open_mb = server.rss_mb()
        start_at = time.time() + 0.5
        server.start_stream(channel, tokens, start_at)
        _sleep_until(start_at - 0.05)
        cpu_before, busy_before, window_start = server.cpu_split(), _busy(), time.time()
        clients.wait("done", deadline + 30)
        user, system = (a - b for a, b in zip(server.cpu_split(), cpu_before, strict=True))
        row.server_cpu_s, row.server_sys_s = user + system, system
        busy = [after - before for after, before in zip(_busy(), busy_before, strict=True)]
        row.window_s = time.time() - window_start
        row.others_cpu0 = max(0.0, busy[SERVER_CPU] - row.server_cpu_s) / row.window_s
        row.busy_cpu1 = busy[CLIENT_CPU] / row.window_s
        results: list[ClientResult] = clients.wait("result", deadline + 60)
    finally:
        clients.stop()
    _summarise(row, results)
    return row


def _summarise(row: Row, results: Sequence[ClientResult]) -> None:
    recv, emitted, scheduled, seqs = array("d"), array("d"), array("d"), array("q")
    for result in results:
        row.finished += result.finished
        row.frames += result.frames
        row.frame_bytes += result.frame_bytes
        row.client_cpu_s += result.cpu_seconds
        row.client_sys_s += result.sys_seconds
        row.connect_s = max(row.connect_s, result.connect_seconds)
        row.errors += result.errors[:3]
        recv.extend(result.recv)
        emitted.extend(result.emitted)
        scheduled.extend(result.scheduled)
        seqs.extend(result.seqs)
    row.expected = row.subscribers * row.tokens
    row.frame_bytes = row.frame_bytes / row.frames if row.frames else float("nan")
    first: dict[int, float] = {}
    for seq, at in zip(seqs, recv, strict=True):
        if at < first.get(seq, float("inf")):
            first[seq] = at
    latency = sorted(r - e for r, e in zip(recv, emitted, strict=True))
    spread = sorted(r - first[s] for r, s in zip(recv, seqs, strict=True))
    sched = sorted(r - s for r, s in zip(recv, scheduled, strict=True))
    by_seq: dict[int, list[float]] = {}
    for seq, r, e in zip(seqs, recv, emitted, strict=True):
        by_seq.setdefault(seq, []).append(r - e)
    medians = [(seq, _quantile(sorted(v), 0.5) * 1000) for seq, v in by_seq.items()]
    row.slowest = sorted(medians, key=lambda m: -m[1])[:5]
    row.latency_p50_ms = _quantile(latency, 0.5) * 1000
    row.latency_p99_ms = _quantile(latency, 0.99) * 1000
    row.latency_max_ms = (latency[-1] if latency else float("nan")) * 1000
    row.spread_p50_ms = _quantile(spread, 0.5) * 1000
    row.spread_p99_ms = _quantile(spread, 0.99) * 1000
    row.sched_p99_ms = _quantile(sched, 0.99) * 1000
    if row.frames:
        row.cpu_us_per_msg = row.server_cpu_s / row.frames * 1e6
        row.client_us_per_msg = row.client_cpu_s / row.frames * 1e6
    row.server_cpu_share = row.server_cpu_s / row.window_s if row.window_s else 0.0


def measure(plan: Plan, kinds: Sequence[str], profile: Path | None) -> list[Row]:
    """Start every server (each warmed up by a small round), then run the measured
    rounds alternately, ``plan.repeat`` times each, so background load hits both."""
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                serving(kind, profile if kind == "tokenwire" else None, plan.deflate)
            )
            for kind in kinds
        ]
        for server in servers:
            warm = run_round(server, plan, plan.warmup_subscribers, plan.warmup_tokens)
            if warm.finished < warm.subscribers:
                print(f"  warm-up: {warm.finished}/{warm.subscribers} finished {warm.errors[:2]}")
        for index in range(plan.repeat):
            for server in servers:
                time.sleep(0.5)  # let the server forget the last round's connections
                rss_idle = server.rss_mb()
                row = run_round(server, plan, plan.subscribers, plan.tokens)
                row.round = index + 1
                row.rss_idle_mb = rss_idle
                row.kb_per_conn = (row.rss_open_mb - rss_idle) * 1024 / max(row.subscribed, 1)
                rows.append(row)
                _progress(row)
    return rows


def _progress(row: Row) -> None:
    print(
        f"  {row.server:16} round {row.round}: {row.subscribed} subscribers, latency p99 "
        f"{row.latency_p99_ms:.1f} ms, {row.cpu_us_per_msg:.1f} µs CPU/msg, "
        f"{row.frames:,}/{row.expected:,} frames, others on CPU 0 {row.others_cpu0:.0%}",
        flush=True,
    )
    slowest = ", ".join(f"seq {seq}: {ms:.1f}" for seq, ms in row.slowest)
    print(f"    slowest deltas (median ms over subscribers): {slowest}", flush=True)
    for error in row.errors[:3]:
        print(f"    error: {error}", flush=True)


# report -------------------------------------------------------------------


def _bare_of(rows: Sequence[Row], row: Row) -> Row | None:
    """The bare row of the same round as ``row``."""
    return next((r for r in rows if r.server.startswith("bare") and r.round == row.round), None)


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| server | round | subscribed | frames recv/expected | latency p50 / p99 / max (ms) "
        "| spread p50 / p99 (ms) | vs schedule p99 (ms) | server CPU (share of window) "
        "| CPU µs / delivered msg (kernel) | ratio vs bare | client µs / msg (kernel) "
        "| CPU 0 others / CPU 1 busy | RSS idle → open (MB) | KB/conn | frame bytes | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        bare = _bare_of(rows, r)
        ratio = r.cpu_us_per_msg / bare.cpu_us_per_msg if bare else float("nan")
        lines.append(
            f"| {r.server} | {r.round} | {r.subscribed}/{r.subscribers} "
            f"| {r.frames:,}/{r.expected:,} "
            f"| {r.latency_p50_ms:.1f} / {r.latency_p99_ms:.1f} / {r.latency_max_ms:.1f} "
            f"| {r.spread_p50_ms:.1f} / {r.spread_p99_ms:.1f} | {r.sched_p99_ms:.1f} "
            f"| {r.server_cpu_s:.2f} s ({r.server_cpu_share:.0%}) | {r.cpu_us_per_msg:.1f} "
            f"({r.server_sys_s / r.frames * 1e6 if r.frames else float('nan'):.1f}) "
            f"| {ratio:.2f} | {r.client_us_per_msg:.1f} "
            f"({r.client_sys_s / r.frames * 1e6 if r.frames else float('nan'):.1f}) "
            f"| {r.others_cpu0:.0%} / {r.busy_cpu1:.0%} "
            f"| {r.rss_idle_mb:.1f} → {r.rss_open_mb:.1f} "
            f"| {f'{r.kb_per_conn:.1f}' if r.round == 1 else '-'} "
            f"| {r.frame_bytes:.0f} | {len(r.errors)} |"
        )
    return "\n".join(lines)


def targets(rows: Sequence[Row]) -> str:
    lines = []
    for tw in (r for r in rows if r.server.startswith("tokenwire")):
        head = f"- round {tw.round}: "
        verdict = "met" if tw.latency_p99_ms < 50 else "NOT met"
        lines.append(f"{head}p99 delivery latency < 50 ms: {tw.latency_p99_ms:.1f} ms → {verdict}")
        bare = _bare_of(rows, tw)
        if bare is not None:
            ratio = tw.cpu_us_per_msg / bare.cpu_us_per_msg
            verdict = "met" if ratio <= 1.5 else "NOT met"
            lines.append(
                f"{head}CPU per delivered message <= 1.5 x bare: {tw.cpu_us_per_msg:.1f} / "
                f"{bare.cpu_us_per_msg:.1f} µs = {ratio:.2f} x → {verdict}"
            )
        complete = tw.frames == tw.expected and tw.finished == tw.subscribers
        lines.append(f"{head}every frame delivered: {tw.frames:,}/{tw.expected:,} → {complete}")
    return "\n".join(lines) or "- (no tokenwire row)"


def _environment(plan: Plan) -> str:
    from importlib.metadata import version

    return (
        f"{os.cpu_count()} CPUs; server on CPU {SERVER_CPU}, {plan.client_procs} client "
        f"process(es) ({plan.client} client{', permessage-deflate' if plan.deflate else ''}) "
        f"on CPU {CLIENT_CPU}; uvicorn --loop {LOOP} --http {HTTP} "
        "--ws tokenwire.server.serving.FanoutWebSocketProtocol; "
        f"websockets {version('websockets')}; Python {sys.version.split()[0]}"
    )


def run(plan: Plan, kinds: Sequence[str], json_path: Path, profile: bool) -> None:
    prepare_process(CLIENT_CPU)
    started = time.monotonic()
    print(_environment(plan), flush=True)
    rows = measure(plan, kinds, json_path.with_suffix(".tokenwire.prof") if profile else None)
    print(
        f"\nOne stream, {plan.tokens} text deltas at one per {PACE_MS:g} ms, "
        f"fanned out to {plan.subscribers} WebSocket subscribers\n"
    )
    print(table(rows))
    print("\nTargets\n")
    print(targets(rows))
    print(f"\n{_environment(plan)}; total {time.monotonic() - started:.1f} s")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"environment": _environment(plan), "plan": asdict(plan)}
    data["rows"] = [asdict(r) for r in rows]
    json_path.write_text(json.dumps(data, indent=2))
    print(f"results: {json_path}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--subscribers", type=int, default=1000, help="WebSocket subscribers")
    parser.add_argument("--tokens", type=int, default=250, help="text deltas in the stream")
    parser.add_argument("--quick", action="store_true", help="100 subscribers, 50 tokens")
    parser.add_argument("--repeat", type=int, default=2, help="rounds per server (quick: 1)")
    parser.add_argument("--client-procs", type=int, default=1, help="client processes (CPU 1)")
    parser.add_argument("--client", choices=("raw", "websockets"), default="raw")
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    parser.add_argument(
        "--servers", nargs="+", choices=("bare", "tokenwire"), default=["bare", "tokenwire"]
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the tokenwire server")
    parser.add_argument("--json", type=Path, default=None, help="results file")
    parser.add_argument(
        "--baseline-src", type=Path, default=None, metavar="DIR", help=BASELINE_HELP
    )
    parser.add_argument("--serve-bare", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-tokenwire", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_tokenwire is not None:
        from tokenwire.server.serving import run as serve

        serve(
            tokenwire_app(), port=args.serve_tokenwire, log_level="warning", access_log=False,
            backlog=4096, loop=LOOP, http=HTTP,
        )  # fmt: skip
        return
    if args.serve_bare is not None:
        try:
            import uvloop

            uvloop.run(_bare_serve(args.serve_bare))
        except ImportError:
            asyncio.run(_bare_serve(args.serve_bare))
        return
    plan = Plan(
        subscribers=100 if args.quick else args.subscribers,
        tokens=50 if args.quick else args.tokens,
        client_procs=args.client_procs,
        client=args.client,
        deflate=args.deflate,
        repeat=1 if args.quick else args.repeat,
    )
    plan = dataclasses.replace(plan, warmup_subscribers=min(50, plan.subscribers))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = args.json or RESULTS / f"ws_bench-{stamp}.json"
    kinds = list(args.servers)
    if BASELINE in set_baseline_src(args.baseline_src) and "tokenwire" in kinds:
        kinds.insert(kinds.index("tokenwire") + 1, BASELINE)
    run(plan, kinds, json_path, args.profile)


if __name__ == "__main__":
    main()
