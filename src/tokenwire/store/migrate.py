"""Schema migrations with Alembic, without an ``alembic.ini``.

The migration scripts ship inside the package (``tokenwire/store/migrations``:
``env.py``, ``script.py.mako``, ``versions/``). :meth:`Store.open
<tokenwire.store.Store.open>` upgrades the database to the newest revision by
itself; nothing else is needed to run tokenwire.

Operators who prefer to migrate as a separate deployment step (then open the
store with ``migrate=False``) use the Alembic command line through this module;
it builds the Alembic configuration in code and takes the database URL from
``TOKENWIRE_STORE_URL`` (default: the SQLite file in ``TOKENWIRE_DATA_DIR``) or
``--url``::

    python -m tokenwire.store upgrade head       # create or upgrade the schema
    python -m tokenwire.store current            # revision of the database
    python -m tokenwire.store history            # every revision
    python -m tokenwire.store upgrade head --sql # print the SQL instead (offline)
    python -m tokenwire.store downgrade -1

Every ``alembic`` sub-command and option works the same way. Developers create a
new revision after changing :mod:`tokenwire.store.models`, from a source checkout
(so that the file lands in ``src/tokenwire/store/migrations/versions``), against
a database that is at ``head``::

    python -m tokenwire.store --url sqlite+aiosqlite:///scratch.db upgrade head
    python -m tokenwire.store --url sqlite+aiosqlite:///scratch.db \\
        revision --autogenerate --rev-id 0004 -m "add message metadata"

then review the generated file (``v0004_add_message_metadata.py``, already
passed through ``ruff check --fix`` and ``ruff format``) by hand. The
version table is ``tokenwire_alembic_version``, so tokenwire's migrations live
beside an application's own Alembic history in a shared database.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import CommandLine, Config
from sqlalchemy.engine import Connection

__all__ = ["MIGRATIONS_DIR", "VERSION_TABLE", "alembic_config", "main", "upgrade_head"]

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
"""Alembic's ``script_location``: ``env.py``, ``script.py.mako`` and ``versions/``."""
VERSION_TABLE: Final = "tokenwire_alembic_version"
"""The table where Alembic records the database's revision."""


def alembic_config(url: str | None = None, *, connection: Connection | None = None) -> Config:
    """An Alembic configuration for tokenwire's migrations, built without a file.

    Args:
        url: SQLAlchemy URL of the database (async drivers are fine); used when
            no ``connection`` is given.
        connection: an open synchronous connection (the ``run_sync`` side of an
            async connection) that ``env.py`` runs the migrations on.

    Returns:
        The configuration, to pass to ``alembic.command`` functions.
    """
    cfg = Config(stdout=sys.stdout)  # now, not at import: honours redirection
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("file_template", "v%%(rev)s_%%(slug)s")
    cfg.set_main_option("truncate_slug_length", "40")
    # New revision files are tidied by ruff (a dev dependency), as the project's code is.
    cfg.set_section_option("post_write_hooks", "hooks", "ruff_fix, ruff_format")
    for hook, args in (("ruff_fix", "check --fix --exit-zero"), ("ruff_format", "format")):
        cfg.set_section_option("post_write_hooks", f"{hook}.type", "module")
        cfg.set_section_option("post_write_hooks", f"{hook}.module", "ruff")
        cfg.set_section_option(
            "post_write_hooks", f"{hook}.options", f"{args} REVISION_SCRIPT_FILENAME"
        )
    if url is not None:
        # The ini-style parser interpolates "%": escape it (URL-encoded passwords).
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade_head(connection: Connection) -> None:
    """Upgrade the database behind ``connection`` to the newest revision.

    Meant for ``await async_connection.run_sync(upgrade_head)``. Running it on a
    database that is already at ``head`` does nothing. On PostgreSQL, ``env.py``
    holds an advisory lock for the duration, so processes starting together
    migrate one after the other.

    Args:
        connection: a synchronous connection, not inside a transaction.
    """
    command.upgrade(alembic_config(connection=connection), "head")


def main(argv: Sequence[str] | None = None) -> None:
    """Run an ``alembic`` sub-command on tokenwire's migrations (see the module docstring).

    Args:
        argv: the arguments after the program name; ``None`` = ``sys.argv[1:]``.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--url", default=None)
    known, rest = pre.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    cli = CommandLine(prog="python -m tokenwire.store")
    cli.parser.add_argument(
        "--url",
        help="SQLAlchemy URL of the store; default TOKENWIRE_STORE_URL or the SQLite "
        "file in TOKENWIRE_DATA_DIR",
    )
    options = cli.parser.parse_args(rest)
    if not hasattr(options, "cmd"):
        cli.parser.error("too few arguments")
    url = known.url
    if url is None:
        from tokenwire.settings import Settings

        url = Settings().resolved_store_url()
    cli.run_cmd(alembic_config(url), options)
