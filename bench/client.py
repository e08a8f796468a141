"""A minimal load client: raw asyncio sockets, HTTP/1.1, chunked SSE bodies.

One connection per stream. Each connection is an :class:`asyncio.Protocol` that
parses the response head, then the chunked body incrementally, and counts SSE
frames by searching for the blank line that ends each one (``\\n\\n``): no JSON
decoding on the hot path. Paced streams carry ``s=<scheduled> e=<emitted>`` stamps
in their delta text (see :mod:`bench.servers`); one regular-expression scan per
read extracts them, and every stamp is compared with the read's arrival time.

:func:`run_load_in_process` is the entry point for a client process: it pins the
process to a CPU, raises the open-file limit, installs uvloop when available and
runs :func:`run_load`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import time
from array import array
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

__all__ = ["LoadResult", "LoadSpec", "run_load", "run_load_in_process"]

_STAMP = re.compile(rb"s=(\d+\.\d+) e=(\d+\.\d+) ")
_DELTA_FRAME = b"event: text-delta\n"
_TOKEN = b"tok "


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One load run against ``127.0.0.1:port``.

    Attributes:
        port: the server's TCP port.
        model: the ``model`` field of the request body.
        workers: concurrent streams (one connection each).
        rounds: streams each worker runs one after the other.
        n: text deltas per stream.
        interval_ms: 0 = unpaced; otherwise the pacing interval, milliseconds.
        start_ats: paced only: per worker, Unix time in seconds of its first delta.
        open_limit: at most this many connections waiting for their response head.
        deadline: Unix time in seconds after which the run is abandoned.
        cpu: the CPU this client process is pinned to, or ``None``.
    """

    port: int
    model: str
    workers: int
    rounds: int
    n: int
    interval_ms: float = 0.0
    start_ats: tuple[float, ...] = ()
    open_limit: int = 256
    deadline: float = 0.0
    cpu: int | None = None


@dataclass(slots=True)
class LoadResult:
    """What a run measured. Times are Unix seconds; lateness arrays are in seconds."""

    streams_ok: int = 0
    streams_failed: int = 0
    frames: int = 0
    deltas: int = 0
    tokens: int = 0
    body_bytes: int = 0
    started: float = 0.0
    ended: float = 0.0
    last_open: float = 0.0
    cpu_seconds: float = 0.0
    late_emit: array[float] = field(default_factory=lambda: array("d"))
    late_sched: array[float] = field(default_factory=lambda: array("d"))
    scheduled: array[float] = field(default_factory=lambda: array("d"))
    errors: list[str] = field(default_factory=list)

    def merge(self, other: LoadResult) -> None:
        """Add ``other`` (from another client process) into this result."""
        for name in ("streams_ok", "streams_failed", "frames", "deltas", "tokens", "body_bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cpu_seconds += other.cpu_seconds
        self.started = min(self.started, other.started) if self.started else other.started
        self.ended = max(self.ended, other.ended)
        self.last_open = max(self.last_open, other.last_open)
        self.late_emit.extend(other.late_emit)
        self.late_sched.extend(other.late_sched)
        self.scheduled.extend(other.scheduled)
        self.errors.extend(other.errors[:5])


class _StreamProtocol(asyncio.Protocol):
    """One HTTP/1.1 request and its chunked SSE response."""

    def __init__(self, request: bytes, result: LoadResult, paced: bool) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.result = result
        self.paced = paced
        self.head_received: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.in_body = False
        self.chunk_left = -1
        """Bytes of the current chunk still to come (+2 for its CRLF); -1 = expect a size."""
        self.sse = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionError(f"connection lost: {exc!r}")
        for future in (self.head_received, self.done):
            if not future.done():
                future.set_exception(error)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.in_body and not self._parse_head():
            return
        self._parse_chunks()

    def _parse_head(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[:end]).lower()
        del self.buffer[: end + 4]
        self.in_body = True
        status = head.split(b" ", 2)[1]
        if status != b"200" or b"transfer-encoding: chunked" not in head:
            self._fail(f"unexpected response head: {head[:200]!r}")
            return False
        self.result.last_open = max(self.result.last_open, time.time())
        self.head_received.set_result(None)
        return True

    def _parse_chunks(self) -> None:
        buffer = self.buffer
        pos = 0
        payloads: list[bytes] = []
        while True:
            if self.chunk_left < 0:
                eol = buffer.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buffer[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if size == 0:
                    self._finish_body(payloads)
                    return
                self.chunk_left = size + 2
            if len(buffer) - pos < self.chunk_left:
                break
            payloads.append(bytes(buffer[pos : pos + self.chunk_left - 2]))
            pos += self.chunk_left
            self.chunk_left = -1
        del buffer[:pos]
        if payloads:
            self._on_payload(b"".join(payloads))

    def _on_payload(self, payload: bytes) -> None:
        now = time.time()
        sse = self.sse
        sse += payload
        end = sse.rfind(b"\n\n")
        if end < 0:
            return
        complete = bytes(sse[: end + 2])
        del sse[: end + 2]
        result = self.result
        result.body_bytes += len(complete)
        result.frames += complete.count(b"\n\n")
        result.deltas += complete.count(_DELTA_FRAME)
        if not self.paced:
            result.tokens += complete.count(_TOKEN)
            return
        stamps = _STAMP.findall(complete)
        result.tokens += len(stamps)
        late_emit, late_sched, at = result.late_emit, result.late_sched, result.scheduled
        for scheduled, emitted in stamps:
            due = float(scheduled)
            late_emit.append(now - float(emitted))
            late_sched.append(now - due)
            at.append(due)

    def _finish_body(self, payloads: list[bytes]) -> None:
        self.buffer.clear()
        if payloads:
            self._on_payload(b"".join(payloads))
        if not self.done.done():
            self.done.set_result(None)

    def _fail(self, message: str) -> None:
        error = ConnectionError(message)
        for future in (self.head_received, self.done):
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.close()


def _request(port: int, model: str, params: dict[str, float]) -> bytes:
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "go"}], "params": params}
    ).encode()
    head = (
        f"POST /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Accept: text/event-stream\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_stream(
    result: LoadResult,
    opening: asyncio.Semaphore,
    port: int,
    paced: bool,
    make_request: Callable[[], Awaitable[bytes]],
    errors: tuple[type[BaseException], ...] = (OSError, ConnectionError),
) -> None:
    """Open one connection to ``port``, send ``await make_request()`` and read the SSE
    response to its end into ``result``; ``errors`` count as a failed stream.

    ``opening`` bounds how many streams are being opened at once (request made,
    response head not received yet).
    """
    loop = asyncio.get_running_loop()
    protocol: _StreamProtocol | None = None
    try:
        async with opening:
            request = await make_request()
            _, protocol = await loop.create_connection(
                lambda: _StreamProtocol(request, result, paced), "127.0.0.1", port
            )
            await protocol.head_received
        await protocol.done
        result.streams_ok += 1
    except errors as exc:
        result.streams_failed += 1
        if len(result.errors) < 5:
            result.errors.append(repr(exc))
    finally:
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()


