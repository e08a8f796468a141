"""A turn's store writes off the first-byte path (issue #12, docs/performance.md).

Starting a turn used to write the conversation, the new messages and the empty
assistant message in one transaction before the stream's first byte. Now
:meth:`Store.plan_turn <tokenwire.store.Store.plan_turn>` only *reads* (the
conversation, its owner and history, when it exists) and returns a
:class:`PendingTurn` with every id and timestamp decided; the engine logs it
with the stream (``meta["turn"]``, :func:`encode_turn`) and hands it to the
store's :class:`TurnWriter`, which writes the turns of all streams queued
meanwhile in **one transaction per batch** in a background task.

When "written" is guaranteed: every other operation of the same :class:`Store`
(reads, checkpoints, the final ``update_message`` of the producer, deletes) first
waits for the turns queued before it (:meth:`TurnWriter.settle`). The producer
stores the final message before it appends the terminal event, so a reader that
sees ``finish`` (or ``GET``\\s the message afterwards) finds the whole turn stored,
as before. Another process's store may not see a turn until the writer's
transaction commits (normally a few milliseconds after the first byte).

The message updates written here (the producer's end, :func:`write_updates`) and the
checkpoints (:func:`write_checkpoints`) may carry only what a streaming message grew
since its last write (:class:`~tokenwire.accumulate.PartsGrowth`): the database
appends the new text to the stored parts (``json_set`` on SQLite, ``jsonb_set`` on
PostgreSQL), so no stored content is read into the process.

If the process dies before the writer committed, the log still holds the turn:
:func:`tokenwire.engine.housekeeping.finish_lost_message` writes it again
(:func:`write_turns` skips a turn whose assistant message exists) and then stores
what the log holds of the answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, cast

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from tokenwire.accumulate import PartsGrowth
from tokenwire.store.models import ConversationRecord, ConversationRow, MessageRecord, MessageRow

__all__ = [
    "MessageUpdate",
    "PendingTurn",
    "TurnMessage",
    "TurnWriter",
    "decode_turn",
    "encode_turn",
    "write_checkpoints",
    "write_turns",
    "write_updates",
]

logger = logging.getLogger("tokenwire")


class TurnMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a turn, as it will be inserted."""

    id: str
    role: str
    parts: list[dict[str, object]]
    status: str
    model: str | None
    created_at: datetime
    """Aware UTC."""


class PendingTurn(msgspec.Struct, frozen=True, kw_only=True):
    """A turn decided but maybe not yet written: its conversation and new messages.

    ``new``: the conversation is created by this turn (``source`` and
    ``created_at`` are then its own); otherwise it exists, and ``title`` is what it
    gets if it has none yet. ``owner`` is the conversation's. ``messages`` ends with
    the assistant message (status ``streaming``, no parts).
    """

    conversation_id: str
    new: bool
    owner: str | None
    title: str | None
    source: str | None
    created_at: datetime
    conversation_created_at: datetime
    messages: list[TurnMessage]

    def meta(self, model: str, *, recoverable: bool = True) -> dict[str, str]:
        """The stream's ``meta`` in the log: ``conversation_id``, ``message_id``,
        ``model``, ``owner`` (the conversation's, if it has one: a stream is its
        conversation owner's) and, if ``recoverable``, ``turn`` (:func:`encode_turn`:
        what recovery writes if the process dies before the store has it; pointless
        in a log that dies with the process)."""
        meta = {"conversation_id": self.conversation_id, "message_id": self.messages[-1].id}
        meta["model"] = model
        if recoverable:
            meta["turn"] = encode_turn(self)
        if self.owner is not None:
            meta["owner"] = self.owner
        return meta

    @property
    def assistant(self) -> MessageRecord:
        """The assistant message as a record."""
        return _record(self.conversation_id, self.messages[-1])

    def conversation(self, existing: ConversationRecord | None) -> ConversationRecord:
        """The conversation as it is once this turn is written."""
        return ConversationRecord(
            id=self.conversation_id,
            owner=self.owner,
            title=(existing.title if existing and existing.title else self.title),
            created_at=self.conversation_created_at.timestamp(),
            updated_at=self.created_at.timestamp(),
            source=existing.source if existing else self.source,
        )


