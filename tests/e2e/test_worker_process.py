"""Worker processes for real: killed with SIGKILL mid-job, stopped with SIGTERM, and the
in-process worker of `sessionflow serve` on the embedded default."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from sessionflow.queries import Q
from sessionflow.samples import generate_transcript_bytes
from sessionflow.storage import open_store, transcript_key
from sessionflow.worker.parse import ParseResult
from sessionflow.worker.summarize import HeuristicSummarizer, Summary
from tests.helpers import LEASE_LOG, auth, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
OWNER = "alice"
GATE_ENV = "SESSIONFLOW_TEST_STALL_GATE"


class StallingSummarizer(HeuristicSummarizer):
    """Summarizes only once the file named by $SESSIONFLOW_TEST_STALL_GATE exists: a job that
    sits in `summarizing` for as long as a test needs (at most a minute)."""

    name = "stalling"

    def summarize(self, result: ParseResult) -> Summary:
        gate = Path(os.environ[GATE_ENV])
        deadline = time.monotonic() + 60
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return super().summarize(result)


STALLING = f"{__name__}:StallingSummarizer"


def wait_until(condition: Callable[[], Any], what: str, within: float = 60) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


class Workers:
    """`sessionflow worker` processes on one database and one store."""

    def __init__(self, db_dsn: str, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.db_dsn = db_dsn
        self.gate = tmp_path / "gate"
        self.storage_url = (tmp_path / "store").as_uri()
        self.env = {
            **os.environ,
            "SESSIONFLOW_DATABASE_URL": db_dsn,
            "SESSIONFLOW_STORAGE_URL": self.storage_url,
            "SESSIONFLOW_WORKER_LEASE_SECONDS": "2",
            "SESSIONFLOW_WORKER_POLL_SECONDS": "0.5",
            "SESSIONFLOW_WORKER_SHUTDOWN_GRACE_SECONDS": "0.5",
            "SESSIONFLOW_SUMMARIZER": STALLING,
            GATE_ENV: str(self.gate),
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "sessionflow", "worker", "--concurrency", "1"],
            cwd=REPO,
            env={**self.env, "SESSIONFLOW_DATA_DIR": str(self.tmp_path / name)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text()

    def enqueue(self, session_id: str, data: bytes) -> None:
        sha256 = hashlib.sha256(data).hexdigest()
        staged = self.tmp_path / f"{session_id}.upload"
        staged.write_bytes(data)
        open_store(self.storage_url).put_file(transcript_key(sha256), staged)
        with psycopg.connect(self.db_dsn, autocommit=True) as conn:
            conn.execute(
                Q.session_ingest,
                {
                    "owner": OWNER,
                    "id": session_id,
                    "key": transcript_key(sha256),
                    "size": len(data),
                    "sha256": sha256,
                    "force": False,
                    "files": None,
                },
            )

    def row(self, session_id: str) -> dict[str, Any]:
        with psycopg.connect(self.db_dsn, autocommit=True) as conn:
            cur = conn.execute(
                "SELECT lifecycle, attempts, lease_owner, s.lease_token, error, summary "
                "FROM sessions AS s JOIN jobs USING (owner, id) WHERE id = %s",
                (session_id,),
            )
            values = cur.fetchone()
            assert values is not None
            return dict(zip([d.name for d in cur.description or ()], values, strict=True))

    def stop_all(self) -> None:
        self.gate.touch()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(db_dsn: str, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(db_dsn, tmp_path)
    yield group
    group.stop_all()


def test_a_session_whose_worker_is_killed_mid_job_is_finished_by_another_never_by_two_at_once(
    workers: Workers, db_dsn: str
) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(LEASE_LOG)  # every claim and renewal, timed by the database
    first = workers.start("first")
    workers.enqueue("s1", generate_transcript_bytes(random.Random(1), 40_000))
    held = wait_until(
        lambda: (r := workers.row("s1"))["lifecycle"] == "summarizing" and r, "summarizing"
    )
    assert f":{first.pid}:" in held["lease_owner"]
    second = workers.start("second")  # running while the first holds the session
    helpers = psutil.Process(first.pid).children(recursive=True)  # its parser processes
    assert helpers

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    workers.gate.touch()
    done = wait_until(
        lambda: (r := workers.row("s1"))["lifecycle"] == "summarized" and r, "summarized"
    )

    assert done["attempts"] == 2
    assert done["lease_token"] is None
    assert done["summary"]["summarizer"] == "stalling"
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        log = conn.execute(
            "SELECT lease_owner, lease_token, max(lease_expires_at), min(at) "
            "FROM lease_log GROUP BY lease_owner, lease_token ORDER BY min(at)"
        ).fetchall()
    assert len(log) == 2, log  # two claims, one per worker
    (dead_owner, _, dead_expiry, _), (live_owner, _, _, live_claimed_at) = log
    assert f":{first.pid}:" in dead_owner
    assert f":{second.pid}:" in live_owner
    # The second worker took it only once the first one's last lease had run out.
    assert live_claimed_at >= dead_expiry
    assert "lost its lease" not in workers.log("second")
    # Nothing the killed worker started lives on after it.
    wait_until(lambda: not any(p.is_running() for p in helpers), "its parsers to end")


def test_sigterm_gives_a_running_job_back_and_exits_cleanly(workers: Workers) -> None:
    proc = workers.start("stopping")
    workers.enqueue("s2", generate_transcript_bytes(random.Random(2), 40_000))
    wait_until(lambda: workers.row("s2")["lifecycle"] == "summarizing", "summarizing")

    proc.send_signal(signal.SIGTERM)
    # Given back before the process ends: the attempt is refunded, the lease cleared.
    given_back = wait_until(
        lambda: (r := workers.row("s2"))["lease_token"] is None and r, "the job given back"
    )
    workers.gate.touch()  # lets the stalled thread end, so the process can exit
    assert proc.wait(timeout=30) == 0
    assert given_back["lifecycle"] == "summarizing"
    assert given_back["attempts"] == 0
    assert "given back for another worker" in workers.log("stopping")

    workers.start("successor")
    done = wait_until(
        lambda: (r := workers.row("s2"))["lifecycle"] == "summarized" and r, "summarized"
    )
    assert done["attempts"] == 1


def test_a_worker_with_an_unknown_summarizer_says_what_to_fix(workers: Workers) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sessionflow", "worker"],
        cwd=REPO,
        env={**workers.env, "SESSIONFLOW_SUMMARIZER": "nonsense"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Unknown summarizer 'nonsense'" in result.stderr
    assert "SESSIONFLOW_SUMMARIZER" in result.stderr


def stop_postmaster(pgdata: Path) -> None:
    """Stop the embedded PostgreSQL a killed serve left behind (a SIGTERM ends the process
    without its exit hooks, the ones that stop the server it started)."""
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().split()[0])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
        wait_until(lambda: not pid_file.exists(), "the embedded PostgreSQL to stop", within=30)


def test_serve_without_its_worker_leaves_sessions_to_separate_workers(
    workers: Workers, tmp_path: Path
) -> None:
    port = free_port()
    log_path = tmp_path / "serve-no-worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sessionflow", "serve", "--port", str(port), "--no-worker"],
            env={**workers.env, "SESSIONFLOW_DATA_DIR": str(tmp_path / "serve-data")},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "Application startup complete" in log_path.read_text(), "startup")
        workers.enqueue("s3", generate_transcript_bytes(random.Random(3), 20_000))
        workers.gate.touch()
        workers.start("separate")
        wait_until(lambda: workers.row("s3")["lifecycle"] == "summarized", "summarized")
        # The worker logs the outcome just after committing it: wait for the line, too.
        wait_until(
            lambda: "alice/s3 (attempt 1) is summarized" in workers.log("separate"),
            "the separate worker's log line",
        )
        assert "worker" not in log_path.read_text()  # serve started none
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_serve_on_the_embedded_default_processes_what_it_receives(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionflow", "serve", "--port", str(port)],
        env={**os.environ, "SESSIONFLOW_DATA_DIR": str(data_dir)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None  # stop waiting on a dead server

        wait_until(ready, "the server to be ready", within=120)
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        token = (data_dir / "token").read_text().strip()
        data = generate_transcript_bytes(random.Random(3), 30_000)
        response = httpx.put(
            f"{url}/api/sessions/one/transcript",
            content=gzip.compress(data),
            headers={
                **auth(token),
                "Content-Encoding": "gzip",
                "X-Content-SHA256": hashlib.sha256(data).hexdigest(),
            },
        )
        assert response.status_code == 200, response.text

        def finished() -> dict[str, Any] | None:
            detail: dict[str, Any] = httpx.get(
                f"{url}/api/sessions/one", headers=auth(token)
            ).json()
            return detail if detail["lifecycle"] in ("summarized", "failed") else None

        detail = wait_until(finished, "the session to be processed")
        assert detail["lifecycle"] == "summarized", detail["error"]
        assert detail["parse_result"]["parse_status"] == "ok"
        assert detail["summary"]["title"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            log.close()
            stop_postmaster(data_dir / "postgres")
    # uvicorn re-raises the SIGTERM it handled, so the exit status says little: the log does.
    assert re.search(r"worker \S+ stopped", (tmp_path / "serve.log").read_text())
