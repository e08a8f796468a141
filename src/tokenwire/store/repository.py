"""The conversation store: conversations and their messages (DESIGN §6).

:class:`Store` is the only way the rest of tokenwire reads or writes the
database. Every method runs in its own short transaction and returns frozen,
detached records (:class:`~tokenwire.store.models.ConversationRecord`,
:class:`~tokenwire.store.models.MessageRecord`), never ORM objects, so nothing
loads lazily after the session is gone.

Errors: invalid arguments raise :class:`ValueError` before the database is
touched; every failure of the database, its driver or a migration is raised as
:class:`~tokenwire.errors.StoreError` from one place (:meth:`Store._guard`), with
a message that names the operation but carries no SQL, URL or parameters (the
original exception is the ``__cause__``).

Ordering: messages are returned oldest first, conversations most recently
updated first. A store hands out strictly increasing timestamps (at least 1 µs
apart), so two writes of one process never tie.
"""

from __future__ import annotations

import contextlib
import importlib
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

import anyio
import sqlalchemy as sa
from alembic.util.exc import CommandError
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tokenwire.errors import StoreError
from tokenwire.store.engine import create_engine
from tokenwire.store.fields import (
    check_parts,
    check_role,
    check_status,
    derive_title,
    from_unix,
    json_copy,
)
from tokenwire.store.migrate import upgrade_head
from tokenwire.store.models import (
    ConversationRecord,
    ConversationRow,
    MessageRecord,
    MessageRow,
    may_touch,
)

__all__ = ["Store"]


def _driver_errors() -> tuple[type[BaseException], ...]:
    """Exceptions of SQLAlchemy and the drivers that the store translates."""
    errors: list[type[BaseException]] = [SQLAlchemyError, OSError, sqlite3.Error, CommandError]
    try:  # optional dependency, raises its own errors while connecting
        asyncpg: Any = importlib.import_module("asyncpg")
    except ImportError:
        pass
    else:
        errors += [asyncpg.PostgresError, asyncpg.InterfaceError]
    return tuple(errors)


_DRIVER_ERRORS: Final = _driver_errors()


_MIGRATION_LOCK: Final = threading.Lock()
"""Held while this process migrates: Alembic keeps its migration context in module
globals, so two migrations may not overlap in one process (other processes wait
on PostgreSQL's advisory lock in ``env.py``)."""


async def _migrate(engine: AsyncEngine) -> None:
    """Upgrade the database to ``head``, one migration at a time in this process."""
    # A threading lock can't be awaited, and blocking would stall this event loop
    # (deadlock if the holder is a task of the same loop): poll, 10 ms apart, only
    # while another task or thread migrates, which is rare and short.
    while not _MIGRATION_LOCK.acquire(blocking=False):  # noqa: ASYNC110
        await anyio.sleep(0.01)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(upgrade_head)
    finally:
        _MIGRATION_LOCK.release()


