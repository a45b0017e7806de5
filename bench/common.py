"""What the benchmarks share: a PostgreSQL to run on, a server process, percentiles, reports.

Every benchmark measures its subject and a baseline in the same run and reports the ratio, so
figures from a shared, noisy machine still compare."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from sessionflow.db import migrate
from sessionflow.tokens import create_token

RESULTS = Path(__file__).parent / "results"


def percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def bench_database(name: str) -> Iterator[str]:
    """A fresh, migrated database: on SESSIONFLOW_BENCH_DATABASE_URL's server if set, else
    on an embedded PostgreSQL in a temporary folder."""
    admin = os.environ.get("SESSIONFLOW_BENCH_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="sessionflow-bench-") as tmp:
        if admin is None:
            from sessionflow.local import start_embedded

            admin = str(start_embedded(Path(tmp)).get_uri())
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        dsn = make_conninfo(admin, dbname=name)
        migrate(dsn)
        yield dsn


def make_token(dsn: str, owner: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return create_token(conn, owner)[1]


@contextmanager
def server_process(
    dsn: str, data_dir: Path, *extra_args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`sessionflow serve` in its own process on a free loopback port; yields (url, process)."""
    port = free_port()
    process_env = {**os.environ, "SESSIONFLOW_DATABASE_URL": dsn, **(env or {})}
    log = (data_dir / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sessionflow",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            *extra_args,
        ],
        stdout=log,
        stderr=log,
        env=process_env,
        # Not the current folder: `python -m` puts it first on sys.path, where a checkout
        # there would be imported instead of the code that PYTHONPATH (a baseline) names.
        cwd=data_dir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited; see {data_dir / 'server.log'}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready in 60 s")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def loadavg() -> list[str]:
    """The machine's load (1, 5 and 15 minutes), recorded beside every figure: the machine is
    shared, and a figure means little without it."""
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def write_report(name: str, report: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def print_table(title: str, rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"\n{title}")
    for n, row in enumerate(rows):
        print(
            "  "
            + "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
