"""Soak: 500 WebSocket watchers and 20 polling clients on one server while a worker processes
a steady stream of uploads, for a configurable time (not part of CI).

A real `sessionflow serve --no-worker` and a real `sessionflow worker` process on one
PostgreSQL (embedded unless SESSIONFLOW_BENCH_DATABASE_URL is set). In this process: an
uploader that PUTs a fresh generated transcript every `--upload-interval` seconds; 500
watchers, each told to watch every new session in turn (each session is watched by
`--watchers-per-session` of them); 20 pollers sending batch-status for the latest 500
sessions every 3 s. Watch sets grow for the whole run, unless `--max-watched K`: then a
watcher that watches more than K sessions forgets the finished ones, by reconnecting and
watching the rest (there is no unwatch message), so the server's watch state stays bounded and
its memory curve tells growth that follows the watch sets from a leak. Sampled every
`--interval` seconds:

- delivery latency: from the commit of a session's final state (its `updated_at`, read back
  from the database) to the moment each of its watchers received it, p50/p95/p99/max;
- batch-status request latency, p50/p99;
- the server's resident memory, and the database connections in use (pg_stat_activity);
- sessions uploaded and finished, and states a watcher never received (must stay 0).

    uv run python -m bench.soak [--minutes 10] [--watchers 500] [--pollers 20] [--max-watched 8]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from websockets.asyncio.client import ClientConnection, connect

from bench.common import (
    bench_database,
    make_token,
    percentile,
    print_table,
    rss_bytes,
    server_process,
    write_report,
)
from sessionflow.client.watch import websocket_url
from sessionflow.protocol import TERMINAL
from sessionflow.samples import generate_transcript_bytes

POLL_SECONDS = 3.0
POLL_BATCH = 500
OWNER = "soak"


@dataclass
class Window:
    """What one sampling interval saw."""

    deliveries: list[tuple[str, float]] = field(default_factory=list)  # (id, received wall)
    poll_latencies: list[float] = field(default_factory=list)
    poll_errors: int = 0
    ws_errors: int = 0
    rewatches: int = 0  # reconnects of --max-watched
    uploaded: int = 0
    upload_errors: int = 0


@dataclass
class Shared:
    window: Window = field(default_factory=Window)
    ids: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class Watcher:
    def __init__(self, url: str, token: str, shared: Shared, max_watched: int = 0) -> None:
        self.url = url
        self.token = token
        self.shared = shared
        self.max_watched = max_watched  # 0: unbounded
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.watched: list[str] = []
        self.seen: set[str] = set()  # sessions whose final state this watcher received

    async def run(self) -> None:
        while not self.shared.stop.is_set():
            try:
                async with connect(
                    websocket_url(self.url),
                    additional_headers={"Authorization": f"Bearer {self.token}"},
                    open_timeout=30,
                ) as ws:
                    if self.watched:  # after a reconnect: everything again, in one message
                        await self._send(ws, self.watched[-POLL_BATCH:])
                    await asyncio.gather(self._sender(ws), self._receiver(ws))
            except Exception:
                self.shared.window.ws_errors += 1
                await asyncio.sleep(1)

    async def _send(self, ws: ClientConnection, ids: list[str]) -> None:
        await ws.send(json.dumps({"type": "watch", "session_ids": ids}))

    async def _sender(self, ws: ClientConnection) -> None:
        while not self.shared.stop.is_set():
            sid = await self.queue.get()
            self.watched.append(sid)
            if self.max_watched and len(self.watched) > self.max_watched:
                unfinished = [w for w in self.watched if w not in self.seen]
                if len(unfinished) < len(self.watched):
                    # Forget the finished ones: a fresh connection watching the rest.
                    self.watched = unfinished
                    self.shared.window.rewatches += 1
                    await ws.close()
                    return
            await self._send(ws, [sid])

    async def _receiver(self, ws: ClientConnection) -> None:
        async for raw in ws:
            now = time.time()
            message = json.loads(raw)
            for sid, status in message.get("statuses", {}).items():
                if status["lifecycle"] in TERMINAL and sid not in self.seen:
                    self.seen.add(sid)
                    self.shared.window.deliveries.append((sid, now))


async def poller(client: httpx.AsyncClient, shared: Shared, offset: float) -> None:
    await asyncio.sleep(offset)
    while not shared.stop.is_set():
        ids = shared.ids[-POLL_BATCH:]
        if ids:
            started = time.perf_counter()
            try:
                response = await client.post(
                    "/api/sessions/batch-status", json={"session_ids": ids}
                )
                response.raise_for_status()
                shared.window.poll_latencies.append(time.perf_counter() - started)
            except httpx.HTTPError:
                shared.window.poll_errors += 1
        with suppress(TimeoutError):
            await asyncio.wait_for(shared.stop.wait(), POLL_SECONDS)


async def uploader(
    client: httpx.AsyncClient, shared: Shared, watchers: list[Watcher], args: argparse.Namespace
) -> None:
    rng = random.Random(5)
    n = 0
    while not shared.stop.is_set():
        sid = f"soak-{n}"
        data = generate_transcript_bytes(rng, rng.randint(4_000, 40_000))
        try:
            response = await client.put(
                f"/api/sessions/{sid}/transcript",
                content=data,
                headers={"X-Content-SHA256": hashlib.sha256(data).hexdigest()},
            )
            response.raise_for_status()
            shared.ids.append(sid)
            shared.window.uploaded += 1
            for k in range(args.watchers_per_session):
                watchers[(n * args.watchers_per_session + k) % len(watchers)].queue.put_nowait(sid)
        except httpx.HTTPError:
            shared.window.upload_errors += 1
        n += 1
        with suppress(TimeoutError):
            await asyncio.wait_for(shared.stop.wait(), args.upload_interval)


def finished_at(dsn: str, ids: list[str]) -> dict[str, float]:
    """When each final state committed, by the database's clock (same machine)."""
    if not ids:
        return {}
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, updated_at FROM sessions WHERE owner = %s AND id = ANY(%s)",
            (OWNER, ids),
        ).fetchall()
    return {sid: at.timestamp() for sid, at in rows if isinstance(at, datetime)}


