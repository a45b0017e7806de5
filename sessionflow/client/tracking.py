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
from sessionflow.client.watch import WatchAuthError, WatchUnavailable, WatchUpdate
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


class _Board:
    """What is known of each tracked session."""

    def __init__(self, session_ids: Iterable[str]) -> None:
        self.ids = list(dict.fromkeys(session_ids))
        self.tracked = frozenset(self.ids)
        self.states: dict[str, SessionStatus] = {}
        self.not_found: set[str] = set()

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
        return [sid for sid in self.ids if self._pending(sid)]

    def done(self) -> bool:
        return not any(self._pending(sid) for sid in self.ids)

    def progress(self, transport: str) -> Progress:
        counts = Counter(s.lifecycle.value for s in self.states.values())
        unknown = len(self.ids) - len(self.states) - len(self.not_found)
        if unknown:
            counts["queued"] += unknown  # not heard of yet: as good as waiting
        if self.not_found:
            counts["not_found"] = len(self.not_found)
        done = sum(1 for s in self.states.values() if s.lifecycle in TERMINAL) + len(self.not_found)
        return Progress(total=len(self.ids), done=done, counts=dict(counts), transport=transport)


def _newer(candidate: SessionStatus, current: SessionStatus) -> bool:
    if candidate.version is None or current.version is None:
        return True  # no versions to compare: the later message wins
    return candidate.version > current.version


async def wait_for_pipeline_completion(
    session_ids: Sequence[str], deps: TrackerDeps
) -> PipelineWaitResult:
    """Watch until every session is terminal (or not found), the timeout passes, or
    deps.stop is set. Raises AuthError at once if the server refuses the token."""
    board = _Board(session_ids)
    result = PipelineWaitResult(
        states=board.states, not_found=[], complete=False, timed_out=False, interrupted=False
    )
    if not board.ids:
        result.complete = True
        return result
    deadline = deps.clock() + deps.timeout
    main = asyncio.ensure_future(_track(board, deps, deadline, result))
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


async def _track(
    board: _Board, deps: TrackerDeps, deadline: float, result: PipelineWaitResult
) -> None:
    use_ws = deps.transport in ("auto", "websocket") and deps.watch is not None
    ws_failures = 0
    next_ws_attempt = deps.clock()
    polling = False
    while not board.done() and deps.clock() < deadline:
        if use_ws and deps.clock() >= next_ws_attempt:
            try:
                await _watch_once(board, deps, deadline, result)
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
                    await deps.sleep(max(0.0, min(next_ws_attempt, deadline) - deps.clock()))
                    continue
                if not polling:
                    deps.on_fallback(str(exc) or type(exc).__name__)
                    result.fell_back = True
        polling = True
        # Poll until done, the deadline, or the time to try the WebSocket again.
        while not board.done() and deps.clock() < deadline:
            try:
                response = await deps.client.batch_status(board.pending())
            except (ServerUnreachable, ApiError) as exc:
                # The server (or its database) is away for a moment: what is known stays
                # known, and the next poll asks again. Only the deadline gives up.
                if isinstance(exc, ApiError) and not exc.transient:
                    raise
            else:
                board.merge(response.statuses, response.not_found)
                result.transports.add("poll")
                deps.on_progress(board.progress("poll"))
            if board.done():
                break
            now = deps.clock()
            wake = min(now + deps.poll_interval, deadline)
            await deps.sleep(max(0.0, wake - now))
            if use_ws and deps.clock() >= next_ws_attempt:
                break


async def _watch_once(
    board: _Board, deps: TrackerDeps, deadline: float, result: PipelineWaitResult
) -> None:
    """One WebSocket connection: trust its snapshot, merge its deltas, until done; meanwhile
    reconcile with a batch-status round every deps.reconcile_interval seconds."""
    assert deps.watch is not None
    stream = deps.watch(board.pending())
    finished = asyncio.Event()  # set by a reconcile round that finds everything final
    reconciler = (
        asyncio.ensure_future(_reconcile(board, deps, finished))
        if deps.reconcile_interval > 0
        else None
    )
    waiter = asyncio.ensure_future(finished.wait())
    next_update: asyncio.Future[WatchUpdate] | None = None
    try:
        while not board.done():
            remaining = deadline - deps.clock()
            if remaining <= 0:
                return
            if next_update is None:
                next_update = asyncio.ensure_future(anext(stream))
            racing: set[asyncio.Future[Any]] = {next_update, waiter}
            done, _ = await asyncio.wait(
                racing,
                timeout=remaining if math.isfinite(remaining) else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if next_update not in done:
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
        for task in (reconciler, waiter, next_update):
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
