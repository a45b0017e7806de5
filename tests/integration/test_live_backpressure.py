"""A client that stops reading, or dies without a word: the first costs the server one
buffered state per watched id however fast things change, and slows nobody else; the second
is dropped by the keepalive ping and leaves nothing behind in the hub."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sessionflow.server.app import create_app
from sessionflow.settings import Settings
from tests.helpers import LiveServer, free_port
from tests.integration.live_support import (
    State,
    db_states,
    insert_sessions,
    merge,
    open_ws,
    receive,
    send_watch,
)
from tests.integration.ws_support import RawWebSocket, hub_of, watch_text

GUARD = 30.0  # stops a hung test; measures nothing
# Long ids make big messages: the socket buffers fill after fewer changes.
IDS = [f"{i:04d}-{'x' * 190}" for i in range(300)]
MAX_ROUNDS = 500  # a bound; the kernel's socket buffers decide how many it takes


@pytest.fixture
def pinging_server(db_dsn: str, tmp_path: Path) -> Iterator[LiveServer]:
    """A live server whose WebSocket keepalive runs every 0.2 s, as `serve` configures it
    from ws_ping_interval_seconds (20 s by default)."""
    settings = Settings(
        database_url=db_dsn, data_dir=tmp_path / "data", ws_ping_interval_seconds=0.2
    )
    server = LiveServer(create_app(settings, db_dsn), free_port())
    server.server.config.ws_ping_interval = settings.ws_ping_interval_seconds
    server.server.config.ws_ping_timeout = settings.ws_ping_interval_seconds
    server.start()
    yield server
    server.stop()


async def raw_watch(url: str, token: str, ids: list[str], rcvbuf: int) -> RawWebSocket:
    """A WebSocket client by hand that sends one watch and then never reads again, on a
    socket with a small receive buffer."""
    client = await RawWebSocket.connect(url, token, rcvbuf=rcvbuf)
    await client.send_text(watch_text(ids))
    return client


async def cycle(conn: psycopg.AsyncConnection[Any], owner: str, ids: list[str]) -> None:
    """Two changes to each of `ids`: queued -> downloading -> queued, as a worker's first step
    and a re-ingest would make them."""
    for lifecycle in ("downloading", "queued"):
        await conn.execute(
            "UPDATE sessions SET lifecycle = %s WHERE owner = %s AND id = ANY(%s)",
            (lifecycle, owner, ids),
        )


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(GUARD):
        while not condition():  # noqa: ASYNC110 - the hub's state has no event to wait on
            await asyncio.sleep(0.01)


async def test_a_stalled_client_holds_one_state_per_id_and_slows_no_one(
    live_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    insert_sessions(db_dsn, "alice", IDS)
    hub = hub_of(live_server)
    stalled = await raw_watch(live_server.url, token, IDS, rcvbuf=4096)
    try:
        await wait_until(lambda: any(s.watched == set(IDS) for s in hub.subscriptions))
        [stalled_subscription] = hub.subscriptions
        async with (
            await open_ws(live_server.url, token) as healthy,
            await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn,
        ):
            await send_watch(healthy, IDS)
            known: dict[str, State] = {}
            merge(known, await receive(healthy))
            # Change everything over and over until the stalled connection's sender is stuck
            # on its full socket: states stay held well past the coalescing delay.
            most_held = rounds = 0
            stuck = False
            while not stuck and rounds < MAX_ROUNDS:
                await cycle(conn, "alice", IDS)
                rounds += 1
                await asyncio.sleep(3 * live_server_coalesce(live_server))
                most_held = max(most_held, stalled_subscription.held)
                stuck = stalled_subscription.held > 0
            # ...and some more, now that it is stuck.
            for _ in range(5):
                await cycle(conn, "alice", IDS)
                most_held = max(most_held, stalled_subscription.held)
            final = await db_states(db_dsn, "alice", IDS)
            async with asyncio.timeout(GUARD):
                while known != final:
                    merge(known, await receive(healthy))
        # It got stuck (states still held well past the coalescing delay), and even then it
        # held at most one state per id. (Whether it is still stuck now is up to the kernel,
        # which may grow the socket's send buffer meanwhile.)
        assert stuck, rounds
        assert 0 < most_held <= len(IDS)
    finally:
        stalled.close()


def live_server_coalesce(server: LiveServer) -> float:
    settings: Settings = server.server.config.app.state.sessionflow.settings
    return settings.ws_coalesce_seconds


async def test_a_client_that_stops_answering_pings_is_dropped_and_forgotten(
    pinging_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    hub = hub_of(pinging_server)
    dead = await raw_watch(pinging_server.url, make_token("alice"), ["s1", "s2"], rcvbuf=65536)
    try:
        await wait_until(lambda: len(hub.subscriptions) == 1)
        # It never answers a ping: the server drops it, and the hub lets go of its watch.
        await wait_until(lambda: not hub.subscriptions)
        assert hub._index == {}
    finally:
        dead.close()