def _record(conversation_id: str, m: TurnMessage) -> MessageRecord:
    at = m.created_at.timestamp()
    return MessageRecord(
        id=m.id,
        conversation_id=conversation_id,
        role=m.role,
        parts=m.parts,
        status=m.status,
        model=m.model,
        finish_reason=None,
        usage=None,
        error=None,
        created_at=at,
        updated_at=at,
    )


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(PendingTurn)


def encode_turn(turn: PendingTurn) -> str:
    """The turn as JSON text (for the stream's ``meta["turn"]`` in the log)."""
    return _ENCODER.encode(turn).decode()


def decode_turn(text: str) -> PendingTurn:
    """The inverse of :func:`encode_turn`. Raises ``msgspec.ValidationError``."""
    return _DECODER.decode(text)


_CONVERSATIONS = cast(sa.Table, ConversationRow.__table__)
_MESSAGES = cast(sa.Table, MessageRow.__table__)
"""The tables, for Core statements: the same rows without the ORM's bulk bookkeeping
(6 % of the samples of a server running short streams one after another, py-spy)."""


async def write_turns(session: AsyncSession, turns: list[PendingTurn]) -> list[PendingTurn]:
    """Insert ``turns`` in ``session`` (one transaction, the caller's; bulk
    ``INSERT`` statements); return those skipped: already written (their assistant message
    exists) or whose existing conversation was deleted meanwhile."""
    ids = [t.messages[-1].id for t in turns]
    found = await session.scalars(sa.select(MessageRow.id).where(MessageRow.id.in_(ids)))
    written = set(found.all())
    old = {t.conversation_id for t in turns if not t.new}
    conversations: dict[str, ConversationRow] = {}
    if old:  # the few existing conversations: locked, then updated
        stmt = sa.select(ConversationRow).where(ConversationRow.id.in_(old)).with_for_update()
        conversations = {row.id: row for row in (await session.scalars(stmt)).all()}
    skipped: list[PendingTurn] = []
    created: list[dict[str, object]] = []
    messages: list[dict[str, object]] = []
    for turn in turns:
        row = conversations.get(turn.conversation_id)
        if turn.messages[-1].id in written or (row is None and not turn.new):
            skipped.append(turn)
            continue
        if row is None:
            created.append(_conversation_values(turn))
        else:
            row.updated_at = max(row.updated_at, turn.created_at)
            if row.title is None:
                row.title = turn.title
        messages += (_message_values(turn.conversation_id, m) for m in turn.messages)
    if created:
        await session.execute(sa.insert(_CONVERSATIONS), created)
    if messages:
        await session.execute(sa.insert(_MESSAGES), messages)
    await session.flush()
    return skipped


def _conversation_values(turn: PendingTurn) -> dict[str, object]:
    return {
        "id": turn.conversation_id,
        "owner": turn.owner,
        "title": turn.title,
        "source": turn.source,
        "created_at": turn.conversation_created_at,
        "updated_at": turn.created_at,
    }


def _message_values(conversation_id: str, m: TurnMessage) -> dict[str, object]:
    return {
        "id": m.id,
        "conversation_id": conversation_id,
        "role": m.role,
        "parts": m.parts,
        "status": m.status,
        "model": m.model,
        "finish_reason": None,
        "usage": None,
        "error": None,
        "cost": None,
        "created_at": m.created_at,
        "updated_at": m.created_at,
    }


class MessageUpdate(msgspec.Struct, frozen=True):
    """Changed fields of one message (column name → value, ``updated_at`` included),
    and the content grown since the stored one, when it continues that."""

    message_id: str
    values: dict[str, object]
    grown: PartsGrowth | None = None


