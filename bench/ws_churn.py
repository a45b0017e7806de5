"""Benchmark: does a server's memory follow its WebSocket connections back down?

Rounds of `--burst` WebSocket connections opened at once against a real `sessionflow serve`
(no worker), each watching a few sessions, reading its snapshot and closing. After each round,
once every connection of it is closed, the server's resident memory. A leak grows with every
round; an allocator's high-water mark rises over the first rounds and then stays. The figure
reported is the growth over the last half of the rounds against the growth over the first
half (near 0: a plateau).

    uv run python -m bench.ws_churn [--rounds 10] [--burst 500]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import tempfile
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from bench.common import (
    bench_database,
    make_token,
    print_table,
    rss_bytes,
    server_process,
    write_report,
)
from sessionflow.client.watch import websocket_url

OWNER = "churn"
SESSIONS = 5


async def watch_once(url: str, token: str, ids: list[str]) -> None:
    async with connect(
        websocket_url(url), additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        await ws.send(json.dumps({"type": "watch", "session_ids": ids}))
        await ws.recv()  # the snapshot


async def churn(url: str, token: str, pid: int, rounds: int, burst: int) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:
        for n in range(SESSIONS):
            data = b'{"type":"user","message":{"role":"user","content":"hello"}}\n'
            response = await client.put(
                f"/api/sessions/churn-{n}/transcript",
                content=data,
                headers={"X-Content-SHA256": hashlib.sha256(data).hexdigest()},
            )
            response.raise_for_status()
    ids = [f"churn-{n}" for n in range(SESSIONS)] + ["never-uploaded"]
    rss: list[float] = []
    for n in range(rounds):
        await asyncio.gather(*(watch_once(url, token, ids) for _ in range(burst)))
        await asyncio.sleep(1)  # the server has seen every close
        rss.append(rss_bytes(pid) / 2**20)
        print(f"round {n + 1}: {(n + 1) * burst} connections, server RSS {rss[-1]:.1f} MiB")
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--burst", type=int, default=500, help="connections opened at once")
    args = parser.parse_args()
    if args.rounds < 4:
        parser.error("--rounds must be at least 4: the figure compares two halves")
    with (
        tempfile.TemporaryDirectory(prefix="sessionflow-bench-churn-") as tmp,
        bench_database("sessionflow_bench_churn") as dsn,
    ):
        token = make_token(dsn, OWNER)
        env = {"SESSIONFLOW_ACCESS_LOG": "false"}
        with server_process(dsn, Path(tmp), "--no-worker", env=env) as (url, proc):
            rss = asyncio.run(churn(url, token, proc.pid, args.rounds, args.burst))
    half = args.rounds // 2
    first, last = rss[half - 1] - rss[0], rss[-1] - rss[half - 1]
    report = {
        "rounds": args.rounds,
        "burst": args.burst,
        "rss_mib": rss,
        "growth_first_half_mib": first,
        "growth_last_half_mib": last,
        "ratio_last_over_first": last / first if first > 0 else None,
    }
    print_table(
        f"WebSocket churn: {args.rounds} rounds of {args.burst} connections at once",
        [
            ("", "server RSS growth"),
            (f"rounds 1-{half}", f"{first:+.1f} MiB"),
            (f"rounds {half}-{args.rounds}", f"{last:+.1f} MiB"),
        ],
    )
    print(f"\nwritten to {write_report('ws_churn', report)}")


if __name__ == "__main__":
    main()
