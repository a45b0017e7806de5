"""WS /api/sessions/watch: the live lifecycle stream.

The client sends `watch` messages (protocol.WatchMessage); each is answered with a snapshot
of those ids, then their changes follow as deltas, coalesced per connection. Each connection
runs two tasks: a receiver (requests, snapshots) and a sender (drains the hub's buffer).

Refusals: a missing, unknown or revoked token gets HTTP 403 before the handshake completes
(503 if the database cannot tell). A message the protocol does not allow gets an `error`
message, then close code 1008: `bad_message` (not JSON text, not an object, no type, or not
the shape of a watch message), `unknown_type`, `too_many_ids` (over max_batch_ids in one
message), `invalid_id` (over max_id_length, or holding NUL), `watch_limit` (over
ws_max_watched on one connection). A snapshot the database cannot give closes with 1011:
the client retries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from sessionflow.logs import set_owner
from sessionflow.protocol import WS_CLOSE_POLICY, ErrorMessage, WatchMessage, lookup_id_problem
from sessionflow.server.deps import AppState, bearer_token, owner_of_token
from sessionflow.server.live import DatabaseUnavailable, LiveHub, Subscription
from sessionflow.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["live"])

WATCH_PATH = "/api/sessions/watch"
# Standard close code for "the server hit a problem, come back later".
_CLOSE_INTERNAL = 1011


@dataclass(frozen=True)
class Violation:
    error: str
    detail: str


@router.websocket(WATCH_PATH)
async def watch_sessions(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.sessionflow
    hub: LiveHub = websocket.app.state.live_hub
    token = bearer_token(websocket.headers.get("authorization"))
    try:
        owner = await owner_of_token(state.pool, token)
    except Exception as exc:  # the database, not the token: say "later", never "forbidden"
        log.warning("watch: cannot check a token (%s)", type(exc).__name__)
        await _deny(websocket, 503, "unavailable", "the database is not answering; retry later")
        return
    if owner is None:
        detail = (
            "the API token is unknown or revoked"
            if token
            else "send an API token as 'Authorization: Bearer <token>'"
        )
        await _deny(websocket, 403, "unauthorized", detail)
        return

    set_owner(owner)
    await websocket.accept()
    subscription = hub.subscribe(owner)
    sender = asyncio.create_task(_send_loop(websocket, hub, subscription, state.settings))
    receiver = asyncio.create_task(_receive_loop(websocket, hub, subscription, state.settings))
    try:
        await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        if receiver.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            await _finish(websocket, receiver)
        else:
            # The sender only returns when the client is gone; anything else is a bug.
            failure = None if sender.cancelled() else sender.exception()
            if failure is not None:
                log.error("watch: the sender failed", exc_info=failure)
                await _close(websocket, _CLOSE_INTERNAL, "internal error")
    finally:
        for task in (sender, receiver):
            task.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)
        hub.unsubscribe(subscription)


async def _finish(websocket: WebSocket, receiver: asyncio.Task[Violation | None]) -> None:
    try:
        violation = receiver.result()
    except DatabaseUnavailable as exc:
        log.warning("watch: cannot read a snapshot (%s)", exc)
        await _close(websocket, _CLOSE_INTERNAL, "the database is not answering; reconnect")
        return
    except Exception:
        log.exception("watch: the receiver failed")
        await _close(websocket, _CLOSE_INTERNAL, "internal error")
        return
    if violation is not None:
        message = ErrorMessage(error=violation.error, detail=violation.detail)
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await websocket.send_text(message.model_dump_json())
        await _close(websocket, WS_CLOSE_POLICY, violation.error)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
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


async def _send_loop(
    websocket: WebSocket, hub: LiveHub, subscription: Subscription, settings: Settings
) -> None:
    coalesce = settings.ws_coalesce_seconds
    try:
        while True:
            await subscription.wake.wait()
            if coalesce > 0:
                await asyncio.sleep(coalesce)
            # Cleared before taking, with no await between: whatever the hub offers after
            # this sets the event again.
            subscription.wake.clear()
            notified_at, subscription.notified_at = subscription.notified_at, None
            for text in subscription.take_messages():
                await websocket.send_text(text)
            hub.sent(notified_at)
    except (WebSocketDisconnect, RuntimeError):
        return  # the client is gone


async def _receive_loop(
    websocket: WebSocket, hub: LiveHub, subscription: Subscription, settings: Settings
) -> Violation | None:
    """Serve the client's requests until it leaves (None) or breaks the protocol."""
    while True:
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


def parse_request(
    text: str, subscription: Subscription, settings: Settings
) -> list[str] | Violation:
    """The ids a message asks to watch, or what is wrong with it."""
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
    try:
        request = WatchMessage.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "message"
        return Violation("bad_message", f"{where}: {first['msg']}")
    if len(request.session_ids) > settings.max_batch_ids:
        return Violation(
            "too_many_ids",
            f"{len(request.session_ids)} session ids in one watch message; send 1 to "
            f"{settings.max_batch_ids}",
        )
    for sid in request.session_ids:
        problem = lookup_id_problem(sid, settings.max_id_length)
        if problem is not None:
            return Violation("invalid_id", f"session id {sid[:40]!r}... {problem}")
    ids = list(dict.fromkeys(request.session_ids))
    total = len(subscription.watched.union(ids))
    if total > settings.ws_max_watched:
        return Violation(
            "watch_limit",
            f"this would watch {total} sessions on one connection; the limit is "
            f"{settings.ws_max_watched}",
        )
    return ids
