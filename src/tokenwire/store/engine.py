"""Engine creation: the one place that knows about SQLite and PostgreSQL specifics.

SQLite (``sqlite+aiosqlite:///path/to/file.db``): the file's directory is created
if missing; every connection gets ``PRAGMA foreign_keys=ON`` (needed for
``ON DELETE CASCADE``), ``journal_mode=WAL`` (readers don't block the writer) and
``synchronous=NORMAL`` (safe with WAL), and waits up to ``busy_timeout`` for a
lock; a :class:`~tokenwire.store.Store` also queues its own write transactions on
one lock, so writers of one process never contend for the file (a deferred
transaction that read first cannot wait for the lock: "database is locked").
PostgreSQL (``postgresql+asyncpg://user@host:port/db``): connections are checked
before use (``pool_pre_ping``) and connecting gives up after ``connect_timeout``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

__all__ = ["create_engine", "sqlite_path"]


def sqlite_path(url: URL) -> Path | None:
    """The file of an SQLite URL; ``None`` for other databases and in-memory ones."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def create_engine(url: str, *, connect_timeout: float = 10.0) -> AsyncEngine:
    """Create an async engine for the store. Does not connect yet.

    Args:
        url: SQLAlchemy URL with an async driver, e.g. ``sqlite+aiosqlite:///x.db``
            or ``postgresql+asyncpg://user@host:5432/db``.
        connect_timeout: seconds to wait for a new connection (PostgreSQL) or for
            a database lock (SQLite's busy timeout).

    Returns:
        The engine; dispose it with ``await engine.dispose()``.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    path = sqlite_path(parsed)
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": connect_timeout}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    elif parsed.get_backend_name() == "postgresql":
        kwargs["pool_pre_ping"] = True
        if parsed.get_driver_name() == "asyncpg":
            kwargs["connect_args"] = {"timeout": connect_timeout}
    engine = create_async_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(wal=path is not None))
    return engine


def _sqlite_pragmas(*, wal: bool) -> Callable[[Any, ConnectionPoolEntry], None]:
    """A ``connect`` event handler setting the per-connection SQLite pragmas."""

    def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    return on_connect
