"""Benchmark: POST /api/sessions/batch-status under load, against the floor of the same query
sent straight through psycopg, in one run.

100,000 sessions in the table; 16 concurrent clients each asking for 500 random ids (a tenth
of them unknown) over keep-alive connections to a real `sessionflow serve` process, as it
runs by default (access log on), and again with SESSIONFLOW_ACCESS_LOG=false to price that line.

    uv run python -m bench.batch_status [--sessions 100000] [--clients 16] [--seconds 10]
                                        [--rounds 3] [--baseline /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

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
from sessionflow.queries import Q
from sessionflow.tokens import hash_token

OWNER = "bench"


def load_sessions(dsn: str, count: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Bulk load without the triggers: 100k NOTIFYs would measure nothing useful here.
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            """
            INSERT INTO sessions (owner, id, lifecycle, parse_status, version, transcript_key,
                                  transcript_size, transcript_sha256)
            SELECT %s, 'session-' || g,
                   (ARRAY['summarized', 'parsed', 'queued', 'failed'])[g %% 4 + 1],
                   'ok', g, 'k', 1000, repeat('a', 64)
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
    dsn: str, token: str, id_batches: list[list[str]], stop_at: float, latencies: list[float]
) -> None:
    """The endpoint's one query (token check and lookup), straight through psycopg."""
    token_hash = hash_token(token)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        i = 0
        while time.perf_counter() < stop_at:
            ids = id_batches[i % len(id_batches)]
            i += 1
            started = time.perf_counter()
            cur = await conn.execute(
                Q.batch_status, {"token_hash": token_hash, "ids": json.dumps(ids)}, prepare=True
            )
            await cur.fetchall()
            latencies.append(time.perf_counter() - started)


async def run_phase(name: str, make_client, clients: int, seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    # One warm-up second, whose figures are dropped.
    warm: list[float] = []
    await asyncio.gather(*(make_client(time.perf_counter() + 1.0, warm) for _ in range(clients)))
    latencies: list[float] = []
    started = time.perf_counter()
    await asyncio.gather(*(make_client(started + seconds, latencies) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


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
    if args.baseline:
        variants["baseline_code"] = {"PYTHONPATH": args.baseline}
    runs: dict[str, list[dict[str, float]]] = {"floor_psycopg": [], **{v: [] for v in variants}}
    loads: list[list[str]] = []
    with bench_database("sessionflow_bench_batch") as dsn, tempfile.TemporaryDirectory() as tmp:
        load_sessions(dsn, args.sessions)
        token = make_token(dsn, OWNER)
        id_batches = [pick_ids(rng, args.sessions, 500) for _ in range(200)]
        bodies = [json.dumps({"session_ids": ids}).encode() for ids in id_batches]
        # Rounds interleave the floor and every variant, so that a neighbour's load on this
        # shared machine falls on all of them alike; the medians are reported.
        for n in range(args.rounds):
            print(f"round {n + 1} of {args.rounds}...", flush=True)
            loads.append(loadavg())
            runs["floor_psycopg"].append(
                await run_phase(
                    "floor",
                    lambda stop, lat: floor_client(dsn, token, id_batches, stop, lat),
                    args.clients,
                    args.seconds,
                )
            )
            for name, env in variants.items():
                with server_process(dsn, Path(tmp), "--no-worker", env=env) as (url, _proc):
                    host, port = url.removeprefix("http://").split(":")
                    runs[name].append(
                        await run_phase(
                            name,
                            functools.partial(http_client, host, int(port), token, bodies),
                            args.clients,
                            args.seconds,
                        )
                    )
        loads.append(loadavg())
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
    }
    if "baseline_code" in medians:
        before = medians["baseline_code"]
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
        help="a checkout of another version (its folder): its server runs in the same rounds",
    )
    args = parser.parse_args()
    if args.baseline:
        args.baseline = os.path.abspath(args.baseline)
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
        )

    rows = [
        ("", "req/s", "p50 ms", "p99 ms", "floor/x req/s", "x/floor p50"),
        line("endpoint (HTTP)", "endpoint"),
        line("  access log off", "endpoint_no_access_log"),
    ]
    if "baseline_code" in report:
        rows.append(line(f"  {args.baseline}", "baseline_code"))
    rows.append(line("floor (psycopg)", "floor_psycopg"))
    print_table(
        f"batch-status: {args.sessions} sessions, {args.clients} clients, 500 ids/request, "
        f"median of {args.rounds} round(s)",
        rows,
    )
    print(f"\naccess log cost (req/s off / on): {report['access_log_cost_rps']:.3f}x")
    print(f"loadavg per round: {report['loadavg']}")
    print(f"written to {write_report('batch_status', report)}")


if __name__ == "__main__":
    main()
