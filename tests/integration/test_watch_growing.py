"""A watch that grows while it runs (the CLI adds each session as it is uploaded): ids added
to a WatchSet are sent as further watch messages on the open connection, answered with their
snapshot, and their changes follow like the others'. No protocol change: the server answers
every watch message the same way."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from contextlib import aclosing

from sessionflow.client.watch import WatchSet, watch
from tests.helpers import LiveServer
from tests.integration.live_support import State, db_states, drive, insert_sessions

GUARD = 30.0  # against hanging, never a measured expectation


async def test_ids_added_to_a_running_watch_are_followed_to_their_final_states(
    live_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    first, later = ["s0", "s1"], [f"t{i}" for i in range(30)]
    insert_sessions(db_dsn, "alice", first)
    watched = WatchSet(first)
    merged: dict[str, State] = {}
    async with aclosing(watch(live_server.url, token, watched)) as updates:
        snapshot = await anext(updates)
        assert snapshot.snapshot and set(snapshot.statuses) == set(first)
        # Sessions arrive while it runs, as uploads finish.
        insert_sessions(db_dsn, "alice", later)
        watched.add(later[:10])
        watched.add(later[10:])
        await drive(db_dsn, "alice", first + later, random.Random(2))
        final = await db_states(db_dsn, "alice", first + later)
        for sid, status in snapshot.statuses.items():
            merged[sid] = (status.lifecycle.value, status.parse_status.value, status.version or 0)
        async with asyncio.timeout(GUARD):
            while merged != final:
                update = await anext(updates)
                assert not update.snapshot and not update.not_found
                for sid, status in update.statuses.items():
                    state = (status.lifecycle.value, status.parse_status.value, status.version or 0)
                    assert sid not in merged or state[2] > merged[sid][2]
                    merged[sid] = state
    assert set(merged) == set(first + later)