class Store:
    """Conversations and messages in SQLite or PostgreSQL, through SQLAlchemy's asyncio API.

    Create one with :meth:`open`; share it for the life of the process (it
    holds a connection pool) and :meth:`close` it at shutdown.

    Args:
        engine: an async engine made by :func:`tokenwire.store.engine.create_engine`
            (or configured the same way); the store disposes it on :meth:`close`.
        timeout: seconds :meth:`ping` waits for the database.
    """

    def __init__(self, engine: AsyncEngine, *, timeout: float = 10.0) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._timeout = timeout
        self._closed = False
        self._last_time = datetime.fromtimestamp(0, UTC)
        # SQLite has one writer at a time: writes of this process queue here, in
        # order, instead of contending for the file lock, which a write transaction
        # that read first cannot wait for ("database is locked" under load).
        self._write_lock = anyio.Lock() if engine.dialect.name == "sqlite" else None

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, connect_timeout: float = 10.0) -> Store:
        """Create the engine and bring the schema to the newest revision.

        Args:
            url: SQLAlchemy URL with an async driver: ``sqlite+aiosqlite:///path``
                (the directory is created if missing) or
                ``postgresql+asyncpg://user@host:5432/db``.
            migrate: run Alembic's ``upgrade head`` now (idempotent); ``False``
                when the operator migrates separately (``python -m tokenwire.store
                upgrade head``); then nothing connects until the first call.
            connect_timeout: seconds to wait for a connection (PostgreSQL) or a
                lock (SQLite); also the limit of :meth:`ping`.

        Returns:
            The open store.

        Raises:
            StoreError: the URL is invalid, its driver is not installed, the
                database is unreachable or a migration failed.
        """
        try:
            engine = create_engine(url, connect_timeout=connect_timeout)
        except ImportError as exc:
            raise StoreError("the database driver of the store URL is not installed") from exc
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"invalid store URL ({type(exc).__name__})") from exc
        store = cls(engine, timeout=connect_timeout)
        if migrate:
            try:
                async with store._guard("migrate the database"):
                    await _migrate(engine)
            except BaseException:
                await store.close()
                raise
        return store

    async def close(self) -> None:
        """Close every pooled connection. Idempotent; the store is unusable afterwards."""
        if not self._closed:
            self._closed = True
            await self._engine.dispose()

    def __repr__(self) -> str:
        url = self._engine.url.render_as_string(hide_password=True)
        return f"<Store {url}{' closed' if self._closed else ''}>"

    async def ping(self) -> None:
        """Check that the database answers (for ``/readyz``).

        Raises:
            StoreError: no answer within ``timeout`` seconds, or an error.
        """
        async with self._guard("reach the database"):
            with anyio.fail_after(self._timeout):
                async with self._engine.connect() as connection:
                    await connection.execute(sa.text("SELECT 1"))

    # -- conversations -------------------------------------------------------

    async def create_conversation(
        self,
        *,
        owner: str | None = None,
        title: str | None = None,
        conversation_id: str | None = None,
        source: str | None = None,
    ) -> ConversationRecord:
        """Create an empty conversation.

        Args:
            owner: who may see it; ``None`` = nobody in particular.
            title: its title; ``None`` = derived from the first user message.
            conversation_id: its id; ``None`` = a new ``uuid4().hex``.
            source: the surface that starts it (``page``, ``api``, ``cli`` …);
                ``None`` = unknown.

        Returns:
            The new conversation (``created_at == updated_at``).

        Raises:
            StoreError: the id is taken, or the database failed.
        """
        now = self._now()
        row = ConversationRow(
            id=conversation_id or uuid.uuid4().hex,
            owner=owner,
            title=title,
            source=source,
            created_at=now,
            updated_at=now,
        )
        async with self._guard("create the conversation"), self._transaction(write=True) as session:
            session.add(row)
            await session.flush()
            return ConversationRecord.from_row(row)

    async def create_conversation_if_absent(
        self,
        conversation_id: str,
        *,
        owner: str | None = None,
        title: str | None = None,
        source: str | None = None,
    ) -> bool:
        """Create an empty conversation with this id unless one exists.

        Safe against a concurrent creation of the same id (the unique-key conflict
        means "it exists"), so requests racing to start one new conversation never fail.
        Arguments as :meth:`create_conversation`'s.

        Returns:
            ``True`` when this call created it, ``False`` when it existed already.

        Raises:
            StoreError: the database failed.
        """
        try:
            await self.create_conversation(
                owner=owner, title=title, conversation_id=conversation_id, source=source
            )
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                return False
            raise
        return True

    async def get_conversation(
        self, conversation_id: str, *, owner: str | None = None
    ) -> ConversationRecord | None:
        """One conversation.

        Args:
            conversation_id: its id.
            owner: ``None`` = no ownership check; otherwise a conversation of
                anybody else (or of nobody) is reported as missing.

        Returns:
            The conversation, or ``None`` if there is none (that you may see).
        """
        async with self._guard("read the conversation"), self._transaction() as session:
            row = await session.get(ConversationRow, conversation_id)
            if row is None or (owner is not None and row.owner != owner):
                return None
            return ConversationRecord.from_row(row)

    async def list_conversations(
        self,
        *,
        owner: str | None = None,
        limit: int = 50,
        before: float | None = None,
        unowned: bool = False,
        source: str | None = None,
        query: str | None = None,
    ) -> list[ConversationRecord]:
        """Conversations, most recently updated first.

        Page through them by passing the last record's ``updated_at`` as
        ``before`` of the next call.

        Args:
            owner: ``None`` = everybody's; otherwise only this owner's.
            unowned: only conversations without an owner (what an anonymous caller
                may see); ``owner`` must then be ``None``.
            limit: most records returned, at least 1.
            before: only conversations with ``updated_at < before`` (Unix
                seconds); ``None`` = from the newest.
            source: only conversations started from this surface (``page`` …);
                ``None`` = from anywhere.
            query: only conversations whose title contains this text, ignoring
                case (``%`` and ``_`` match themselves); ``None`` or blank = all.

        Returns:
            Up to ``limit`` conversations.

        Raises:
            ValueError: ``limit < 1`` or ``before`` is not finite.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        stmt = sa.select(ConversationRow)
        if owner is not None:
            stmt = stmt.where(ConversationRow.owner == owner)
        elif unowned:
            stmt = stmt.where(ConversationRow.owner.is_(None))
        if before is not None:
            stmt = stmt.where(ConversationRow.updated_at < from_unix(before, "before"))
        if source is not None:
            stmt = stmt.where(ConversationRow.source == source)
        if query is not None and query.strip():
            pattern = query.strip().lower()
            for char in ("\\", "%", "_"):
                pattern = pattern.replace(char, "\\" + char)
            title = sa.func.lower(ConversationRow.title)
            stmt = stmt.where(title.like(f"%{pattern}%", escape="\\"))
        stmt = stmt.order_by(ConversationRow.updated_at.desc(), ConversationRow.id.desc())
        async with self._guard("list conversations"), self._transaction() as session:
            rows = (await session.scalars(stmt.limit(limit))).all()
            return [ConversationRecord.from_row(row) for row in rows]

    async def delete_conversation(self, conversation_id: str, *, owner: str | None = None) -> bool:
        """Delete a conversation and, by cascade, all its messages.

        Args:
            conversation_id: its id.
            owner: ``None`` = no ownership check; otherwise only this owner's
                conversation is deleted.

        Returns:
            Whether a conversation was deleted.
        """
        stmt = sa.delete(ConversationRow).where(ConversationRow.id == conversation_id)
        if owner is not None:
            stmt = stmt.where(ConversationRow.owner == owner)
        async with self._guard("delete the conversation"), self._transaction(write=True) as session:
            result = cast(CursorResult[Any], await session.execute(stmt))
            return result.rowcount > 0

    async def rename_conversation(
        self, conversation_id: str, title: str
    ) -> ConversationRecord | None:
        """Set a conversation's title (no ownership check; ``updated_at`` is kept,
        so a rename does not move it in the list).

        Args:
            conversation_id: its id.
            title: the new title, not blank (surrounding whitespace is removed).

        Returns:
            The renamed conversation, or ``None`` if there is none.

        Raises:
            ValueError: ``title`` is blank.
        """
        title = title.strip()
        if not title:
            raise ValueError("title must not be blank")
        async with self._guard("rename the conversation"), self._transaction() as session:
            row = await session.get(ConversationRow, conversation_id, with_for_update=True)
            if row is None:
                return None
            row.title = title
            await session.flush()
            return ConversationRecord.from_row(row)

    # -- messages -------------------------------------------------------------

    async def messages(self, conversation_id: str) -> list[MessageRecord]:
        """Every message of a conversation, oldest first (no ownership check).

        Args:
            conversation_id: the conversation's id.

        Returns:
            The messages; empty if there are none or no such conversation.
        """
        stmt = (
            sa.select(MessageRow)
            .where(MessageRow.conversation_id == conversation_id)
            .order_by(MessageRow.created_at, MessageRow.id)
        )
        async with self._guard("read the messages"), self._transaction() as session:
            rows = (await session.scalars(stmt)).all()
            return [MessageRecord.from_row(row) for row in rows]

    async def add_message(
        self,
        *,
        conversation_id: str,
        role: str,
        parts: list[dict[str, object]],
        status: str = "completed",
        model: str | None = None,
        message_id: str | None = None,
    ) -> MessageRecord:
        """Append a message to a conversation.

        Also sets the conversation's ``updated_at`` to the message's
        ``created_at`` and, for a user message while the conversation has no
        title, its title (:func:`derive_title`).

        Args:
            conversation_id: the conversation, which must exist.
            role: one of ``system``, ``user``, ``assistant``, ``tool``.
            parts: the content, a list of JSON objects (copied).
            status: one of ``pending``, ``streaming``, ``completed``, ``failed``,
                ``cancelled``.
            model: ``provider:model`` that writes it; ``None`` for user messages.
            message_id: its id; ``None`` = a new ``uuid4().hex``.

        Returns:
            The new message.

        Raises:
            ValueError: invalid ``role``, ``status`` or ``parts``.
            StoreError: no such conversation, the id is taken, or the database
                failed.
        """
        check_role(role)
        check_status(status)
        parts = check_parts(parts)
        async with self._guard("add the message"), self._transaction(write=True) as session:
            conversation = await session.get(ConversationRow, conversation_id, with_for_update=True)
            if conversation is None:
                raise StoreError(f"no conversation {conversation_id!r}")
            now = self._now()
            row = MessageRow(
                id=message_id or uuid.uuid4().hex,
                conversation_id=conversation_id,
                role=role,
                parts=parts,
                status=status,
                model=model,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            conversation.updated_at = now
            if role == "user" and conversation.title is None:
                conversation.title = derive_title(parts)
            await session.flush()
            return MessageRecord.from_row(row)

    async def update_message(
        self,
        message_id: str,
        *,
        parts: list[dict[str, object]] | None = None,
        status: str | None = None,
        finish_reason: str | None = None,
        usage: dict[str, int] | None = None,
        error: dict[str, object] | None = None,
        cost: dict[str, object] | None = None,
    ) -> None:
        """Change some fields of a message (a streaming checkpoint, or its end).

        Only the arguments that are not ``None`` are written (so a field cannot
        be cleared); ``updated_at`` is set whenever something is. A message that
        no longer exists (its conversation was deleted meanwhile) is ignored.

        Args:
            message_id: the message's id.
            parts: the whole new content, replacing the old (copied).
            status: the new status (see :meth:`add_message`).
            finish_reason: ``stop``, ``length``, ``tool_calls`` …
            usage: token counts, e.g. ``{"input_tokens": 12, "output_tokens": 40}``.
            error: what went wrong, e.g. ``{"code": "provider_error", "message": "…"}``.
            cost: the price, ``{"currency": "USD", "input", "output", "total"}``
                (:func:`tokenwire.observability.cost.message_cost`).

        Raises:
            ValueError: invalid ``status``, ``parts``, ``usage``, ``error`` or ``cost``.
            StoreError: the database failed.
        """
        values: dict[str, object] = {}
        if parts is not None:
            values["parts"] = check_parts(parts)
        if status is not None:
            values["status"] = check_status(status)
        if finish_reason is not None:
            values["finish_reason"] = finish_reason
        if usage is not None:
            values["usage"] = json_copy(usage, "usage")
        if error is not None:
            values["error"] = json_copy(error, "error")
        if cost is not None:
            values["cost"] = json_copy(cost, "cost")
        if not values:
            return
        values["updated_at"] = self._now()
        stmt = (
            sa.update(MessageRow)
            .where(MessageRow.id == message_id)
            .values(values)
            .execution_options(synchronize_session=False)
        )
        async with self._guard("update the message"), self._transaction(write=True) as session:
            await session.execute(stmt)

    async def begin_turn(
        self,
        *,
        conversation_id: str | None,
        owner: str | None,
        messages: list[tuple[str, list[dict[str, object]]]],
        model: str,
        source: str | None = None,
    ) -> tuple[ConversationRecord, list[MessageRecord], MessageRecord] | None:
        """Start an assistant turn in one transaction (the one write at start, DESIGN §6).

        Creates the conversation when ``conversation_id`` is ``None`` (recording
        ``source``, the surface that starts it; ignored otherwise), reads its
        history, appends ``messages`` (``(role, parts)``, e.g. the new user
        message) and an empty assistant message with status ``streaming``.

        Returns:
            ``(conversation, history before this turn, assistant message)``, or
            ``None`` when the conversation does not exist or ``owner`` may not touch
            it (:func:`~tokenwire.store.models.may_touch`: it has another owner, or
            an owner and ``owner`` is ``None``).

        Raises:
            ValueError: an invalid role or parts.
            StoreError: the database failed.
        """
        checked = [(check_role(role), check_parts(parts)) for role, parts in messages]
        async with self._guard("start the turn"), self._transaction(write=True) as session:
            now = self._now()
            history: list[MessageRecord] = []
            if conversation_id is None:
                conversation = ConversationRow(
                    id=uuid.uuid4().hex,
                    owner=owner,
                    title=None,
                    source=source,
                    created_at=now,
                    updated_at=now,
                )
                session.add(conversation)
            else:
                found = await session.get(ConversationRow, conversation_id, with_for_update=True)
                if found is None or not may_touch(found.owner, owner):
                    return None
                conversation = found
                stmt = (
                    sa.select(MessageRow)
                    .where(MessageRow.conversation_id == conversation.id)
                    .order_by(MessageRow.created_at, MessageRow.id)
                )
                history = [MessageRecord.from_row(r) for r in (await session.scalars(stmt)).all()]
            turn = [*checked, ("assistant", [])]
            rows = []
            for i, (role, parts) in enumerate(turn):
                created = self._now()
                last = i == len(turn) - 1
                rows.append(
                    MessageRow(
                        id=uuid.uuid4().hex,
                        conversation_id=conversation.id,
                        role=role,
                        parts=parts,
                        status="streaming" if last else "completed",
                        model=model if last else None,
                        created_at=created,
                        updated_at=created,
                    )
                )
            session.add_all(rows)
            conversation.updated_at = rows[-1].created_at
            if conversation.title is None:
                user = next((parts for role, parts in checked if role == "user"), None)
                conversation.title = derive_title(user) if user else None
            await session.flush()
            return (
                ConversationRecord.from_row(conversation),
                history,
                MessageRecord.from_row(rows[-1]),
            )

    async def checkpoint_messages(self, parts_by_id: dict[str, list[dict[str, object]]]) -> None:
        """Write the partial content of many streaming messages in one transaction.

        Args:
            parts_by_id: message id → its whole content so far (copied).

        Raises:
            StoreError: the database failed.
        """
        if not parts_by_id:
            return
        now = self._now()
        rows = [
            {"id": k, "parts": check_parts(v), "updated_at": now} for k, v in parts_by_id.items()
        ]
        async with self._guard("checkpoint messages"), self._transaction(write=True) as session:
            await session.execute(sa.update(MessageRow), rows)

    async def delete_messages_from(self, conversation_id: str, message_id: str) -> int:
        """Delete a message and every later one of its conversation (to regenerate it).

        Returns:
            How many messages were deleted (0 if ``message_id`` is not in the
            conversation).
        """
        async with self._guard("delete messages"), self._transaction(write=True) as session:
            row = await session.get(MessageRow, message_id)
            if row is None or row.conversation_id != conversation_id:
                return 0
            stmt = sa.delete(MessageRow).where(
                MessageRow.conversation_id == conversation_id,
                MessageRow.created_at >= row.created_at,
            )
            result = cast(CursorResult[Any], await session.execute(stmt))
            return result.rowcount

    async def get_message(self, message_id: str) -> MessageRecord | None:
        """One message, or ``None`` if there is none (no ownership check)."""
        async with self._guard("read the message"), self._transaction() as session:
            row = await session.get(MessageRow, message_id)
            return None if row is None else MessageRecord.from_row(row)

    # -- internals --------------------------------------------------------------

    def _now(self) -> datetime:
        """Now in UTC, strictly later (by at least 1 µs) than the previous call's."""
        now = datetime.now(UTC)
        if now <= self._last_time:
            now = self._last_time + timedelta(microseconds=1)
        self._last_time = now
        return now

    @contextlib.asynccontextmanager
    async def _transaction(self, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, else rolled back.

        ``write``: the transaction writes; on SQLite, it waits for this process's
        other writes to end first (``_write_lock``).
        """
        if write and self._write_lock is not None:
            async with self._write_lock, self._sessions() as session, session.begin():
                yield session
        else:
            async with self._sessions() as session, session.begin():
                yield session

    @contextlib.asynccontextmanager
    async def _guard(self, action: str) -> AsyncIterator[None]:
        """The boundary where database and driver errors become :class:`StoreError`.

        Args:
            action: what was being done, for the message ("add the message").
        """
        if self._closed:
            raise StoreError(f"could not {action}: the store is closed")
        try:
            yield
        except IntegrityError as exc:
            raise StoreError(f"could not {action}: an id is already in use") from exc
        except TimeoutError as exc:
            raise StoreError(f"could not {action}: the database did not answer in time") from exc
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"could not {action} ({type(exc).__name__})") from exc
