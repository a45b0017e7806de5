"""The client side of the live stream (WS /api/sessions/watch), as an async iterator.

    async with contextlib.aclosing(watch(url, token, ids)) as updates:
        async for update in updates:
            ...

The first update after each (re)connect is a snapshot (`snapshot=True`) covering every
watched id; later ones are deltas holding only the ids whose state moved forward. States
are merged by `version`, so duplicates and reordering never show. It speaks only the wire
contract of sessionflow.protocol and never imports the server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, overload
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from sessionflow.backoff import backoff_seconds
from sessionflow.client.http import json_object
from sessionflow.protocol import (
    MAX_BATCH_IDS,
    WS_CLOSE_POLICY,
    WS_CLOSE_UNAUTHORIZED,
    ErrorMessage,
    SessionStatus,
    StatusesMessage,
    WatchMessage,
)

WATCH_PATH = "/api/sessions/watch"
# Reconnect delays: from BACKOFF_BASE doubling up to BACKOFF_MAX, with jitter.
BACKOFF_BASE = 0.5
BACKOFF_MAX = 15.0
# The client pings too (as the server does): a dead server or path shows within this, twice.
KEEPALIVE_SECONDS = 20.0
# Ids added to a running watch wait this long to be sent together.
ADD_COALESCE_SECONDS = 0.25
# Whatever a server sends is at most 500 ids per message; this leaves ample room.
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class WatchUnavailable(Exception):
    """The live stream cannot be used right now (cannot connect, or the connection dropped,
    or the server has none); polling batch-status still may."""


class WatchRejected(WatchUnavailable):
    """The server refused the request itself (over its limits, say): retrying cannot help."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(f"the server rejected the watch ({error}): {detail}")
        self.error = error
        self.detail = detail


class WatchAuthError(Exception):
    """The server refused the API token (401/403): retrying cannot help."""


@dataclass(frozen=True)
class WatchUpdate:
    statuses: dict[str, SessionStatus]
    not_found: list[str]
    snapshot: bool


class WatchSet(Sequence[str]):
    """The ids a watch follows. add() more while it runs: each addition is sent as a further
    watch message on the open connection (the protocol answers each with a snapshot of its
    ids), and a reconnect watches them all."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids = list(dict.fromkeys(ids))
        self._known = set(self._ids)
        self.added = asyncio.Event()

    def add(self, ids: Iterable[str]) -> None:
        for sid in ids:
            if sid not in self._known:
                self._known.add(sid)
                self._ids.append(sid)
                self.added.set()

    def __contains__(self, sid: object) -> bool:
        return sid in self._known

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        return self._ids[index]


def websocket_url(base_url: str) -> str:
    """http(s)://host/prefix -> ws(s)://host/prefix/api/sessions/watch"""
    parts = urlsplit(base_url.strip())
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    scheme = schemes.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {base_url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + WATCH_PATH, "", ""))


def newer(current: SessionStatus | None, candidate: SessionStatus) -> bool:
    """Whether `candidate` moves a session forward from `current` (by version)."""
    if current is None:
        return True
    return _version(candidate) > _version(current)


def _version(status: SessionStatus) -> int:
    return -1 if status.version is None else status.version


class _Dropped(Exception):
    """One connection failed in a way a later one may not: worth retrying."""


async def watch(
    base_url: str,
    token: str,
    session_ids: Sequence[str],
    *,
    reconnect: bool = True,
    connect_timeout: float = 10.0,
) -> AsyncGenerator[WatchUpdate]:
    """Yield the states of `session_ids` as they change, until the caller stops iterating.

    With reconnect=True a lost connection is re-opened with backoff and resubscribed, and the
    fresh snapshot is trusted. With reconnect=False, not being able to connect or losing the
    connection raises WatchUnavailable. Either way a refused token raises WatchAuthError at
    once, and a request the server rejects raises WatchRejected (a WatchUnavailable).

    Given a WatchSet, ids added to it while this runs are watched too."""
    ids = session_ids if isinstance(session_ids, WatchSet) else WatchSet(session_ids)
    if not ids:
        raise ValueError("watch needs at least one session id")
    url = websocket_url(base_url)
    attempt = 0
    while True:
        try:
            async with aclosing(_connection(url, token, ids, connect_timeout)) as updates:
                async for update in updates:
                    if update.snapshot:
                        attempt = 0
                    yield update
        except _Dropped as exc:
            if not reconnect:
                raise WatchUnavailable(str(exc)) from exc.__cause__
        attempt += 1
        await asyncio.sleep(backoff_seconds(attempt, base=BACKOFF_BASE, cap=BACKOFF_MAX))


async def _connection(
    url: str, token: str, ids: WatchSet, connect_timeout: float
) -> AsyncGenerator[WatchUpdate]:
    """One connection: subscribe, yield its snapshot, then its deltas; raise _Dropped when it
    ends in a way worth retrying."""
    try:
        websocket = await connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=connect_timeout,
            max_size=_MAX_MESSAGE_BYTES,
            ping_interval=KEEPALIVE_SECONDS,
            ping_timeout=KEEPALIVE_SECONDS,
            # Small, frequent messages gain little from deflate, and its state would cost the
            # server about 45 KiB per connection (bench/fanout.py: ~100 KiB -> ~55 KiB).
            compression=None,
        )
    except InvalidStatus as exc:
        raise _refusal(url, exc) from exc
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise _Dropped(f"cannot connect to {url}: {exc or type(exc).__name__}") from exc
    try:
        async with websocket, aclosing(_session(websocket, ids, connect_timeout)) as updates:
            async for update in updates:
                yield update
    except ConnectionClosed as exc:
        raise _closed(url, exc) from exc
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise _Dropped(f"the live stream at {url} failed: {exc or type(exc).__name__}") from exc


