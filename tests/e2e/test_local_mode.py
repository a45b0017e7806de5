"""Local mode with the real CLI: one local server per data dir, shared by every command that
runs meanwhile (a `sessionflow serve` in another terminal, or another CLI's), and never left
running, with its PostgreSQL, once no command uses it, however the command ended."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sessionflow.cli import localshare
from sessionflow.cli.localstack import LocalStackError, attach
from sessionflow.processes import alive
from sessionflow.samples import write_sample_transcripts
from tests.helpers import cli_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the module: its embedded PostgreSQL is made once."""
    return tmp_path_factory.mktemp("local") / "data"


def env(home: Path) -> dict[str, str]:
    return cli_env("", home) | {"SESSIONFLOW_TOKEN": ""}


def using(data_dir: Path) -> list[int]:
    """Processes of this machine working on data_dir (its server, its PostgreSQL), read from
    /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(data_dir) in cmdline and alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def wait_until_none_left(data_dir: Path, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := using(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def backfill(folder: Path, data_dir: Path, *args: str) -> subprocess.Popen[str]:
    command = ["backfill", str(folder), "--data-dir", str(data_dir), *args]
    return subprocess.Popen(
        [sys.executable, "-m", "sessionflow", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(folder.parent),
    )


def wait_for(stream: subprocess.Popen[str], needle: str, timeout: float = 120) -> str:
    """Read a process's stderr until needle appears; returns what was read."""
    assert stream.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        line = stream.stderr.readline()
        if not line:
            break
        seen += line
    assert needle in seen, seen
    return seen


def test_two_concurrent_local_backfills_share_one_server(tmp_path: Path, data_dir: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write_sample_transcripts(first, 30, seed=1)
    write_sample_transcripts(second, 20, seed=2)
    log = data_dir / "server.log"
    before = log.read_text().count("serving on") if log.exists() else 0
    runs = [backfill(first, data_dir, "--json"), backfill(second, data_dir, "--json")]
    reports = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        assert "Traceback" not in err
        reports.append(json.loads(out))
    assert [r["uploaded"] + r["skipped"] for r in reports] == [30, 20]
    assert all(r["complete"] for r in reports)
    assert log.read_text().count("serving on") == before + 1, log.read_text()
    assert not wait_until_none_left(data_dir)


def test_a_fast_double_ctrl_c_leaves_no_server_or_postgres_behind(
    tmp_path: Path, data_dir: Path
) -> None:
    folder = tmp_path / "projects"
    write_sample_transcripts(folder, 400, seed=3)
    run = backfill(folder, data_dir, "--json", "--concurrency", "1")
    wait_for(run, "Backfilling:")
    assert using(data_dir), "the local server should be running"
    run.send_signal(signal.SIGINT)
    time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    run.communicate(timeout=30)
    assert run.returncode == 130
    assert not wait_until_none_left(data_dir), "the local server or its PostgreSQL is left"
    assert not (data_dir / "postgres" / "postmaster.pid").exists()


def test_ctrl_c_while_the_local_server_starts_stops_cleanly_and_quietly(
    tmp_path: Path, data_dir: Path
) -> None:
    folder = tmp_path / "projects"
    write_sample_transcripts(folder, 3, seed=4)
    for delay in (0.0, 0.5, 1.5):
        run = backfill(folder, data_dir, "--json")  # what people read goes to stderr
        wait_for(run, "Starting the local sessionflow server")
        time.sleep(delay)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
        assert run.returncode == 130, err
        assert "Stopped." in err
        assert "Warning" not in err and "never awaited" not in err, err
        assert "Traceback" not in err, err
        assert not wait_until_none_left(data_dir)


@pytest.fixture
def served(data_dir: Path, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`sessionflow serve` on the data dir, as a person runs it in another terminal."""
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionflow", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env(tmp_path),
    )
    deadline = time.monotonic() + 120
    record = data_dir / "server.json"
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            url = json.loads(record.read_text())["url"]
            if url and httpx.get(f"{url}/readyz").status_code == 200:
                break
        except (OSError, ValueError, KeyError, httpx.TransportError):
            pass
        time.sleep(0.1)
    yield proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    log.close()


def test_status_show_and_backfill_use_a_serve_running_on_the_data_dir(
    tmp_path: Path, data_dir: Path, served: subprocess.Popen[bytes]
) -> None:
    folder = tmp_path / "projects"
    write_sample_transcripts(folder, 5, seed=5)
    url = json.loads((data_dir / "server.json").read_text())["url"]
    run = backfill(folder, data_dir, "--json")
    _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert f"Using the local sessionflow server at {url}" in err
    token = (data_dir / "token").read_text().strip()
    stems = sorted(p.stem for p in folder.rglob("*.jsonl") if p.parent.parent == folder)
    statuses = httpx.post(
        f"{url}/api/sessions/batch-status",
        json={"session_ids": stems},
        headers={"Authorization": f"Bearer {token}"},
    ).json()["statuses"]
    session_id = sorted(statuses)[0]
    log = data_dir / "server.log"
    before = log.read_text().count("serving on") if log.exists() else 0
    for command in (["status", session_id], ["show", session_id]):
        done = subprocess.run(
            [sys.executable, "-m", "sessionflow", *command, "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env(tmp_path),
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert f"Using the local sessionflow server at {url}" in done.stderr
        assert session_id in done.stdout
    # Nobody started a second server, and the one the person runs still runs.
    assert (log.read_text().count("serving on") if log.exists() else 0) == before
    assert served.poll() is None
    assert json.loads((data_dir / "server.json").read_text())["pid"] == served.pid


def test_waiting_for_a_local_server_that_never_gets_ready_ends_at_its_deadline(
    tmp_path: Path,
) -> None:
    """A server that is there but silent (its URL never written) costs the deadline, no more:
    nothing in the wait blocks past it."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with localshare.locked(data_dir):
            localshare.write_record(
                data_dir,
                localshare.ServerRecord(
                    pid=silent.pid,
                    started=localshare.start_time(silent.pid) or "",
                    url=None,
                    while_used=False,
                ),
            )
        with pytest.raises(LocalStackError, match="not ready within 1 s"):
            attach(data_dir, lambda _: None, ready_timeout=1.0)
        assert silent.poll() is None  # not ours: left alone
        assert localshare.clients(data_dir) == []  # and this process no longer counts
    finally:
        silent.kill()
        silent.wait()
