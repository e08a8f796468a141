"""The conversation store (DESIGN §6): conversations and messages in SQLite or PostgreSQL.

Usage::

    store = await Store.open("sqlite+aiosqlite:///data/tokenwire.db")  # migrates
    conv = await store.create_conversation(owner="alice")
    await store.add_message(conversation_id=conv.id, role="user",
                            parts=[{"type": "text", "text": "Hello"}])
    await store.close()

Modules: :mod:`~tokenwire.store.models` (tables and records),
:mod:`~tokenwire.store.repository` (:class:`Store`, whose queries are in
:mod:`~tokenwire.store.conversations` and :mod:`~tokenwire.store.messages`, over
:mod:`~tokenwire.store.core`: sessions, transactions, the error boundary),
:mod:`~tokenwire.store.fields` (value checks, titles),
:mod:`~tokenwire.store.turns` (a turn's writes batched off the first-byte path),
:mod:`~tokenwire.store.engine` (SQLite/PostgreSQL engine settings),
:mod:`~tokenwire.store.migrate` (Alembic, also ``python -m tokenwire.store``).
"""

from __future__ import annotations

from tokenwire.store.fields import TITLE_LENGTH, derive_title
from tokenwire.store.models import (
    MESSAGE_ROLES,
    MESSAGE_STATUSES,
    ConversationRecord,
    MessageRecord,
    MessageRole,
    MessageStatus,
)
from tokenwire.store.repository import Store

__all__ = [
    "MESSAGE_ROLES",
    "MESSAGE_STATUSES",
    "TITLE_LENGTH",
    "ConversationRecord",
    "MessageRecord",
    "MessageRole",
    "MessageStatus",
    "Store",
    "derive_title",
]
