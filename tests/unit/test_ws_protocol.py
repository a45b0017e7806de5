"""The light stand-ins for asyncio.Queue and asyncio.Event in serve's WebSocket protocol do
what uvicorn's protocol asks of those."""

from __future__ import annotations

import asyncio

import pytest

from sessionflow.server.ws_protocol import Gate, Inbox


async def test_inbox_gives_messages_in_order_and_wakes_its_reader() -> None:
    inbox = Inbox()
    assert inbox.empty()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert not inbox.empty()
    assert inbox.qsize() == 2
    assert await inbox.get() == 1
    assert await inbox.get() == 2
    assert inbox.empty()

    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not reader.done()
    inbox.put_nowait(3)
    assert await asyncio.wait_for(reader, 5) == 3
    assert inbox.empty()


async def test_inbox_reader_cancelled_while_waiting_leaves_it_usable() -> None:
    inbox = Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    inbox.put_nowait("after")
    assert await asyncio.wait_for(inbox.get(), 5) == "after"


async def test_inbox_refuses_a_second_concurrent_reader() -> None:
    inbox = Inbox()
    first = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await inbox.get()
    inbox.put_nowait("x")
    assert await asyncio.wait_for(first, 5) == "x"


async def test_gate_holds_writers_while_cleared_and_lets_them_all_go_when_set() -> None:
    gate = Gate()
    assert not gate.is_set()
    gate.set()
    assert await asyncio.wait_for(gate.wait(), 5) is True
    gate.clear()
    writers = [asyncio.create_task(gate.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in writers)
    gate.set()
    assert await asyncio.wait_for(asyncio.gather(*writers), 5) == [True, True, True]


async def test_gate_writer_cancelled_while_waiting_is_forgotten() -> None:
    gate = Gate()
    waiting = asyncio.create_task(gate.wait())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gate.set()
    assert gate.is_set()
    assert await asyncio.wait_for(gate.wait(), 5) is True
