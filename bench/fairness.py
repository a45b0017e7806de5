"""Benchmark: fair claiming across owners, in one run.

Owner A queues a backlog (20,000 sessions by default); while two `sessionflow worker`
processes drain it, owner B queues 10. Measured in the same run:

- B alone: B's 10 sessions on an idle queue, from their commit to the last one's final state
  (what B's own work takes);
- B behind A's backlog, with the fair claim: the same, while A's backlog drains;
- A's drain time from B's enqueue: how long B would have waited with the previous FIFO order,
  which took every session A queued earlier first (a lower bound: B's own work came after).

Sessions are queued with the statement the upload route runs (`session_ingest`), in one
transaction per owner, not uploaded over HTTP: uploading 20,000 transcripts would take this
machine minutes and measure the upload path instead. The transcripts are small (a few KB,
a handful of files reused), so the figures are about the queue, not the parser.

    uv run python -m bench.fairness [--backlog 20000] [--small 10] [--processes 2]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import psycopg

from bench.common import bench_database, print_table, write_report
from bench.worker import Corpus, enqueue, wait_terminal, worker_processes
from sessionflow.samples import iter_transcript_lines


def last_final(conn: psycopg.Connection, owner: str) -> float:
    row = conn.execute(
        "SELECT max(finished_at) FROM sessions WHERE owner = %s", (owner,)
    ).fetchone()
    assert row is not None and row[0] is not None
    return float(row[0].timestamp())


def finished(conn: psycopg.Connection, owner: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM sessions WHERE owner = %s AND finished_at IS NOT NULL", (owner,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=20_000, help="owner A's sessions")
    parser.add_argument("--small", type=int, default=10, help="owner B's sessions")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--head-start", type=int, default=500, help="A's sessions finished before B queues"
    )
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="sessionflow-bench-fairness-") as tmp,
        bench_database("sessionflow_bench_fairness") as dsn,
    ):
        folder = Path(tmp)
        corpus = Corpus(folder / "corpus")
        rng = random.Random(5)
        for _ in range(8):
            corpus.add(iter_transcript_lines(rng, rng.randint(2_000, 6_000)))

        with (
            worker_processes(dsn, corpus, args.processes, folder) as _procs,
            psycopg.connect(dsn, autocommit=True) as conn,
        ):
            # B's own work on an idle queue (same workers, warmed by a first round).
            enqueue(conn, "warm-up", [f"w{n}" for n in range(args.small)], corpus)
            wait_terminal(conn, "warm-up", args.small, limit=120)
            alone_at = enqueue(conn, "B-alone", [f"b{n}" for n in range(args.small)], corpus)
            wait_terminal(conn, "B-alone", args.small, limit=120)
            alone = last_final(conn, "B-alone") - alone_at

            print(f"queueing {args.backlog} sessions of owner A ...", flush=True)
            started = time.perf_counter()
            a_at = enqueue(conn, "A", [f"a{n}" for n in range(args.backlog)], corpus)
            queue_seconds = time.perf_counter() - started
            while finished(conn, "A") < min(args.head_start, args.backlog):
                time.sleep(0.05)
            b_at = enqueue(conn, "B", [f"b{n}" for n in range(args.small)], corpus)
            a_left = args.backlog - finished(conn, "A")
            wait_terminal(conn, "B", args.small, limit=600)
            b_fair = last_final(conn, "B") - b_at
            print(f"B done; waiting for the rest of A's {a_left} sessions ...", flush=True)
            wait_terminal(conn, "A", args.backlog, limit=3600)
            a_drain = last_final(conn, "A") - b_at
            a_rate = args.backlog / (last_final(conn, "A") - a_at)

    print_table(
        f"Owner B's {args.small} sessions, queued while owner A's {args.backlog} drain "
        f"({args.processes} worker processes)",
        [
            ("", "seconds", "vs B alone"),
            ("B alone, idle queue", f"{alone:.2f}", "1.0x"),
            ("B behind A's backlog, fair claim", f"{b_fair:.2f}", f"{b_fair / alone:.1f}x"),
            (
                f"A's drain from B's enqueue ({a_left} left; FIFO bound)",
                f"{a_drain:.1f}",
                f"{a_drain / alone:.0f}x",
            ),
        ],
    )
    print(f"\nA's backlog: queued in {queue_seconds:.1f} s, drained at {a_rate:.0f} sessions/s")
    path = write_report(
        "fairness",
        {
            "backlog": args.backlog,
            "small": args.small,
            "processes": args.processes,
            "b_alone_seconds": alone,
            "b_fair_seconds": b_fair,
            "a_left_at_b_enqueue": a_left,
            "a_drain_from_b_enqueue_seconds": a_drain,
            "a_rate": a_rate,
            "a_queue_seconds": queue_seconds,
        },
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
