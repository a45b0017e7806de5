"""Benchmark: what the lifecycle NOTIFY costs, in one run.

Lifecycle updates per second, each its own commit as a worker's stage writes are, moving
sessions queued → downloading → parsing → summarizing → summarized from several connections
at once, with the `sessions_notify` trigger (and a LISTEN connection draining what it sends,
as a server's hub does) against the same with the trigger disabled. The version bump and the
state machine (`sessions_lifecycle_guard`) run in both: only the notification differs.

Rounds alternate (with, without, with, ...) on fresh sessions and the best of each is kept,
so a neighbour's load hits both sides alike. Two commit modes: durable (the default, every
commit waits for its WAL flush, as in production) and `synchronous_commit = off` (no flush
wait: the CPU cost alone, the harder test for the trigger).

    uv run python -m bench.notify_cost [--sessions 2000] [--connections 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from typing import Any

import psycopg

from bench.common import bench_database, print_table, write_report

STEPS = ["downloading", "parsing", "summarizing", "summarized"]
UPDATE = "UPDATE sessions SET lifecycle = %s WHERE owner = %s AND id = %s"
# The statements of one pipeline sync: each still its own transaction (autocommit).
PIPELINE_DEPTH = 50


def insert_sessions(dsn: str, owner: str, count: int) -> list[str]:
    ids = [f"s{n}" for n in range(count)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sessions (owner, id, transcript_key, transcript_size, transcript_sha256)"
            " SELECT %s, id, 'k', 1, repeat('a', 64) FROM unnest(%s::text[]) AS id",
            (owner, ids),
        )
    return ids


def drive(dsn: str, owner: str, ids: list[str], synchronous: bool) -> None:
    """Move each session through every step, one commit per update (pipelined, so that the
    client's round trips do not hide the database's cost)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not synchronous:
            conn.execute("SET synchronous_commit = off")
        for step in STEPS:
            for start in range(0, len(ids), PIPELINE_DEPTH):
                with conn.pipeline():
                    for session_id in ids[start : start + PIPELINE_DEPTH]:
                        conn.execute(UPDATE, (step, owner, session_id))


def listen(dsn: str, ready: Any, stop: Any, received: Any) -> None:
    """A hub's LISTEN connection, in a process of its own, counting what it receives."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("LISTEN session_lifecycle")
        ready.set()
        while not stop.is_set():
            for _ in conn.notifies(timeout=0.2):
                received.value += 1


def one_round(
    dsn: str, owner: str, sessions: int, connections: int, synchronous: bool
) -> tuple[float, int]:
    """(updates/s, notifications received) for one round. Each connection drives its share
    from a process of its own, so no Python lock stands between them."""
    ids = insert_sessions(dsn, owner, sessions)
    ctx = multiprocessing.get_context("fork")
    ready, stop, received = ctx.Event(), ctx.Event(), ctx.Value("q", 0)
    listener = ctx.Process(target=listen, args=(dsn, ready, stop, received))
    listener.start()
    ready.wait(10)
    drivers = [
        ctx.Process(target=drive, args=(dsn, owner, ids[n::connections], synchronous))
        for n in range(connections)
    ]
    started = time.perf_counter()
    for proc in drivers:
        proc.start()
    for proc in drivers:
        proc.join()
    elapsed = time.perf_counter() - started
    time.sleep(0.5)  # let the listener drain what is left
    stop.set()
    listener.join(5)
    return sessions * len(STEPS) / elapsed, int(received.value)


def set_trigger(dsn: str, enabled: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE sessions ENABLE TRIGGER sessions_notify"
            if enabled
            else "ALTER TABLE sessions DISABLE TRIGGER sessions_notify"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000, help="sessions per round")
    parser.add_argument("--connections", type=int, default=4, help="updating connections")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each (best kept)")
    args = parser.parse_args()

    results: dict[str, dict[str, Any]] = {}
    with bench_database("sessionflow_bench_notify_cost") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        version = row[0] if row else "?"
        modes = [("durable", True), ("synchronous_commit off", False)]
        for mode, synchronous in modes:
            best = {True: 0.0, False: 0.0}
            notes = {True: 0, False: 0}
            for n in range(args.rounds):
                for notify in (True, False):
                    set_trigger(dsn, notify)
                    owner = f"{mode}-{notify}-{n}"
                    print(f"{mode}, NOTIFY {'on' if notify else 'off'}, round {n + 1} ...")
                    rate, received = one_round(
                        dsn, owner, args.sessions, args.connections, synchronous
                    )
                    best[notify] = max(best[notify], rate)
                    notes[notify] = received
            set_trigger(dsn, True)
            results[mode] = {
                "with_notify": best[True],
                "without_notify": best[False],
                "ratio": best[True] / best[False],
                "notifications_per_round": notes[True],
                "notifications_without": notes[False],
            }

    print_table(
        f"Lifecycle updates/s, {args.connections} connections (PostgreSQL {version})",
        [
            ("commits", "with NOTIFY", "without", "with / without", "notified"),
            *(
                (
                    mode,
                    f"{r['with_notify']:.0f}",
                    f"{r['without_notify']:.0f}",
                    f"{100 * r['ratio']:.0f}%",
                    f"{r['notifications_per_round']}/{args.sessions * len(STEPS)}",
                )
                for mode, r in results.items()
            ),
        ],
    )
    path = write_report(
        "notify_cost",
        {
            "postgres": version,
            "sessions": args.sessions,
            "connections": args.connections,
            **results,
        },
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