def db_connections(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT coalesce(state, 'none'), count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY 1"
        ).fetchall()
    return {state: n for state, n in rows}


def pipeline_counts(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE lifecycle = ANY(%s)) FROM sessions"
            " WHERE owner = %s",
            (list(TERMINAL), OWNER),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@contextmanager
def worker_process(dsn: str, data_dir: Path, env: dict[str, str]) -> Iterator[int]:
    log = (data_dir / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionflow", "worker", "--data-dir", str(data_dir / "w")],
        stdout=log,
        stderr=log,
        env={**os.environ, **env, "SESSIONFLOW_DATABASE_URL": dsn},
    )
    try:
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def soak(url: str, dsn: str, server_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    token = make_token(dsn, OWNER)
    shared = Shared()
    watchers = [Watcher(url, token, shared, args.max_watched) for _ in range(args.watchers)]
    limits = httpx.Limits(max_connections=args.pollers + 4)
    headers = {"Authorization": f"Bearer {token}"}
    samples: list[dict[str, Any]] = []
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=60, limits=limits
    ) as client:
        tasks = [asyncio.create_task(w.run()) for w in watchers]
        await asyncio.sleep(2)  # let the watchers connect before the work starts
        tasks.append(asyncio.create_task(uploader(client, shared, watchers, args)))
        tasks += [
            asyncio.create_task(poller(client, shared, POLL_SECONDS * i / args.pollers))
            for i in range(args.pollers)
        ]
        started = time.monotonic()
        end = started + args.minutes * 60
        while time.monotonic() < end:
            await asyncio.sleep(min(args.interval, max(0.0, end - time.monotonic())))
            window, shared.window = shared.window, Window()
            samples.append(
                await asyncio.to_thread(sample, dsn, server_pid, window, started, shared)
            )
            print(format_sample(samples[-1]), flush=True)
        # Drain: no new uploads; let what is in the pipeline finish and reach the watchers.
        shared.stop.set()
        guard = time.monotonic() + 120
        uploaded, finished = pipeline_counts(dsn)
        while finished < uploaded and time.monotonic() < guard:
            await asyncio.sleep(1)
            uploaded, finished = pipeline_counts(dsn)
        await asyncio.sleep(2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    ids = list(shared.ids)
    terminal = finished_at(dsn, ids)
    # Every (watcher, session) pair whose final state committed but never reached it.
    missed = sum(1 for w in watchers for sid in w.watched if sid in terminal and sid not in w.seen)
    return {
        "samples": samples,
        "uploaded": len(ids),
        "finished": finished,
        "never_delivered": missed,
    }


def sample(
    dsn: str, server_pid: int, window: Window, started: float, shared: Shared
) -> dict[str, Any]:
    committed = finished_at(dsn, [sid for sid, _ in window.deliveries])
    latencies = [
        max(0.0, received - committed[sid])
        for sid, received in window.deliveries
        if sid in committed
    ]
    connections = db_connections(dsn)
    uploaded, finished = pipeline_counts(dsn)
    ms = 1000.0
    return {
        "minute": round((time.monotonic() - started) / 60, 2),
        "delivered": len(latencies),
        "delivery_p50_ms": round(percentile(latencies, 50) * ms, 1),
        "delivery_p95_ms": round(percentile(latencies, 95) * ms, 1),
        "delivery_p99_ms": round(percentile(latencies, 99) * ms, 1),
        "delivery_max_ms": round(max(latencies, default=float("nan")) * ms, 1),
        "polls": len(window.poll_latencies),
        "poll_p50_ms": round(percentile(window.poll_latencies, 50) * ms, 1),
        "poll_p99_ms": round(percentile(window.poll_latencies, 99) * ms, 1),
        "poll_errors": window.poll_errors,
        "ws_errors": window.ws_errors,
        "rewatches": window.rewatches,
        "upload_errors": window.upload_errors,
        "server_rss_mib": round(rss_bytes(server_pid) / 2**20, 1),
        "db_connections": sum(connections.values()),
        "db_connections_by_state": connections,
        "uploaded_total": uploaded,
        "finished_total": finished,
    }


def format_sample(s: dict[str, Any]) -> str:
    return (
        f"t={s['minute']:5.2f} min  delivered={s['delivered']:4d}  "
        f"delivery p50/p99={s['delivery_p50_ms']}/{s['delivery_p99_ms']} ms  "
        f"poll p50/p99={s['poll_p50_ms']}/{s['poll_p99_ms']} ms  "
        f"rss={s['server_rss_mib']} MiB  db conns={s['db_connections']}  "
        f"finished {s['finished_total']}/{s['uploaded_total']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--watchers", type=int, default=500)
    parser.add_argument("--pollers", type=int, default=20)
    parser.add_argument("--watchers-per-session", type=int, default=5)
    parser.add_argument("--upload-interval", type=float, default=0.25)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds per sample")
    parser.add_argument(
        "--max-watched", type=int, default=0, help="bound each watch set (0: let it grow)"
    )
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="sessionflow-soak-") as tmp,
        bench_database("sessionflow_soak") as dsn,
    ):
        data_dir = Path(tmp)
        env = {"SESSIONFLOW_STORAGE_URL": (data_dir / "store").as_uri()}
        with (
            server_process(dsn, data_dir, "--no-worker", env=env) as (url, server),
            worker_process(dsn, data_dir, env),
        ):
            result = asyncio.run(soak(url, dsn, server.pid, args))

    samples = result["samples"]
    rows: list[tuple[str, ...]] = [
        ("minute", "delivered", "p50 ms", "p99 ms", "max ms", "poll p99", "RSS MiB", "db")
    ]
    rows += [
        (
            f"{s['minute']:.1f}",
            str(s["delivered"]),
            str(s["delivery_p50_ms"]),
            str(s["delivery_p99_ms"]),
            str(s["delivery_max_ms"]),
            str(s["poll_p99_ms"]),
            str(s["server_rss_mib"]),
            str(s["db_connections"]),
        )
        for s in samples
    ]
    print_table(
        f"soak: {args.watchers} watchers, {args.pollers} pollers, {args.minutes:g} min", rows
    )
    print(
        f"\nuploaded {result['uploaded']}, finished {result['finished']}, "
        f"(watcher, final state) pairs never delivered: {result['never_delivered']}"
    )
    report = {"config": vars(args), **result}
    print(f"report: {write_report('soak', report)}")


if __name__ == "__main__":
    main()
