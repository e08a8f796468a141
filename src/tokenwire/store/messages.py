"""The store's messages: add, update and checkpoint them, and start a turn (DESIGN §6).

Part of :class:`~tokenwire.store.repository.Store` (errors and records as its
module docstring says).
"""

from __future__ import annotations

import uuid
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult

from tokenwire.accumulate import PartsGrowth
from tokenwire.errors import StoreError
from tokenwire.store.core import StoreCore
from tokenwire.store.fields import (
    check_parts,
    check_role,
    check_status,
    derive_title,
    from_unix,
    json_copy,
)
from tokenwire.store.models import (
    ConversationRecord,
    ConversationRow,
    MessageRecord,
    MessageRow,
    may_touch,
)
from tokenwire.store.turns import (
    MessageUpdate,
    PendingTurn,
    TurnMessage,
    write_checkpoints,
    write_turns,
)

__all__ = ["Messages"]


class Messages(StoreCore):
    """The message queries of :class:`~tokenwire.store.repository.Store`."""

    async def messages(self, conversation_id: str) -> list[MessageRecord]:
        """Every message of a conversation, oldest first (no ownership check).

        Args:
            conversation_id: the conversation's id.

        Returns:
            The messages; empty if there are none or no such conversation.
        """
        async with self._guard("read the messages"), self._transaction() as session:
            rows = (await session.scalars(_oldest_first(conversation_id))).all()
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
        grown: PartsGrowth | None = None,
        status: str | None = None,
        finish_reason: str | None = None,
        usage: dict[str, int] | None = None,
        error: dict[str, object] | None = None,
        cost: dict[str, object] | None = None,
    ) -> None:
        """Change some fields of a message (a streaming message's end).

        Only the arguments that are not ``None`` are written (so a field cannot
        be cleared); ``updated_at`` is set whenever something is. A message that
        no longer exists (its conversation was deleted meanwhile) is ignored.

        Args:
            message_id: the message's id.
            parts: the whole new content, replacing the old (copied).
            grown: instead of ``parts``, the content as it grew since the stored one
                (:meth:`~tokenwire.accumulate.MessageState.take_growth`; copied).
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
        elif grown is not None:
            grown = PartsGrowth(check_parts(grown.parts), grown.continued)
            if not grown.continued:
                values["parts"], grown = grown.parts, None
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
        if not values and grown is None:
            return
        values["updated_at"] = self._now()
        # batched with the turns and updates of other streams (store/turns.py)
        async with self._guard("update the message"):
            await self._turns.update(MessageUpdate(message_id, values, grown))

    async def begin_turn(
        self,
        *,
        conversation_id: str | None,
        owner: str | None,
        messages: list[tuple[str, list[dict[str, object]]]],
        model: str,
        source: str | None = None,
    ) -> tuple[ConversationRecord, list[MessageRecord], MessageRecord] | None:
        """Start an assistant turn now: :meth:`plan_turn`, then write it at once (the
        engine instead queues it, off the first-byte path: :mod:`tokenwire.store.turns`).

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
        planned = await self.plan_turn(
            conversation_id=conversation_id,
            owner=owner,
            messages=messages,
            model=model,
            source=source,
        )
        if planned is None or not await self.restore_turn(planned[0]):
            return None  # unknown, not the owner's, or deleted meanwhile
        _, conversation, history, assistant = planned
        return conversation, history, assistant

    async def plan_turn(
        self,
        *,
        conversation_id: str | None,
        owner: str | None,
        messages: list[tuple[str, list[dict[str, object]]]],
        model: str,
        source: str | None = None,
    ) -> tuple[PendingTurn, ConversationRecord, list[MessageRecord], MessageRecord] | None:
        """Decide an assistant turn as :meth:`begin_turn` does, but write nothing yet:
        only an existing conversation is read (owner check, history). Queue the
        returned turn with :meth:`submit_turn` (:mod:`tokenwire.store.turns`).

        Returns:
            ``(turn, conversation as it will be, history before this turn, assistant
            message)``, or
            ``None`` as :meth:`begin_turn`.

        Raises:
            ValueError: an invalid role or parts.
            StoreError: the database failed.
        """
        checked = [(check_role(role), check_parts(parts)) for role, parts in messages]
        existing, history = None, []
        if conversation_id is not None:
            async with self._guard("read the conversation"), self._transaction() as session:
                found = await session.get(ConversationRow, conversation_id)
                if found is None or not may_touch(found.owner, owner):
                    return None
                existing = ConversationRecord.from_row(found)
                rows = await session.scalars(_oldest_first(conversation_id))
                history = [MessageRecord.from_row(r) for r in rows.all()]
        turn_messages = [
            TurnMessage(
                id=uuid.uuid4().hex,
                role=role,
                parts=parts,
                status="streaming" if i == len(checked) else "completed",
                model=model if i == len(checked) else None,
                created_at=self._now(),
            )
            for i, (role, parts) in enumerate([*checked, ("assistant", [])])
        ]
        user = next((parts for role, parts in checked if role == "user"), None)
        turn = PendingTurn(
            conversation_id=conversation_id or uuid.uuid4().hex,
            new=existing is None,
            owner=existing.owner if existing else owner,
            title=derive_title(user) if user else None,
            source=source,
            created_at=turn_messages[-1].created_at,
            conversation_created_at=(
                from_unix(existing.created_at, "created_at")
                if existing
                else turn_messages[0].created_at
            ),
            messages=turn_messages,
        )
        return turn, turn.conversation(existing), history, turn.assistant

    def submit_turn(self, turn: PendingTurn) -> None:
        """Queue ``turn`` for the background writer (one transaction per batch);
        every later call of this store waits for it (:meth:`settle`)."""
        self._turns.submit(turn)

    async def restore_turn(self, turn: PendingTurn) -> bool:
        """Write ``turn`` now unless it is written already (recovery from the log).

        Returns:
            Whether it was written by this call.

        Raises:
            StoreError: the database failed.
        """
        async with self._guard("store the turn"), self._transaction(write=True) as session:
            return not await write_turns(session, [turn])

    async def checkpoint_messages(self, grown_by_id: dict[str, PartsGrowth]) -> None:
        """Write the partial content of many streaming messages in one transaction.

        Each message's content is what it grew to since its last write
        (:meth:`~tokenwire.accumulate.MessageState.take_growth`): only the new text
        comes from the caller and the database appends it to the stored parts, so a
        producer never holds a whole answer. A message deleted meanwhile is ignored.

        Args:
            grown_by_id: message id → its content as grown since the stored one
                (copied).

        Raises:
            ValueError: a part that is not JSON.
            StoreError: the database failed.
        """
        if not grown_by_id:
            return
        checked = {
            k: PartsGrowth(check_parts(g.parts), g.continued) for k, g in grown_by_id.items()
        }
        now = self._now()
        async with self._guard("checkpoint messages"), self._transaction(write=True) as session:
            await write_checkpoints(session, checked, now)

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


def _oldest_first(conversation_id: str) -> sa.Select[MessageRow]:
    """The messages of a conversation, oldest first."""
    return (
        sa.select(MessageRow)
        .where(MessageRow.conversation_id == conversation_id)
        .order_by(MessageRow.created_at, MessageRow.id)
    )
