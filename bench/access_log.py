"""Benchmark: what the access log costs a batch-status request, in one process.

Between server processes (bench/batch_status.py) the log's cost is smaller than the rounds'
swing on a shared machine. Here one app serves batch-status in process (its ASGI app driven
directly, 16 requests at a time, no HTTP), with the access log written as `serve` writes it
(text, through the logging setup of `serve`, to a file), and the log is turned on and off
between rounds of the same process, so that both halves see the same code, caches and
neighbours. Reported: CPU per request of this process (the server's part) and of PostgreSQL
(the bench database's processes), log on and off, and the difference as a share of each.

    uv run python -m bench.access_log [--sessions 100000] [--requests 1500] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import uvloop

from bench.batch_status import OWNER, cpu_seconds, load_sessions, pick_ids
from bench.common import bench_database, make_token, print_table, write_report
from bench.worker import postmaster_pid
from sessionflow.logs import configure_logging
from sessionflow.server.app import create_app
from sessionflow.server.batch_status import BATCH_STATUS_PATH
from sessionflow.server.requests import RequestContextMiddleware
from sessionflow.settings import Settings

CONCURRENCY = 16


async def _drive(app: Any, token: str, bodies: list[bytes], count: int) -> None:
    """count batch-status requests, CONCURRENCY at a time, through the app's ASGI call."""
    headers = [
        (b"host", b"bench"),
        (b"authorization", f"Bearer {token}".encode()),
        (b"content-type", b"application/json"),
    ]
    left = count

    async def one(body: bytes) -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": BATCH_STATUS_PATH,
            "raw_path": BATCH_STATUS_PATH.encode(),
            "query_string": b"",
            "root_path": "",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
        await app(scope, receive, send)
        if sent[0]["status"] != 200:
            raise RuntimeError(f"batch-status answered {sent[0]['status']}: {sent[1:]}")

    async def client(first: int) -> None:
        nonlocal left
        n = first
        while left > 0:
            left -= 1
            await one(bodies[n % len(bodies)])
            n += 1

    await asyncio.gather(*(client(k) for k in range(CONCURRENCY)))


async def _measure(
    dsn: str, token: str, bodies: list[bytes], requests: int, rounds: int, folder: Path
) -> dict[str, list[tuple[float, float]]]:
    settings = Settings(database_url=dsn, data_dir=folder / "data", ws_enabled=False)
    app: Any = create_app(settings, dsn, migrate_on_start=False)
    middleware = app.batch_status
    assert isinstance(middleware, RequestContextMiddleware)
    postmaster = postmaster_pid(dsn)
    assert postmaster is not None, "the bench database must run on this machine"
    postgres = psutil.Process(postmaster)
    samples: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
    async with app.router.lifespan_context(app):
        await _drive(app, token, bodies, requests // 5)  # warm: pool, prepared statements
        for n in range(rounds):
            # Each round measures both, in turn starting with one or the other.
            for variant in ("on", "off") if n % 2 == 0 else ("off", "on"):
                middleware.access_log = variant == "on"
                cpu, pg = time.process_time(), cpu_seconds(postgres)
                await _drive(app, token, bodies, requests)
                samples[variant].append(
                    (
                        (time.process_time() - cpu) / requests,
                        (cpu_seconds(postgres) - pg) / requests,
                    )
                )
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=1500, help="requests per half-round")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    rng = random.Random(7)
    with (
        tempfile.TemporaryDirectory(prefix="sessionflow-bench-access-") as tmp,
        bench_database("sessionflow_bench_access_log") as dsn,
    ):
        folder = Path(tmp)
        load_sessions(dsn, args.sessions)
        token = make_token(dsn, OWNER)
        bodies = [
            json.dumps({"session_ids": pick_ids(rng, args.sessions, 500)}).encode()
            for _ in range(200)
        ]
        configure_logging("text")
        log_file = (folder / "server.log").open("w")
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(log_file)
        samples = uvloop.run(_measure(dsn, token, bodies, args.requests, args.rounds, folder))
        log_file.close()
        lines = sum(1 for _ in (folder / "server.log").open())

    ms = 1000
    server = {k: statistics.median(s for s, _ in v) * ms for k, v in samples.items()}
    postgres = {k: statistics.median(p for _, p in v) * ms for k, v in samples.items()}
    cost = server["on"] - server["off"]
    print_table(
        f"The access log of batch-status, in one process: median of {args.rounds} rounds of "
        f"{args.requests} requests each way ({lines} lines written)",
        [
            ("access log", "server CPU ms/req", "PostgreSQL CPU ms/req"),
            *(
                (variant, f"{server[variant]:.3f}", f"{postgres[variant]:.3f}")
                for variant in ("on", "off")
            ),
        ],
    )
    share_server = cost / server["off"]
    share_request = cost / (server["off"] + postgres["off"])
    print(f"\nthe log's cost: {cost * 1000:.0f} µs of CPU a request")
    print(f"  {100 * share_server:.1f}% of the server's CPU per request")
    print(f"  {100 * share_request:.1f}% of a request's CPU (server and PostgreSQL)")
    path = write_report(
        "access_log",
        {
            "rounds": args.rounds,
            "requests_per_half_round": args.requests,
            "server_cpu_ms": server,
            "postgres_cpu_ms": postgres,
            "samples": samples,
            "cost_ms": cost,
            "share_of_server_cpu": share_server,
            "share_of_request_cpu": share_request,
        },
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
