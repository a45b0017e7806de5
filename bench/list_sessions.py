"""Benchmark: GET /api/sessions (the listing) on 100,000 sessions of one owner, first page and a
deep page, with and without filters, against the same statement sent straight through psycopg
(the floor) in the same run.

The rows are inserted directly (realistic parse results of ~2 KB, 10 projects, two years of
times, 5% failed), beside 20,000 sessions of another owner. One client asks one page after
another over a keep-alive connection to a real `sessionflow serve --no-worker`; the floor asks
the same pages on one connection with a prepared statement. Each page is 50 sessions.

    uv run python -m bench.list_sessions [--sessions 100000] [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg

from bench.common import (
    bench_database,
    make_token,
    percentile,
    print_table,
    server_process,
    write_report,
)
from sessionflow.queries import Q
from sessionflow.server.listing import Listing, encode_cursor, listing

OWNER = "bench"
PAGE = 50
PROJECTS = [f"project-{i}" for i in range(10)]
END = datetime(2026, 11, 1, tzinfo=UTC)


def load_sessions(dsn: str, count: int, others: int) -> None:
    rng = random.Random(11)
    filler = [f"src/module_{i}/file_{i}.py" for i in range(40)]
    rows = []
    for owner, n in ((OWNER, count), ("someone-else", others)):
        for i in range(n):
            at = END - timedelta(seconds=rng.randint(0, 2 * 365 * 86400))
            state = "failed" if rng.random() < 0.05 else rng.choice(["summarized", "parsed"])
            project = rng.choice(PROJECTS)
            result = {
                "parse_status": "ok",
                "cwd": f"/home/u/src/{project}",
                "first_prompt": f"Fix the bug number {i} in the thing that does the stuff",
                "user_prompts": rng.randint(1, 30),
                "last_timestamp": at.isoformat(),
                "duration_seconds": rng.randint(10, 20000),
                "tokens": {
                    "input": rng.randint(0, 10**5),
                    "output": rng.randint(0, 10**5),
                    "cache_read": rng.randint(0, 10**6),
                    "cache_creation": rng.randint(0, 10**5),
                },
                "cost_usd": round(rng.random() * 5, 4),
                "files_touched": filler,
            }
            summary = {"title": f"Session {i} of {project}", "text": "x" * 300}
            rows.append(
                (
                    owner,
                    f"{rng.getrandbits(128):032x}",
                    state,
                    json.dumps({"project": f"-home-u-src-{project}", "modified": at.isoformat()}),
                    json.dumps(result),
                    json.dumps(summary) if state == "summarized" else None,
                    at,
                )
            )
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Bulk load without the triggers (100k NOTIFYs would measure nothing useful here), so
        # active_at is given as the trigger would compute it: the transcript's last timestamp.
        conn.execute("SET session_replication_role = replica")
        with conn.cursor().copy(
            "COPY sessions (owner, id, lifecycle, parse_status, version, transcript_key, "
            "transcript_size, transcript_sha256, metadata, parse_result, summary, active_at) "
            "FROM STDIN"
        ) as copy:
            for n, (owner, sid, state, meta, result, summary, at) in enumerate(rows):
                copy.write_row(
                    (owner, sid, state, "ok", n, "k", 1000, "a" * 64, meta, result, summary, at)
                )
        conn.execute("VACUUM ANALYZE sessions")


def scenarios(dsn: str) -> list[dict[str, Any]]:
    """Each scenario: its filters, and the cursor of its deep page (the middle of what the
    filters select), both as the endpoint takes them and as the query does."""
    since = END - timedelta(days=30)
    plans = [
        ("no filter", None, None, []),
        ("--state failed", None, None, ["failed"]),
        ("--project", "project-3", None, []),
        ("--project --state failed", "project-3", None, ["failed"]),
        ("--since 30 days", None, since, []),
    ]
    out = []
    with psycopg.connect(dsn) as conn:
        for name, project, since_at, states in plans:
            wanted = listing(OWNER, project, since_at, states)
            query = Q.list_sessions if project is None else Q.list_sessions_in_project
            rows = conn.execute(query, wanted.params(None, 10**9)).fetchall()
            middle = rows[len(rows) // 2]
            after = (middle[3], middle[0])
            plan = conn.execute(
                b"EXPLAIN (FORMAT JSON) " + query.encode(), wanted.params(after, PAGE + 1)
            ).fetchone()
            assert plan is not None
            out.append(
                {
                    "name": name,
                    "listing": wanted,
                    "query": query,
                    "matching": len(rows),
                    "after": after,
                    "cursor": encode_cursor(wanted, after[0], after[1]),
                    "index": index_used(plan[0][0]["Plan"]),
                    "params": {
                        k: v
                        for k, v in {
                            "project": project,
                            "since": since_at and since_at.isoformat(),
                            "state": states,
                            "limit": PAGE,
                        }.items()
                        if v
                    },
                }
            )
    return out


def index_used(node: dict[str, Any]) -> str:
    if "Index Name" in node:
        return str(node["Index Name"])
    for child in node.get("Plans", []):
        found = index_used(child)
        if found:
            return found
    return ""


class RawClient:
    """A lean keep-alive HTTP/1.1 client, so the load generator costs little CPU."""

    def __init__(self, url: str, token: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.file = self.sock.makefile("rb")
        self.token = token

    def get(self, path: str, expect: bytes = b" 200 ") -> bytes:
        head = f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {self.token}\r\n"
        self.sock.sendall(head.encode() + b"\r\n")
        status = self.file.readline()
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = self.file.read(length)
        if expect not in status:
            raise RuntimeError(f"{status!r} {body[:300]!r}")
        return body

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def timed(call: Any, requests: int) -> dict[str, float]:
    for _ in range(max(10, requests // 10)):  # warm-up, dropped
        call()
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return {
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def floor_call(conn: psycopg.Connection, query: Any, wanted: Listing, after: Any) -> Any:
    params = wanted.params(after, PAGE + 1)

    def call() -> None:
        conn.execute(query, params, prepare=True).fetchall()

    return call


def endpoint_call(client: RawClient, params: dict[str, Any], cursor: str | None) -> Any:
    query = urlencode({**params, **({"cursor": cursor} if cursor else {})}, doseq=True)
    path = f"/api/sessions?{query}"

    def call() -> None:
        body = client.get(path)
        assert json.loads(body)["sessions"]

    return call


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--others", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    results = []
    with bench_database("sessionflow_bench_list") as dsn, tempfile.TemporaryDirectory() as tmp:
        load_sessions(dsn, args.sessions, args.others)
        token = make_token(dsn, OWNER)
        cases = scenarios(dsn)
        with server_process(dsn, Path(tmp), "--no-worker") as (url, _proc):
            client = RawClient(url, token)
            with psycopg.connect(dsn, autocommit=True) as conn:
                for case in cases:
                    for depth, after, cursor in (
                        ("first", None, None),
                        ("deep", case["after"], case["cursor"]),
                    ):
                        # Interleaved in one run: the floor, then the endpoint, per page.
                        floor = timed(
                            floor_call(conn, case["query"], case["listing"], after),
                            args.requests,
                        )
                        endpoint = timed(
                            endpoint_call(client, case["params"], cursor), args.requests
                        )
                        results.append(
                            {
                                "filters": case["name"],
                                "page": depth,
                                "matching": case["matching"],
                                "index": case["index"],
                                "endpoint": endpoint,
                                "floor_psycopg": floor,
                                "ratio_p50": endpoint["p50_ms"] / floor["p50_ms"],
                                "ratio_p99": endpoint["p99_ms"] / floor["p99_ms"],
                            }
                        )
                # What any authenticated request costs this server (the token's lookup, the
                # middleware, one primary-key query): a session that is not there.
                fixed = timed(
                    lambda: client.get("/api/sessions/not-there", expect=b" 404 "), args.requests
                )
            client.close()
    report: dict[str, Any] = {
        "sessions": args.sessions,
        "other_owner_sessions": args.others,
        "page": PAGE,
        "results": results,
        "authenticated_404": fixed,
    }
    rows = [("filters", "page", "matching", "endpoint p50/p99 ms", "floor p50/p99 ms", "ratio")]
    for r in results:
        e, f = r["endpoint"], r["floor_psycopg"]
        rows.append(
            (
                str(r["filters"]),
                str(r["page"]),
                f"{r['matching']:,}",
                f"{e['p50_ms']:.2f} / {e['p99_ms']:.2f}",
                f"{f['p50_ms']:.2f} / {f['p99_ms']:.2f}",
                f"{r['ratio_p50']:.1f}x / {r['ratio_p99']:.1f}x",
            )
        )
    print_table(f"GET /api/sessions: {args.sessions:,} sessions, pages of {PAGE}, one client", rows)
    print(
        "\nany authenticated request (GET /api/sessions/ID, a 404): "
        f"{fixed['p50_ms']:.2f} / {fixed['p99_ms']:.2f} ms p50/p99"
    )
    print("\nindexes: " + ", ".join(f"{c['filters']}: {c['index']}" for c in results[::2]))
    print(f"written to {write_report('list_sessions', report)}")


if __name__ == "__main__":
    main()
