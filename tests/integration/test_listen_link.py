"""The dedicated LISTEN connection the hub and the worker share (sessionflow/listen.py), on
real PostgreSQL: it delivers payloads, catches up after every LISTEN, survives its backend
being killed and a callback that raises, and counts reconnects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest

from sessionflow.listen import ListenLink
from sessionflow.metrics import Metrics

GUARD = 30.0  # stops a hung test; measures nothing
CHANNEL = "listen_link_test"
NAME = "sessionflow-listen-link-test"


class Recorder:
    def __init__(self, fail_on: str | None = None) -> None:
        self.payloads: list[str] = []
        self.catch_ups = 0
        self.fail_on = fail_on
        self.changed = asyncio.Event()

    def notify(self, payload: str) -> None:
        self.payloads.append(payload)
        self.changed.set()
        if payload == self.fail_on:
            raise RuntimeError("a bug in the callback")

    async def caught_up(self) -> None:
        self.catch_ups += 1
        self.changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self.changed.clear()
            await self.changed.wait()


@pytest.fixture
async def running(db_dsn: str) -> AsyncIterator[Callable[..., ListenLink]]:
    tasks: list[asyncio.Task[None]] = []

    def start(recorder: Recorder, metrics: Metrics | None = None) -> ListenLink:
        link = ListenLink(
            db_dsn,
            name="test",
            application_name=NAME,
            listen_sql=f"LISTEN {CHANNEL}",
            on_notify=recorder.notify,
            on_listening=recorder.caught_up,
            ping_seconds=0.5,
            connect_timeout=5,
            reconnect_max_seconds=0.5,
            metrics=metrics,
        )
        tasks.append(asyncio.create_task(link.run()))
        return link

    yield start
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def notify(dsn: str, payload: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


async def kill_listener(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (NAME,),
        )
        assert await cur.fetchone() == (1,)


async def test_payloads_arrive_and_a_killed_backend_is_replaced_and_caught_up(
    running: Callable[..., ListenLink], db_dsn: str
) -> None:
    recorder = Recorder()
    metrics = Metrics()
    link = running(recorder, metrics)
    async with asyncio.timeout(GUARD):
        await link.up.wait()
        await recorder.until(lambda: recorder.catch_ups == 1)  # the first LISTEN too
        await notify(db_dsn, "one")
        await recorder.until(lambda: recorder.payloads == ["one"])

        await kill_listener(db_dsn)
        await recorder.until(lambda: link.sessions == 2 and recorder.catch_ups == 2)
        await notify(db_dsn, "two")
        await recorder.until(lambda: recorder.payloads == ["one", "two"])
    assert link.listening
    assert link.notifications == 2
    reconnects = metrics.registry.get_sample_value(
        "sessionflow_listen_reconnects_total", {"listener": "test"}
    )
    assert reconnects == 1


async def test_a_callback_that_raises_costs_a_reconnect_not_the_listener(
    running: Callable[..., ListenLink], db_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(fail_on="boom")
    link = running(recorder)
    async with asyncio.timeout(GUARD):
        await link.up.wait()
        await notify(db_dsn, "boom")
        await recorder.until(lambda: link.sessions == 2 and link.listening)
        await notify(db_dsn, "after")
        await recorder.until(lambda: recorder.payloads == ["boom", "after"])
    assert "the LISTEN task failed" in caplog.text
