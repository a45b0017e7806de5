"""Revoking an API token ends the live-stream connections opened with it: close code 4401 at
once (the hub hears the revocation on its one LISTEN connection), or as soon as the hub
listens again when the revocation came while it could not hear. Other tokens' connections,
the same owner's included, carry on. The hub also tells its revocation listeners (what a
token cache would hook into)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from contextlib import aclosing

import psycopg
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from sessionflow.client.watch import WatchAuthError, watch
from sessionflow.protocol import WS_CLOSE_UNAUTHORIZED
from sessionflow.tokens import create_token, revoke_token
from tests.helpers import LiveServer
from tests.integration.live_support import insert_sessions, open_ws, receive, send_watch
from tests.integration.ws_support import GUARD, hub_of, listen_outage, read_until_closed

Tokens = Callable[[str], tuple[str, str]]


@pytest.fixture
def tokens(db_dsn: str) -> Tokens:
    """tokens(owner) -> (token id, token)."""

    def make(owner: str) -> tuple[str, str]:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            return create_token(conn, owner)

    return make


def revoke(db_dsn: str, token_id: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        assert revoke_token(conn, token_id)


async def subscribed(url: str, token: str, ids: list[str]) -> ClientConnection:
    ws = await open_ws(url, token)
    await send_watch(ws, ids)
    assert (await receive(ws))["type"] == "statuses"
    return ws


async def still_answers(ws: ClientConnection, sid: str) -> bool:
    await send_watch(ws, [sid])
    return sid in (await receive(ws))["statuses"]


async def test_revoking_a_token_closes_its_websockets_with_4401_and_spares_every_other(
    live_server: LiveServer, db_dsn: str, tokens: Tokens
) -> None:
    insert_sessions(db_dsn, "alice", ["a1"])
    insert_sessions(db_dsn, "bob", ["b1"])
    revoked_id, revoked = tokens("alice")
    _, other = tokens("alice")
    _, bobs = tokens("bob")
    doomed = [await subscribed(live_server.url, revoked, ["a1"]) for _ in range(2)]
    spared = [
        (await subscribed(live_server.url, other, ["a1"]), "a1"),
        (await subscribed(live_server.url, bobs, ["b1"]), "b1"),
    ]
    try:
        revoke(db_dsn, revoked_id)
        assert [await read_until_closed(ws) for ws in doomed] == [WS_CLOSE_UNAUTHORIZED] * 2
        for ws, sid in spared:
            assert await still_answers(ws, sid)
        assert len(hub_of(live_server).subscriptions) == len(spared)
    finally:
        for ws in [*doomed, *(ws for ws, _ in spared)]:
            await ws.close()


async def test_deleting_a_token_closes_its_websockets_with_4401(
    live_server: LiveServer, db_dsn: str, tokens: Tokens
) -> None:
    token_id, token = tokens("alice")
    ws = await subscribed(live_server.url, token, ["a1"])
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM api_tokens WHERE id = %s", (token_id,))
    assert await read_until_closed(ws) == WS_CLOSE_UNAUTHORIZED


async def test_the_watch_client_raises_an_auth_error_when_its_token_is_revoked(
    live_server: LiveServer, db_dsn: str, tokens: Tokens
) -> None:
    """4401 and no `error` message first: the library knows not to reconnect, nor to fall
    back to polling with a token that no longer works."""
    insert_sessions(db_dsn, "alice", ["a1"])
    token_id, token = tokens("alice")

    async def follow() -> None:
        async with aclosing(watch(live_server.url, token, ["a1"])) as updates:
            async for update in updates:
                assert update.snapshot
                revoke(db_dsn, token_id)

    with pytest.raises(WatchAuthError):
        await asyncio.wait_for(follow(), GUARD)


async def test_a_token_revoked_while_the_hub_could_not_listen_is_closed_once_it_listens_again(
    live_server: LiveServer, db_dsn: str, pg_admin_dsn: str, tokens: Tokens
) -> None:
    hub = hub_of(live_server)
    insert_sessions(db_dsn, "alice", ["a1"])
    revoked_id, revoked = tokens("alice")
    _, kept = tokens("alice")
    doomed = await subscribed(live_server.url, revoked, ["a1"])
    spared = await subscribed(live_server.url, kept, ["a1"])
    try:
        async with listen_outage(db_dsn, pg_admin_dsn, hub) as conn:
            # Its NOTIFY goes to nobody.
            await conn.execute(
                "UPDATE api_tokens SET revoked_at = now() WHERE id = %s", (revoked_id,)
            )
        assert await read_until_closed(doomed) == WS_CLOSE_UNAUTHORIZED
        assert await still_answers(spared, "a1")
    finally:
        await doomed.close()
        await spared.close()


async def test_revocation_listeners_hear_each_revoked_token_and_to_forget_all_after_an_outage(
    live_server: LiveServer, db_dsn: str, pg_admin_dsn: str, tokens: Tokens
) -> None:
    hub = hub_of(live_server)
    heard: list[str | None] = []
    news = threading.Event()  # the hub calls from the server's thread

    def listener(token_id: str | None) -> None:
        heard.append(token_id)
        news.set()

    hub.on_token_revoked(listener)
    token_id, _ = tokens("alice")
    revoke(db_dsn, token_id)
    assert await asyncio.to_thread(news.wait, GUARD)
    assert heard == [token_id]
    news.clear()
    async with listen_outage(db_dsn, pg_admin_dsn, hub):
        pass
    assert await asyncio.to_thread(news.wait, GUARD)
    assert heard == [token_id, None]


async def test_a_token_revoked_during_its_handshake_never_leaves_a_connection_open(
    live_server: LiveServer, db_dsn: str, tokens: Tokens
) -> None:
    """Whichever comes first, the check of the token or its revocation: the handshake is
    refused, or the connection is closed with 4401."""
    for _ in range(20):
        token_id, token = tokens("alice")
        revoking = asyncio.create_task(asyncio.to_thread(revoke, db_dsn, token_id))
        try:
            ws = await open_ws(live_server.url, token)
        except InvalidStatus as refused:
            outcome = refused.response.status_code
        else:
            outcome = await read_until_closed(ws)
        await revoking
        assert outcome in (403, WS_CLOSE_UNAUTHORIZED)


async def test_other_tokens_revoked_during_a_handshake_do_not_refuse_it(
    live_server: LiveServer, db_dsn: str, tokens: Tokens
) -> None:
    """A revocation heard while a token is checked makes the route check it again: a token
    still valid passes that second check."""
    insert_sessions(db_dsn, "alice", ["a1"])
    _, token = tokens("alice")
    stop = threading.Event()

    def revoke_others() -> None:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            while not stop.is_set():
                revoke_token(conn, create_token(conn, "bob")[0])

    storm = asyncio.create_task(asyncio.to_thread(revoke_others))
    try:
        for _ in range(20):
            ws = await subscribed(live_server.url, token, ["a1"])
            assert await still_answers(ws, "a1")
            await ws.close()
    finally:
        stop.set()
        await storm
