"""200 clients, each its own owner watching its own 50 sessions, while two tasks playing the
worker drive all 10,000 sessions to an end: every client ends with every final state, and
none ever receives a state of another owner's session (every owner uses the same ids)."""

from __future__ import annotations

import asyncio
import random
from contextlib import aclosing

import psycopg
import pytest

from sessionflow.client.watch import WatchUpdate, watch
from sessionflow.tokens import create_token
from tests.helpers import LiveServer
from tests.integration.live_support import SHA, State, parse_status_for, path_for

CLIENTS = 200
SESSIONS = 50
BATCH = 100  # sessions moved one step per committed transaction
GUARD = 180.0  # stops a hung test; measures nothing

pytestmark = pytest.mark.slow

_MOVE = """
UPDATE sessions AS s SET lifecycle = u.lifecycle, parse_status = u.parse_status
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS u(owner, id, lifecycle, parse_status)
WHERE s.owner = u.owner AND s.id = u.id
RETURNING s.owner, s.version
"""


def owner_name(n: int) -> str:
    return f"owner-{n:03d}"


IDS = [f"s{i}" for i in range(SESSIONS)]


async def play_worker(
    dsn: str, plans: dict[tuple[str, str], list[str]], rng: random.Random, ledger: dict[int, str]
) -> None:
    """Move random batches of sessions one step along their plans until all are at an end;
    record which owner every version belongs to."""
    remaining = {key: list(path) for key, path in plans.items()}
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while remaining:
            batch = rng.sample(list(remaining), min(BATCH, len(remaining)))
            steps = [(owner, sid, remaining[(owner, sid)].pop(0)) for owner, sid in batch]
            cur = await conn.execute(
                _MOVE,
                (
                    [owner for owner, _, _ in steps],
                    [sid for _, sid, _ in steps],
                    [lifecycle for _, _, lifecycle in steps],
                    [parse_status_for(lifecycle) for _, _, lifecycle in steps],
                ),
            )
            for owner, version in await cur.fetchall():
                ledger[version] = owner
            for key in batch:
                if not remaining[key]:
                    del remaining[key]
            await asyncio.sleep(0)


async def follow(
    url: str,
    token: str,
    finals: dict[str, str],
    received: list[tuple[str, int]],
    subscribed: asyncio.Event | None = None,
) -> dict[str, State]:
    """Watch until every session shows its planned final lifecycle (only the last step
    reaches it); keep every (id, version) received."""
    merged: dict[str, State] = {}
    async with aclosing(watch(url, token, IDS)) as updates:
        async for update in updates:
            apply(merged, update, received)
            if subscribed is not None:
                subscribed.set()
            if all(merged.get(sid, ("",))[0] == final for sid, final in finals.items()):
                return merged
    raise AssertionError("the stream ended")


def apply(merged: dict[str, State], update: WatchUpdate, received: list[tuple[str, int]]) -> None:
    if update.snapshot:
        merged.clear()
    for sid, status in update.statuses.items():
        assert status.version is not None
        received.append((sid, status.version))
        merged[sid] = (status.lifecycle.value, status.parse_status.value, status.version)


async def test_200_clients_each_end_with_their_own_final_states_and_nothing_else(
    live_server: LiveServer, db_dsn: str
) -> None:
    rng = random.Random(200)
    owners = [owner_name(n) for n in range(CLIENTS)]
    tokens: dict[str, str] = {}
    ledger: dict[int, str] = {}
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for owner in owners:
            tokens[owner] = create_token(conn, owner)[1]
        cur = conn.execute(
            "INSERT INTO sessions (owner, id, transcript_key, transcript_size, transcript_sha256)"
            " SELECT o, i, 'k', 1, %s FROM unnest(%s::text[]) AS o, unnest(%s::text[]) AS i"
            " RETURNING owner, version",
            (SHA, owners, IDS),
        )
        ledger.update({version: owner for owner, version in cur.fetchall()})
    plans = {(owner, sid): list(path_for(rng)) for owner in owners for sid in IDS}
    finals = {owner: {sid: plans[(owner, sid)][-1] for sid in IDS} for owner in owners}
    received: dict[str, list[tuple[str, int]]] = {owner: [] for owner in owners}

    async with asyncio.timeout(GUARD):
        # Half the clients subscribe before the work starts, half while it runs.
        subscribed = {o: asyncio.Event() for o in owners[: CLIENTS // 2]}
        early = [
            asyncio.create_task(
                follow(live_server.url, tokens[o], finals[o], received[o], subscribed[o])
            )
            for o in owners[: CLIENTS // 2]
        ]
        await asyncio.gather(*(event.wait() for event in subscribed.values()))
        keys = list(plans)
        workers = [
            asyncio.create_task(
                play_worker(db_dsn, {k: plans[k] for k in keys[n::2]}, random.Random(n), ledger)
            )
            for n in range(2)
        ]
        late = [
            asyncio.create_task(follow(live_server.url, tokens[o], finals[o], received[o]))
            for o in owners[CLIENTS // 2 :]
        ]
        await asyncio.gather(*workers)
        views = await asyncio.gather(*early, *late)

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT owner, id, lifecycle, parse_status, version FROM sessions")
        table: dict[str, dict[str, State]] = {owner: {} for owner in owners}
        for owner, sid, lifecycle, parse_status, version in rows:
            table[owner][sid] = (lifecycle, parse_status, version)
    for owner, view in zip(owners, views, strict=True):
        assert view == table[owner], owner
        leaked = [(sid, v) for sid, v in received[owner] if ledger.get(v) != owner]
        assert leaked == [], f"{owner} received states of other owners' sessions: {leaked[:5]}"
