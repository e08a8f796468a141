"""The store's tables (SQLAlchemy ORM) and the detached records it returns.

Two tables (DESIGN §6):

- ``conversations``: ``id``, ``owner`` (``NULL`` = nobody's), ``title``,
  ``source`` (the surface that started it: ``page``, ``api``, ``cli``, ``openai``,
  ``ai-sdk``; ``NULL`` = unknown), ``created_at``, ``updated_at``;
- ``messages``: ``id``, ``conversation_id`` (foreign key, ``ON DELETE CASCADE``),
  ``role``, ``parts`` (JSON list of objects), ``status``, ``model``,
  ``finish_reason``, ``usage`` (JSON), ``error`` (JSON), ``cost`` (JSON, the
  price from genai-prices; ``NULL`` = unknown), ``created_at``, ``updated_at``;
  indexed on ``(conversation_id, created_at)``.

Timestamps are stored as timezone-aware UTC datetimes (``timestamptz`` on
PostgreSQL; on SQLite, which has no time zones, as naive UTC text in one fixed
format so that text order is time order) and returned in records as Unix time in
seconds (``float``).

The schema is owned by the Alembic migrations in ``migrations/versions``; a test
compares these models with the migrated database, so a change here needs a new
revision (see :mod:`tokenwire.store.migrate`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tokenwire.events import MessageStatus as _Lifecycle

__all__ = [
    "MESSAGE_ROLES",
    "MESSAGE_STATUSES",
    "Base",
    "ConversationRecord",
    "ConversationRow",
    "MessageRecord",
    "MessageRole",
    "MessageRow",
    "MessageStatus",
    "UTCDateTime",
    "may_touch",
]

MessageStatus = Literal["pending", "streaming", "completed", "failed", "cancelled"]
MessageRole = Literal["system", "user", "assistant", "tool"]

MESSAGE_STATUSES: Final[frozenset[str]] = frozenset(_Lifecycle)
"""Every valid ``messages.status`` (the values of :class:`tokenwire.events.MessageStatus`)."""
MESSAGE_ROLES: Final[frozenset[str]] = frozenset({"system", "user", "assistant", "tool"})
"""Every valid ``messages.role``."""


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A ``DateTime(timezone=True)`` that only accepts and returns aware UTC datetimes.

    Naive datetimes are refused on the way in (they are ambiguous); values read
    back from SQLite, which drops the offset, are marked as UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _json() -> sa.types.TypeEngine[Any]:
    """JSON on every backend, ``jsonb`` on PostgreSQL."""
    return sa.JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    """Declarative base of the store's tables; ``Base.metadata`` is Alembic's target."""

    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class ConversationRow(Base):
    """One row of ``conversations``."""

    __tablename__ = "conversations"
    __table_args__ = (sa.Index(None, "owner", "updated_at"),)

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    owner: Mapped[str | None] = mapped_column(sa.String(255))
    title: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    source: Mapped[str | None] = mapped_column(sa.String(32))


class MessageRow(Base):
    """One row of ``messages``."""

    __tablename__ = "messages"
    __table_args__ = (sa.Index(None, "conversation_id", "created_at"),)

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        sa.String(64), sa.ForeignKey("conversations.id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(sa.String(16))
    parts: Mapped[list[dict[str, object]]] = mapped_column(_json())
    status: Mapped[str] = mapped_column(sa.String(16))
    model: Mapped[str | None] = mapped_column(sa.String(255))
    finish_reason: Mapped[str | None] = mapped_column(sa.String(32))
    usage: Mapped[dict[str, int] | None] = mapped_column(_json())
    error: Mapped[dict[str, object] | None] = mapped_column(_json())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cost: Mapped[dict[str, object] | None] = mapped_column(_json())


def may_touch(owner: str | None, caller: str | None) -> bool:
    """The ownership rule, the only copy of it: whether ``caller`` (a user id, ``None``
    = anonymous) may see and change a thing whose owner is ``owner``.

    A thing with an owner is its owner's alone; one with no owner (started
    anonymously, or by library code without ``owner``) is anybody's who knows its id.
    Everyone asks through :class:`tokenwire.engine.identity.Access`; the store asks it
    directly when it starts a turn.
    """
    return owner is None or owner == caller


class ConversationRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A conversation, detached from any database session."""

    id: str
    owner: str | None
    """Who may see it; ``None`` = nobody in particular (visible without an owner check)."""
    title: str | None
    """``None`` until set or derived from the first user message."""
    created_at: float
    """Unix time in seconds."""
    updated_at: float
    """Unix time in seconds of the last change, including a message added."""
    source: str | None = None
    """The surface that started it (``page``, ``api``, ``cli``, ``openai``, ``ai-sdk``);
    ``None`` = unknown (conversations from before revision 0003, or not said)."""

    @classmethod
    def from_row(cls, row: ConversationRow) -> ConversationRecord:
        """Copy a row into a record."""
        return cls(
            id=row.id,
            owner=row.owner,
            title=row.title,
            created_at=row.created_at.timestamp(),
            updated_at=row.updated_at.timestamp(),
            source=row.source,
        )


class MessageRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A message, detached from any database session."""

    id: str
    conversation_id: str
    role: str
    """One of :data:`MESSAGE_ROLES`."""
    parts: list[dict[str, object]]
    """The content, one JSON object per part (text, reasoning, tool call …)."""
    status: str
    """One of :data:`MESSAGE_STATUSES`."""
    model: str | None
    """``provider:model`` that wrote it; ``None`` for user messages."""
    finish_reason: str | None
    usage: dict[str, int] | None
    """Token counts (``input_tokens``, ``output_tokens`` …); ``None`` = unknown."""
    error: dict[str, object] | None
    """The ``error`` event's ``code``/``message`` when ``status`` is ``failed``."""
    created_at: float
    """Unix time in seconds."""
    updated_at: float
    """Unix time in seconds."""
    cost: dict[str, object] | None = None
    """``{"currency": "USD", "input", "output", "total"}`` (dollars) from genai-prices;
    ``None`` = unknown (no usage, or a model without a known price)."""

    @classmethod
    def from_row(cls, row: MessageRow) -> MessageRecord:
        """Copy a row into a record."""
        return cls(
            id=row.id,
            conversation_id=row.conversation_id,
            role=row.role,
            parts=row.parts,
            status=row.status,
            model=row.model,
            finish_reason=row.finish_reason,
            usage=row.usage,
            error=row.error,
            created_at=row.created_at.timestamp(),
            updated_at=row.updated_at.timestamp(),
            cost=row.cost,
        )
