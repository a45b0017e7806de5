"""Benchmark: the pipeline worker, in one run.

1. Pickup latency, from the enqueue's commit (as the enqueuing client sees it return) to the
   claim (clock_timestamp() in a trigger on the claiming UPDATE; same machine, same clock):
   woken by LISTEN/NOTIFY, and with the safety poll alone.
2. Throughput in sessions/s for 1 and 2 `sessionflow worker` processes on generated Claude
   Code transcripts of 50 KB to 2 MB, against the floor of parsing the same files in a plain
   loop (one process, and two processes taking the next file as they finish one), the best of
   three tries measured just before each run. On a shared machine wall-clock ratios swing with
   the neighbours' load, so the CPU each part spent is measured too (worker event loops,
   parser processes, PostgreSQL when it runs here, less the server processes of this
   benchmark's own connections): "of floor, by CPU" is the share of the floor a CPU-bound
   machine would reach.
3. Memory: peak RSS a worker process gains while it processes one big transcript.

    uv run python -m bench.worker [--samples 200] [--sessions 150] [--big-mb 200]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench.common import bench_database, percentile, print_table, write_report
from sessionflow.queries import Q
from sessionflow.samples import iter_transcript_lines, log_uniform_sizes
from sessionflow.storage import LocalStore, transcript_key
from sessionflow.worker.parse import parse_transcript, read_lines

CLAIM_LOG = """
CREATE TABLE bench_claims (owner text, id text, claimed_at timestamptz);
CREATE FUNCTION bench_log_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.lease_token IS NOT NULL AND NEW.lease_token IS DISTINCT FROM OLD.lease_token THEN
        INSERT INTO bench_claims VALUES (NEW.owner, NEW.id, clock_timestamp());
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_log_claim AFTER UPDATE ON sessions
    FOR EACH ROW EXECUTE FUNCTION bench_log_claim();
"""
# The claim log is the pickup measurement's alone: it would add its own work to every UPDATE
# of the throughput runs.
CLAIM_LOG_DROP = "DROP TRIGGER bench_log_claim ON sessions"


class Corpus:
    """Transcripts written once into a local store, enqueued as often as needed."""

    def __init__(self, root: Path) -> None:
        self.store = LocalStore(root / "store")
        self.files: list[tuple[Path, str, int]] = []  # (path in the store, sha256, size)

    def add(self, lines: Iterator[bytes]) -> tuple[Path, str, int]:
        staged = self.store.staging_dir() / f"gen-{len(self.files)}.part"
        hasher = hashlib.sha256()
        size = 0
        with staged.open("wb") as out:
            for line in lines:
                hasher.update(line)
                out.write(line)
                size += len(line)
        sha256 = hasher.hexdigest()
        self.store.put_file(transcript_key(sha256), staged)
        entry = (self.store.root / transcript_key(sha256), sha256, size)
        self.files.append(entry)
        return entry


def enqueue(conn: psycopg.Connection[Any], owner: str, ids: list[str], corpus: Corpus) -> float:
    """Queue one session per id (cycling through the corpus) in one transaction; returns the
    wall-clock time at which its commit returned."""
    with conn.transaction():
        for i, session_id in enumerate(ids):
            _, sha256, size = corpus.files[i % len(corpus.files)]
            conn.execute(
                Q.session_ingest,
                {
                    "owner": owner,
                    "id": session_id,
                    "key": transcript_key(sha256),
                    "size": size,
                    "sha256": sha256,
                    "force": True,
                    "files": None,
                },
            )
    return time.time()


def wait_terminal(
    conn: psycopg.Connection[Any], owner: str, count: int, limit: float, every: float = 0.02
) -> None:
    """Wait until count sessions of owner are final, asking every `every` seconds."""
    deadline = time.monotonic() + limit
    while True:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE lifecycle IN ('parsed', 'summarized', 'failed')), "
            "count(*) FILTER (WHERE lifecycle = 'failed') FROM sessions WHERE owner = %s",
            (owner,),
        ).fetchone()
        assert row is not None
        if row[0] >= count:
            if row[1]:
                raise RuntimeError(f"{row[1]} sessions of {owner} failed")
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {row[0]} of {count} sessions of {owner} finished")
        time.sleep(every)


@contextmanager
def worker_processes(
    dsn: str, corpus: Corpus, count: int, folder: Path, **settings: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = {
        **os.environ,
        "SESSIONFLOW_DATABASE_URL": dsn,
        "SESSIONFLOW_STORAGE_URL": corpus.store.url,
        **{f"SESSIONFLOW_{k.upper()}": v for k, v in settings.items()},
    }
    procs = []
    for n in range(count):
        data_dir = folder / f"worker-{n}-{time.monotonic_ns()}"
        data_dir.mkdir(parents=True)
        log = (data_dir / "worker.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "sessionflow", "worker", "--data-dir", str(data_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "sessionflow worker ... processing sessions"
        if b"processing sessions" not in line:
            log.close()
            raise RuntimeError(
                f"the worker did not start:\n{(data_dir / 'worker.log').read_text()[-2000:]}"
            )
        procs.append(proc)
    try:
        yield procs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- CPU accounting -------------------------------------------------------------------------


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpu_by_pid(processes: list[psutil.Process]) -> dict[int, float]:
    seconds = {}
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
    return seconds


def postmaster_pid(dsn: str) -> int | None:
    """The bench server's postmaster, when it runs on this machine (to count its CPU)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None
        return int((Path(row[0]) / "postmaster.pid").read_text().split()[0])
    except (psycopg.Error, OSError, ValueError, AssertionError):
        return None


