"""What the tests of misbehaving live-stream clients share: a WebSocket client made by hand on a
plain socket (it sends frames of any size and reads only when told to), the uvicorn options
`sessionflow serve` runs with, and an outage of the hub's LISTEN connection."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql
from websockets.exceptions import ConnectionClosed

from sessionflow.server.live import APPLICATION_NAME, LiveHub
from sessionflow.server.run import websocket_options
from sessionflow.settings import Settings
from tests.helpers import LiveServer

GUARD = 30.0  # stops a hung test; measures nothing


def serve_like_sessionflow(server: LiveServer, settings: Settings) -> LiveServer:
    """Configure a LiveServer's uvicorn for WebSockets as `sessionflow serve` does (frame
    limit, keepalive), before it starts."""
    for name, value in websocket_options(settings).items():
        setattr(server.server.config, name, value)
    return server


def hub_of(server: LiveServer) -> LiveHub:
    hub: LiveHub = server.server.config.app.state.live_hub
    return hub


def masked_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final client frame (masked, as a client must)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    body = (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")
    return head + mask + body


def watch_text(ids: Sequence[str]) -> str:
    return json.dumps({"type": "watch", "session_ids": list(ids)})


class RawWebSocket:
    """A WebSocket client by hand: it never reads, nor answers a ping, unless asked to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    @classmethod
    async def connect(cls, base_url: str, token: str, *, rcvbuf: int | None = None) -> RawWebSocket:
        port = int(base_url.rsplit(":", 1)[1])
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(
            sock,
            (
                "GET /api/sessions/watch HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
            ).encode(),
        )
        client = cls(sock)
        head = await client._read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return client

    async def send_text(self, text: str) -> None:
        await self.send_bytes(masked_frame(text.encode()))

    async def send_bytes(self, data: bytes) -> None:
        """Send data as it is (frames made beforehand, with masked_frame)."""
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def close_code(self, guard: float = GUARD) -> int | None:
        """Read (and drop) messages until the server's close frame: its code; None when the
        connection ends without one."""
        async with asyncio.timeout(guard):
            while True:
                try:
                    opcode, payload = await self._frame()
                except (ConnectionError, EOFError):
                    return None
                if opcode == 0x8:
                    return int.from_bytes(payload[:2], "big") if payload else 1005

    async def _frame(self) -> tuple[int, bytes]:
        head = await self._read(2)
        opcode, n = head[0] & 0x0F, head[1] & 0x7F
        if n == 126:
            n = int.from_bytes(await self._read(2), "big")
        elif n == 127:
            n = int.from_bytes(await self._read(8), "big")
        return opcode, await self._read(n)

    async def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            await self._fill()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    async def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            await self._fill()
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    async def _fill(self) -> None:
        chunk = await asyncio.get_running_loop().sock_recv(self.sock, 1 << 16)
        if not chunk:
            raise EOFError("the server closed the connection")
        self._buffer += chunk

    def close(self) -> None:
        self.sock.close()


def allow_connections(admin_dsn: str, database: str, allowed: bool) -> None:
    """Refuse (or allow again) every new connection to `database`, the hub's included."""
    statement = sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
        sql.Identifier(database), sql.Literal(allowed)
    )
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(statement)


async def wait_until_listening(hub: LiveHub, sessions: int) -> None:
    """Until the hub's LISTEN connection has been established `sessions` times."""
    async with asyncio.timeout(GUARD):
        while not (hub.link.sessions >= sessions and hub.is_ready()):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@asynccontextmanager
async def listen_outage(
    db_dsn: str, pg_admin_dsn: str, hub: LiveHub
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """Cut the hub's LISTEN connection and refuse new ones for the block; yields a connection
    opened before, that changes the database while nobody listens. Waits, after the block,
    until the hub listens again."""
    sessions = hub.link.sessions
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        database = conn.info.dbname
        allow_connections(pg_admin_dsn, database, False)
        try:
            cur = await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                (APPLICATION_NAME,),
            )
            assert await cur.fetchall() == [(True,)]
            async with asyncio.timeout(GUARD):
                while hub.link.listening:  # noqa: ASYNC110 - the link has no event for this
                    await asyncio.sleep(0.02)
            yield conn
        finally:
            allow_connections(pg_admin_dsn, database, True)
    await wait_until_listening(hub, sessions + 1)


async def read_until_closed(ws: Any, guard: float = GUARD) -> int:
    """Read (and drop) everything a websockets client gets until the server closes; its
    close code."""
    try:
        async with asyncio.timeout(guard):
            while True:
                await ws.recv()
    except ConnectionClosed as closed:
        received = closed.rcvd
    assert received is not None, "the connection ended without a close frame"
    return received.code
