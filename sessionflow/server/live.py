"""The live hub: ONE `LISTEN session_lifecycle` connection per server process, fanned out
in-process to the WebSocket subscriptions that watch each (owner, id).

NOTIFY only wakes; the table is the truth. A subscription is answered with a snapshot read
after its watch is registered, and after every (re)connect of the LISTEN connection each
subscription gets a fresh read of its watched, non-terminal ids. Every state carries the
row's `version`, and whatever arrives is merged by keeping the higher one, so order and
duplicates do not matter.

The hub never waits on a client: delivering a notification writes into the subscription's
buffer (latest state per id) and sets an event; each connection's own sender task drains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import psycopg
from psycopg_pool import AsyncConnectionPool

from sessionflow.backoff import backoff_seconds
from sessionflow.listen import FIRST_RETRY_SECONDS, ListenLink
from sessionflow.logs import first_line
from sessionflow.metrics import Metrics
from sessionflow.protocol import MAX_BATCH_IDS, TERMINAL
from sessionflow.queries import Q

log = logging.getLogger(__name__)

CHANNEL = "session_lifecycle"
APPLICATION_NAME = "sessionflow-live"
# Ids per snapshot query and per message the server sends.
QUERY_CHUNK = 1000
MESSAGE_CHUNK = MAX_BATCH_IDS


class LiveState(NamedTuple):
    version: int
    lifecycle: str
    parse_status: str


def encode_statuses(statuses: dict[str, LiveState], not_found: Sequence[str] = ()) -> str:
    """A `statuses` message (protocol.StatusesMessage), built by hand: it is the hot path."""
    return json.dumps(
        {
            "type": "statuses",
            "statuses": {
                sid: {
                    "lifecycle": s.lifecycle,
                    "parse_status": s.parse_status,
                    "version": s.version,
                }
                for sid, s in statuses.items()
            },
            "not_found": list(not_found),
        },
        separators=(",", ":"),
    )


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Snapshot(NamedTuple):
    ids: list[str]
    rows: dict[str, LiveState]


class Subscription:
    """One WebSocket connection's view: what it watches, what it was last sent, and what is
    waiting to be sent. Memory is bounded by the number of watched ids, never by the rate of
    change: the buffer keeps one state per id, the one with the highest version."""

    __slots__ = (
        "_buffer",
        "_pending",
        "_sent",
        "_snapshots",
        "notified_at",
        "owner",
        "wake",
        "watched",
    )

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.watched: set[str] = set()
        self.wake = asyncio.Event()
        # Ids whose snapshot is not sent yet: their deltas wait, so that the first answer
        # about an id is its snapshot.
        self._pending: set[str] = set()
        self._buffer: dict[str, LiveState] = {}
        self._sent: dict[str, LiveState] = {}
        self._snapshots: deque[_Snapshot] = deque()
        # When the hub received the oldest NOTIFY whose change waits in the buffer (metrics).
        self.notified_at: float | None = None

    @property
    def held(self) -> int:
        """States waiting to be sent: never more than the ids watched."""
        return len(self._buffer)

    def expect(self, session_id: str) -> None:
        """Watch `session_id`; its deltas wait until its snapshot is taken for sending."""
        self.watched.add(session_id)
        self._pending.add(session_id)

    def offer(self, session_id: str, state: LiveState, notified_at: float | None = None) -> None:
        """Called by the hub: keep `state` if it is newer than anything held or sent."""
        sent = self._sent.get(session_id)
        if sent is not None and sent.version >= state.version:
            return
        held = self._buffer.get(session_id)
        if held is None or held.version < state.version:
            self._buffer[session_id] = state
            if self.notified_at is None:
                self.notified_at = notified_at
            self.wake.set()

    def add_snapshot(self, ids: list[str], rows: dict[str, LiveState]) -> None:
        self._snapshots.append(_Snapshot(ids, rows))
        self.wake.set()

    def unfinished(self) -> list[str]:
        """Watched ids last seen in a non-terminal state, or not seen at all."""
        return [
            sid
            for sid in self.watched
            if (sent := self._sent.get(sid)) is None or sent.lifecycle not in TERMINAL
        ]

    def take_messages(self) -> list[str]:
        """Everything ready to send, as encoded messages: snapshots first (each merged with
        any newer buffered state), then the buffered deltas of ids already answered."""
        messages: list[str] = []
        while self._snapshots:
            snapshot = self._snapshots.popleft()
            statuses: dict[str, LiveState] = {}
            not_found: list[str] = []
            for sid in snapshot.ids:
                self._pending.discard(sid)
                state = _newest(
                    snapshot.rows.get(sid), self._buffer.pop(sid, None), self._sent.get(sid)
                )
                if state is None:
                    not_found.append(sid)
                else:
                    self._sent[sid] = state
                    statuses[sid] = state
            messages.append(encode_statuses(statuses, not_found))

        ready = [sid for sid in self._buffer if sid not in self._pending]
        deltas: dict[str, LiveState] = {}
        for sid in ready:
            state = self._buffer.pop(sid)
            sent = self._sent.get(sid)
            if sent is None or sent.version < state.version:
                self._sent[sid] = state
                deltas[sid] = state
        items = list(deltas)
        for chunk in _chunks(items, MESSAGE_CHUNK):
            messages.append(encode_statuses({sid: deltas[sid] for sid in chunk}))
        return messages


def _newest(*states: LiveState | None) -> LiveState | None:
    best: LiveState | None = None
    for state in states:
        if state is not None and (best is None or state.version > best.version):
            best = state
    return best


class DatabaseUnavailable(Exception):
    """A snapshot could not be read; the connection should be closed so its client retries."""


class LiveHub:
    def __init__(
        self,
        dsn: str,
        pool: AsyncConnectionPool,
        *,
        ping_interval: float,
        connect_timeout: float,
        reconnect_max: float = 5.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self._pool = pool
        self._reconnect_max = reconnect_max
        self._index: dict[tuple[str, str], set[Subscription]] = {}
        self._subscriptions: set[Subscription] = set()
        self._supervisor: asyncio.Task[None] | None = None
        # Its `sessions` and `notifications` count LISTENs established and notifications
        # received (observability, tests).
        self.link = ListenLink(
            dsn,
            name="hub",
            application_name=APPLICATION_NAME,
            listen_sql=Q.live_listen,
            on_notify=self._dispatch,
            on_listening=self._resync,
            ping_seconds=ping_interval,
            connect_timeout=connect_timeout,
            reconnect_max_seconds=reconnect_max,
            metrics=metrics,
        )
        if metrics is not None:
            metrics.count_open_connections(lambda: len(self._subscriptions))

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, wait: float | None = None) -> None:
        """Start listening in the background; wait up to `wait` seconds for the first LISTEN
        (not being up yet is no error: /readyz says so, and clients are resynced once up)."""
        self._supervisor = asyncio.create_task(self.link.run(), name="live-hub")
        self._supervisor.add_done_callback(self._supervisor_ended)
        if wait:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.link.up.wait()

    async def stop(self) -> None:
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def subscriptions(self) -> frozenset[Subscription]:
        """The connections subscribed now (observability, tests)."""
        return frozenset(self._subscriptions)

    def is_ready(self) -> bool:
        """LISTEN is established, and the task that holds it is alive."""
        task = self._supervisor
        return self.link.listening and task is not None and not task.done()

    def _supervisor_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the live hub's supervisor died", exc_info=task.exception())

    # --- subscriptions ------------------------------------------------------------------

    def subscribe(self, owner: str) -> Subscription:
        subscription = Subscription(owner)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        owner = subscription.owner
        for sid in subscription.watched:
            key = (owner, sid)
            subs = self._index.get(key)
            if subs is not None:
                subs.discard(subscription)
                if not subs:
                    del self._index[key]
        subscription.watched.clear()

    def register(self, subscription: Subscription, ids: Iterable[str]) -> None:
        """Start routing changes of `ids` to the subscription. Done BEFORE its snapshot is
        read, so that a change committed meanwhile is in the snapshot or delivered after."""
        owner = subscription.owner
        for sid in ids:
            subscription.expect(sid)
            self._index.setdefault((owner, sid), set()).add(subscription)

    async def snapshot(self, subscription: Subscription, ids: list[str]) -> None:
        """Read the current state of registered ids and queue it as their snapshot."""
        try:
            rows = await self._read(subscription.owner, ids)
        except psycopg.Error as exc:
            raise DatabaseUnavailable(first_line(exc)) from exc
        subscription.add_snapshot(ids, rows)

    async def _read(self, owner: str, ids: Sequence[str]) -> dict[str, LiveState]:
        rows: dict[str, LiveState] = {}
        async with self._pool.connection() as conn:
            for chunk in _chunks(ids, QUERY_CHUNK):
                cur = await conn.execute(
                    Q.live_snapshot, {"owner": owner, "ids": list(chunk)}, prepare=True
                )
                for sid, lifecycle, parse_status, version in await cur.fetchall():
                    rows[sid] = LiveState(version, lifecycle, parse_status)
        return rows

    # --- fan-out ------------------------------------------------------------------------

    def deliver(
        self, owner: str, session_id: str, state: LiveState, notified_at: float | None = None
    ) -> None:
        subs = self._index.get((owner, session_id))
        if subs:
            for subscription in subs:
                subscription.offer(session_id, state, notified_at)

    def sent(self, notified_at: float | None) -> None:
        """A connection wrote what it took while `notified_at` was its oldest notification."""
        if notified_at is not None and self.metrics is not None:
            self.metrics.notify_send_latency.observe(time.monotonic() - notified_at)

    def _dispatch(self, payload: str) -> None:
        received = time.monotonic()
        try:
            data: dict[str, Any] = json.loads(payload)
            owner, sid = str(data["owner"]), str(data["id"])
            state = LiveState(
                int(data["version"]), str(data["lifecycle"]), str(data["parse_status"])
            )
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed %s notification: %.200r", CHANNEL, payload)
            return
        self.deliver(owner, sid, state, received)

    async def _resync(self) -> None:
        """Feed every subscription the current state of its watched, non-terminal ids, until
        it succeeds (it is cancelled if the LISTEN connection is lost meanwhile)."""
        if not self._subscriptions:
            return
        failures = 0
        while True:
            try:
                await self._resync_once()
                return
            except psycopg.Error as exc:
                log.warning("live hub: resync failed (%s); retrying", first_line(exc))
            failures += 1
            await asyncio.sleep(
                backoff_seconds(failures, base=FIRST_RETRY_SECONDS, cap=self._reconnect_max)
            )

    async def _resync_once(self) -> None:
        by_owner: dict[str, set[str]] = {}
        for subscription in list(self._subscriptions):
            by_owner.setdefault(subscription.owner, set()).update(subscription.unfinished())
        count = 0
        for owner, ids in by_owner.items():
            if not ids:
                continue
            for sid, state in (await self._read(owner, sorted(ids))).items():
                self.deliver(owner, sid, state)
            count += len(ids)
        log.info("live hub: resynced %d watched ids of %d owners", count, len(by_owner))
