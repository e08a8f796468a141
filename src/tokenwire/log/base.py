"""The stream log protocol (DESIGN §4), implemented by the memory and Redis backends.

A stream is created, then receives events numbered ``seq = 1, 2, 3 …`` with no
gaps, up to exactly one terminal event. Any number of readers replay it from any
point and follow it live. The log also carries the stream's cancel request, the
producer's lease and the count of live readers.

Slow readers: a reader holds no queue of its own. It keeps only its position
(``after``) and takes at most ``batch`` events per step from the shared log, so a
reader that cannot keep up simply falls behind in the log and catches up by
sequence number; its memory cost does not grow with its lag.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping
from typing import Any, Protocol

import msgspec

from tokenwire.events import Event, StreamStatus
from tokenwire.log.follow import Follower, Sink

__all__ = ["StreamInfo", "StreamLog"]


class StreamInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the log knows about one stream.

    Attributes:
        status: ``running`` until the terminal event is appended, then the
            terminal's outcome: ``completed``, ``failed`` or ``cancelled``.
        last_seq: ``seq`` of the last event appended (0 for none).
        meta: what the creator stored (conversation and message ids, model, owner).
        created_at: Unix seconds.
        finished_at: Unix seconds of the terminal event, or ``None``.
    """

    stream_id: str
    status: StreamStatus
    last_seq: int
    meta: Mapping[str, str]
    created_at: float
    finished_at: float | None = None


class StreamLog(Protocol):
    """Ordered, durable-while-retained event storage with live tail.

    ``on_producer_lost``, when set, is awaited (in a task of its own) with the
    stream id each time this process appended a ``producer_lost`` event, so the
    owner can finish the stored message of a generation whose producer died.

    A backend may also offer ``async sweep_expired_leases() -> list[str]``: append
    ``producer_lost`` to every running stream whose lease expired, even one nobody
    reads, and return their ids (exactly once per stream, even when several
    processes sweep at once). :class:`~tokenwire.Tokenwire` calls it every
    ``lease_sweep_interval`` seconds; both built-in backends have it.

    Every method raises :class:`~tokenwire.errors.StreamNotFoundError` for an
    unknown stream and :class:`~tokenwire.errors.StreamExpiredError` for one past
    retention, unless documented otherwise.
    """

    on_producer_lost: Callable[[str], Coroutine[Any, Any, None]] | None

    events_in_process: bool
    """Whether :meth:`events` answers from this process's memory, without I/O: the
    producer then reads a generation's events back at each store write instead of
    keeping a copy of their text (one copy of an answer in memory, not two)."""

    async def create(self, stream_id: str, meta: Mapping[str, str]) -> None:
        """Create an empty running stream. Raises ``ValueError`` if it exists."""

    async def append(self, stream_id: str, events: list[Event]) -> list[Event]:
        """Append events atomically, numbering them; return them with ``seq`` set.

        Events after a terminal event are dropped: once a stream has its terminal
        event nothing more is appended, so the result may be shorter than
        ``events`` (empty when the stream had already ended). This is how
        "exactly one terminal event" holds when a producer and a
        ``producer_lost`` detector race.
        """

    def read(
        self, stream_id: str, after: int = 0, *, batch: int = 256, idle: float | None = None
    ) -> AsyncGenerator[list[Event], None]:
        """Replay events with ``seq > after``, then follow live, until the terminal event.

        Yields lists of at most ``batch`` events: everything that is ready at
        once, so a transport can write them in one send; an empty list after
        ``idle`` seconds without events (``None``: never), for heartbeats. While the
        stream is running the reader counts as live for ``orphan_timeout``. If the
        producer's lease expires without a terminal event, the reader appends
        ``error{code: "producer_lost"}`` itself (and yields it).
        """

    def follow(
        self,
        stream_id: str,
        after: int,
        sink: Sink,
        *,
        batch: int = 256,
        idle: float | None = None,
    ) -> Follower:
        """Like :meth:`read`, but the log hands each batch to ``sink``
        (:mod:`tokenwire.log.follow`).

        Same batches, heartbeats, reader count and ``producer_lost`` as :meth:`read`.
        What the log holds after ``after`` may be handed over before this returns.
        Must be called in the event loop's thread. Raises
        :class:`~tokenwire.errors.StreamNotFoundError` /
        :class:`~tokenwire.errors.StreamExpiredError` at once, or through
        ``done``, for a stream the log does not have.
        """

    async def events(
        self, stream_id: str, after: int = 0, limit: int | None = None, *, merged: bool = False
    ) -> list[Event]:
        """Events with ``seq > after`` available now (no waiting); at most ``limit``.

        ``merged=True`` (with no ``limit``) is a read for folding, not for delivery:
        consecutive deltas of one kind and part may come as one event, numbered as
        the last of them (the memory log does so for its packed chunks)."""

    async def wait(self, stream_id: str, after: int, timeout: float) -> list[Event]:
        """Like :meth:`events`, but wait up to ``timeout`` seconds for at least one."""

    async def info(self, stream_id: str) -> StreamInfo:
        """The stream's status."""

    async def active_stream(self, conversation_id: str) -> StreamInfo | None:
        """The conversation's running stream: the newest one created with
        ``meta["conversation_id"]`` equal to it, until its terminal event; else ``None``."""

    async def request_cancel(self, stream_id: str, reason: str) -> bool:
        """Ask the producer to stop. Idempotent: ``False`` if already asked or ended."""

    def watch_cancel(self, stream_id: str, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(reason)`` once when a cancel is requested (at once if it
        already was). Returns a function that stops watching."""

    async def heartbeat(self, stream_id: str, ttl: float) -> None:
        """Renew the producer's lease for ``ttl`` seconds."""

    async def readers(self, stream_id: str) -> tuple[int, float | None]:
        """``(live readers now, Unix seconds when the last one left)``; the time is
        ``None`` while the stream has never had a reader."""

    async def sweep_expired_leases(self) -> list[str]:
        """End every running stream whose producer's lease expired with
        ``error{producer_lost}`` (and ``on_producer_lost``), read or not; return the ids
        this call ended."""

    def statistics(self) -> dict[str, int]:
        """This process's counts for ``/metrics``: ``streams``, ``running``, ``events``
        and ``readers`` (a backend may count only what this process sees)."""

    async def close(self) -> None:
        """Release resources."""
