"""The WS /api/sessions/watch protocol against a real uvicorn: handshake auth, snapshot then
deltas, owner isolation, and every invalid message's error and close code."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sessionflow.protocol import WS_CLOSE_POLICY
from sessionflow.settings import Settings
from tests.helpers import LiveServer
from tests.integration.live_support import (
    advance,
    db_states,
    insert_sessions,
    open_ws,
    receive,
    send_watch,
)

MAX_WATCHED = 600


@pytest.fixture
def settings(db_dsn: str, tmp_path: Path) -> Settings:
    return Settings(database_url=db_dsn, data_dir=tmp_path / "data", ws_max_watched=MAX_WATCHED)


async def test_watch_answers_with_a_snapshot_of_versions_and_not_found(
    live_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    insert_sessions(db_dsn, "alice", ["s1", "s2"])
    expected = await db_states(db_dsn, "alice", ["s1", "s2"])
    async with await open_ws(live_server.url, token) as ws:
        await send_watch(ws, ["s1", "s2", "nope", "s1"])
        message = await receive(ws)
    assert message["type"] == "statuses"
    assert message["not_found"] == ["nope"]
    assert message["statuses"] == {
        sid: {"lifecycle": lc, "parse_status": ps, "version": v}
        for sid, (lc, ps, v) in expected.items()
    }


async def test_watch_pushes_each_committed_change_after_the_snapshot(
    live_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    insert_sessions(db_dsn, "alice", ["s1"])
    async with await open_ws(live_server.url, token) as ws:
        await send_watch(ws, ["s1"])
        snapshot = await receive(ws)
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
            await advance(conn, "alice", ["s1"], "downloading")
        delta = await receive(ws)
    assert delta["type"] == "statuses"
    assert delta["not_found"] == []
    assert delta["statuses"]["s1"]["lifecycle"] == "downloading"
    assert delta["statuses"]["s1"]["version"] > snapshot["statuses"]["s1"]["version"]


async def test_watch_sends_a_session_that_appears_after_it_was_not_found(
    live_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    async with await open_ws(live_server.url, token) as ws:
        await send_watch(ws, ["later"])
        assert (await receive(ws))["not_found"] == ["later"]
        insert_sessions(db_dsn, "alice", ["later"])
        delta = await receive(ws)
    assert delta["statuses"]["later"]["lifecycle"] == "queued"


async def test_watch_never_shows_or_sends_another_owners_session(
    live_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    bob = make_token("bob")
    insert_sessions(db_dsn, "alice", ["shared-id"])
    async with await open_ws(live_server.url, bob) as ws:
        await send_watch(ws, ["shared-id"])
        assert await receive(ws) == {"type": "statuses", "statuses": {}, "not_found": ["shared-id"]}
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
            await advance(conn, "alice", ["shared-id"], "downloading")
            await advance(conn, "alice", ["shared-id"], "failed")
        # Bob's own session of the same id is the next, and only, thing he hears about.
        insert_sessions(db_dsn, "bob", ["shared-id"])
        delta = await receive(ws)
    assert delta["statuses"] == {
        "shared-id": {
            "lifecycle": "queued",
            "parse_status": "pending",
            "version": (await db_states(db_dsn, "bob", ["shared-id"]))["shared-id"][2],
        }
    }


@pytest.mark.parametrize(
    "header",
    [None, "Bearer not-a-real-token", "Basic dXNlcjpwYXNz", "Bearer "],
    ids=["missing", "unknown", "wrong-scheme", "empty"],
)
async def test_watch_refuses_a_handshake_without_a_valid_token(
    live_server: LiveServer, header: str | None
) -> None:
    from websockets.asyncio.client import connect

    from sessionflow.client.watch import websocket_url

    headers = {"Authorization": header} if header else {}
    with pytest.raises(InvalidStatus) as refused:
        await connect(websocket_url(live_server.url), additional_headers=headers)
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body or b"")["error"] == "unauthorized"


async def test_watch_refuses_a_token_in_the_url(
    live_server: LiveServer, make_token: Callable[[str], str]
) -> None:
    from websockets.asyncio.client import connect

    from sessionflow.client.watch import websocket_url

    token = make_token("alice")
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{websocket_url(live_server.url)}?token={token}")
    assert refused.value.response.status_code == 403


async def test_watch_refuses_a_revoked_token(
    live_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("UPDATE api_tokens SET revoked_at = now()")
    with pytest.raises(InvalidStatus) as refused:
        await open_ws(live_server.url, token)
    assert refused.value.response.status_code == 403


TOO_LONG_ID = "x" * 201

INVALID_MESSAGES: list[tuple[str, str | bytes, str]] = [
    ("not-json", "watch s1 please", "bad_message"),
    ("json-array", "[1, 2]", "bad_message"),
    ("json-string", '"watch"', "bad_message"),
    ("no-type", '{"session_ids": ["s1"]}', "bad_message"),
    ("unknown-type", '{"type": "subscribe", "session_ids": ["s1"]}', "unknown_type"),
    ("type-not-a-string", '{"type": 7, "session_ids": ["s1"]}', "unknown_type"),
    ("no-ids", '{"type": "watch"}', "bad_message"),
    ("empty-ids", '{"type": "watch", "session_ids": []}', "bad_message"),
    ("ids-not-a-list", '{"type": "watch", "session_ids": "s1"}', "bad_message"),
    ("id-not-a-string", '{"type": "watch", "session_ids": [1]}', "bad_message"),
    ("empty-id", '{"type": "watch", "session_ids": [""]}', "bad_message"),
    ("extra-field", '{"type": "watch", "session_ids": ["s1"], "since": 3}', "bad_message"),
    (
        "501-ids",
        json.dumps({"type": "watch", "session_ids": [f"s{i}" for i in range(501)]}),
        "too_many_ids",
    ),
    ("id-too-long", json.dumps({"type": "watch", "session_ids": [TOO_LONG_ID]}), "invalid_id"),
    ("binary-frame", b'{"type": "watch", "session_ids": ["s1"]}', "bad_message"),
]


@pytest.mark.parametrize(
    ("payload", "error"),
    [(payload, error) for _, payload, error in INVALID_MESSAGES],
    ids=[name for name, _, _ in INVALID_MESSAGES],
)
async def test_watch_answers_an_invalid_message_with_its_error_and_closes_1008(
    live_server: LiveServer, make_token: Callable[[str], str], payload: str | bytes, error: str
) -> None:
    async with await open_ws(live_server.url, make_token("alice")) as ws:
        await ws.send(payload)
        message = await receive(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
    assert message["type"] == "error"
    assert message["error"] == error
    assert message["detail"]
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == WS_CLOSE_POLICY


async def test_watch_refuses_to_watch_past_the_per_connection_limit(
    live_server: LiveServer, make_token: Callable[[str], str]
) -> None:
    async with await open_ws(live_server.url, make_token("alice")) as ws:
        await send_watch(ws, [f"a{i}" for i in range(500)])
        first = await receive(ws)
        # Ids already watched do not count twice.
        await send_watch(ws, [f"a{i}" for i in range(400, MAX_WATCHED)])
        second = await receive(ws)
        await send_watch(ws, ["one-too-many"])
        third = await receive(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
    assert len(first["not_found"]) == 500
    assert len(second["not_found"]) == MAX_WATCHED - 400
    assert third["type"] == "error"
    assert third["error"] == "watch_limit"
    assert str(MAX_WATCHED) in third["detail"]
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == WS_CLOSE_POLICY


async def test_watch_answers_every_watch_message_of_a_connection(
    live_server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    insert_sessions(db_dsn, "alice", ["a", "b"])
    async with await open_ws(live_server.url, token) as ws:
        await send_watch(ws, ["a"])
        await send_watch(ws, ["b", "c"])
        first, second = await receive(ws), await receive(ws)
    assert list(first["statuses"]) == ["a"]
    assert list(second["statuses"]) == ["b"]
    assert second["not_found"] == ["c"]
