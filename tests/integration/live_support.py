"""What the live-stream tests share: sessions made and moved straight in SQL (playing the
ingest API and the worker), and a raw WebSocket connection to the watch route."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from websockets.asyncio.client import ClientConnection, connect

from sessionflow.client.watch import websocket_url

SHA = "a" * 64

# The paths a worker drives a session along, from queued to an end.
TO_SUMMARIZED = ("downloading", "parsing", "summarizing", "summarized")
TO_PARSED = ("downloading", "parsing", "parsed")
TO_FAILED = ("downloading", "failed")

State = tuple[str, str, int]  # lifecycle, parse_status, version


def insert_sessions(dsn: str, owner: str, ids: Iterable[str]) -> None:
    """Queued sessions, as an upload leaves them."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO sessions (owner, id, transcript_key, transcript_size, transcript_sha256)"
            " VALUES (%s, %s, 'k', 1, %s)",
            [(owner, sid, SHA) for sid in ids],
        )


def parse_status_for(lifecycle: str) -> str:
    if lifecycle in ("parsed", "summarizing", "summarized"):
        return "ok"
    return "failed" if lifecycle == "failed" else "pending"


async def advance(
    conn: psycopg.AsyncConnection[Any], owner: str, ids: Sequence[str], lifecycle: str
) -> None:
    """One committed step of the worker: `ids` of `owner` move to `lifecycle`."""
    await conn.execute(
        "UPDATE sessions SET lifecycle = %s, parse_status = %s WHERE owner = %s AND id = ANY(%s)",
        (lifecycle, parse_status_for(lifecycle), owner, list(ids)),
    )


def path_for(rng: random.Random) -> tuple[str, ...]:
    return rng.choice((TO_SUMMARIZED, TO_SUMMARIZED, TO_PARSED, TO_FAILED))


async def drive(
    dsn: str,
    owner: str,
    ids: Sequence[str],
    rng: random.Random,
    *,
    pause: float = 0.0,
) -> None:
    """Play the worker: every session goes to an end along its own path, one committed step
    at a time, the sessions interleaved at random."""
    paths = {sid: list(path_for(rng)) for sid in ids}
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while paths:
            sid = rng.choice(list(paths))
            await advance(conn, owner, [sid], paths[sid].pop(0))
            if not paths[sid]:
                del paths[sid]
            if pause:
                await asyncio.sleep(rng.uniform(0, pause))


async def db_states(dsn: str, owner: str, ids: Sequence[str]) -> dict[str, State]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT id, lifecycle, parse_status, version FROM sessions"
            " WHERE owner = %s AND id = ANY(%s)",
            (owner, list(ids)),
        )
        return {sid: (lc, ps, v) for sid, lc, ps, v in await cur.fetchall()}


async def open_ws(base_url: str, token: str | None, **kwargs: Any) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await connect(websocket_url(base_url), additional_headers=headers, **kwargs)


async def send_watch(ws: ClientConnection, ids: Sequence[str]) -> None:
    await ws.send(json.dumps({"type": "watch", "session_ids": list(ids)}))


async def receive(ws: ClientConnection, guard: float = 10.0) -> dict[str, Any]:
    """The next message; `guard` only stops a hung test, it measures nothing."""
    async with asyncio.timeout(guard):
        message: dict[str, Any] = json.loads(await ws.recv())
    return message


def merge(known: dict[str, State], message: dict[str, Any]) -> None:
    """The client's rule: per id, keep the state with the higher version."""
    for sid, status in message["statuses"].items():
        state = (status["lifecycle"], status["parse_status"], status["version"])
        if sid not in known or known[sid][2] < state[2]:
            known[sid] = state
