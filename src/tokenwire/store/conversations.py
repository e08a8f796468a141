"""The store's conversations: create, read, list, rename and delete them (DESIGN §6).

Part of :class:`~tokenwire.store.repository.Store` (errors and records as its
module docstring says).
"""

from __future__ import annotations

import uuid
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError

from tokenwire.errors import StoreError
from tokenwire.store.core import StoreCore
from tokenwire.store.fields import from_unix
from tokenwire.store.models import ConversationRecord, ConversationRow

__all__ = ["Conversations"]


class Conversations(StoreCore):
    """The conversation queries of :class:`~tokenwire.store.repository.Store`."""

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