class CpuMeter:
    """CPU seconds spent between start() and stop() by the workers' event loops, their parser
    processes, PostgreSQL (its whole process tree) and this benchmark (its own process, and the
    server processes of its own connections: enqueueing and polling are not the pipeline's)."""

    def __init__(
        self,
        workers: list[subprocess.Popen[bytes]],
        postmaster: int | None,
        bench_backends: list[int],
    ) -> None:
        self.workers = [proc.pid for proc in workers]
        self.postmaster = postmaster
        self.bench_backends = set(bench_backends)

    def _groups(self) -> dict[str, list[psutil.Process]]:
        trees = [_tree(pid) for pid in self.workers]
        postgres = _tree(self.postmaster) if self.postmaster else []
        return {
            "worker_loop": [tree[0] for tree in trees if tree],
            "parser_processes": [p for tree in trees for p in tree[1:]],
            "postgres": [p for p in postgres if p.pid not in self.bench_backends],
            "benchmark": [psutil.Process(), *(p for p in postgres if p.pid in self.bench_backends)],
        }

    def _sample(self) -> dict[str, dict[int, float]]:
        return {name: _cpu_by_pid(group) for name, group in self._groups().items()}

    def start(self) -> None:
        self.before = self._sample()

    def stop(self) -> dict[str, float]:
        """Seconds by group (a process that started meanwhile counts from zero)."""
        after = self._sample()
        return {
            name: sum(s - self.before[name].get(pid, 0.0) for pid, s in after[name].items())
            for name in after
        }


# -- 1. pickup latency ------------------------------------------------------------------------


