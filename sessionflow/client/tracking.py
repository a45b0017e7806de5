"""Tracking the server-side pipeline to completion: live over the WebSocket when it can,
polling batch-status when it cannot, and switching back when the WebSocket returns.

State is level-triggered: per session the latest (lifecycle, parse_status, version), merged
by keeping the higher version, and replaced outright by every fresh snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sessionflow.backoff import backoff_seconds
from sessionflow.client.http import ApiError, AuthError, ServerUnreachable
from sessionflow.client.watch import WatchAuthError, WatchSet, WatchUnavailable, WatchUpdate
from sessionflow.protocol import TERMINAL, BatchStatusResponse, SessionStatus

Transport = Literal["auto", "websocket", "poll"]


class StatusSource(Protocol):
    async def batch_status(self, session_ids: Sequence[str]) -> BatchStatusResponse: ...


WatchFn = Callable[[Sequence[str]], AsyncIterator[WatchUpdate]]


@dataclass(frozen=True)
class Progress:
    total: int
    done: int
    counts: dict[str, int]  # by lifecycle, plus "not_found"
    transport: str  # what is being used right now: "websocket" or "poll"

    @property
    def pending_counts(self) -> list[tuple[str, int]]:
        """Counts of the non-terminal states, largest first."""
        pending = [
            (name, n)
            for name, n in self.counts.items()
            if name not in TERMINAL and name != "not_found"
        ]
        return sorted(pending, key=lambda item: (-item[1], item[0]))


@dataclass
class TrackerDeps:
    client: StatusSource
    watch: WatchFn | None = None  # None: no WebSocket (polling only)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    on_progress: Callable[[Progress], None] = lambda _: None
    on_fallback: Callable[[str], None] = lambda _: None  # told why, once per switch to polling
    timeout: float = 600.0  # math.inf: no limit
    poll_interval: float = 3.0
    transport: Transport = "auto"
    ws_retry_initial: float = 2.0
    ws_retry_max: float = 30.0
    # While on the WebSocket, one batch-status round this often: the stream is trusted, not
    # believed forever (a hub that stopped delivering, a LISTEN behind a pooler). 0: never.
    reconcile_interval: float = 30.0
    stop: asyncio.Event | None = None  # set it to stop watching (Ctrl-C)


@dataclass
class PipelineWaitResult:
    states: dict[str, SessionStatus]
    not_found: list[str]
    complete: bool
    timed_out: bool
    interrupted: bool
    transports: set[str] = field(default_factory=set)
    fell_back: bool = False

    @property
    def transport(self) -> str:
        if len(self.transports) > 1:
            return "mixed"
        return next(iter(self.transports), "none")

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(s.lifecycle.value for s in self.states.values()))

    @property
    def pending(self) -> list[str]:
        return [sid for sid, s in self.states.items() if s.lifecycle not in TERMINAL]

    def failed(self) -> list[str]:
        return [sid for sid, s in self.states.items() if s.lifecycle == "failed"]


class IdFeed:
    """The sessions to track, arriving as they are uploaded, so that processing is followed
    from the first upload on. `expected` is how many will come in all (lowered as uploads
    fail); close() says no more will: only then can the wait be complete, and only then does
    the timeout start to run."""

    def __init__(self, ids: Iterable[str] = (), *, expected: int = 0) -> None:
        self.ids: list[str] = []
        self._known: set[str] = set()
        self.expected = expected
        self.closed = False
        self.changed = asyncio.Event()
        self.add(ids)

    def add(self, ids: Iterable[str]) -> None:
        for sid in ids:
            if sid not in self._known:
                self._known.add(sid)
                self.ids.append(sid)
        self.changed.set()

    def drop_expected(self, n: int = 1) -> None:
        """n sessions that were expected will not come (their upload failed)."""
        self.expected = max(0, self.expected - n)
        self.changed.set()

    def close(self) -> None:
        self.closed = True
        self.changed.set()


class _Board:
    """What is known of each tracked session."""

    def __init__(self, feed: IdFeed) -> None:
        self.feed = feed
        self.ids: list[str] = []
        self.tracked: set[str] = set()
        self.states: dict[str, SessionStatus] = {}
        self.not_found: set[str] = set()
        self.closed_at: float | None = None
        self.absorb()

    def absorb(self) -> list[str]:
        """Take the ids the feed has added since; returns them."""
        new = self.feed.ids[len(self.ids) :]
        self.ids.extend(new)
        self.tracked.update(new)
        return new

    def deadline(self, deps: TrackerDeps) -> float:
        """The timeout runs from the end of the uploads."""
        if not self.feed.closed:
            return math.inf
        if self.closed_at is None:
            self.closed_at = deps.clock()
        return self.closed_at + deps.timeout

    def merge(self, statuses: dict[str, SessionStatus], not_found: Iterable[str]) -> None:
        for sid, status in statuses.items():
            if sid not in self.tracked:
                continue
            current = self.states.get(sid)
            if current is None or _newer(status, current):
                self.states[sid] = status
            self.not_found.discard(sid)
        for sid in not_found:
            if sid in self.tracked and sid not in self.states:
                self.not_found.add(sid)

    def replace(self, statuses: dict[str, SessionStatus], not_found: Iterable[str]) -> None:
        """A fresh snapshot is the truth, whatever deltas came before it."""
        for sid, status in statuses.items():
            if sid in self.tracked:
                self.states[sid] = status
                self.not_found.discard(sid)
        for sid in not_found:
            if sid in self.tracked:
                self.states.pop(sid, None)
                self.not_found.add(sid)

    def _pending(self, sid: str) -> bool:
        if sid in self.not_found:
            return False
        state = self.states.get(sid)
        return state is None or state.lifecycle not in TERMINAL

    def pending(self) -> list[str]:
        self.absorb()
        return [sid for sid in self.ids if self._pending(sid)]

    def done(self) -> bool:
        self.absorb()
        return self.feed.closed and not any(self._pending(sid) for sid in self.ids)

    def progress(self, transport: str) -> Progress:
        self.absorb()
        counts = Counter(s.lifecycle.value for s in self.states.values())
        unknown = len(self.ids) - len(self.states) - len(self.not_found)
        if unknown:
            counts["queued"] += unknown  # not heard of yet: as good as waiting
        if self.not_found:
            counts["not_found"] = len(self.not_found)
        total = len(self.ids) if self.feed.closed else max(self.feed.expected, len(self.ids))
        if total > len(self.ids):
            counts["uploading"] = total - len(self.ids)
        done = sum(1 for s in self.states.values() if s.lifecycle in TERMINAL) + len(self.not_found)
        return Progress(total=total, done=done, counts=dict(counts), transport=transport)


def _newer(candidate: SessionStatus, current: SessionStatus) -> bool:
    if candidate.version is None or current.version is None:
        return True  # no versions to compare: the later message wins
    return candidate.version > current.version


async def wait_for_pipeline_completion(
    session_ids: Sequence[str] | IdFeed, deps: TrackerDeps
) -> PipelineWaitResult:
    """Watch until every session is terminal (or not found), the timeout passes, or
    deps.stop is set. Raises AuthError at once if the server refuses the token.

    session_ids may be an IdFeed that grows while this runs (the sessions being uploaded);
    the wait is then complete only once the feed is closed and all it gave is final."""
    if isinstance(session_ids, IdFeed):
        feed = session_ids
    else:
        feed = IdFeed(session_ids)
        feed.close()
    board = _Board(feed)
    result = PipelineWaitResult(
        states=board.states, not_found=[], complete=False, timed_out=False, interrupted=False
    )
    if board.done():
        result.complete = True
        return result
    main = asyncio.ensure_future(_track(board, deps, result))
    stopper = asyncio.ensure_future(deps.stop.wait()) if deps.stop else None
    try:
        waiting: set[asyncio.Future[Any]] = {main}
        if stopper is not None:
            waiting.add(stopper)
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
            result.interrupted = True
        else:
            main.result()  # re-raise what tracking raised
    finally:
        if stopper is not None:
            stopper.cancel()
        if not main.done():
            main.cancel()
    result.not_found = sorted(board.not_found)
    result.complete = board.done()
    result.timed_out = not result.complete and not result.interrupted
    return result


async def _until_ids(board: _Board) -> None:
    """Wait until there is something to track, or the feed is closed."""
    while not board.absorb() and not board.ids and not board.feed.closed:
        board.feed.changed.clear()
        await board.feed.changed.wait()


async def _until_pending_or_closed(board: _Board) -> None:
    while not board.pending() and not board.feed.closed:
        board.feed.changed.clear()
        await board.feed.changed.wait()
        board.absorb()


async def _pause(deps: TrackerDeps, seconds: float, board: _Board) -> None:
    """Sleep, but wake early when the feed closes (everything may be final already)."""
    if board.feed.closed:
        await deps.sleep(seconds)
        return
    sleeper = asyncio.ensure_future(deps.sleep(seconds))
    closing = asyncio.ensure_future(_until_closed(board.feed))
    try:
        await asyncio.wait({sleeper, closing}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, closing):
            task.cancel()


async def _until_closed(feed: IdFeed) -> None:
    while not feed.closed:
        feed.changed.clear()
        await feed.changed.wait()


async def _track(board: _Board, deps: TrackerDeps, result: PipelineWaitResult) -> None:
    use_ws = deps.transport in ("auto", "websocket") and deps.watch is not None
    ws_failures = 0
    next_ws_attempt = deps.clock()
    polling = False
    await _until_ids(board)
    while not board.done() and deps.clock() < board.deadline(deps):
        if use_ws and deps.clock() >= next_ws_attempt:
            if not board.pending():
                # All final so far and more to come: a watch needs something to watch.
                await _until_pending_or_closed(board)
                continue
            try:
                await _watch_once(board, deps, result)
                polling = False
                ws_failures = 0
                continue  # the stream ended cleanly (done, or deadline): the loop decides
            except WatchAuthError as exc:
                raise AuthError(str(exc)) from exc
            except WatchUnavailable as exc:
                if board.done():
                    break
                ws_failures += 1
                # One CLI is no herd: the waits need no jitter, and tests can tell them.
                next_ws_attempt = deps.clock() + backoff_seconds(
                    ws_failures, base=deps.ws_retry_initial, cap=deps.ws_retry_max, jitter=False
                )
                if deps.transport == "websocket":
                    wake = min(next_ws_attempt, board.deadline(deps))
                    await deps.sleep(max(0.0, wake - deps.clock()))
                    continue
                if not polling:
                    deps.on_fallback(str(exc) or type(exc).__name__)
                    result.fell_back = True
        polling = True
        # Poll until done, the deadline, or the time to try the WebSocket again.
        while not board.done() and deps.clock() < board.deadline(deps):
            if board.pending():  # else all final so far, and more to come from the uploads
                await _poll_once(board, deps, result)
            if board.done():
                break
            now = deps.clock()
            wake = min(now + deps.poll_interval, board.deadline(deps))
            await _pause(deps, max(0.0, wake - now), board)
            if use_ws and deps.clock() >= next_ws_attempt:
                break


async def _poll_once(board: _Board, deps: TrackerDeps, result: PipelineWaitResult) -> None:
    try:
        response = await deps.client.batch_status(board.pending())
    except (ServerUnreachable, ApiError) as exc:
        # The server (or its database) is away for a moment: what is known stays known, and
        # the next poll asks again. Only the deadline gives up.
        if isinstance(exc, ApiError) and not exc.transient:
            raise
        return
    board.merge(response.statuses, response.not_found)
    result.transports.add("poll")
    deps.on_progress(board.progress("poll"))


async def _watch_once(board: _Board, deps: TrackerDeps, result: PipelineWaitResult) -> None:
    """One WebSocket connection: trust its snapshot, merge its deltas, until done; sessions the
    feed adds meanwhile are watched on the same connection (a further watch message each);
    and a batch-status round every deps.reconcile_interval seconds checks the stream."""
    assert deps.watch is not None
    watched = WatchSet(board.pending())
    sent = len(board.ids)
    stream = deps.watch(watched)
    finished = asyncio.Event()  # set by a reconcile round that finds everything final
    reconciler = (
        asyncio.ensure_future(_reconcile(board, deps, finished))
        if deps.reconcile_interval > 0
        else None
    )
    waiter = asyncio.ensure_future(finished.wait())
    fed: asyncio.Future[Any] | None = None
    next_update: asyncio.Future[WatchUpdate] | None = None
    try:
        while not board.done():
            if fed is None or fed.done():
                board.feed.changed.clear()
                fed = asyncio.ensure_future(board.feed.changed.wait())
            board.absorb()
            if len(board.ids) > sent:
                watched.add(board.ids[sent:])
                sent = len(board.ids)
            deadline = board.deadline(deps)
            remaining = deadline - deps.clock()
            if remaining <= 0:
                return
            if next_update is None:
                next_update = asyncio.ensure_future(anext(stream))
            racing: set[asyncio.Future[Any]] = {next_update, waiter, fed}
            done, _ = await asyncio.wait(
                racing,
                timeout=remaining if math.isfinite(remaining) else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if next_update not in done:
                if fed in done:  # more sessions to watch, or the uploads ended
                    deps.on_progress(board.progress("websocket"))
                    continue
                if waiter in done:
                    if board.done():
                        return  # batch-status found everything final
                    finished.clear()  # a snapshot since then said otherwise: keep going
                    waiter = asyncio.ensure_future(finished.wait())
                    continue
                if deps.clock() < deadline:
                    raise WatchUnavailable("the live stream timed out")
                return  # the deadline, not the stream, ran out
            try:
                update = next_update.result()
            except StopAsyncIteration:
                raise WatchUnavailable("the live stream ended") from None
            next_update = None
            if update.snapshot:
                board.replace(update.statuses, update.not_found)
            else:
                board.merge(update.statuses, update.not_found)
            result.transports.add("websocket")
            deps.on_progress(board.progress("websocket"))
    finally:
        for task in (reconciler, waiter, next_update, fed):
            if task is not None and not task.done():
                task.cancel()
        closer = getattr(stream, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


async def _reconcile(board: _Board, deps: TrackerDeps, finished: asyncio.Event) -> None:
    """Every deps.reconcile_interval seconds, ask batch-status about what is still pending and
    merge the answer (by version, so nothing goes backwards); set finished when all is."""
    while True:
        await deps.sleep(deps.reconcile_interval)
        pending = board.pending()
        if not pending:
            finished.set()
            continue
        try:
            response = await deps.client.batch_status(pending)
        except (ServerUnreachable, ApiError):
            continue  # the stream goes on; the next round asks again
        board.merge(response.statuses, response.not_found)
        deps.on_progress(board.progress("websocket"))
        if board.done():
            finished.set()
