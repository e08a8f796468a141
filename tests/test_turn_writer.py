"""Unit tests of the turn writer's own logic (``tokenwire.store.turns.TurnWriter``) with
a fake ``write``: batching, one failing item, cancellation. The real database paths
are in ``tests/test_first_byte.py`` and ``tests/test_first_byte_cluster.py``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from tokenwire.store.turns import MessageUpdate, PendingTurn, TurnMessage, TurnWriter

pytestmark = pytest.mark.anyio


def _turn(message_id: str) -> PendingTurn:
    now = datetime.now(UTC)
    answer = TurnMessage(
        id=message_id, role="assistant", parts=[], status="streaming", model="m", created_at=now
    )
    return PendingTurn(
        conversation_id="c",
        new=True,
        owner=None,
        title=None,
        source=None,
        created_at=now,
        conversation_created_at=now,
        messages=[answer],
    )


class _FakeWrite:
    """Records each batch; blocks while ``gate`` is clear; fails a batch holding ``bad``."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def __call__(self, turns: list[PendingTurn], updates: list[MessageUpdate]) -> None:
        names = [t.messages[-1].id for t in turns] + [u.message_id for u in updates]
        self.entered.set()
        await self.gate.wait()
        if "bad" in names:
            raise RuntimeError("bad row")
        self.batches.append(names)


async def test_what_is_queued_during_a_write_goes_in_one_batch() -> None:
    write = _FakeWrite()
    writer = TurnWriter(write)
    write.gate.clear()
    writer.submit(_turn("t1"))
    await write.entered.wait()  # t1's transaction is running (blocked)
    writer.submit(_turn("t2"))
    update = asyncio.ensure_future(writer.update(MessageUpdate("t1", {"status": "completed"})))
    writer.submit(_turn("t3"))
    assert writer.pending
    write.gate.set()
    await update
    await writer.settle()
    assert write.batches == [["t1"], ["t2", "t3", "t1"]]
    assert not writer.pending


async def test_a_failing_item_fails_alone() -> None:
    write = _FakeWrite()
    writer = TurnWriter(write)
    write.gate.clear()
    writer.submit(_turn("t0"))
    await write.entered.wait()
    writer.submit(_turn("bad"))
    good = asyncio.ensure_future(writer.update(MessageUpdate("u1", {})))
    bad = asyncio.ensure_future(writer.update(MessageUpdate("bad", {})))
    write.gate.set()
    await good
    with pytest.raises(RuntimeError, match="bad row"):
        await bad
    await writer.settle()
    assert write.batches == [["t0"], ["u1"]]
    assert writer.failed == ["bad"]


async def test_a_cancelled_writer_leaves_nobody_waiting() -> None:
    write = _FakeWrite()
    writer = TurnWriter(write)
    write.gate.clear()
    update = asyncio.ensure_future(writer.update(MessageUpdate("u1", {})))
    await write.entered.wait()
    writer.submit(_turn("t1"))
    task = writer._task
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await update
    await writer.settle()
    assert not writer.pending
    assert writer.failed == ["t1"]
