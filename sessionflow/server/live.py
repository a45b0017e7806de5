"""The live hub: ONE LISTEN connection per server process, on `session_lifecycle` (fanned out
in-process to the WebSocket subscriptions that watch each (owner, id)) and on
`api_token_revoked` (which closes the subscriptions opened with that token).

NOTIFY only wakes; the table is the truth. A subscription is answered with a snapshot read
after its watch is registered. After every (re)connect of the LISTEN connection, whatever was
missed meanwhile is read again: the tokens of open connections (a revoked one is closed), and
the state of every watched id, terminal ones included (a re-ingest may have moved one back to
queued), in chunks of (owner, id) pairs. Every state carries the row's `version`, and whatever
arrives is merged by keeping the higher one, so order and duplicates do not matter.

The hub never waits on a client: delivering a notification writes into the subscription's
buffer (latest state per id) and calls the subscription's `on_due`, with which its connection
starts a task to write it (a connection holds no task of its own for writing while it has
nothing to write).
What a subscription holds is bounded by the ids it watches, whatever its client sends or fails
to read: at most one state per id waiting, the last state sent per id, and at most one
snapshot waiting (the connection reads its client's next request only once that one is taken,
see `Subscription.drained`).

Revocation: the connections of a revoked (or deleted) token are closed with 4401, and the
hub's revocation listeners (a cache of tokens, say) are told its id; each time the hub listens
again they are told None, "forget them all", since a revocation meanwhile went unheard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, KeysView, Sequence
from typing import Any, NamedTuple, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from sessionflow.backoff import backoff_seconds
from sessionflow.listen import FIRST_RETRY_SECONDS, ListenLink
from sessionflow.logs import first_line
from sessionflow.metrics import Metrics
from sessionflow.protocol import MAX_BATCH_IDS, WS_CLOSE_UNAUTHORIZED, chunked
from sessionflow.queries import Q

log = logging.getLogger(__name__)

_T = TypeVar("_T")

CHANNEL = "session_lifecycle"
APPLICATION_NAME = "sessionflow-live"
# Ids (or tokens) per query, and ids per message the server sends.
QUERY_CHUNK = 1000
MESSAGE_CHUNK = MAX_BATCH_IDS
REVOKED = "the API token was revoked"

# Told the id of each token revoked, or None when revocations may have gone unheard.
RevocationListener = Callable[[str | None], None]


class LiveState(NamedTuple):
    version: int
    lifecycle: str
    parse_status: str


def live_state(version: int, lifecycle: str, parse_status: str) -> LiveState:
    """A state whose words are interned: every connection holding one (the last state it sent
    per id) shares the few strings of the lifecycle vocabulary instead of a copy per row."""
    return LiveState(version, sys.intern(lifecycle), sys.intern(parse_status))


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


class _Snapshot(NamedTuple):
    ids: list[str]
    rows: dict[str, LiveState]


class Subscription:
    """One WebSocket connection's view: what it watches, what it was last sent, and what is
    waiting to be sent. Memory is bounded by the number of watched ids, never by the rate of
    change nor by how many requests its client sends: the buffer keeps one state per id, the
    one with the highest version, and one snapshot at most waits to be sent."""

    __slots__ = (
        "_buffer",
        "_drained",
        "_pending",
        "_sent",
        "_snapshot",
        "closing",
        "due",
        "notified_at",
        "on_due",
        "owner",
        "token_id",
    )

    def __init__(self, owner: str, token_id: str | None = None) -> None:
        self.owner = owner
        self.token_id = token_id  # the API token the connection was opened with
        # Something waits to be taken (a state, a snapshot, the closing): set here, cleared by
        # the connection's writer as it takes. on_due is told each time it is set.
        self.due = False
        self.on_due: Callable[[], None] | None = None
        # Ids whose snapshot is not sent yet: their deltas wait, so that the first answer
        # about an id is its snapshot. None while there are none.
        self._pending: set[str] | None = None
        self._buffer: dict[str, LiveState] = {}
        # Every id watched, with the last state sent of it (None before its first, or while
        # it is not found): the watch set and what was sent in one table, not two.
        self._sent: dict[str, LiveState | None] = {}
        self._snapshot: _Snapshot | None = None
        # Made only while the connection waits for its writer to take the snapshot.
        self._drained: asyncio.Future[None] | None = None
        # When the hub received the oldest NOTIFY whose change waits in the buffer (metrics).
        self.notified_at: float | None = None
        # Set when the hub ends the connection: (close code, reason).
        self.closing: tuple[int, str] | None = None

    @property
    def watched(self) -> KeysView[str]:
        """The ids this connection watches."""
        return self._sent.keys()

    def unwatch_all(self) -> None:
        """Watch nothing more (the hub's index no longer routes its ids here)."""
        self._sent = {}

    @property
    def held(self) -> int:
        """States waiting to be sent: never more than the ids watched."""
        return len(self._buffer)

    @property
    def snapshot_waiting(self) -> bool:
        return self._snapshot is not None

    def close(self, code: int, reason: str) -> None:
        """Called by the hub: end this connection with `code` (its writer sees it at once)."""
        if self.closing is None:
            self.closing = (code, reason)
        self._signal()

    def expect(self, session_id: str) -> None:
        """Watch `session_id`; its deltas wait until its snapshot is taken for sending."""
        self._sent.setdefault(session_id, None)
        if self._pending is None:
            self._pending = {session_id}
        else:
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
            self._signal()

    def add_snapshot(self, ids: list[str], rows: dict[str, LiveState]) -> None:
        """Queue the answer to one watch request; one at most waits (see `drained`)."""
        if self._snapshot is not None:
            raise RuntimeError("a snapshot already waits to be sent: await drained() first")
        self._snapshot = _Snapshot(ids, rows)
        self._signal()

    def _signal(self) -> None:
        self.due = True
        on_due = self.on_due
        if on_due is not None:
            on_due()

    async def drained(self) -> None:
        """Return once no snapshot waits to be taken by the writer: at once, unless the client
        sends requests faster than it reads their answers. Awaited before each request is
        read, so that such a client is held back by TCP instead of queued in memory."""
        if self._snapshot is None:
            return
        self._drained = asyncio.get_running_loop().create_future()
        try:
            await self._drained
        finally:
            self._drained = None

    def take_messages(self) -> list[str]:
        """Everything ready to send, as encoded messages: the snapshot first (merged with any
        newer buffered state), then the buffered deltas of ids already answered."""
        messages: list[str] = []
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is not None:
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)
            statuses: dict[str, LiveState] = {}
            not_found: list[str] = []
            pending = self._pending
            for sid in snapshot.ids:
                if pending is not None:
                    pending.discard(sid)
                state = _newest(
                    snapshot.rows.get(sid), self._buffer.pop(sid, None), self._sent.get(sid)
                )
                if state is None:
                    not_found.append(sid)
                else:
                    self._sent[sid] = state
                    statuses[sid] = state
            messages.append(encode_statuses(statuses, not_found))
            if not pending:
                self._pending = None  # an emptied set would keep its table

        pending = self._pending
        ready = [sid for sid in self._buffer if pending is None or sid not in pending]
        deltas: dict[str, LiveState] = {}
        for sid in ready:
            state = self._buffer.pop(sid)
            sent = self._sent.get(sid)
            if sent is None or sent.version < state.version:
                self._sent[sid] = state
                deltas[sid] = state
        items = list(deltas)
        for chunk in chunked(items, MESSAGE_CHUNK):
            messages.append(encode_statuses({sid: deltas[sid] for sid in chunk}))
        if not self._buffer:
            self._buffer = {}  # likewise: what a burst of changes grew is not kept
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
        # owner -> session id -> who watches it: the one subscription, as it mostly is, or a
        # set of several (a set for every watched id would cost each ~200 bytes more).
        self._index: dict[str, dict[str, Subscription | set[Subscription]]] = {}
        self._subscriptions: set[Subscription] = set()
        self._by_token: dict[str, set[Subscription]] = {}
        self._revocation_listeners: list[RevocationListener] = []
        # Bumped by every revocation heard and every LISTEN (re)established: a connection whose
        # token was checked across a bump checks it again (see token_epoch).
        self._token_epoch = 0
        self._supervisor: asyncio.Task[None] | None = None
        # Its `sessions` and `notifications` count LISTENs established and notifications
        # received (observability, tests).
        self.link = ListenLink(
            dsn,
            name="hub",
            application_name=APPLICATION_NAME,
            listen_sql=Q.live_listen,
            on_notify=self._dispatch,
            on_listening=self._caught_up,
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

    @property
    def token_epoch(self) -> int:
        """Changes whenever a revocation is heard or LISTEN is (re)established. A token checked
        while it changed may have been revoked before its connection subscribed, where the hub
        could not close it: check it again."""
        return self._token_epoch

    def subscribe(self, owner: str, token_id: str | None = None) -> Subscription:
        """A subscription for a connection of `owner`, opened with the token `token_id`:
        revoking that token closes it."""
        subscription = Subscription(owner, token_id)
        self._subscriptions.add(subscription)
        if token_id is not None:
            self._by_token.setdefault(token_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        token_id = subscription.token_id
        if token_id is not None and (same := self._by_token.get(token_id)) is not None:
            same.discard(subscription)
            if not same:
                del self._by_token[token_id]
        owner = subscription.owner
        watching = self._index.get(owner)
        if watching is not None:
            for sid in subscription.watched:
                subs = watching.get(sid)
                if subs is subscription:
                    del watching[sid]
                elif isinstance(subs, set):
                    subs.discard(subscription)
                    if len(subs) == 1:
                        watching[sid] = next(iter(subs))
            if not watching:
                del self._index[owner]
        subscription.unwatch_all()

    def register(self, subscription: Subscription, ids: Iterable[str]) -> None:
        """Start routing changes of `ids` to the subscription. Done BEFORE its snapshot is
        read, so that a change committed meanwhile is in the snapshot or delivered after."""
        watching = self._index.setdefault(subscription.owner, {})
        for sid in ids:
            subscription.expect(sid)
            subs = watching.get(sid)
            if subs is None:
                watching[sid] = subscription
            elif isinstance(subs, set):
                subs.add(subscription)
            elif subs is not subscription:
                watching[sid] = {subs, subscription}

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
            for chunk in chunked(ids, QUERY_CHUNK):
                cur = await conn.execute(
                    Q.live_snapshot, {"owner": owner, "ids": list(chunk)}, prepare=True
                )
                for sid, lifecycle, parse_status, version in await cur.fetchall():
                    rows[sid] = live_state(version, lifecycle, parse_status)
        return rows

    # --- fan-out ------------------------------------------------------------------------

    def deliver(
        self, owner: str, session_id: str, state: LiveState, notified_at: float | None = None
    ) -> None:
        watching = self._index.get(owner)
        subs = watching.get(session_id) if watching is not None else None
        if subs is None:
            return
        if isinstance(subs, set):
            for subscription in subs:
                subscription.offer(session_id, state, notified_at)
        else:
            subs.offer(session_id, state, notified_at)

    def sent(self, notified_at: float | None) -> None:
        """A connection wrote what it took while `notified_at` was its oldest notification."""
        if notified_at is not None and self.metrics is not None:
            self.metrics.notify_send_latency.observe(time.monotonic() - notified_at)

    def on_token_revoked(self, listener: RevocationListener) -> None:
        """Call `listener(token_id)` for every token revoked or deleted from now on, and
        `listener(None)` whenever the hub listens again after a loss (revocations meanwhile
        went unheard: whatever it caches about tokens, it should forget)."""
        self._revocation_listeners.append(listener)

    def _tell_revocation(self, token_id: str | None) -> None:
        for listener in self._revocation_listeners:
            try:
                listener(token_id)
            except Exception:
                log.exception("live hub: a revocation listener failed")

    def _close_connections_of(self, token_id: str) -> None:
        subscriptions = self._by_token.get(token_id)
        if subscriptions:
            log.info("live hub: closing %d connections of a revoked token", len(subscriptions))
            for subscription in subscriptions:
                subscription.close(WS_CLOSE_UNAUTHORIZED, REVOKED)

    def _dispatch(self, payload: str) -> None:
        received = time.monotonic()
        try:
            data: dict[str, Any] = json.loads(payload)
            # The one LISTEN connection hears both channels; a revocation says so.
            if isinstance(data, dict) and "revoked_token" in data:
                self._token_epoch += 1
                token_id = str(data["revoked_token"])
                self._close_connections_of(token_id)
                self._tell_revocation(token_id)
                return
            owner, sid = str(data["owner"]), str(data["id"])
            state = live_state(
                int(data["version"]), str(data["lifecycle"]), str(data["parse_status"])
            )
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed %s notification: %.200r", CHANNEL, payload)
            return
        self.deliver(owner, sid, state, received)

    async def _caught_up(self) -> None:
        """LISTEN is (re)established: catch up with what nobody heard meanwhile, retrying until
        it succeeds (it is cancelled if the LISTEN connection is lost again)."""
        self._token_epoch += 1
        self._tell_revocation(None)
        if not self._subscriptions:
            return
        failures = 0
        while True:
            try:
                await self._check_tokens()
                await self._resync_once()
                return
            except psycopg.Error as exc:
                log.warning("live hub: resync failed (%s); retrying", first_line(exc))
            failures += 1
            await asyncio.sleep(
                backoff_seconds(failures, base=FIRST_RETRY_SECONDS, cap=self._reconnect_max)
            )

    async def _check_tokens(self) -> None:
        """Close the connections whose token was revoked or deleted."""
        token_ids = list(self._by_token)
        for chunk in chunked(token_ids, QUERY_CHUNK):
            async with self._pool.connection() as conn:
                cur = await conn.execute(Q.tokens_revoked, {"ids": list(chunk)})
                revoked = [str(token_id) for (token_id,) in await cur.fetchall()]
            for token_id in revoked:
                self._close_connections_of(token_id)

    async def _resync_once(self) -> None:
        """Feed every subscription the current state of every id it watches. The (owner, id)
        pairs come from the index, each once however many connections watch it, and are read
        a chunk at a time, each on a pool connection of its own for no longer than its query."""
        pairs = [(owner, sid) for owner, watching in self._index.items() for sid in watching]
        for chunk in chunked(pairs, QUERY_CHUNK):
            params = {"owners": [owner for owner, _ in chunk], "ids": [sid for _, sid in chunk]}
            async with self._pool.connection() as conn:
                cur = await conn.execute(Q.live_resync, params, prepare=True)
                rows = await cur.fetchall()
            for owner, sid, lifecycle, parse_status, version in rows:
                self.deliver(owner, sid, live_state(version, lifecycle, parse_status))
        log.info(
            "live hub: resynced %d watched ids of %d connections",
            len(pairs),
            len(self._subscriptions),
        )
