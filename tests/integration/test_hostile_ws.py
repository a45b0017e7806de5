"""Hostile WebSocket clients of WS /api/sessions/watch: floods of watch messages, NUL and
100,000 ids, huge frames. Each gets an error and close 1008 (or the server's frame-size
close), and the clients next to it carry on untouched.

Covered in test_watch_protocol.py and not repeated: non-JSON and binary frames, every
malformed message shape, 501 ids, 201-character ids, the cap reached by a few messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection

from sessionflow.protocol import WS_CLOSE_POLICY
from sessionflow.settings import Settings
from tests.helpers import LiveServer
from tests.integration.live_support import insert_sessions, open_ws, receive, send_watch
from tests.integration.ws_support import read_until_closed

MAX_WATCHED = 2_000


@pytest.fixture
def settings(db_dsn: str, tmp_path: Path) -> Settings:
    return Settings(database_url=db_dsn, data_dir=tmp_path / "data", ws_max_watched=MAX_WATCHED)


async def error_then_close(ws: ClientConnection) -> tuple[dict[str, object], int]:
    """Skip snapshots until the error message; return it and the close code that follows."""
    async with asyncio.timeout(30):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "error":
                break
    return message, await read_until_closed(ws)


async def test_a_flood_of_watch_messages_past_the_cap_gets_an_error_and_1008_and_spares_others(
    live_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    insert_sessions(db_dsn, "bob", ["b1"])
    async with await open_ws(live_server.url, make_token("bob")) as bystander:
        await send_watch(bystander, ["b1"])
        assert list((await receive(bystander))["statuses"]) == ["b1"]
        async with await open_ws(live_server.url, make_token("mallory")) as flooder:
            # Sent without reading a single answer: 40 x 100 new ids, twice the cap.
            for n in range(40):
                await send_watch(flooder, [f"m{n}-{i}" for i in range(100)])
            message, code = await error_then_close(flooder)
        assert message["error"] == "watch_limit"
        assert code == WS_CLOSE_POLICY
        # The bystander's connection still answers, as if nothing happened.
        await send_watch(bystander, ["b1", "b2"])
        answer = await receive(bystander)
        assert list(answer["statuses"]) == ["b1"] and answer["not_found"] == ["b2"]


async def test_a_flood_of_repeated_watch_messages_is_answered_in_full_and_stays_open(
    live_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    """Ids already watched do not count again: 300 requests for the same id are fine."""
    insert_sessions(db_dsn, "alice", ["a1"])
    async with await open_ws(live_server.url, make_token("alice")) as ws:
        for _ in range(300):
            await send_watch(ws, ["a1"])
        answers = [await receive(ws) for _ in range(300)]
        assert all(list(a["statuses"]) == ["a1"] for a in answers)
        await send_watch(ws, ["a2"])
        assert (await receive(ws))["not_found"] == ["a2"]


@pytest.mark.parametrize(
    ("ids", "error"),
    [
        (["ok", "a\x00b"], "invalid_id"),
        (["x" * 10 * 1024], "invalid_id"),
        ([f"s{i}" for i in range(100_000)], "too_many_ids"),
    ],
    ids=["nul", "ten-kb", "100000-ids"],
)
async def test_hostile_ids_get_their_error_and_1008_and_the_server_stays_up(
    live_server: LiveServer, make_token: Callable[[str], str], ids: list[str], error: str
) -> None:
    token = make_token("alice")
    async with await open_ws(live_server.url, token) as ws:
        await send_watch(ws, ids)
        message, code = await error_then_close(ws)
    assert message["error"] == error
    assert code == WS_CLOSE_POLICY
    async with await open_ws(live_server.url, token) as again:
        await send_watch(again, ["fine"])
        assert (await receive(again))["not_found"] == ["fine"]


async def test_a_huge_frame_is_refused_and_the_server_stays_up(
    live_server: LiveServer, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    async with await open_ws(live_server.url, token, max_size=None) as ws:
        await ws.send("[" + " " * (20 * 1024 * 1024) + "]")
        code = await read_until_closed(ws)
    # 1009: past uvicorn's frame-size limit; 1008: read, and refused as a bad message.
    assert code in (1008, 1009)
    async with await open_ws(live_server.url, token) as again:
        await send_watch(again, ["fine"])
        assert (await receive(again))["not_found"] == ["fine"]
