"""Benchmark: POST /api/sessions/batch-status under load, against the floor of the same query
sent straight through psycopg, in one run.

100,000 sessions in the table; 16 concurrent clients each asking for 500 random ids (a tenth
of them unknown) over keep-alive connections to a real `sessionflow serve` process, as it
runs by default (access log on), and again with SESSIONFLOW_ACCESS_LOG=false to price that line.

    uv run python -m bench.batch_status [--sessions 100000] [--clients 16] [--seconds 10]
                                        [--rounds 3] [--baseline /path/to/other/checkout ...]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench.common import (
    bench_database,
    loadavg,
    make_token,
    percentile,
    print_table,
    server_process,
    write_report,
)
from sessionflow.logs import enter_request, leave_request, make_handler, set_owner
from sessionflow.queries import Q
from sessionflow.server.requests import log_access
from sessionflow.tokens import hash_token

OWNER = "bench"


def load_sessions(dsn: str, count: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Bulk load without the triggers: 100k NOTIFYs would measure nothing useful here (so
        # active_at, which a trigger would fill in, is given).
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            """
            INSERT INTO sessions (owner, id, lifecycle, parse_status, version, transcript_key,
                                  transcript_size, transcript_sha256, active_at)
            SELECT %s, 'session-' || g,
                   (ARRAY['summarized', 'parsed', 'queued', 'failed'])[g %% 4 + 1],
                   'ok', g, 'k', 1000, repeat('a', 64), now()
            FROM generate_series(1, %s) AS g
            """,
            (OWNER, count),
        )
        conn.execute("ANALYZE sessions")


def pick_ids(rng: random.Random, count: int, batch: int) -> list[str]:
    known = [f"session-{rng.randint(1, count)}" for _ in range(batch * 9 // 10)]
    unknown = [f"missing-{rng.randint(1, 10**9)}" for _ in range(batch - len(known))]
    return known + unknown


async def http_client(
    host: str, port: int, token: str, bodies: list[bytes], stop_at: float, latencies: list[float]
) -> None:
    """A lean keep-alive HTTP/1.1 client, so the load generator costs little CPU."""
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        "POST /api/sessions/batch-status HTTP/1.1\r\nHost: bench\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    ).encode()
    i = 0
    try:
        while time.perf_counter() < stop_at:
            body = bodies[i % len(bodies)]
            i += 1
            started = time.perf_counter()
            writer.write(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            headers = await reader.readuntil(b"\r\n\r\n")
            status = headers[9:12]
            length = 0
            for line in headers.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if status != b"200":
                raise RuntimeError(f"HTTP {status.decode()}")
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()
        await writer.wait_closed()


async def floor_client(
    conn: psycopg.AsyncConnection[Any],
    token: str,
    asked_bodies: list[str],
    stop_at: float,
    latencies: list[float],
) -> None:
    """The endpoint's one query (token check and lookup), straight through psycopg, on a
    connection opened before the phase (so its backend's CPU can be read after it)."""
    token_hash = hash_token(token)
    i = 0
    while time.perf_counter() < stop_at:
        asked = asked_bodies[i % len(asked_bodies)]
        i += 1
        started = time.perf_counter()
        cur = await conn.execute(
            Q.batch_status, {"token_hash": token_hash, "body": asked}, prepare=True
        )
        await cur.fetchall()
        latencies.append(time.perf_counter() - started)


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU time of a process and its children, alive now."""
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


class CpuMeter:
    """CPU time of the server's process tree, of the bench database's PostgreSQL backends and
    of this process, read before and after a phase."""

    def __init__(self, monitor: psycopg.Connection[Any], server_pid: int | None) -> None:
        self.monitor = monitor
        self.server = psutil.Process(server_pid) if server_pid is not None else None
        self.me = psutil.Process()

    def backends(self) -> dict[int, float]:
        rows = self.monitor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
        seconds: dict[int, float] = {}
        for (pid,) in rows:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            seconds[pid] = times.user + times.system
        return seconds

    def read(self) -> tuple[float, dict[int, float], float]:
        server = cpu_seconds(self.server) if self.server is not None else 0.0
        me = self.me.cpu_times()
        return server, self.backends(), me.user + me.system

    @staticmethod
    def per_request(
        before: tuple[float, dict[int, float], float],
        after: tuple[float, dict[int, float], float],
        requests: int,
    ) -> dict[str, float]:
        pg = sum(t - before[1].get(pid, 0.0) for pid, t in after[1].items())
        n = max(requests, 1)
        return {
            "server_cpu_ms": (after[0] - before[0]) * 1000 / n,
            "pg_cpu_ms": pg * 1000 / n,
            "bench_cpu_ms": (after[2] - before[2]) * 1000 / n,
        }


async def run_phase(make_client, clients: int, seconds: float, meter: CpuMeter) -> dict[str, float]:  # type: ignore[no-untyped-def]
    # One warm-up second, whose figures are dropped.
    warm: list[float] = []
    await asyncio.gather(*(make_client(n, time.perf_counter() + 1.0, warm) for n in range(clients)))
    latencies: list[float] = []
    before = meter.read()
    started = time.perf_counter()
    await asyncio.gather(*(make_client(n, started + seconds, latencies) for n in range(clients)))
    elapsed = time.perf_counter() - started
    after = meter.read()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        **CpuMeter.per_request(before, after, len(latencies)),
    }


def access_line_cpu_us(folder: Path, lines: int = 20_000) -> float:
    """CPU time of one access line, written as `serve` writes it (its text format, to a file),
    with nothing else around it: the line's own cost, warm in a loop. Inside the server, run
    once between requests, it costs more (the on/off phases' difference in server CPU per
    request); both are reported, as neither alone is the whole story."""
    logger = logging.getLogger("sessionflow.access")
    scope = {"type": "http", "method": "POST", "path": "/api/sessions/batch-status"}
    with (folder / "access.log").open("w") as stream:
        handler = make_handler("text", stream)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        context = enter_request("bench-request-id")
        set_owner(OWNER)
        try:
            started = time.process_time()
            for _ in range(lines):
                log_access(scope, 200, time.perf_counter(), "bench-request-id")
            return (time.process_time() - started) * 1e6 / lines
        finally:
            leave_request(context)
            logger.removeHandler(handler)
            logger.propagate = True
            logger.setLevel(logging.NOTSET)


def baseline_key(n: int) -> str:
    """The report's key for the n-th --baseline (the first keeps the name it always had)."""
    return "baseline_code" if n == 0 else f"baseline_code_{n + 1}"


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(7)
    # Each variant is a `sessionflow serve` of its own: as it runs by default (access log on),
    # without the access log, and, with --baseline, another checkout's code (the "before").
    variants: dict[str, dict[str, str]] = {
        "endpoint": {},
        "endpoint_no_access_log": {"SESSIONFLOW_ACCESS_LOG": "false"},
    }
    for n, folder in enumerate(args.baseline):
        variants[baseline_key(n)] = {"PYTHONPATH": folder}
    runs: dict[str, list[dict[str, float]]] = {"floor_psycopg": [], **{v: [] for v in variants}}
    loads: list[list[str]] = []
    with bench_database("sessionflow_bench_batch") as dsn, tempfile.TemporaryDirectory() as tmp:
        load_sessions(dsn, args.sessions)
        token = make_token(dsn, OWNER)
        id_batches = [pick_ids(rng, args.sessions, 500) for _ in range(200)]
        bodies = [json.dumps({"session_ids": ids}).encode() for ids in id_batches]
        # The query takes a body of distinct ids: the endpoint de-duplicates what it is asked.
        distinct_bodies = [
            json.dumps({"session_ids": list(dict.fromkeys(ids))}) for ids in id_batches
        ]
        # Rounds interleave the floor and every variant, so that a neighbour's load on this
        # shared machine falls on all of them alike; the medians are reported.
        monitor = psycopg.connect(dsn, autocommit=True)
        for n in range(args.rounds):
            print(f"round {n + 1} of {args.rounds}...", flush=True)
            loads.append(loadavg())
            conns = [
                await psycopg.AsyncConnection.connect(dsn, autocommit=True)
                for _ in range(args.clients)
            ]
            try:
                runs["floor_psycopg"].append(
                    await run_phase(
                        lambda n, stop, lat, conns=conns: floor_client(
                            conns[n], token, distinct_bodies, stop, lat
                        ),
                        args.clients,
                        args.seconds,
                        CpuMeter(monitor, None),
                    )
                )
            finally:
                for conn in conns:
                    await conn.close()
            # Each round starts from another variant, so that none always runs first (after the
            # floor) or last, when the machine's load has risen most.
            order = list(variants.items())
            for name, env in order[n % len(order) :] + order[: n % len(order)]:
                with server_process(dsn, Path(tmp), "--no-worker", env=env) as (url, proc):
                    host, port = url.removeprefix("http://").split(":")
                    client = functools.partial(http_client, host, int(port), token, bodies)
                    runs[name].append(
                        await run_phase(
                            lambda _n, stop, lat, client=client: client(stop, lat),
                            args.clients,
                            args.seconds,
                            CpuMeter(monitor, proc.pid),
                        )
                    )
        monitor.close()
        loads.append(loadavg())
        line_us = statistics.median(access_line_cpu_us(Path(tmp)) for _ in range(3))
    medians = {name: median_of(results) for name, results in runs.items()}
    endpoint, quiet, floor = (
        medians["endpoint"],
        medians["endpoint_no_access_log"],
        medians["floor_psycopg"],
    )
    report: dict[str, Any] = {
        "sessions": args.sessions,
        "clients": args.clients,
        "ids_per_request": 500,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "loadavg": loads,
        **medians,
        "each_round": runs,
        "ratio_p50": endpoint["p50_ms"] / floor["p50_ms"],
        "ratio_p99": endpoint["p99_ms"] / floor["p99_ms"],
        "ratio_rps": floor["rps"] / endpoint["rps"],
        "access_log_cost_rps": quiet["rps"] / endpoint["rps"],
        "access_log_cost_cpu": endpoint["server_cpu_ms"] / quiet["server_cpu_ms"],
        "access_line_cpu_us": line_us,
        "access_line_share_of_server_cpu": line_us / 1000 / endpoint["server_cpu_ms"],
    }
    report["baselines"] = args.baseline
    if args.baseline:
        before = medians[baseline_key(0)]
        report["baseline_ratio_p50"] = before["p50_ms"] / floor["p50_ms"]
        report["baseline_ratio_rps"] = floor["rps"] / before["rps"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="a checkout of another version (its folder): its server runs in the same rounds; "
        "give it again for more versions",
    )
    args = parser.parse_args()
    args.baseline = [os.path.abspath(folder) for folder in args.baseline]
    report = asyncio.run(main_async(args))
    f = report["floor_psycopg"]

    def line(name: str, key: str) -> tuple[str, ...]:
        r = report[key]
        return (
            name,
            f"{r['rps']:.0f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{f['rps'] / r['rps']:.2f}x",
            f"{r['p50_ms'] / f['p50_ms']:.2f}x",
            f"{r['server_cpu_ms']:.2f}",
            f"{r['pg_cpu_ms']:.2f}",
            f"{r['bench_cpu_ms']:.2f}",
        )

    rows = [
        (
            "",
            "req/s",
            "p50 ms",
            "p99 ms",
            "floor/x req/s",
            "x/floor p50",
            "server CPU ms/req",
            "PG CPU ms/req",
            "bench CPU ms/req",
        ),
        line("endpoint (HTTP)", "endpoint"),
        line("  access log off", "endpoint_no_access_log"),
    ]
    for n, folder in enumerate(args.baseline):
        rows.append(line(f"  {folder}", baseline_key(n)))
    rows.append(line("floor (psycopg)", "floor_psycopg"))
    print_table(
        f"batch-status: {args.sessions} sessions, {args.clients} clients, 500 ids/request, "
        f"median of {args.rounds} round(s)",
        rows,
    )
    print(f"\naccess log cost (req/s off / on): {report['access_log_cost_rps']:.3f}x")
    print(
        f"access log cost (server CPU per request on / off): {report['access_log_cost_cpu']:.3f}x"
    )
    print(
        f"one access line, alone: {report['access_line_cpu_us']:.1f} µs of CPU, "
        f"{report['access_line_share_of_server_cpu']:.1%} of the server's CPU per request"
    )
    print(f"loadavg per round: {report['loadavg']}")
    print(f"written to {write_report('batch_status', report)}")


if __name__ == "__main__":
    main()
