"""Alembic environment for tokenwire's store (loaded by Alembic, never imported).

Two ways in:

- programmatic (:func:`tokenwire.store.migrate.upgrade_head`): a synchronous
  connection is passed in ``config.attributes["connection"]``;
- command line (``python -m tokenwire.store …``): the URL is in the main option
  ``sqlalchemy.url``; online commands open an async engine, ``--sql`` renders SQL.

Only tokenwire's own tables are compared by ``--autogenerate``, so a database
shared with an application never gets its tables dropped by a generated revision.
"""

from __future__ import annotations

import asyncio

from alembic import context
from alembic.runtime.environment import NameFilterParentNames, NameFilterType
from sqlalchemy import text
from sqlalchemy.engine import Connection

from tokenwire.store.engine import create_engine
from tokenwire.store.migrate import VERSION_TABLE
from tokenwire.store.models import Base

target_metadata = Base.metadata

_PG_LOCK_KEY = 0x746F6B656E776972  # "tokenwir": one advisory lock for all migrators


def _include_name(
    name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames
) -> bool:
    return type_ != "table" or name in target_metadata.tables


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=_include_name,
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        context.run_migrations()


async def _run_with_url(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def _main() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: pass --url or set TOKENWIRE_STORE_URL")
    if context.is_offline_mode():
        context.configure(
            url=url,
            target_metadata=target_metadata,
            version_table=VERSION_TABLE,
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_run_with_url(url))


_main()