def pickup_latencies(
    dsn: str, corpus: Corpus, folder: Path, samples: int, *, listen: bool, poll: float
) -> list[float]:
    owner = f"pickup-{'listen' if listen else 'poll'}"
    rng = random.Random(7)
    latencies = []
    with (
        worker_processes(
            dsn,
            corpus,
            1,
            folder,
            worker_concurrency="1",
            worker_listen=str(listen).lower(),
            worker_poll_seconds=str(poll),
        ),
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        for n in range(samples):
            # Idle a moment, as a worker waiting for work does, at a random phase of its poll.
            time.sleep(rng.uniform(0.02, 0.08) if listen else rng.uniform(0, poll))
            committed = enqueue(conn, owner, [f"p{n}"], corpus)
            wait_terminal(conn, owner, n + 1, limit=max(30, 3 * poll))
            row = conn.execute(
                "SELECT max(claimed_at) FROM bench_claims WHERE owner = %s AND id = %s",
                (owner, f"p{n}"),
            ).fetchone()
            assert row is not None
            claimed: datetime = row[0]
            latencies.append(claimed.timestamp() - committed)
    return latencies


# -- 2. throughput ------------------------------------------------------------------------------


def parse_file(path: str) -> float:
    """Parse one file; returns the CPU seconds it took."""
    return parse_files([path])


def parse_files(paths: list[str]) -> float:
    """Parse each file in a plain loop; returns the CPU seconds it took."""
    started = time.process_time()
    for path in paths:
        with open(path, "rb") as stream:
            parse_transcript(read_lines(stream))
    return time.process_time() - started


def parsing_floor(corpus: Corpus, processes: int, tries: int = 3) -> tuple[float, float]:
    """(sessions/s, CPU ms per session) of parsing the corpus in a plain loop, over processes
    that take the next file as they finish one (fixed shares of files of such different sizes
    leave one process idle while the other still works). The best of a few tries: what parsing
    allows, not what a busy neighbour left of it."""
    paths = [str(path) for path, _, _ in corpus.files]
    parse_files(paths)  # warm the page cache and imports
    ctx = multiprocessing.get_context("fork")
    best = (0.0, 0.0)
    with ctx.Pool(processes) as pool:
        pool.map(parse_files, [paths[:1]] * processes)  # processes started before timing
        for _ in range(tries):
            start = time.perf_counter()
            cpu = sum(pool.imap_unordered(parse_file, paths, chunksize=1))
            elapsed = time.perf_counter() - start
            if len(paths) / elapsed > best[0]:
                best = (len(paths) / elapsed, 1000 * cpu / len(paths))
    return best


def worker_throughput(
    dsn: str, corpus: Corpus, folder: Path, processes: int, run: int
) -> tuple[float, float, dict[str, float]]:
    """(sessions/s, seconds, CPU ms per session by part) for processes workers to take the
    whole corpus to the end."""
    owner = f"throughput-{processes}-{run}"
    ids = [f"t{n}" for n in range(len(corpus.files))]
    with (
        worker_processes(dsn, corpus, processes, folder) as procs,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        meter = CpuMeter(procs, postmaster_pid(dsn), [conn.info.backend_pid])
        meter.start()
        committed = enqueue(conn, owner, ids, corpus)
        # Asked seldom: on two cores the asking would take CPU from what is measured (the
        # time comes from the sessions' finished_at, not from when this sees them).
        wait_terminal(conn, owner, len(ids), limit=600, every=0.25)
        cpu = meter.stop()
        row = conn.execute(
            "SELECT max(finished_at) FROM sessions WHERE owner = %s", (owner,)
        ).fetchone()
        assert row is not None
        elapsed = row[0].timestamp() - committed
    per_session = {name: 1000 * seconds / len(ids) for name, seconds in cpu.items()}
    return len(ids) / elapsed, elapsed, per_session


# -- 3. memory ---------------------------------------------------------------------------------


def peak_memory(dsn: str, folder: Path, megabytes: int) -> dict[str, float]:
    """The most any process of a worker (its loop, its parser) gains in peak RSS while it
    processes one transcript of about megabytes."""
    corpus = Corpus(folder / "big")
    rng = random.Random(11)
    _, _, size = corpus.add(iter_transcript_lines(rng, megabytes * 1_000_000))
    with (
        worker_processes(dsn, corpus, 1, folder, worker_concurrency="1") as [proc],
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        time.sleep(0.5)
        processes = _tree(proc.pid)
        before = {p.pid: _status_kb(p.pid, "VmRSS") for p in processes}
        enqueue(conn, "big", ["big"], corpus)
        wait_terminal(conn, "big", 1, limit=600)
        gains = {p.pid: _status_kb(p.pid, "VmHWM") - before[p.pid] for p in processes}
        row = conn.execute(
            "SELECT pg_column_size(parse_result) FROM sessions WHERE owner = 'big'"
        ).fetchone()
    assert row is not None
    return {
        "transcript_mb": size / 1e6,
        "rss_before_mb": max(before.values()) / 1024,
        "peak_gain_mb": max(gains.values()) / 1024,
        "parse_result_kb": row[0] / 1024,
    }


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# -- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="pickups measured with NOTIFY")
    parser.add_argument("--poll-samples", type=int, default=30, help="pickups, poll only")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="the poll interval")
    parser.add_argument("--sessions", type=int, default=150, help="transcripts for throughput")
    parser.add_argument("--runs", type=int, default=2, help="throughput runs (best kept)")
    parser.add_argument("--big-mb", type=int, default=200, help="memory run size (0: skip)")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="sessionflow-bench-worker-") as tmp,
        bench_database("sessionflow_bench_worker") as dsn,
    ):
        folder = Path(tmp)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(CLAIM_LOG)

        tiny = Corpus(folder / "tiny")
        tiny.add(iter_transcript_lines(random.Random(1), 3_000))
        print(f"pickup latency: {args.samples} with LISTEN/NOTIFY ...", flush=True)
        notify = pickup_latencies(dsn, tiny, folder, args.samples, listen=True, poll=5.0)
        print(f"pickup latency: {args.poll_samples} with the poll alone ...", flush=True)
        polled = pickup_latencies(
            dsn, tiny, folder, args.poll_samples, listen=False, poll=args.poll_seconds
        )

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(CLAIM_LOG_DROP)
        print(f"generating {args.sessions} transcripts of 50 KB to 2 MB ...", flush=True)
        corpus = Corpus(folder / "corpus")
        rng = random.Random(3)
        sizes = log_uniform_sizes(50_000, 2_000_000)
        for _ in range(args.sessions):
            corpus.add(iter_transcript_lines(rng, sizes(rng)))
        total_mb = sum(size for _, _, size in corpus.files) / 1e6

        results: dict[int, dict[str, float]] = {}
        for processes in (1, 2):
            best: dict[str, float] = {}
            for run in range(args.runs):
                print(f"throughput: {processes} worker process(es), run {run + 1} ...", flush=True)
                floor, floor_cpu_ms = parsing_floor(corpus, processes)
                rate, elapsed, cpu = worker_throughput(dsn, corpus, folder, processes, run)
                if not best or rate / floor > best["ratio"]:
                    pipeline_cpu_ms = sum(ms for name, ms in cpu.items() if name != "benchmark")
                    best = {
                        "floor": floor,
                        "rate": rate,
                        "seconds": elapsed,
                        "ratio": rate / floor,
                        "parse_alone_cpu_ms": floor_cpu_ms,
                        # The share of the floor a CPU-bound machine would reach: the CPU
                        # parsing alone needs over all the CPU the pipeline spent.
                        "cpu_ratio": floor_cpu_ms / pipeline_cpu_ms,
                        **{f"cpu_ms_{name}": ms for name, ms in cpu.items()},
                    }
            results[processes] = best

        memory = peak_memory(dsn, folder, args.big_mb) if args.big_mb else None

    ms = 1000
    print_table(
        "Pickup latency, enqueue commit → claim",
        [
            ("wake-up", "samples", "p50", "p99", "max"),
            (
                "LISTEN/NOTIFY",
                str(len(notify)),
                f"{percentile(notify, 50) * ms:.1f} ms",
                f"{percentile(notify, 99) * ms:.1f} ms",
                f"{max(notify) * ms:.1f} ms",
            ),
            (
                f"poll alone ({args.poll_seconds:g} s)",
                str(len(polled)),
                f"{percentile(polled, 50) * ms:.0f} ms",
                f"{percentile(polled, 99) * ms:.0f} ms",
                f"{max(polled) * ms:.0f} ms",
            ),
        ],
    )
    print_table(
        f"Throughput, {len(corpus.files)} transcripts of 50 KB–2 MB ({total_mb:.0f} MB)",
        [
            ("worker processes", "sessions/s", "parsing floor", "of floor", "of floor, by CPU"),
            *(
                (
                    str(n),
                    f"{r['rate']:.1f}",
                    f"{r['floor']:.1f}",
                    f"{100 * r['ratio']:.0f}%",
                    f"{100 * r['cpu_ratio']:.0f}%",
                )
                for n, r in results.items()
            ),
        ],
    )
    print_table(
        "CPU per session (ms), best run of each",
        [
            ("worker processes", "parsers", "event loops", "PostgreSQL", "bench", "parse alone"),
            *(
                (
                    str(n),
                    f"{r['cpu_ms_parser_processes']:.1f}",
                    f"{r['cpu_ms_worker_loop']:.1f}",
                    f"{r['cpu_ms_postgres']:.1f}",
                    f"{r['cpu_ms_benchmark']:.1f}",
                    f"{r['parse_alone_cpu_ms']:.1f}",
                )
                for n, r in results.items()
            ),
        ],
    )
    if memory:
        print_table(
            "Memory of one worker process on one big transcript",
            [
                ("transcript", "RSS before", "peak gain", "parse result"),
                (
                    f"{memory['transcript_mb']:.0f} MB",
                    f"{memory['rss_before_mb']:.0f} MB",
                    f"{memory['peak_gain_mb']:.1f} MB",
                    f"{memory['parse_result_kb']:.1f} KB",
                ),
            ],
        )
    path = write_report(
        "worker",
        {
            "cpus": os.cpu_count(),
            "pickup_notify_seconds": {
                "p50": percentile(notify, 50),
                "p99": percentile(notify, 99),
                "max": max(notify),
                "samples": len(notify),
            },
            "pickup_poll_seconds": {
                "poll_seconds": args.poll_seconds,
                "p50": percentile(polled, 50),
                "p99": percentile(polled, 99),
                "max": max(polled),
                "samples": len(polled),
            },
            "throughput": {
                "sessions": len(corpus.files),
                "corpus_mb": total_mb,
                **{f"{n}_processes": r for n, r in results.items()},
            },
            "memory": memory,
        },
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
