"""The conversation store (DESIGN §6) on SQLite and on PostgreSQL.

Every store test runs twice: on an SQLite file in ``tmp_path`` and on a fresh
PostgreSQL database created for the test (``tw_test_<random>``) and dropped after
it. The server is ``TOKENWIRE_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``, used to create and drop the
databases); the PostgreSQL runs are skipped, with the reason, if it does not
answer or ``asyncpg`` is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError

from tests.support.cluster import PG_ADMIN_URL, pg_admin
from tests.support.servers import free_port
from tests.test_accumulate import EVENTS as ACCUMULATE_EVENTS
from tokenwire.accumulate import MessageState, PartsGrowth
from tokenwire.errors import StoreError
from tokenwire.events import ReasoningDelta, TextDelta, with_seq
from tokenwire.store import TITLE_LENGTH, Store, derive_title
from tokenwire.store.engine import create_engine
from tokenwire.store.migrate import MIGRATIONS_DIR, VERSION_TABLE
from tokenwire.store.migrate import main as migrate_main
from tokenwire.store.models import Base

HEAD = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
"""The newest migration revision."""

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- databases ------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_available() -> None:
    """Skip the PostgreSQL runs, saying why, if the server cannot be used."""
    if importlib.util.find_spec("asyncpg") is None:
        pytest.skip("asyncpg is not installed: PostgreSQL store tests skipped")
    try:
        asyncio.run(pg_admin("SELECT 1"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} does not answer ({exc!r})")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database; an SQLite file in a directory that doesn't exist yet."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'tokenwire.db'}"
        return
    request.getfixturevalue("pg_available")
    name = f"tw_test_{uuid.uuid4().hex[:16]}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        admin = make_url(PG_ADMIN_URL)
        yield admin.set(drivername="postgresql+asyncpg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    s = await Store.open(url)
    try:
        yield s
    finally:
        await s.close()


async def _on_raw_connection(url: str, fn: Any) -> Any:
    """Run ``fn(sync_connection)`` on a connection of a separate engine."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def _text(text: str) -> list[dict[str, object]]:
    return [{"type": "text", "text": text}]


# -- migrations -------------------------------------------------------------------


async def test_open_migrates_fresh_database_and_reopen_is_idempotent(url: str) -> None:
    store = await Store.open(url)
    try:
        conv = await store.create_conversation(title="kept")
    finally:
        await store.close()

    def inspect(conn: Connection) -> tuple[set[str], str | None]:
        tables = set(sa.inspect(conn).get_table_names())
        return tables, MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()

    tables, revision = await _on_raw_connection(url, inspect)
    assert {"conversations", "messages", VERSION_TABLE} <= tables
    assert revision == HEAD

    store = await Store.open(url)  # already at head: nothing to do, data intact
    try:
        assert await store.get_conversation(conv.id) == conv
    finally:
        await store.close()
    assert (await _on_raw_connection(url, inspect))[1] == HEAD


async def test_models_match_the_migrated_schema(store: Store, url: str) -> None:
    def diff(conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
        )
        return list(compare_metadata(ctx, Base.metadata))

    assert await _on_raw_connection(url, diff) == []


async def test_sqlite_file_gets_directory_foreign_keys_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "tw.db"
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    await store.close()
    assert path.is_file()

    def pragmas(conn: Connection) -> tuple[Any, Any]:
        fk = conn.exec_driver_sql("PRAGMA foreign_keys").scalar()
        return fk, conn.exec_driver_sql("PRAGMA journal_mode").scalar()

    assert await _on_raw_connection(f"sqlite+aiosqlite:///{path}", pragmas) == (1, "wal")


def test_operator_command_line_upgrades_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'ops' / 'tw.db'}"
    migrate_main(["--url", db_url, "upgrade", "head"])
    capsys.readouterr()
    migrate_main(["--url", db_url, "current"])
    assert f"{HEAD} (head)" in capsys.readouterr().out
    migrate_main(["--url", db_url, "downgrade", "0002"])  # 0003 (source) can be undone
    capsys.readouterr()
    migrate_main(["--url", db_url, "current"])
    out = capsys.readouterr().out
    assert "0002" in out and "head" not in out
    migrate_main(["--url", db_url, "upgrade", "head"])


