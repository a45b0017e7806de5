"""Every edge of WS /api/sessions/watch bounded: a client that resends `watch` and never reads
costs the server state bounded by the ids it watches, and is dropped within the keepalive
window; a frame is never bigger than the largest valid message needs, and ids are counted
before they are validated, so no frame can hold up the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from sessionflow.protocol import WS_CLOSE_POLICY
from sessionflow.server.app import create_app
from sessionflow.server.live import Subscription
from sessionflow.settings import Settings
from tests.helpers import LiveServer, Processes, free_port
from tests.integration.live_support import insert_sessions, open_ws, receive, send_watch
from tests.integration.ws_support import (
    GUARD,
    RawWebSocket,
    hub_of,
    masked_frame,
    serve_like_sessionflow,
    watch_text,
)

WINDOW = 3.0  # ws_ping_interval_seconds of these servers: the keepalive window
RESENDS = 3000  # as in the issue: 3,000 resends of the same 500 ids
IDS = [f"{i:03d}-{'x' * 36}" for i in range(500)]
# Everything one subscription to IDS holds (ids, last sent and pending states, one snapshot
# in flight) is a few hundred KiB; one snapshot queued per resend would be that many times.
MAX_SUBSCRIPTION_BYTES = 2 * 1024 * 1024
MAX_RSS_GROWTH = 16 * 1024 * 1024  # the issue saw +375 MB


@pytest.fixture
def settings(db_dsn: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=db_dsn, data_dir=tmp_path / "data", ws_ping_interval_seconds=WINDOW
    )


@pytest.fixture
def server(settings: Settings, db_dsn: str) -> Iterator[LiveServer]:
    """A real uvicorn configured for WebSockets as `sessionflow serve` configures it."""
    live = serve_like_sessionflow(LiveServer(create_app(settings, db_dsn), free_port()), settings)
    live.start()
    yield live
    live.stop()


def deep_size(root: object) -> int:
    """Bytes held by `root` and by the containers, strings and tuples it holds, each once."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset | deque):
            stack.extend(obj)
        elif isinstance(obj, Subscription):
            stack.extend(getattr(obj, name) for name in Subscription.__slots__)
    return total


async def on_server_loop(server: LiveServer, measure: Callable[[], Any]) -> Any:
    """Run `measure` on the server's event loop (its state is never read mid-change)."""
    loop = server.server.servers[0].get_loop()

    async def run() -> Any:
        return measure()

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), loop))