async def _one_stream(
    spec: LoadSpec, start_at: float, result: LoadResult, opening: asyncio.Semaphore
) -> None:
    params = {"n": spec.n, "interval_ms": spec.interval_ms, "start_at": start_at}

    async def request() -> bytes:
        return _request(spec.port, spec.model, params)

    await read_stream(result, opening, spec.port, spec.interval_ms > 0, request)


async def run_load(spec: LoadSpec) -> LoadResult:
    """Run ``spec`` to completion or until ``spec.deadline``; never raises for I/O errors."""
    result = LoadResult()
    opening = asyncio.Semaphore(spec.open_limit)

    async def worker(index: int) -> None:
        for _ in range(spec.rounds):
            start_at = spec.start_ats[index] if spec.start_ats else 0.0
            await _one_stream(spec, start_at, result, opening)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    result.started = time.time()
    tasks = [asyncio.create_task(worker(i)) for i in range(spec.workers)]
    left = spec.deadline - time.time() if spec.deadline else None
    _, pending = await asyncio.wait(tasks, timeout=left)
    for task in pending:
        task.cancel()
    if pending:
        result.errors.append(f"{len(pending)} workers still running at the deadline")
        result.streams_failed += len(pending)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
    result.ended = time.time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_seconds = usage.ru_utime + usage.ru_stime - cpu_before
    return result


def prepare_process(cpu: int | None) -> None:
    """Pin this process to ``cpu`` and raise its open-file limit to the hard limit."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


T = TypeVar("T")


def run_in_process(cpu: int | None, main: Coroutine[Any, Any, T]) -> T:
    """Pin the process to ``cpu``, then run ``main`` on uvloop (asyncio without it)."""
    prepare_process(cpu)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def run_load_in_process(spec: LoadSpec) -> LoadResult:
    """Entry point of a client process (picklable for :mod:`concurrent.futures`)."""
    return run_in_process(spec.cpu, run_load(spec))
