"""WS /api/sessions/watch: the live lifecycle stream.

The client sends `watch` messages (protocol.WatchMessage); each is answered with a snapshot
of those ids, then their changes follow as deltas, coalesced per connection. Each connection
reads its client's requests (and reads their snapshots) in the ASGI call's task; what the hub
offers it is written by a task that runs only while something waits to be sent (`_Writer`).

Bounds, whatever the client sends or fails to read:
- One answer at most waits to be sent: the connection reads its client's next request only once
  the writer has taken the last answer. A client that sends without reading is held back by
  TCP, not queued in memory, and costs one snapshot query per answer it takes.
- A client that stops reading is dropped once a write has waited ws_ping_interval_seconds for
  it, as the keepalive drops one that stops answering pings after as long again. Every other
  write to the client (an error, a close) is bounded by the same window.
- A message is at most settings.ws_message_limit long (by default what the largest valid one
  needs), and its ids are counted before anything else about them is validated.

Refusals: a missing, unknown or revoked token gets HTTP 403 before the handshake completes
(503 if the database cannot tell). A message the protocol does not allow gets an `error`
message, then close code 1008: `message_too_large` (longer than ws_message_limit, refused by
its length alone; `sessionflow serve` has uvicorn cut such a frame even before it is read,
with close 1009 and no message), `bad_message` (not JSON text, not an object, no type, or not
the shape of a watch message), `unknown_type`, `too_many_ids` (over max_batch_ids in one
message), `invalid_id` (over max_id_length, or holding NUL), `watch_limit` (over
ws_max_watched on one connection). A snapshot the database cannot give closes with 1011:
the client retries. Revoking (or deleting) the token a connection was opened with closes it
with 4401 (protocol.WS_CLOSE_UNAUTHORIZED), with no `error` message first."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from dataclasses import dataclass

from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from sessionflow.logs import set_owner
from sessionflow.protocol import WS_CLOSE_POLICY, ErrorMessage, WatchMessage, lookup_id_problem
from sessionflow.queries import Q
from sessionflow.server.deps import AppState, bearer_token
from sessionflow.server.live import DatabaseUnavailable, LiveHub, Subscription
from sessionflow.settings import Settings
from sessionflow.tokens import hash_token

log = logging.getLogger(__name__)

WATCH_PATH = "/api/sessions/watch"
# Standard close code for "the server hit a problem, come back later".
_CLOSE_INTERNAL = 1011


@dataclass(frozen=True)
class Violation:
    error: str
    detail: str


@dataclass(frozen=True)
class Ending:
    """How the writer ended a connection: a close code and reason, or code None when the
    client does not read (a close frame would never reach it)."""

    code: int | None
    reason: str


async def watch_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """The route as a bare ASGI app, which the app calls for this path before any of FastAPI's
    routing and middleware (see sessionflow.server.app.App): whatever those keep per request
    would be kept as long as each connection lives, ~10 KiB apiece."""
    await watch_sessions(WebSocket(scope, receive, send))


async def watch_sessions(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.sessionflow
    hub: LiveHub = websocket.app.state.live_hub
    subscription = await _authenticate(websocket, state.pool, hub)
    if subscription is None:
        return
    try:
        set_owner(subscription.owner)
        await websocket.accept()
        # The handshake's headers are not read again: not kept for the life of the connection.
        websocket.scope["headers"] = []
        await _serve(websocket, hub, subscription, state.settings)
    finally:
        hub.unsubscribe(subscription)


async def _authenticate(
    websocket: WebSocket, pool: AsyncConnectionPool, hub: LiveHub
) -> Subscription | None:
    """Check the bearer token and subscribe its connection; None when refused (answered)."""
    # Not websocket.headers, which would keep a copy of them for the life of the connection.
    token = bearer_token(Headers(scope=websocket.scope).get("authorization"))
    epoch = hub.token_epoch
    identity = await _identify_or_deny(websocket, pool, token)
    if identity is None:
        return None
    token_id, owner = identity
    subscription = hub.subscribe(owner, token_id)
    if hub.token_epoch == epoch:
        return subscription
    # A revocation was heard (or LISTEN came back) while the token was checked: it may have
    # been this token's, before there was a connection to close. Check again: whatever is
    # revoked from now on finds the subscription.
    confirmed = False
    try:
        confirmed = await _identify_or_deny(websocket, pool, token) is not None
    finally:
        if not confirmed:
            hub.unsubscribe(subscription)
    return subscription if confirmed else None


async def _identify_or_deny(
    websocket: WebSocket, pool: AsyncConnectionPool, token: str | None
) -> tuple[str, str] | None:
    """(token id, owner) of an active token; None once the handshake is refused."""
    try:
        identity = await _identify(pool, token)
    except Exception as exc:  # the database, not the token: say "later", never "forbidden"
        log.warning("watch: cannot check a token (%s)", type(exc).__name__)
        await _deny(websocket, 503, "unavailable", "the database is not answering; retry later")
        return None
    if identity is None:
        detail = (
            "the API token is unknown or revoked"
            if token
            else "send an API token as 'Authorization: Bearer <token>'"
        )
        await _deny(websocket, 403, "unauthorized", detail)
    return identity


async def _identify(pool: AsyncConnectionPool, token: str | None) -> tuple[str, str] | None:
    """(token id, owner) of an active token, or None."""
    if token is None:
        return None
    async with pool.connection() as conn:
        cur = await conn.execute(Q.token_identity, {"token_hash": hash_token(token)})
        row = await cur.fetchone()
    return (str(row[0]), str(row[1])) if row else None


async def _serve(
    websocket: WebSocket, hub: LiveHub, subscription: Subscription, settings: Settings
) -> None:
    """Serve the client's requests in this task (the ASGI call's) while a writer sends what
    the hub offers, in a task of its own only while there is something to send."""
    window = settings.ws_ping_interval_seconds
    writer = _Writer(websocket, hub, subscription, settings)
    try:
        try:
            violation = await _receive_loop(websocket, hub, subscription, settings)
        except asyncio.CancelledError:
            ending = writer.ending
            task = asyncio.current_task()
            if ending is _WRITING or (task is not None and task.uncancel() > 0):
                raise  # not the writer's: the server is stopping
            await writer.stop()
            await _end(websocket, ending, window)
            return
        except DatabaseUnavailable as exc:
            await writer.stop()
            log.warning("watch: cannot read a snapshot (%s)", exc)
            await _close(
                websocket, _CLOSE_INTERNAL, "the database is not answering; reconnect", window
            )
            return
        except Exception:
            await writer.stop()
            log.exception("watch: the receiver failed")
            await _close(websocket, _CLOSE_INTERNAL, "internal error", window)
            return
        await writer.stop()
        if violation is not None:
            await _refuse(websocket, violation, window)
    finally:
        await writer.stop()


async def _end(websocket: WebSocket, ending: Ending | None, window: float) -> None:
    """End the connection as the writer found it must end."""
    if ending is None:
        return  # the client is gone
    if ending.code is None:
        # Nothing more can be written to it: leave, and let the server close the socket.
        log.info("watch: dropping a client: %s", ending.reason)
    else:
        await _close(websocket, ending.code, ending.reason, window)


async def _refuse(websocket: WebSocket, violation: Violation, window: float) -> None:
    message = ErrorMessage(error=violation.error, detail=violation.detail)
    try:
        async with asyncio.timeout(window):
            await websocket.send_text(message.model_dump_json())
    except (WebSocketDisconnect, RuntimeError, TimeoutError):
        return  # gone, or not reading: a close frame would not reach it either
    await _close(websocket, WS_CLOSE_POLICY, violation.error, window)


async def _close(websocket: WebSocket, code: int, reason: str, window: float) -> None:
    """Close, unless the client is gone or has not read for `window` seconds."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, TimeoutError):
        async with asyncio.timeout(window):
            await websocket.close(code, reason[:120])