async def write_updates(session: AsyncSession, updates: list[MessageUpdate]) -> None:
    """Apply ``updates`` in ``session``, one ``UPDATE`` per message (a missing
    message is ignored, as :meth:`Store.update_message` documents); a grown one
    appends in SQL (:func:`write_checkpoints`)."""
    dialect = session.get_bind().dialect.name
    for update in updates:
        stmt = sa.update(_MESSAGES).where(_MESSAGES.c.id == update.message_id)
        if update.grown is None:
            await session.execute(stmt.values(update.values))
            continue
        n = len(update.grown.continued)
        stmt = stmt.values({**update.values, "parts": _appended(dialect, n)})
        await session.execute(stmt, _growth_params(dialect, update.grown))


async def write_checkpoints(
    session: AsyncSession, grown_by_id: dict[str, PartsGrowth], updated_at: datetime
) -> None:
    """Write the content of each message as grown in ``session``: the database
    appends each continued field's new text to the stored one (no stored content
    is read into the process), one ``UPDATE`` per number of continued fields for
    all messages (a message deleted meanwhile is ignored). The growths must be
    checked already (:func:`~tokenwire.store.fields.check_parts`).

    Appending follows :meth:`PartsGrowth.onto <tokenwire.accumulate.PartsGrowth.onto>`:
    a missing or non-text stored field counts as empty text.
    """
    dialect = session.get_bind().dialect.name
    rows: dict[int, list[dict[str, object]]] = {}
    for message_id, growth in grown_by_id.items():
        params = _growth_params(dialect, growth)
        params.update(message_id=message_id, updated_at=updated_at)
        rows.setdefault(len(growth.continued), []).append(params)
    for n, batch in rows.items():
        stmt = sa.update(_MESSAGES).where(_MESSAGES.c.id == sa.bindparam("message_id"))
        values = {"parts": _appended(dialect, n), "updated_at": sa.bindparam("updated_at")}
        await session.execute(stmt.values(values), batch)


def _appended(dialect: str, n: int) -> sa.ColumnElement[object]:
    """The stored ``parts`` as the bound ``parts`` with ``n`` continued fields
    (bound ``at{k}``, ``from{k}``, ``text{k}``: the field's path in the new and
    in the stored parts, and its new text) each prefixed by the stored text, in
    SQL: ``json_set`` on SQLite (JSON1), ``jsonb_set`` on PostgreSQL."""
    stored = _MESSAGES.c.parts
    if dialect == "postgresql":
        path = ARRAY(sa.Text)
        parts: sa.ColumnElement[object] = sa.bindparam("parts", type_=JSONB)
        for k in range(n):
            at = sa.bindparam(f"at{k}", type_=path)
            before_at = sa.bindparam(f"from{k}", type_=path)
            is_text = sa.func.jsonb_typeof(stored.op("#>")(before_at)) == "string"
            before = sa.case((is_text, stored.op("#>>", return_type=sa.Text)(before_at)), else_="")
            text = sa.func.to_jsonb(before.concat(sa.bindparam(f"text{k}", type_=sa.Text)))
            parts = sa.func.jsonb_set(parts, at, text, type_=JSONB)
        return parts
    if n == 0:
        return sa.bindparam("parts", type_=sa.JSON)
    args: list[sa.ColumnElement[Any]] = [sa.bindparam("parts", type_=sa.JSON)]
    for k in range(n):
        before_at = sa.bindparam(f"from{k}", type_=sa.Text)
        is_text = sa.func.json_type(stored, before_at) == "text"
        before = sa.case(
            (is_text, sa.func.json_extract(stored, before_at, type_=sa.Text)), else_=""
        )
        args += [sa.bindparam(f"at{k}", type_=sa.Text), before.concat(sa.bindparam(f"text{k}"))]
    return sa.func.json_set(*args, type_=sa.JSON)


