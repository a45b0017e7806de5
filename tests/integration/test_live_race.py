"""Subscribing races committing: whatever commits around a watch, the watcher ends with the
table's final states, and its first answer is a snapshot of every id it asked for."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import psycopg

from tests.helpers import LiveServer
from tests.integration.live_support import (
    State,
    advance,
    db_states,
    drive,
    insert_sessions,
    merge,
    open_ws,
    receive,
    send_watch,
)

ROUNDS = 60
SESSIONS_PER_ROUND = 8
GUARD = 20.0  # stops a hung test; measures nothing


async def test_an_update_committed_while_a_client_subscribes_is_never_lost(
    live_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    """Each session changes exactly once, at a random moment around the subscribe: a change
    that fell between the snapshot and the watch would leave a wrong final state."""
    token = make_token("alice")
    rng = random.Random(20240601)
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        for round_ in range(ROUNDS):
            ids = [f"r{round_}-{i}" for i in range(SESSIONS_PER_ROUND)]
            insert_sessions(db_dsn, "alice", ids)
            moments = sorted((rng.uniform(0, 0.02), sid) for sid in ids)

            async def worker(moments: list[tuple[float, str]] = moments) -> None:
                start = asyncio.get_running_loop().time()
                for at, sid in moments:
                    await asyncio.sleep(max(0.0, start + at - asyncio.get_running_loop().time()))
                    await advance(conn, "alice", [sid], "downloading")

            driver = asyncio.create_task(worker())
            async with await open_ws(live_server.url, token) as ws:
                await send_watch(ws, ids)
                snapshot = await receive(ws)
                known: dict[str, State] = {}
                merge(known, snapshot)
                await driver
                final = await db_states(db_dsn, "alice", ids)
                async with asyncio.timeout(GUARD):
                    while known != final:
                        merge(known, await receive(ws))
            assert set(snapshot["statuses"]) == set(ids), f"round {round_}"
            assert snapshot["not_found"] == []


async def test_a_watcher_racing_a_multi_step_pipeline_ends_with_the_final_states(
    live_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    rng = random.Random(5)
    for round_ in range(20):
        ids = [f"m{round_}-{i}" for i in range(4)]
        insert_sessions(db_dsn, "alice", ids)

        async def worker(delay: float, ids: list[str] = ids) -> None:
            await asyncio.sleep(delay)
            await drive(db_dsn, "alice", ids, rng, pause=0.002)

        driver = asyncio.create_task(worker(rng.uniform(0, 0.015)))
        async with await open_ws(live_server.url, token) as ws:
            await send_watch(ws, ids)
            known: dict[str, State] = {}
            merge(known, await receive(ws))
            await driver
            final = await db_states(db_dsn, "alice", ids)
            async with asyncio.timeout(GUARD):
                while known != final:
                    merge(known, await receive(ws))


async def test_watchers_subscribing_in_the_middle_of_a_burst_all_converge(
    live_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    ids = [f"b{i}" for i in range(100)]
    insert_sessions(db_dsn, "alice", ids)
    rng = random.Random(7)
    driver = asyncio.create_task(drive(db_dsn, "alice", ids, rng, pause=0.001))
    connections = []
    for _ in range(10):
        ws = await open_ws(live_server.url, token)
        await send_watch(ws, rng.sample(ids, 50))
        connections.append(ws)
        await asyncio.sleep(rng.uniform(0, 0.01))
    await driver
    final = await db_states(db_dsn, "alice", ids)
    try:
        for ws in connections:
            known: dict[str, State] = {}
            first = await receive(ws)
            merge(known, first)
            watched = set(first["statuses"])
            expected = {sid: state for sid, state in final.items() if sid in watched}
            async with asyncio.timeout(GUARD):
                while known != expected:
                    merge(known, await receive(ws))
            assert len(watched) == 50
    finally:
        for ws in connections:
            await ws.close()