async def _deny(websocket: WebSocket, status: int, error: str, detail: str) -> None:
    """Refuse the handshake with an HTTP answer (and a body saying why, where the server
    supports it; otherwise a bare close, which servers turn into 403)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = {"error": error, "detail": detail}
        headers = {"WWW-Authenticate": "Bearer"} if status == 403 else None
        await websocket.send_denial_response(JSONResponse(body, status, headers=headers))
    elif status == 403:
        await websocket.close(WS_CLOSE_POLICY)
    else:
        await websocket.accept()
        await websocket.close(_CLOSE_INTERNAL, detail[:120])


# The writer has not ended the connection (its `ending` until it does).
_WRITING = Ending(None, "")


class _Writer:
    """The writing side of one connection. A task of its own runs only while something waits
    to be sent: it waits the coalescing window (unless an answer or the closing waits), sends
    what the subscription holds, and ends once nothing more is due. An idle connection holds
    no task and no frame for it, which is what 10,000 watchers multiply. When the connection
    must end (the hub closes it, the client is gone or does not read), the writer says how in
    `ending` and cancels the connection's task, which ends it."""

    __slots__ = (
        "_coalesce",
        "_context",
        "_hub",
        "_main",
        "_subscription",
        "_task",
        "_websocket",
        "_window",
        "ending",
    )

    def __init__(
        self, websocket: WebSocket, hub: LiveHub, subscription: Subscription, settings: Settings
    ) -> None:
        self._websocket = websocket
        self._hub = hub
        self._subscription = subscription
        self._coalesce = settings.ws_coalesce_seconds
        self._window = settings.ws_ping_interval_seconds
        self._main = asyncio.current_task()
        # The connection's context (its owner, for the log lines), whoever calls `due`.
        self._context = contextvars.copy_context()
        self._task: asyncio.Task[None] | None = None
        self.ending: Ending | None = _WRITING
        subscription.on_due = self.due
        if subscription.due:
            self.due()

    def due(self) -> None:
        """Something waits to be sent: start writing, unless a write is under way (it sends
        whatever is due before it ends)."""
        if self._task is None and self.ending is _WRITING:
            self._task = asyncio.get_running_loop().create_task(
                self._write(), context=self._context
            )

    async def stop(self) -> None:
        """No more writing: what is under way is cancelled."""
        self._subscription.on_due = None
        if self.ending is _WRITING:
            self.ending = Ending(None, "stopped")
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _write(self) -> None:
        try:
            ending = await self._send_due()
        except Exception:
            log.exception("watch: the sender failed")
            ending = Ending(_CLOSE_INTERNAL, "internal error")
        finally:
            self._task = None
        if ending is _WRITING or self.ending is not _WRITING:
            return
        self.ending = ending
        if self._main is not None:
            self._main.cancel()

    async def _send_due(self) -> Ending | None:
        """Send until nothing is due (_WRITING), the client is gone (None) or the connection
        must end."""
        subscription = self._subscription
        try:
            while subscription.due:
                # Deltas wait a moment to be coalesced; an answer to a request goes at once.
                if (
                    self._coalesce > 0
                    and subscription.closing is None
                    and not subscription.snapshot_waiting
                ):
                    await asyncio.sleep(self._coalesce)
                # Cleared before taking, with no await between: whatever the hub offers after
                # this is due again.
                subscription.due = False
                if subscription.closing is not None:
                    return Ending(*subscription.closing)
                notified_at, subscription.notified_at = subscription.notified_at, None
                await _send_taken(self._websocket, subscription, self._window)
                self._hub.sent(notified_at)
        except TimeoutError:
            return Ending(None, f"it has read nothing for {self._window:g} s")
        except (WebSocketDisconnect, RuntimeError):
            return None  # the client is gone
        return _WRITING