def _growth_params(dialect: str, growth: PartsGrowth) -> dict[str, object]:
    """The bound values of :func:`_appended` for ``growth``."""
    params: dict[str, object] = {"parts": growth.parts}
    for k, (i, (j, field)) in enumerate(growth.continued.items()):
        if dialect == "postgresql":
            params[f"at{k}"], params[f"from{k}"] = [str(i), field], [str(j), field]
        else:
            params[f"at{k}"], params[f"from{k}"] = f'$[{i}]."{field}"', f'$[{j}]."{field}"'
        params[f"text{k}"] = growth.parts[i].get(field, "")
    return params


_Item = PendingTurn | MessageUpdate
_Write = Callable[[list[PendingTurn], list[MessageUpdate]], Awaitable[None]]


class TurnWriter:
    """Writes queued turns and message updates in the background: everything queued
    while a transaction runs goes into the next one (one ``write`` call per batch).

    Args:
        write: writes turns, then updates, in one transaction (raises on failure).
    """

    def __init__(self, write: _Write) -> None:
        self._write = write
        self._queue: list[tuple[_Item, asyncio.Future[None] | None]] = []
        self._queued: asyncio.Future[None] | None = None
        self._writing: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.failed: list[str] = []
        """Assistant message ids of turns that could not be written (logged)."""

    @property
    def pending(self) -> bool:
        """Something is queued or being written."""
        return self._queued is not None or self._writing is not None

    def submit(self, turn: PendingTurn) -> None:
        """Queue ``turn``; it is written with the next batch."""
        self._enqueue(turn, None)

    async def update(self, update: MessageUpdate) -> None:
        """Apply ``update`` with the next batch; return once it is committed.

        Raises:
            Exception: what writing it alone raised (the batch is retried item by item).
        """
        done = asyncio.get_running_loop().create_future()
        self._enqueue(update, done)
        await done

    def _enqueue(self, item: _Item, done: asyncio.Future[None] | None) -> None:
        self._queue.append((item, done))
        if self._queued is None:
            self._queued = asyncio.get_running_loop().create_future()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tokenwire-turn-writer")

    async def settle(self) -> None:
        """Return once everything queued before this call is written (or failed:
        that is logged, or raised to :meth:`update`'s caller)."""
        for future in (self._writing, self._queued):
            if future is not None:
                await asyncio.shield(future)

    async def _run(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                self._writing, self._queued = self._queued, None
                try:
                    await self._write_batch(batch)
                finally:
                    for _, waiter in batch:  # only if cancelled: else all are resolved
                        if waiter is not None and not waiter.done():
                            waiter.cancel()
                    done, self._writing = self._writing, None
                    if done is not None and not done.done():
                        done.set_result(None)
        finally:
            self._task = None
            self._abandon()

    def _abandon(self) -> None:
        """The task was cancelled (the loop is closing): nothing waits forever for
        what was still queued."""
        left, self._queue = self._queue, []
        for item, done in left:
            if done is not None:
                done.cancel()
            elif isinstance(item, PendingTurn):
                self.failed.append(item.messages[-1].id)
                logger.error("turn %s not stored: the writer was stopped", item.messages[-1].id)
        queued, self._queued = self._queued, None
        if queued is not None and not queued.done():
            queued.set_result(None)

    async def _write_batch(self, batch: list[tuple[_Item, asyncio.Future[None] | None]]) -> None:
        turns = [item for item, _ in batch if isinstance(item, PendingTurn)]
        updates = [item for item, _ in batch if isinstance(item, MessageUpdate)]
        try:
            await self._write(turns, updates)
        except Exception as exc:
            if len(batch) > 1:  # one bad item must not lose the others
                for one in batch:
                    await self._write_batch([one])
                return
            item, done = batch[0]
            if done is not None:
                if not done.done():
                    done.set_exception(exc)
                return
            assert isinstance(item, PendingTurn)
            self.failed.append(item.messages[-1].id)
            logger.exception("could not store turn %s", item.messages[-1].id)
            return
        for _, done in batch:
            if done is not None and not done.done():
                done.set_result(None)
