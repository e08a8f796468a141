"""The conversation store: conversations and their messages (DESIGN §6).

:class:`Store` is the only way the rest of tokenwire reads or writes the
database. Every method runs in its own short transaction and returns frozen,
detached records (:class:`~tokenwire.store.models.ConversationRecord`,
:class:`~tokenwire.store.models.MessageRecord`), never ORM objects, so nothing
loads lazily after the session is gone.

Errors: invalid arguments raise :class:`ValueError` before the database is
touched; every failure of the database, its driver or a migration is raised as
:class:`~tokenwire.errors.StoreError` from one place
(:meth:`~tokenwire.store.core.StoreCore._guard`), with a message that names the
operation but carries no SQL, URL or parameters (the original exception is the
``__cause__``).

Ordering: messages are returned oldest first, conversations most recently
updated first. A store hands out strictly increasing timestamps (at least 1 µs
apart), so two writes of one process never tie.
"""

from __future__ import annotations

from tokenwire.store.conversations import Conversations
from tokenwire.store.messages import Messages

__all__ = ["Store"]


class Store(Conversations, Messages):
    """Conversations and messages in SQLite or PostgreSQL, through SQLAlchemy's asyncio API.

    Create one with :meth:`open`; share it for the life of the process (it
    holds a connection pool) and :meth:`close` it at shutdown.

    The methods live by concern: :class:`~tokenwire.store.conversations.Conversations`,
    :class:`~tokenwire.store.messages.Messages`, and the engine, transactions and error
    boundary in :class:`~tokenwire.store.core.StoreCore`.

    Args:
        engine: an async engine made by :func:`tokenwire.store.engine.create_engine`
            (or configured the same way); the store disposes it on :meth:`close`.
        timeout: seconds :meth:`ping` waits for the database.
    """