async def test_resending_watch_without_reading_holds_bounded_state_and_is_dropped_in_the_window(
    server: LiveServer, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    insert_sessions(db_dsn, "alice", IDS)
    hub = hub_of(server)
    client = await RawWebSocket.connect(server.url, make_token("alice"), rcvbuf=4096)
    sent = 0
    last_sent = time.monotonic()

    async def resend() -> None:
        nonlocal sent, last_sent
        for _ in range(RESENDS):
            await client.send_text(watch_text(IDS))
            sent += 1
            last_sent = time.monotonic()

    flood = asyncio.create_task(resend())
    largest = 0
    subscribed = False
    stalled_for = 0.0  # from the client's last resend the server took to its drop
    try:
        async with asyncio.timeout(GUARD):
            while True:
                sizes = await on_server_loop(
                    server, lambda: [deep_size(s) for s in hub.subscriptions]
                )
                if not sizes and subscribed:
                    stalled_for = time.monotonic() - last_sent
                    break  # dropped
                subscribed = subscribed or bool(sizes)
                largest = max([largest, *sizes])
                if largest > MAX_SUBSCRIPTION_BYTES:
                    break  # unbounded: no need to watch it grow further
                await asyncio.sleep(0.05)
    finally:
        flood.cancel()
        await asyncio.gather(flood, return_exceptions=True)
        client.close()
    assert largest <= MAX_SUBSCRIPTION_BYTES, f"{largest} bytes held after {sent} resends"
    # Dropped once it had stopped reading for the window (measured loosely): long before the
    # server could have read every resend, as it reads none faster than answers are taken.
    assert sent < RESENDS
    assert stalled_for < 4 * WINDOW, f"dropped {stalled_for:.1f} s after its last resend"
    assert not hub.subscriptions
    assert hub._index == {}


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_connections(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("sessionflow_websocket_connections "):
            return float(line.split()[1])
    raise AssertionError("no sessionflow_websocket_connections in /metrics")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
async def test_a_real_server_stays_bounded_in_memory_and_drops_a_client_resending_watch_unread(
    db_dsn: str, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    insert_sessions(db_dsn, "alice", IDS)
    token = make_token("alice")
    procs = Processes(db_dsn, tmp_path, {"SESSIONFLOW_WS_PING_INTERVAL_SECONDS": str(WINDOW)})
    try:
        serve = procs.serve("--no-worker")
        # One ordinary watch first: what answering one costs is in the baseline.
        async with await open_ws(serve.url, token) as ws:
            await send_watch(ws, IDS)
            assert len((await receive(ws))["statuses"]) == len(IDS)
        baseline = rss(serve.proc.pid)
        client = await RawWebSocket.connect(serve.url, token, rcvbuf=4096)

        async def resend() -> None:
            for _ in range(RESENDS):
                await client.send_text(watch_text(IDS))

        flood = asyncio.create_task(resend())
        peak = baseline
        deadline = time.monotonic() + GUARD
        try:
            while open_connections(serve.url) == 0 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            while open_connections(serve.url) > 0 and time.monotonic() < deadline:
                peak = max(peak, rss(serve.proc.pid))
                if peak - baseline > MAX_RSS_GROWTH:
                    break  # unbounded: no need to watch it grow further
                await asyncio.sleep(0.05)
            dropped = open_connections(serve.url) == 0
        finally:
            flood.cancel()
            await asyncio.gather(flood, return_exceptions=True)
            client.close()
        assert peak - baseline <= MAX_RSS_GROWTH, f"RSS grew by {(peak - baseline) >> 20} MiB"
        assert dropped, f"still connected after {GUARD} s (RSS +{(peak - baseline) >> 20} MiB)"
    finally:
        procs.stop_all()


# --- frames ---------------------------------------------------------------------------------


async def error_then_close(ws: Any) -> tuple[dict[str, Any], int]:
    message = await receive(ws)
    with pytest.raises(ConnectionClosed) as closed:
        await receive(ws)
    assert closed.value.rcvd is not None
    return message, closed.value.rcvd.code


async def test_a_message_past_the_size_limit_is_refused_before_it_is_parsed(
    live_server: LiveServer, make_token: Callable[[str], str]
) -> None:
    """Under a server that lets big frames through (uvicorn's default is 16 MiB), the route
    refuses one past ws_max_message_bytes by its size alone."""
    ids = [f"s{i}" for i in range(200_000)]
    async with await open_ws(live_server.url, make_token("alice"), max_size=None) as ws:
        await send_watch(ws, ids)
        message, code = await error_then_close(ws)
    assert message["type"] == "error"
    assert message["error"] == "message_too_large"
    settings: Settings = live_server.server.config.app.state.sessionflow.settings
    assert str(settings.ws_message_limit) in message["detail"]
    assert code == WS_CLOSE_POLICY


async def test_ids_are_counted_before_they_are_validated(
    live_server: LiveServer, make_token: Callable[[str], str]
) -> None:
    """600 ids that are not even strings: too many, whatever they are."""
    async with await open_ws(live_server.url, make_token("alice")) as ws:
        await ws.send(json.dumps({"type": "watch", "session_ids": list(range(600))}))
        message, code = await error_then_close(ws)
    assert message["error"] == "too_many_ids"
    assert "600" in message["detail"]
    assert code == WS_CLOSE_POLICY


def test_the_message_limit_fits_the_largest_valid_message_and_follows_the_id_limits() -> None:
    default = Settings()
    # 500 ids of 200 characters that JSON can only write as surrogate-pair escapes.
    largest = [f"{n:03d}" + "\U0001f600" * 197 for n in range(default.max_batch_ids)]
    assert len(watch_text(largest).encode()) <= default.ws_message_limit < 2 * 1024 * 1024
    smaller = Settings(max_batch_ids=10, max_id_length=40)
    assert smaller.ws_message_limit < default.ws_message_limit
    assert Settings(ws_max_message_bytes=4096).ws_message_limit == 4096


async def test_the_largest_valid_message_is_answered(
    server: LiveServer, make_token: Callable[[str], str]
) -> None:
    settings: Settings = server.server.config.app.state.sessionflow.settings
    largest = [f"{n:03d}" + "\U0001f600" * 197 for n in range(settings.max_batch_ids)]
    async with await open_ws(server.url, make_token("alice"), max_size=None) as ws:
        await ws.send(watch_text(largest))
        answer = await receive(ws)
    assert sorted(answer["not_found"]) == sorted(largest)


async def test_huge_frames_are_cut_at_once_and_other_clients_are_answered_meanwhile(
    server: LiveServer, make_token: Callable[[str], str]
) -> None:
    """Frames of 12 MiB (under uvicorn's default limit, far over the server's): each is cut
    with 1009 as soon as its header says how big it is, so the event loop never parses one and
    a client next to them keeps being answered promptly (measured loosely: parsing and
    validating each frame took the loop most of a second)."""
    token = make_token("alice")
    # Many short ids: the most expensive frame to parse and validate per byte.
    huge = watch_text([f"{n:07d}" for n in range(1_200_000)]).encode()
    assert 10 * 1024 * 1024 < len(huge) < 16 * 1024 * 1024
    frames = [masked_frame(huge) for _ in range(4)]  # made before anything is measured
    slowest = 0.0
    codes: list[int | None] = []
    async with await open_ws(server.url, token) as bystander:

        async def flood(frame: bytes) -> None:
            client = await RawWebSocket.connect(server.url, token)
            try:
                with contextlib.suppress(ConnectionError):  # cut while still sending
                    await client.send_bytes(frame)
                codes.append(await client.close_code())
            finally:
                client.close()

        floods = [asyncio.create_task(flood(frame)) for frame in frames]
        while not all(f.done() for f in floods):
            started = time.monotonic()
            await send_watch(bystander, ["b1"])
            assert (await receive(bystander))["not_found"] == ["b1"]
            slowest = max(slowest, time.monotonic() - started)
            await asyncio.sleep(0.01)
        await asyncio.gather(*floods)
    assert all(code in (1009, None) for code in codes), codes
    assert slowest < 0.5, f"the bystander waited {slowest:.2f} s for an answer"
