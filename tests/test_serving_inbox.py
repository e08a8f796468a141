"""The light ``receive`` inbox and ``writable`` flag of :class:`FanoutWebSocketProtocol`
(``tokenwire.server.serving``), unit-tested against what uvicorn relies on in
:class:`asyncio.Queue` and :class:`asyncio.Event`; the WebSocket suites run them under
uvicorn."""

from __future__ import annotations

import asyncio

import pytest

from tokenwire.server.serving import _Flag, _Inbox


@pytest.mark.anyio
async def test_the_inbox_hands_out_items_in_order_to_waiting_and_later_gets() -> None:
    inbox = _Inbox()
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("connect")
    inbox.put_nowait("receive")
    assert await waiting == "connect"
    assert not inbox.empty()
    assert await inbox.get() == "receive"
    assert inbox.empty()


@pytest.mark.anyio
async def test_a_get_cancelled_after_its_wake_up_passes_the_item_on() -> None:
    inbox = _Inbox()
    first = asyncio.ensure_future(inbox.get())
    second = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("disconnect")  # wakes the first ...
    first.cancel()  # ... which is cancelled before it runs
    assert await asyncio.wait_for(second, 5) == "disconnect"
    assert first.cancelled()
    assert inbox.empty()


@pytest.mark.anyio
async def test_a_cancelled_get_leaves_no_waiter_behind() -> None:
    inbox = _Inbox()
    cancelled = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    inbox.put_nowait("receive")
    assert await inbox.get() == "receive"


@pytest.mark.anyio
async def test_the_flag_wakes_every_waiter_when_set_and_not_when_cleared() -> None:
    flag = _Flag(True)
    assert flag.is_set() and await flag.wait()
    flag.clear()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True]
    assert flag.is_set()
