"""The store's core: the engine, its sessions and transactions, and the one place
where database and driver errors become :class:`~tokenwire.errors.StoreError`.

:class:`StoreCore` is the base of :class:`~tokenwire.store.repository.Store`; the
queries live by concern in :mod:`~tokenwire.store.conversations` and
:mod:`~tokenwire.store.messages`.
"""

from __future__ import annotations

import contextlib
import importlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Self

import anyio
import sqlalchemy as sa
from alembic.util.exc import CommandError
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tokenwire.errors import StoreError
from tokenwire.store.engine import create_engine
from tokenwire.store.migrate import upgrade_head
from tokenwire.store.turns import (
    MessageUpdate,
    PendingTurn,
    TurnWriter,
    write_turns,
    write_updates,
)

__all__ = ["StoreCore"]


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


class StoreCore:
    """The engine, its sessions and the error boundary, shared by the store's queries.

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
        self._turns = TurnWriter(self._write_turns)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, connect_timeout: float = 10.0) -> Self:
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
            await self._turns.settle()
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

    def _now(self) -> datetime:
        """Now in UTC, strictly later (by at least 1 µs) than the previous call's."""
        now = datetime.now(UTC)
        if now <= self._last_time:
            now = self._last_time + timedelta(microseconds=1)
        self._last_time = now
        return now

    @contextlib.asynccontextmanager
    async def _transaction(
        self, *, write: bool = False, settle: bool = True
    ) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, else rolled back.

        ``write``: the transaction writes; on SQLite, it waits for this process's
        other writes to end first (``_write_lock``). ``settle``: first wait for the
        queued turns (:meth:`settle`; only the turn writer itself does not).
        """
        if settle and self._turns.pending:
            await self._turns.settle()
        if write and self._write_lock is not None:
            async with self._write_lock, self._sessions() as session, session.begin():
                yield session
        else:
            async with self._sessions() as session, session.begin():
                yield session

    async def settle(self) -> None:
        """Wait until the turns queued so far are written (failures are logged)."""
        await self._turns.settle()

    async def _write_turns(self, turns: list[PendingTurn], updates: list[MessageUpdate]) -> None:
        async with self._transaction(write=True, settle=False) as session:
            if turns:
                await write_turns(session, turns)
            await write_updates(session, updates)

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
