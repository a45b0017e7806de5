"""wait_for_pipeline_completion driven by a fake clock, a scripted status source and scripted
WebSocket streams: the merge rules, the fallback to polling and back, and the deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from sessionflow.client.http import ApiError, AuthError, ServerUnreachable
from sessionflow.client.tracking import IdFeed, Progress, TrackerDeps, wait_for_pipeline_completion
from sessionflow.client.watch import WatchAuthError, WatchSet, WatchUnavailable, WatchUpdate
from sessionflow.protocol import BatchStatusResponse, SessionStatus


def st(lifecycle: str, version: int, parse_status: str = "ok") -> SessionStatus:
    return SessionStatus.model_validate(
        {"lifecycle": lifecycle, "parse_status": parse_status, "version": version}
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class ScriptedServer:
    """batch_status answers from a timeline: {time: {id: status}} applied as the clock passes."""

    def __init__(self, clock: FakeClock, timeline: dict[float, dict[str, SessionStatus]]) -> None:
        self.clock = clock
        self.timeline = sorted(timeline.items())
        self.calls: list[list[str]] = []

    def state_at(self, t: float) -> dict[str, SessionStatus]:
        state: dict[str, SessionStatus] = {}
        for when, changes in self.timeline:
            if when <= t:
                state.update(changes)
        return state

    async def batch_status(self, session_ids: Sequence[str]) -> BatchStatusResponse:
        self.calls.append(list(session_ids))
        state = self.state_at(self.clock.now)
        return BatchStatusResponse(
            statuses={i: state[i] for i in session_ids if i in state},
            not_found=[i for i in session_ids if i not in state],
        )


def deps_for(server: ScriptedServer, clock: FakeClock, **kwargs: object) -> TrackerDeps:
    # No reconciling unless a test asks: a fake sleep would let it run at once.
    deps = TrackerDeps(
        client=server,
        clock=clock,
        sleep=clock.sleep,
        timeout=600,
        poll_interval=3,
        reconcile_interval=0,
    )
    for key, value in kwargs.items():
        setattr(deps, key, value)
    return deps


async def test_polling_waits_until_every_session_is_terminal() -> None:
    clock = FakeClock()
    server = ScriptedServer(
        clock,
        {
            0: {"a": st("queued", 1), "b": st("queued", 2)},
            4: {"a": st("parsing", 3)},
            7: {"a": st("summarized", 5), "b": st("failed", 6, "failed")},
        },
    )
    seen: list[Progress] = []
    deps = deps_for(server, clock, transport="poll", on_progress=seen.append)
    result = await wait_for_pipeline_completion(["a", "b"], deps)
    assert result.complete and not result.timed_out and not result.interrupted
    assert result.counts == {"summarized": 1, "failed": 1}
    assert result.transport == "poll"
    assert clock.sleeps == [3, 3, 3]  # polled at t=0, 3, 6, 9
    assert seen[2].pending_counts == [("parsing", 1), ("queued", 1)]  # t=6


async def test_polling_asks_only_for_pending_ids_in_batches() -> None:
    clock = FakeClock()
    ids = [f"s{i}" for i in range(3)]
    server = ScriptedServer(
        clock,
        {
            0: {"s0": st("parsed", 1), "s1": st("queued", 2), "s2": st("queued", 3)},
            3: {"s1": st("parsed", 4), "s2": st("parsed", 5)},
        },
    )
    await wait_for_pipeline_completion(ids, deps_for(server, clock, transport="poll"))
    assert server.calls == [ids, ["s1", "s2"]]


async def test_timeout_reports_what_is_pending() -> None:
    clock = FakeClock()
    server = ScriptedServer(clock, {0: {"a": st("parsing", 1), "b": st("parsed", 2)}})
    result = await wait_for_pipeline_completion(
        ["a", "b"], deps_for(server, clock, transport="poll", timeout=10)
    )
    assert result.timed_out and not result.complete
    assert result.pending == ["a"]
    assert clock.now == pytest.approx(10)


def stream_of(
    *items: WatchUpdate | Exception,
) -> Callable[[Sequence[str]], AsyncIterator[WatchUpdate]]:
    async def gen(_ids: Sequence[str]) -> AsyncIterator[WatchUpdate]:
        for item in items:
            await asyncio.sleep(0)
            if isinstance(item, Exception):
                raise item
            yield item

    return gen


async def test_websocket_snapshot_then_deltas_complete_without_polling() -> None:
    clock = FakeClock()
    server = ScriptedServer(clock, {})
    watch = stream_of(
        WatchUpdate({"a": st("queued", 1), "b": st("parsing", 2)}, [], snapshot=True),
        WatchUpdate({"a": st("summarized", 9)}, [], snapshot=False),
        WatchUpdate({"b": st("parsed", 10)}, [], snapshot=False),
    )
    result = await wait_for_pipeline_completion(["a", "b"], deps_for(server, clock, watch=watch))
    assert result.complete
    assert result.transport == "websocket"
    assert server.calls == []


async def test_stale_delta_never_overwrites_a_newer_state() -> None:
    clock = FakeClock()
    watch = stream_of(
        WatchUpdate({"a": st("summarizing", 5)}, [], snapshot=True),
        WatchUpdate({"a": st("queued", 1)}, [], snapshot=False),  # late, older
        WatchUpdate({"a": st("summarized", 6)}, [], snapshot=False),
    )
    seen: list[Progress] = []
    result = await wait_for_pipeline_completion(
        ["a"], deps_for(ScriptedServer(clock, {}), clock, watch=watch, on_progress=seen.append)
    )
    assert [p.counts for p in seen] == [{"summarizing": 1}, {"summarizing": 1}, {"summarized": 1}]
    assert result.complete


async def test_fresh_snapshot_is_trusted_over_earlier_deltas() -> None:
    """After a reconnect the snapshot replaces what deltas said (the database may have been
    restored, versions and all)."""
    clock = FakeClock()
    connections = iter(
        [
            stream_of(
                WatchUpdate({"a": st("parsing", 50)}, [], snapshot=True),
                WatchUnavailable("dropped"),
            ),
            stream_of(
                WatchUpdate({"a": st("queued", 3)}, [], snapshot=True),
                WatchUpdate({"a": st("parsed", 4)}, [], snapshot=False),
            ),
        ]
    )
    seen: list[Progress] = []

    def watch(ids: Sequence[str]) -> AsyncIterator[WatchUpdate]:
        return next(connections)(ids)

    server = ScriptedServer(clock, {0: {"a": st("parsing", 50)}})
    deps = deps_for(server, clock, watch=watch, on_progress=seen.append, ws_retry_initial=2)
    result = await wait_for_pipeline_completion(["a"], deps)
    assert result.complete
    assert result.states["a"].lifecycle == "parsed"
    assert {"queued": 1} in [p.counts for p in seen]


async def test_falls_back_to_polling_and_returns_to_the_websocket() -> None:
    clock = FakeClock()
    attempts: list[float] = []
    reasons: list[str] = []

    def watch(ids: Sequence[str]) -> AsyncIterator[WatchUpdate]:
        attempts.append(clock.now)
        if len(attempts) < 3:
            return stream_of(WatchUnavailable("refused"))(ids)
        return stream_of(
            WatchUpdate({i: st("queued", 1) for i in ids}, [], snapshot=True),
            WatchUpdate({i: st("summarized", 9) for i in ids}, [], snapshot=False),
        )(ids)

    server = ScriptedServer(clock, {0: {"a": st("queued", 1)}})
    deps = deps_for(
        server, clock, watch=watch, on_fallback=reasons.append, ws_retry_initial=2, ws_retry_max=30
    )
    result = await wait_for_pipeline_completion(["a"], deps)
    assert result.complete
    assert result.transport == "mixed"
    assert result.fell_back
    assert reasons == ["refused"]  # said once, though the retry failed too
    assert attempts == [0, 3, 9]  # backoff 2 then 4, checked at each 3 s poll tick
    assert len(server.calls) == 3


async def test_websocket_only_mode_retries_instead_of_polling() -> None:
    clock = FakeClock()
    calls = 0

    def watch(ids: Sequence[str]) -> AsyncIterator[WatchUpdate]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return stream_of(WatchUnavailable("nope"))(ids)
        return stream_of(WatchUpdate({"a": st("parsed", 2)}, [], snapshot=True))(ids)

    server = ScriptedServer(clock, {0: {"a": st("queued", 1)}})
    result = await wait_for_pipeline_completion(
        ["a"], deps_for(server, clock, watch=watch, transport="websocket")
    )
    assert result.complete and result.transport == "websocket"
    assert server.calls == []


async def test_token_refused_on_the_websocket_raises_at_once() -> None:
    clock = FakeClock()
    deps = deps_for(ScriptedServer(clock, {}), clock, watch=stream_of(WatchAuthError("refused")))
    with pytest.raises(AuthError):
        await wait_for_pipeline_completion(["a"], deps)


async def test_not_found_sessions_end_the_wait_and_are_reported() -> None:
    clock = FakeClock()
    server = ScriptedServer(clock, {0: {"a": st("parsed", 1)}})
    result = await wait_for_pipeline_completion(
        ["a", "ghost"], deps_for(server, clock, transport="poll")
    )
    assert result.complete
    assert result.not_found == ["ghost"]


async def test_stop_event_interrupts_promptly() -> None:
    clock = FakeClock()
    stop = asyncio.Event()

    async def hang(_ids: Sequence[str]) -> AsyncIterator[WatchUpdate]:
        yield WatchUpdate({"a": st("parsing", 1)}, [], snapshot=True)
        await asyncio.Event().wait()  # a live stream with nothing to say

    deps = deps_for(ScriptedServer(clock, {}), clock, watch=hang, stop=stop)
    task = asyncio.create_task(wait_for_pipeline_completion(["a"], deps))
    await asyncio.sleep(0.01)
    stop.set()
    result = await asyncio.wait_for(task, timeout=1)
    assert result.interrupted and not result.complete and not result.timed_out
    assert result.counts == {"parsing": 1}


async def test_no_sessions_is_complete_at_once() -> None:
    clock = FakeClock()
    result = await wait_for_pipeline_completion([], deps_for(ScriptedServer(clock, {}), clock))
    assert result.complete and result.states == {}


class FlakyServer(ScriptedServer):
    """Unreachable, then a 503, then itself again: a server restarting under the poller."""

    def __init__(self, clock: FakeClock, timeline: dict[float, dict[str, SessionStatus]]) -> None:
        super().__init__(clock, timeline)
        self.failures = [ServerUnreachable("connection refused"), ApiError(503, "x", "later")]

    async def batch_status(self, session_ids: Sequence[str]) -> BatchStatusResponse:
        if self.calls and self.failures:
            self.calls.append(list(session_ids))
            raise self.failures.pop(0)
        return await super().batch_status(session_ids)


async def test_polling_rides_out_an_unreachable_server_and_5xx_until_the_deadline() -> None:
    clock = FakeClock()
    server = FlakyServer(clock, {0: {"a": st("queued", 1)}, 8: {"a": st("summarized", 4)}})
    result = await wait_for_pipeline_completion(["a"], deps_for(server, clock, transport="poll"))
    assert result.complete is True
    assert len(server.calls) >= 4  # the first answer, two failures, the final answer


async def test_polling_still_stops_at_a_4xx_that_retrying_cannot_fix() -> None:
    clock = FakeClock()
    server = FlakyServer(clock, {0: {"a": st("queued", 1)}})
    server.failures = [ApiError(400, "invalid_request", "no")]
    with pytest.raises(ApiError):
        await wait_for_pipeline_completion(["a"], deps_for(server, clock, transport="poll"))


async def test_on_a_stream_that_stops_delivering_batch_status_still_finds_the_end() -> None:
    clock = FakeClock()
    server = ScriptedServer(clock, {0: {"a": st("summarized", 9)}})
    never = asyncio.Event()

    async def silent(ids: Sequence[str]) -> AsyncIterator[WatchUpdate]:
        # A hub that answered the watch, then heard of nothing more (a LISTEN lost behind a
        # pooler, a catch-up that failed).
        yield WatchUpdate(statuses={"a": st("queued", 1)}, not_found=[], snapshot=True)
        await never.wait()

    deps = deps_for(server, clock, watch=silent, reconcile_interval=30)
    result = await asyncio.wait_for(wait_for_pipeline_completion(["a"], deps), 10)
    assert result.complete
    assert result.states["a"].lifecycle == "summarized"
    assert result.transport == "websocket"  # still on the stream: the poll only checked it
    assert server.calls and all(call == ["a"] for call in server.calls)
    assert 30 in clock.sleeps


async def test_a_reconcile_round_never_moves_a_session_back() -> None:
    clock = FakeClock()
    # batch-status lags behind the stream (a replica's view, say): its older answer loses.
    server = ScriptedServer(clock, {0: {"a": st("parsing", 3), "b": st("queued", 1)}})
    release = asyncio.Event()

    async def stream(ids: Sequence[str]) -> AsyncIterator[WatchUpdate]:
        yield WatchUpdate(
            statuses={"a": st("summarizing", 5), "b": st("queued", 1)}, not_found=[], snapshot=True
        )
        await release.wait()
        yield WatchUpdate(
            statuses={"a": st("summarized", 6), "b": st("parsed", 7)}, not_found=[], snapshot=False
        )

    seen: list[Progress] = []
    deps = deps_for(server, clock, watch=stream, reconcile_interval=30, on_progress=seen.append)
    task = asyncio.ensure_future(wait_for_pipeline_completion(["a", "b"], deps))
    for _ in range(100):
        if len(server.calls) >= 2:
            break
        await asyncio.sleep(0)
    assert len(server.calls) >= 2
    assert seen[-1].counts.get("summarizing") == 1  # not back to parsing
    release.set()
    result = await asyncio.wait_for(task, 10)
    assert result.complete and result.states["a"].version == 6


async def test_a_growing_feed_is_polled_as_it_grows_and_complete_only_once_closed() -> None:
    clock = FakeClock()
    server = ScriptedServer(clock, {0: {"a": st("summarized", 3), "b": st("parsed", 2)}})
    feed = IdFeed(["a"], expected=2)
    seen: list[Progress] = []
    task = asyncio.ensure_future(
        wait_for_pipeline_completion(
            feed, deps_for(server, clock, transport="poll", on_progress=seen.append)
        )
    )
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # "a" is final, but more is coming
    assert seen and seen[-1].total == 2 and seen[-1].counts.get("uploading") == 1
    feed.add(["b"])
    feed.close()
    result = await asyncio.wait_for(task, 5)
    assert result.complete and result.counts == {"summarized": 1, "parsed": 1}
    assert ["b"] in server.calls


async def test_a_growing_feed_adds_its_ids_to_the_open_watch() -> None:
    clock = FakeClock()
    feed = IdFeed(["a"], expected=2)
    asked: list[list[str]] = []

    async def stream(ids: Sequence[str]) -> AsyncIterator[WatchUpdate]:
        assert isinstance(ids, WatchSet)
        yield WatchUpdate(statuses={"a": st("parsed", 2)}, not_found=[], snapshot=True)
        await ids.added.wait()
        asked.append(list(ids))
        yield WatchUpdate(statuses={"b": st("summarized", 5)}, not_found=[], snapshot=False)
        await asyncio.Event().wait()

    task = asyncio.ensure_future(
        wait_for_pipeline_completion(feed, deps_for(ScriptedServer(clock, {}), clock, watch=stream))
    )
    for _ in range(5):
        await asyncio.sleep(0)
    feed.add(["b"])
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # everything known is final, but the feed is open
    feed.close()
    result = await asyncio.wait_for(task, 5)
    assert asked == [["a", "b"]]
    assert result.complete and result.transport == "websocket"


async def test_a_reconnect_with_nothing_pending_waits_for_the_next_upload() -> None:
    clock = FakeClock()
    server = ScriptedServer(clock, {0: {"a": st("parsed", 2), "b": st("parsed", 4)}})
    feed = IdFeed(["a"], expected=2)
    opened: list[list[str]] = []

    async def stream(ids: Sequence[str]) -> AsyncIterator[WatchUpdate]:
        opened.append(list(ids))
        yield WatchUpdate(
            statuses={sid: server.state_at(0)[sid] for sid in ids}, not_found=[], snapshot=True
        )
        if len(opened) == 1:
            raise WatchUnavailable("dropped")  # with "a" final and "b" not uploaded yet
        await asyncio.Event().wait()

    task = asyncio.ensure_future(
        wait_for_pipeline_completion(
            feed, deps_for(server, clock, watch=stream, ws_retry_initial=2)
        )
    )
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done()
    feed.add(["b"])
    feed.close()
    result = await asyncio.wait_for(task, 5)
    assert result.complete and result.counts == {"parsed": 2}
    assert opened[0] == ["a"] and all(ids for ids in opened)
