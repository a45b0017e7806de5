"""sessionflow.client.watch against a real uvicorn: snapshot then deltas, chunked subscribe,
auth errors at once, WatchUnavailable without reconnect, and resubscribing after a restart."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from pathlib import Path

import pytest

from sessionflow.client.watch import (
    WatchAuthError,
    WatchRejected,
    WatchUnavailable,
    WatchUpdate,
    watch,
)
from sessionflow.server.app import create_app
from sessionflow.settings import Settings
from tests.helpers import LiveServer, free_port
from tests.integration.live_support import State, db_states, drive, insert_sessions

# A guard against hanging, never a measured expectation.
GUARD = 30.0


def as_states(update: WatchUpdate) -> dict[str, State]:
    return {
        sid: (s.lifecycle.value, s.parse_status.value, s.version or 0)
        for sid, s in update.statuses.items()
    }


async def follow_until(
    updates: AsyncGenerator[WatchUpdate], target: dict[str, State]
) -> tuple[dict[str, State], list[WatchUpdate]]:
    """Merge updates until the merged view equals `target`; returns it and what was seen."""
    merged: dict[str, State] = {}
    seen: list[WatchUpdate] = []
    async with asyncio.timeout(GUARD):
        async for update in updates:
            seen.append(update)
            if update.snapshot:
                merged = as_states(update)
            else:
                merged.update(as_states(update))
            if merged == target:
                break
    return merged, seen


async def test_watch_yields_a_snapshot_then_deltas_until_the_final_states(
    live_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    ids = [f"s{i}" for i in range(20)]
    insert_sessions(db_dsn, "alice", ids)
    async with aclosing(watch(live_server.url, token, [*ids, "missing"])) as updates:
        first = await anext(updates)
        await drive(db_dsn, "alice", ids, random.Random(1))
        final = await db_states(db_dsn, "alice", ids)
        merged = as_states(first)
        async with asyncio.timeout(GUARD):
            while merged != final:
                update = await anext(updates)
                assert not update.snapshot
                assert update.not_found == []
                for sid, state in as_states(update).items():
                    assert state[2] > merged[sid][2]  # a delta only ever moves forward
                merged.update(as_states(update))
    assert first.snapshot
    assert set(first.statuses) == set(ids)
    assert first.not_found == ["missing"]


async def test_watch_subscribes_past_500_ids_in_chunks_and_snapshots_them_all(
    live_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    ids = [f"s{i}" for i in range(1200)]
    insert_sessions(db_dsn, "alice", ids[:1100])
    async with aclosing(watch(live_server.url, token, ids)) as updates:
        first = await anext(updates)
    assert first.snapshot
    assert set(first.statuses) == set(ids[:1100])
    assert first.not_found == ids[1100:]


@pytest.mark.parametrize("reconnect", [True, False])
async def test_watch_raises_an_auth_error_at_once_on_a_refused_token(
    live_server: LiveServer, reconnect: bool
) -> None:
    with pytest.raises(WatchAuthError, match="refused the API token"):
        async with aclosing(watch(live_server.url, "sf_bogus", ["s1"], reconnect=reconnect)) as u:
            await anext(u)


async def test_watch_without_reconnect_raises_unavailable_when_nothing_listens() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(WatchUnavailable, match="cannot connect"):
        async with aclosing(watch(url, "sf_any", ["s1"], reconnect=False)) as updates:
            await anext(updates)


async def test_watch_reports_a_server_without_the_live_stream_as_unavailable(
    db_dsn: str, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    settings = Settings(database_url=db_dsn, data_dir=tmp_path / "data", ws_enabled=False)
    server = LiveServer(create_app(settings, db_dsn), free_port()).start()
    try:
        with pytest.raises(WatchRejected, match="no live stream"):
            async with aclosing(watch(server.url, make_token("alice"), ["s1"])) as updates:
                await anext(updates)
    finally:
        server.stop()


async def test_watch_raises_rejected_when_the_server_refuses_the_request(
    db_dsn: str, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    settings = Settings(database_url=db_dsn, data_dir=tmp_path / "data", ws_max_watched=5)
    server = LiveServer(create_app(settings, db_dsn), free_port()).start()
    try:
        ids = [f"s{i}" for i in range(6)]
        with pytest.raises(WatchRejected, match="watch_limit") as rejected:
            async with aclosing(watch(server.url, make_token("alice"), ids)) as updates:
                await anext(updates)
        assert rejected.value.error == "watch_limit"
    finally:
        server.stop()


async def test_watch_without_reconnect_raises_unavailable_when_the_connection_drops(
    settings: Settings, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    insert_sessions(db_dsn, "alice", ["s1"])
    server = LiveServer(create_app(settings, db_dsn), free_port()).start()
    try:
        async with aclosing(watch(server.url, token, ["s1"], reconnect=False)) as updates:
            assert (await anext(updates)).snapshot
            await asyncio.to_thread(server.stop)
            with pytest.raises(WatchUnavailable, match="stopped"):
                async with asyncio.timeout(GUARD):
                    await anext(updates)
    finally:
        server.stop()


async def test_watch_reconnects_resubscribes_and_converges_after_a_server_restart(
    settings: Settings, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    ids = [f"s{i}" for i in range(10)]
    insert_sessions(db_dsn, "alice", ids)
    port = free_port()
    server = LiveServer(create_app(settings, db_dsn), port).start()
    try:
        async with aclosing(watch(server.url, token, ids)) as updates:
            assert (await anext(updates)).snapshot
            await asyncio.to_thread(server.stop)
            # Every change happens while no server is there to see it.
            await drive(db_dsn, "alice", ids, random.Random(2))
            server = LiveServer(create_app(settings, db_dsn), port).start()
            final = await db_states(db_dsn, "alice", ids)
            merged, seen = await follow_until(updates, final)
    finally:
        server.stop()
    assert merged == final
    assert seen[0].snapshot  # the resubscription's fresh snapshot
