"""`sessionflow serve` with its in-process worker: however many jobs the worker runs, the API
keeps its own connections and answers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from sessionflow.protocol import TERMINAL
from sessionflow.samples import write_sample_transcripts
from tests.helpers import Processes, auth, cli_env, free_port

pytestmark = pytest.mark.slow

OWNER = "alice"


def queue_backlog(procs: Processes, token: str, folder: Path) -> list[str]:
    """Upload every transcript of folder through a `serve --no-worker`, then stop it: the
    sessions wait in the queue for the next server's worker. Returns their ids."""
    uploader = procs.serve("--no-worker")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "sessionflow", "backfill", str(folder)),
            *("--server", uploader.url, "--no-wait", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=cli_env(token, folder.parent),
    )
    assert result.returncode == 0, result.stderr
    uploader.proc.terminate()
    uploader.proc.wait(timeout=30)
    with psycopg.connect(procs.dsn) as conn:
        rows = conn.execute("SELECT id FROM sessions WHERE owner = %s", (OWNER,)).fetchall()
    return [row[0] for row in rows]


def start_serve(procs: Processes, env: dict[str, str]) -> str:
    """`sessionflow serve` with its worker; returns its URL once it answers /healthz (which
    asks nothing of the database)."""
    port = free_port()
    data_dir = procs.tmp / f"serve-{port}"
    data_dir.mkdir()
    with (data_dir / "log").open("wb") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "sessionflow", "serve"),
                *("--port", str(port), "--data-dir", str(data_dir)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**procs.env, **env},
        )
    procs.procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (data_dir / "log").read_text()
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return url
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"serve did not start:\n{(data_dir / 'log').read_text()}")


def test_serve_with_worker_concurrency_10_keeps_answering_the_api_through_a_backlog(
    procs: Processes, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    token = make_token(OWNER)
    folder = tmp_path / "projects"
    write_sample_transcripts(folder, 400, seed=5)
    ids = queue_backlog(procs, token, folder)
    assert len(ids) > 300

    # Not procs.serve(): it waits for /readyz, which is one of the answers this test checks.
    url = start_serve(
        procs,
        {
            "SESSIONFLOW_WORKER_CONCURRENCY": "10",
            # An API request that cannot get a connection fails fast instead of slowly.
            "SESSIONFLOW_CONNECT_TIMEOUT_SECONDS": "1",
        },
    )
    failures: list[str] = []
    busy = 0  # batch-status answers given while sessions were still being processed
    stop = threading.Event()

    def ask(client: httpx.Client) -> None:
        nonlocal busy
        while not stop.is_set():
            try:
                ready = client.get("/readyz")
                response = client.post(
                    "/api/sessions/batch-status",
                    json={"session_ids": ids[:500]},
                    headers=auth(token),
                )
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                break
            for answer in (ready, response):
                if answer.status_code != 200:
                    path = answer.request.url.path
                    failures.append(f"{path}: {answer.status_code} {answer.text}")
            if failures:
                break  # the first failure is enough: no need to wait out the backlog
            lifecycles = {s["lifecycle"] for s in response.json()["statuses"].values()}
            if lifecycles - TERMINAL:
                busy += 1
            else:
                break
        stop.set()

    with httpx.Client(base_url=url, timeout=30) as client:
        threads = [threading.Thread(target=ask, args=(client,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        stop.wait(timeout=120)  # only stops a hung test
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    assert not failures, failures[:3]
    assert busy >= 4, f"the backlog was gone before the API was asked ({busy} answers)"