async def _send_taken(websocket: WebSocket, subscription: Subscription, window: float) -> None:
    """Send what the subscription holds. A call of its own, so that the messages are let go
    once sent rather than held while the writer waits out the coalescing window."""
    messages = subscription.take_messages()
    if messages:
        # One deadline per batch, not per message: a batch is what one take found.
        async with asyncio.timeout(window):
            for text in messages:
                await websocket.send_text(text)


async def _receive_loop(
    websocket: WebSocket, hub: LiveHub, subscription: Subscription, settings: Settings
) -> Violation | None:
    """Serve the client's requests until it leaves (None) or breaks the protocol."""
    while True:
        # The last answer must be on its way before the next request is read.
        await subscription.drained()
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is None:
            return Violation("bad_message", "send JSON text frames, not binary ones")
        request = parse_request(text, subscription, settings)
        if isinstance(request, Violation):
            return request
        hub.register(subscription, request)
        await hub.snapshot(subscription, request)
        # Not held while waiting for the next request: at 10,000 connections, each one's last
        # request would be ~1 KiB apiece.
        del message, text, request


def parse_request(
    text: str, subscription: Subscription, settings: Settings
) -> list[str] | Violation:
    """The ids a message asks to watch, or what is wrong with it. The cheap checks come
    first: the length before any parsing, the count of ids before their validation."""
    limit = settings.ws_message_limit
    if len(text) > limit:  # characters: never more than the bytes the frame took
        return Violation(
            "message_too_large",
            f"a message of {len(text)} characters; the limit is {limit} bytes (at most "
            f"{settings.max_batch_ids} ids per watch message)",
        )
    try:
        data = json.loads(text)
    except ValueError:
        return Violation("bad_message", "the message is not valid JSON")
    if not isinstance(data, dict):
        return Violation("bad_message", "the message must be a JSON object")
    kind = data.get("type")
    if kind != "watch":
        if kind is None:
            return Violation("bad_message", "the message has no 'type'")
        return Violation("unknown_type", f"unknown message type {str(kind)[:40]!r}; send 'watch'")
    listed = data.get("session_ids")
    if isinstance(listed, list) and len(listed) > settings.max_batch_ids:
        return Violation(
            "too_many_ids",
            f"{len(listed)} session ids in one watch message; send 1 to {settings.max_batch_ids}",
        )
    try:
        request = WatchMessage.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "message"
        return Violation("bad_message", f"{where}: {first['msg']}")
    for sid in request.session_ids:
        problem = lookup_id_problem(sid, settings.max_id_length)
        if problem is not None:
            return Violation("invalid_id", f"session id {sid[:40]!r}... {problem}")
    ids = list(dict.fromkeys(request.session_ids))
    watched = subscription.watched
    total = len(watched) + sum(1 for sid in ids if sid not in watched)
    if total > settings.ws_max_watched:
        return Violation(
            "watch_limit",
            f"this would watch {total} sessions on one connection; the limit is "
            f"{settings.ws_max_watched}",
        )
    return ids