async def _send_watch(websocket: ClientConnection, ids: Sequence[str]) -> None:
    for start in range(0, len(ids), MAX_BATCH_IDS):
        request = WatchMessage(type="watch", session_ids=list(ids[start : start + MAX_BATCH_IDS]))
        await websocket.send(request.model_dump_json())


async def _session(
    websocket: ClientConnection, ids: WatchSet, snapshot_timeout: float
) -> AsyncGenerator[WatchUpdate]:
    ids.added.clear()
    first = list(ids)
    await _send_watch(websocket, first)

    # The snapshot comes in parts (one per watch message), maybe with deltas of ids already
    # answered in between: gather until every id is covered.
    watched = set(first)
    waiting = set(first)
    fresh: dict[str, SessionStatus] = {}
    while waiting:
        try:
            async with asyncio.timeout(snapshot_timeout):
                message = await _receive(websocket)
        except TimeoutError:
            raise _Dropped("the server did not answer the watch in time") from None
        for sid, status in message.statuses.items():
            if sid in watched and newer(fresh.get(sid), status):
                fresh[sid] = status
        waiting.difference_update(message.statuses, message.not_found)
    yield WatchUpdate(
        statuses=dict(fresh), not_found=[sid for sid in first if sid not in fresh], snapshot=True
    )

    # Then deltas, and the answers to the watch messages of ids added meanwhile (their
    # snapshots, merged like deltas: nothing was known of them).
    known = fresh
    receiving = asyncio.ensure_future(_receive(websocket))
    adding = asyncio.ensure_future(ids.added.wait())
    try:
        while True:
            await asyncio.wait({receiving, adding}, return_when=asyncio.FIRST_COMPLETED)
            if adding.done():
                # A moment to gather what else arrives: an upload burst goes in one message
                # (each is answered with a snapshot query).
                await asyncio.sleep(ADD_COALESCE_SECONDS)
                ids.added.clear()
                more = list(ids[len(watched) :])
                watched.update(more)
                await _send_watch(websocket, more)
                adding = asyncio.ensure_future(ids.added.wait())
            if not receiving.done():
                continue
            message = receiving.result()
            receiving = asyncio.ensure_future(_receive(websocket))
            changed = {
                sid: status
                for sid, status in message.statuses.items()
                if sid in watched and newer(known.get(sid), status)
            }
            missing = [sid for sid in message.not_found if sid in watched and sid not in known]
            if changed or missing:
                known.update(changed)
                yield WatchUpdate(statuses=changed, not_found=missing, snapshot=False)
    finally:
        for task in (receiving, adding):
            task.cancel()
            task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a task's outcome as seen: it was given up, whatever it ended with."""
    if not task.cancelled():
        task.exception()


async def _receive(websocket: ClientConnection) -> StatusesMessage:
    raw = await websocket.recv()
    try:
        data: Any = json.loads(raw)
        if isinstance(data, dict) and data.get("type") == "error":
            error = ErrorMessage.model_validate(data)
            raise WatchRejected(error.error, error.detail)
        return StatusesMessage.model_validate(data)
    except (ValueError, ValidationError) as exc:
        # Not what this client understands (another version of the server?): polling is safer.
        raise WatchRejected("bad_message", f"unexpected message from the server: {exc}") from exc


def _refusal(url: str, exc: InvalidStatus) -> Exception:
    status = exc.response.status_code
    body = json_object(exc.response.body)
    if status == 401 or (status == 403 and body.get("error") == "unauthorized"):
        detail = body.get("detail") or f"HTTP {status}"
        return WatchAuthError(f"the server at {url} refused the API token ({detail})")
    if status in (408, 425, 429) or status >= 500:
        return _Dropped(f"the live stream at {url} answered HTTP {status}")
    # A bare 403/404 is what a server without the live stream (or a proxy) answers.
    return WatchRejected("unavailable", f"no live stream at {url} (HTTP {status})")


# What a close code means, for a person reading why the live stream stopped.
_CLOSE_REASONS = {
    1000: "the server ended the stream",
    1001: "the server is shutting down",
    1006: "the connection was cut",
    1011: "the server hit a problem",
    1012: "the server restarted",
    1013: "the server is overloaded; try again later",
}


def _closed(url: str, exc: ConnectionClosed) -> Exception:
    code = exc.rcvd.code if exc.rcvd is not None else None
    reason = exc.rcvd.reason if exc.rcvd is not None else ""
    if code == WS_CLOSE_UNAUTHORIZED:
        return WatchAuthError(f"the server at {url} refused the API token (it was revoked?)")
    if code == WS_CLOSE_POLICY:
        return WatchRejected(reason or "policy", "the server refused what the client asked")
    what = _CLOSE_REASONS.get(code or 1006, reason or "the connection closed")
    return _Dropped(f"the live stream at {url} stopped: {what}")
