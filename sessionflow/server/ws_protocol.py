"""uvicorn's WebSocket protocol for `sessionflow serve`, keeping less for the life of each
connection: what 10,000 live-stream watchers multiply.

It is uvicorn's default here (websockets' sans-I/O implementation), with three things lighter
and nothing else changed:
- the handshake's request and response (their headers and all) are let go once the
  connection is accepted: nothing reads them again (~3.5 KiB a connection; the app lets the
  ASGI scope's copy of the headers go too, see sessionflow.server.routes.watch);
- the messages waiting for the app are held in a list with one waiter, not an asyncio.Queue
  (three deques, ~2 KiB): the app reads them from one task at a time;
- whether the socket takes more writes is a flag with waiters made on demand, not an
  asyncio.Event (a deque held for the life of the connection).

Frames, limits, keepalive pings and closing are uvicorn's own, untouched."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class Inbox:
    """What asyncio.Queue does for uvicorn's protocol (put_nowait, get, empty) for one reader
    at a time, holding nothing while empty."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = [item]
        else:
            self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    async def get(self) -> Any:
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("a WebSocket's messages are read from one task at a time")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items = self._items
        item = items.pop(0)
        if not items:
            self._items = None
        return item


class Gate:
    """What asyncio.Event does for uvicorn's `writable` (set, clear, is_set, wait), with its
    waiters' list made only while someone waits."""

    __slots__ = ("_open", "_waiters")

    def __init__(self) -> None:
        self._open = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        self._open = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._open = False

    async def wait(self) -> bool:
        if self._open:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters = self._waiters
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    self._waiters = None
        return True


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, less what a long-lived connection need not keep
    (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        writable = Gate()
        if self.writable.is_set():
            writable.set()
        self.writable = writable  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # Read only to answer the handshake, which is done. The request's headers are
            # emptied too: the websockets parser's frame keeps the request itself.
            request = self.request
            if request is not None:
                request.headers.clear()
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]