def test_module_entry_point_prints_offline_sql(tmp_path: Path) -> None:
    env = dict(os.environ, TOKENWIRE_STORE_URL=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    done = subprocess.run(
        [sys.executable, "-m", "tokenwire.store", "upgrade", "head", "--sql"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert "CREATE TABLE conversations" in done.stdout
    assert not (tmp_path / "x.db").exists()


# -- conversations ------------------------------------------------------------------


async def test_create_and_get_conversation(store: Store) -> None:
    before = time.time()
    conv = await store.create_conversation(owner="alice")
    assert len(conv.id) == 32 and int(conv.id, 16) >= 0
    assert conv.owner == "alice" and conv.title is None
    assert before - 1 <= conv.created_at == conv.updated_at <= time.time() + 1
    assert await store.get_conversation(conv.id) == conv

    named = await store.create_conversation(conversation_id="c-1", title="Hi")
    assert (named.id, named.owner, named.title) == ("c-1", None, "Hi")
    assert await store.get_conversation("missing") is None


async def test_duplicate_conversation_id_is_a_store_error_without_sql(store: Store) -> None:
    await store.create_conversation(conversation_id="dup")
    with pytest.raises(StoreError) as info:
        await store.create_conversation(conversation_id="dup")
    assert isinstance(info.value.__cause__, IntegrityError)
    assert "INSERT" not in str(info.value) and "conversations" not in str(info.value)


async def test_owner_isolation(store: Store) -> None:
    alice = await store.create_conversation(owner="alice")
    bob = await store.create_conversation(owner="bob")
    nobody = await store.create_conversation()

    assert await store.get_conversation(alice.id, owner="alice") == alice
    assert await store.get_conversation(alice.id, owner="bob") is None
    assert await store.get_conversation(nobody.id, owner="alice") is None
    assert await store.get_conversation(alice.id) == alice  # no owner: no check

    assert [c.id for c in await store.list_conversations(owner="bob")] == [bob.id]
    assert {c.id for c in await store.list_conversations()} == {alice.id, bob.id, nobody.id}

    assert await store.delete_conversation(alice.id, owner="bob") is False
    assert await store.get_conversation(alice.id) == alice
    assert await store.delete_conversation(alice.id, owner="alice") is True


async def test_delete_cascades_to_messages(store: Store) -> None:
    conv = await store.create_conversation()
    other = await store.create_conversation()
    m1 = await store.add_message(conversation_id=conv.id, role="user", parts=_text("q"))
    await store.add_message(conversation_id=conv.id, role="assistant", parts=_text("a"))
    kept = await store.add_message(conversation_id=other.id, role="user", parts=_text("x"))

    assert await store.delete_conversation(conv.id) is True
    assert await store.get_conversation(conv.id) is None
    assert await store.messages(conv.id) == []
    assert await store.get_message(m1.id) is None
    assert await store.messages(other.id) == [kept]
    assert await store.delete_conversation(conv.id) is False


async def test_list_is_newest_updated_first_and_pages_with_before(store: Store) -> None:
    convs = [await store.create_conversation(owner="o", title=str(i)) for i in range(5)]
    await store.add_message(conversation_id=convs[1].id, role="user", parts=_text("bump"))
    expected = [convs[1].id, convs[4].id, convs[3].id, convs[2].id, convs[0].id]

    listed = await store.list_conversations(owner="o")
    assert [c.id for c in listed] == expected
    assert listed[0].updated_at > listed[0].created_at

    pages: list[str] = []
    before: float | None = None
    while page := await store.list_conversations(owner="o", limit=2, before=before):
        assert len(page) <= 2
        pages += [c.id for c in page]
        before = page[-1].updated_at
    assert pages == expected

    with pytest.raises(ValueError, match="limit"):
        await store.list_conversations(limit=0)


# -- messages -------------------------------------------------------------------------


async def test_add_message_returns_record_and_bumps_conversation(store: Store) -> None:
    conv = await store.create_conversation(title="t")
    parts: list[dict[str, object]] = [{"type": "text", "text": "héllo 👋"}]
    msg = await store.add_message(
        conversation_id=conv.id,
        role="assistant",
        parts=parts,
        status="streaming",
        model="fake:echo",
        message_id="m-1",
    )
    parts[0]["text"] = "changed by the caller afterwards"
    assert msg.id == "m-1" and msg.conversation_id == conv.id
    assert (msg.role, msg.status, msg.model) == ("assistant", "streaming", "fake:echo")
    assert msg.parts == [{"type": "text", "text": "héllo 👋"}]
    assert (msg.finish_reason, msg.usage, msg.error) == (None, None, None)
    assert msg.created_at == msg.updated_at > conv.created_at
    assert await store.get_message("m-1") == msg

    updated = await store.get_conversation(conv.id)
    assert updated is not None and updated.updated_at == msg.created_at


async def test_messages_are_oldest_first(store: Store) -> None:
    conv = await store.create_conversation()
    ids = [
        (await store.add_message(conversation_id=conv.id, role=role, parts=_text(str(i)))).id
        for i, role in enumerate(["system", "user", "assistant", "tool", "user", "assistant"])
    ]
    listed = await store.messages(conv.id)
    assert [m.id for m in listed] == ids
    assert [m.created_at for m in listed] == sorted(m.created_at for m in listed)
    assert await store.messages("missing") == []


async def test_add_message_errors(store: Store) -> None:
    conv = await store.create_conversation()
    with pytest.raises(StoreError, match="no conversation"):
        await store.add_message(conversation_id="missing", role="user", parts=_text("x"))
    await store.add_message(conversation_id=conv.id, role="user", parts=[], message_id="m")
    with pytest.raises(StoreError):
        await store.add_message(conversation_id=conv.id, role="user", parts=[], message_id="m")
    with pytest.raises(ValueError, match="status"):
        await store.add_message(conversation_id=conv.id, role="user", parts=[], status="done")
    with pytest.raises(ValueError, match="role"):
        await store.add_message(conversation_id=conv.id, role="robot", parts=[])
    with pytest.raises(ValueError, match="parts"):
        await store.add_message(conversation_id=conv.id, role="user", parts=["x"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="JSON"):
        await store.add_message(conversation_id=conv.id, role="user", parts=[{"x": object()}])
    assert [m.id for m in await store.messages(conv.id)] == ["m"]


async def test_title_from_first_user_message(store: Store) -> None:
    conv = await store.create_conversation()
    await store.add_message(conversation_id=conv.id, role="system", parts=_text("Be brief."))
    await store.add_message(conversation_id=conv.id, role="user", parts=[{"type": "image"}])
    assert (await _conversation(store, conv.id)).title is None  # no text yet

    long = "  Explain\n\nquantum   computing " + "very " * 40
    await store.add_message(conversation_id=conv.id, role="user", parts=_text(long))
    title = (await _conversation(store, conv.id)).title
    assert title is not None and title.startswith("Explain quantum computing very very")
    assert "\n" not in title and len(title) <= TITLE_LENGTH

    await store.add_message(conversation_id=conv.id, role="user", parts=_text("Another"))
    assert (await _conversation(store, conv.id)).title == title

    named = await store.create_conversation(title="Mine")
    await store.add_message(conversation_id=named.id, role="user", parts=_text("Other"))
    assert (await _conversation(store, named.id)).title == "Mine"


async def _conversation(store: Store, conversation_id: str) -> Any:
    conv = await store.get_conversation(conversation_id)
    assert conv is not None
    return conv


async def test_update_message_writes_only_what_is_given(store: Store) -> None:
    conv = await store.create_conversation()
    msg = await store.add_message(
        conversation_id=conv.id, role="assistant", parts=[], status="pending", model="m"
    )
    await store.update_message(msg.id, status="streaming")
    await store.update_message(msg.id, parts=_text("Hel"))
    mid = await store.get_message(msg.id)
    assert mid is not None
    assert (mid.status, mid.parts, mid.model) == ("streaming", _text("Hel"), "m")
    assert mid.created_at == msg.created_at and mid.updated_at > msg.updated_at

    usage = {"input_tokens": 3, "output_tokens": 7}
    await store.update_message(msg.id, status="completed", finish_reason="stop", usage=usage)
    done = await store.get_message(msg.id)
    assert done is not None
    assert (done.status, done.finish_reason, done.usage) == ("completed", "stop", usage)
    assert done.parts == _text("Hel") and done.error is None

    await store.update_message(msg.id)  # nothing to write
    assert await store.get_message(msg.id) == done

    error: dict[str, object] = {"code": "provider_error", "message": "boom", "retryable": False}
    await store.update_message(msg.id, status="failed", error=error)
    failed = await store.get_message(msg.id)
    assert failed is not None and (failed.status, failed.error) == ("failed", error)
    assert failed.usage == usage

    with pytest.raises(ValueError, match="status"):
        await store.update_message(msg.id, status="finished")
    await store.update_message("missing", status="cancelled")  # ignored
    assert await store.get_message("missing") is None


# -- failures and lifecycle ----------------------------------------------------------


async def test_ping(store: Store) -> None:
    await store.ping()


async def test_unreachable_database_is_a_store_error() -> None:
    dead = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"
    store = await Store.open(dead, migrate=False, connect_timeout=2)
    try:
        with anyio.fail_after(10):
            with pytest.raises(StoreError, match="reach the database") as info:
                await store.ping()
        assert "127.0.0.1" not in str(info.value)
    finally:
        await store.close()
    with anyio.fail_after(10), pytest.raises(StoreError, match="migrate"):
        await Store.open(dead, connect_timeout=2)


async def test_invalid_url_is_a_store_error() -> None:
    with pytest.raises(StoreError):
        await Store.open("not a url")
    with pytest.raises(StoreError):
        await Store.open("postgresql+nosuchdriver://x/y")


async def test_closed_store_refuses_work(url: str) -> None:
    store = await Store.open(url)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await store.create_conversation()
    with pytest.raises(StoreError, match="closed"):
        await store.ping()


@pytest.mark.parametrize(
    ("parts", "title"),
    [
        ([], None),
        ([{"type": "text", "text": "   \n "}], None),
        ([{"type": "image", "url": "x"}, {"type": "text", "text": "a\nb"}], "a b"),
        ([{"type": "text", "text": "one"}, {"type": "text", "text": "two"}], "one two"),
        ([{"type": "text", "text": 5}], None),
        ([{"type": "text", "text": "x" * 200}], "x" * (TITLE_LENGTH - 1) + "…"),
        ([{"type": "text", "text": "y" * 79 + " z"}], "y" * 79 + "…"),
        ([{"type": "text", "text": "y" * 80}], "y" * 80),
        ([{"type": "text", "text": "word " * 30}], ("word " * 16).strip() + "…"),
    ],
)
def test_derive_title(parts: list[dict[str, object]], title: str | None) -> None:
    assert derive_title(parts) == title


async def test_concurrent_opens_of_a_fresh_database_all_succeed(url: str) -> None:
    stores: list[Store] = []

    async def open_one() -> None:
        stores.append(await Store.open(url))

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(open_one)
    finally:
        for s in stores:
            await s.close()
    assert len(stores) == 4


def test_opens_from_several_threads_at_once(url: str) -> None:
    errors: list[BaseException] = []

    def open_and_close() -> None:
        async def run() -> None:
            store = await Store.open(url)
            await store.close()

        try:
            asyncio.run(run())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_and_close) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []


async def test_begin_turn_writes_the_whole_turn_at_once(store: Store) -> None:
    turn = await store.begin_turn(
        conversation_id=None, owner="ann", messages=[("user", _text("Hi there"))], model="fake:echo"
    )
    assert turn is not None
    conversation, history, assistant = turn
    assert history == [] and conversation.title == "Hi there" and conversation.owner == "ann"
    assert (assistant.role, assistant.status, assistant.parts) == ("assistant", "streaming", [])
    assert assistant.model == "fake:echo"
    again = await store.begin_turn(
        conversation_id=conversation.id,
        owner="ann",
        messages=[("user", _text("More"))],
        model="m:x",
    )
    assert again is not None
    assert [(m.role, m.status) for m in again[1]] == [
        ("user", "completed"),
        ("assistant", "streaming"),
    ]
    assert again[0].title == "Hi there"
    assert [m.role for m in await store.messages(conversation.id)] == ["user", "assistant"] * 2
    assert (
        await store.begin_turn(
            conversation_id=conversation.id, owner="bob", messages=[], model="m:x"
        )
        is None
    )
    assert (
        await store.begin_turn(conversation_id="nope", owner=None, messages=[], model="m:x") is None
    )


async def test_checkpoint_messages_updates_many_in_one_call(store: Store) -> None:
    ids = []
    for text in ("a", "b"):
        turn = await store.begin_turn(
            conversation_id=None, owner=None, messages=[("user", _text(text))], model="m:x"
        )
        assert turn is not None
        ids.append(turn[2].id)
    await store.checkpoint_messages(
        {ids[0]: PartsGrowth(_text("partial a")), ids[1]: PartsGrowth(_text("partial b"))}
    )
    for message_id, text in zip(ids, ("partial a", "partial b"), strict=True):
        message = await store.get_message(message_id)
        assert message is not None and message.parts == _text(text)
        assert message.status == "streaming"
    await store.checkpoint_messages({})


async def test_a_message_grows_in_the_store_by_what_the_producer_took_since(store: Store) -> None:
    """Checkpoints and the final update hand over only the new text; the store
    appends it to what it holds, so the stored message is the whole answer."""
    ids = []
    for _ in range(2):
        turn = await store.begin_turn(conversation_id=None, owner=None, messages=[], model="m:x")
        assert turn is not None
        ids.append(turn[2].id)
    state = MessageState()
    state.apply(TextDelta(part=0, delta="Hel", seq=1))
    await store.checkpoint_messages({ids[0]: state.take_growth(), ids[1]: PartsGrowth(_text("b"))})
    state.apply(TextDelta(part=0, delta="lo", seq=2))
    state.apply(ReasoningDelta(part=1, delta="why", seq=3))
    gone = {"missing": state.copy().take_growth(), "gone": PartsGrowth(_text("x"))}  # ignored
    await store.checkpoint_messages({ids[0]: state.take_growth(), **gone})
    message = await store.get_message(ids[0])
    assert message is not None
    assert message.parts == [*_text("Hello"), {"type": "reasoning", "text": "why"}]
    state.apply(TextDelta(part=0, delta="!", seq=4))
    await store.update_message(ids[0], grown=state.take_growth(), status="completed")
    await store.update_message("missing", grown=state.take_growth(), status="completed")
    message = await store.get_message(ids[0])
    assert message is not None and message.status == "completed"
    assert message.parts == [*_text("Hello!"), {"type": "reasoning", "text": "why"}]
    other = await store.get_message(ids[1])
    assert other is not None and other.parts == _text("b")


@pytest.mark.parametrize("every", [1, 7, 200])
async def test_the_database_appends_every_growth_as_onto_does(store: Store, every: int) -> None:
    """Messages written together with 0, 1 or several continued fields (one
    ``UPDATE`` per count) each equal the message so far after every checkpoint and
    after the final update; text that JSON and SQL must escape survives."""
    ids = []
    for _ in range(3):
        turn = await store.begin_turn(conversation_id=None, owner=None, messages=[], model="m:x")
        assert turn is not None
        ids.append(turn[2].id)
    tricky = ['He said "hi"', " \\ back\\slash", " 'quoted' $.path[0]", " naïve 日本 🙂", "\n\t"]
    events = [*ACCUMULATE_EVENTS, *(TextDelta(part=2, delta=t) for t in tricky)]
    states = [MessageState() for _ in ids]
    reference = MessageState()
    for seq, event in enumerate(events, start=1):
        reference.apply(with_seq(event, seq))
        for state in states:
            state.apply(with_seq(event, seq))
        if seq % every == 0:
            growths = [
                states[0].take_growth(),
                states[1].take_growth(),
                PartsGrowth(states[2].parts_list()),
            ]
            await store.checkpoint_messages(dict(zip(ids, growths, strict=True)))
            for message_id in ids:
                message = await store.get_message(message_id)
                assert message is not None and message.parts == reference.parts_list(), seq
    for message_id, state in zip(ids, states, strict=True):
        await store.update_message(message_id, grown=state.take_growth(), status="completed")
        message = await store.get_message(message_id)
        assert message is not None and message.parts == reference.parts_list()
    assert "日本 🙂" in str(reference.parts_list()) and 'He said "hi"' in reference.text


async def test_a_growth_onto_a_missing_or_non_text_stored_field_starts_it_empty(
    store: Store,
) -> None:
    turn = await store.begin_turn(conversation_id=None, owner=None, messages=[], model="m:x")
    assert turn is not None
    message_id = turn[2].id
    growth = PartsGrowth([{"type": "text", "text": "b"}], {0: (3, "text")})
    await store.checkpoint_messages({message_id: growth})  # no part 3 stored
    message = await store.get_message(message_id)
    assert message is not None and message.parts == growth.onto([]) == _text("b")
    await store.update_message(message_id, parts=[{"type": "text", "text": 5}])
    growth = PartsGrowth([{"type": "text", "text": "c"}], {0: (0, "text")})
    await store.update_message(message_id, grown=growth)
    message = await store.get_message(message_id)
    assert message is not None and message.parts == _text("c")


async def test_delete_messages_from_drops_that_message_and_later_ones(store: Store) -> None:
    turn = await store.begin_turn(
        conversation_id=None, owner=None, messages=[("user", _text("q1"))], model="m:x"
    )
    assert turn is not None
    conversation, _, first_answer = turn
    again = await store.begin_turn(
        conversation_id=conversation.id, owner=None, messages=[("user", _text("q2"))], model="m:x"
    )
    assert again is not None
    other = await store.create_conversation()
    assert await store.delete_messages_from(other.id, first_answer.id) == 0
    assert await store.delete_messages_from(conversation.id, first_answer.id) == 3
    assert [m.parts for m in await store.messages(conversation.id)] == [_text("q1")]


async def test_list_filters_by_source_and_title_and_rename(store: Store) -> None:
    page = await store.create_conversation(title="Quarterly 100% Zebra_report", source="page")
    api = await store.create_conversation(title="zebra from the API", source="api")
    other = await store.create_conversation(title="Something else")
    assert page.source == "page" and other.source is None

    async def ids(**kwargs: Any) -> list[str]:
        return [c.id for c in await store.list_conversations(**kwargs)]

    assert await ids(source="page") == [page.id]
    assert await ids(query="ZEBRA") == [api.id, page.id]
    assert await ids(query="zebra", source="api") == [api.id]
    assert await ids(query="100%") == [page.id]  # % and _ match only themselves
    assert await ids(query="a_r") == [page.id]
    assert await ids(query="0%z") == [] and await ids(query="a%r") == []
    assert await ids(query="   ") == [other.id, api.id, page.id]

    renamed = await store.rename_conversation(other.id, "  Fresh name ")
    assert renamed is not None and renamed.title == "Fresh name"
    assert renamed.updated_at == other.updated_at  # a rename does not move it in the list
    assert await store.rename_conversation("missing", "x") is None
    with pytest.raises(ValueError, match="blank"):
        await store.rename_conversation(other.id, "  ")

    turn = await store.begin_turn(
        conversation_id=None,
        owner=None,
        messages=[("user", [{"type": "text", "text": "hi"}])],
        model="fake:echo",
        source="cli",
    )
    assert turn is not None and turn[0].source == "cli"
    assert await ids(source="cli") == [turn[0].id]
