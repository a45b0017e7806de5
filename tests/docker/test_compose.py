"""compose.yaml for real: PostgreSQL, the S3 store, two `serve` replicas behind the nginx proxy
and two workers, in containers built from this checkout. A backfill through the proxy (the
live WebSocket included) must end with every session in a final state, and restarting any
one container during a backfill must lose nothing.

Runs only when SESSIONFLOW_TEST_COMPOSE=1: .ci/docker.sh sets it once it has started Docker and
built the images (docker/build-images.sh). Elsewhere these tests are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from sessionflow.client.discovery import discover
from sessionflow.protocol import TERMINAL
from sessionflow.samples import write_sample_transcripts
from tests.helpers import auth, free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.environ.get("SESSIONFLOW_TEST_COMPOSE") != "1",
    reason="needs Docker and the built images: .ci/docker.sh runs these",
)


@dataclass
class Stack:
    compose: list[str]
    url: str
    containers: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 120, input: str | None = None) -> str:
        done = subprocess.run(
            [*self.compose, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input,
        )
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def exec(self, service: str, *command: str) -> str:
        return self.run("exec", "-T", service, *command).strip()

    def container(self, service: str) -> str:
        """The id of the service's (first) container: the same for the whole module, since
        these tests restart containers and add some, but never recreate one."""
        if service not in self.containers:
            ids = self.run("ps", "-q", service).split()
            assert ids, f"no container for {service}"
            self.containers[service] = ids[0]
        return self.containers[service]

    def sql(self, query: str) -> str:
        """One query's rows as psql -tA prints them (docker exec: quicker than compose's)."""
        done = subprocess.run(
            [
                "docker",
                "exec",
                self.container("postgres"),
                "psql",
                "-U",
                "sessionflow",
                "-d",
                "sessionflow",
                "-tAc",
                query,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"{query} failed: {done.stderr[-2000:]}")
        return done.stdout.strip()


def _logs(compose: list[str]) -> str:
    done = subprocess.run(
        [*compose, "logs", "--no-color", "--tail", "30"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout[-8000:]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    port = free_port()
    compose = ["docker-compose", "-f", str(ROOT / "compose.yaml"), "-p", f"sftest{os.getpid()}"]
    env = {**os.environ, "SESSIONFLOW_COMPOSE_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    try:
        # `up` waits for the health checks the services depend on (the proxy on both replicas).
        up = subprocess.run(
            [*compose, "up", "-d"], capture_output=True, text=True, env=env, timeout=600
        )
        if up.returncode != 0:
            raise AssertionError(f"compose up failed: {up.stderr[-3000:]}\n{_logs(compose)}")
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=3).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the proxy never answered /readyz\n{_logs(compose)}")
            time.sleep(1)
        yield Stack(compose, url)
    finally:
        subprocess.run(
            [*compose, "down", "-v", "--timeout", "10"],
            capture_output=True,
            env=env,
            timeout=300,
            check=False,
        )


def test_backfill_through_the_proxy_ends_with_every_session_terminal(
    stack: Stack, tmp_path: Path
) -> None:
    token = stack.exec("server-1", "sessionflow", "token", "create", "--owner", "compose")
    assert token.startswith("sf_")
    write_sample_transcripts(tmp_path / "projects", 50)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sessionflow",
            "backfill",
            str(tmp_path / "projects"),
            "--server",
            stack.url,
            "--token",
            token,
            "--transport",
            "websocket",
            "--timeout",
            "300",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    # 50 samples hold exactly one file that is not a transcript (sessionflow.samples).
    assert len(report["files_skipped"]) == 1
    assert report["uploaded"] == 49, report
    assert report["complete"] is True
    # The live stream went through nginx's WebSocket upgrade, not the polling fallback.
    assert report["transport"] == "websocket"
    assert sum(report["counts"].values()) == 49
    assert set(report["counts"]) <= {str(state) for state in TERMINAL}, report["counts"]


# One container of each kind, restarted one after the other while a backfill runs. The proxy
# last: while it is down the CLI cannot reach the server at all.
RESTARTED = ("s3", "postgres", "server-1", "worker-1", "proxy")
# Enough sessions that the backfill is still uploading when the last restart is over, with
# room to spare: here the five restarts take about 40 s, and are over when some 300 of the
# sessions are stored.
RESTART_SESSIONS = 800
# One transcript past boto3's multipart threshold (8 MiB): the store assembles it from parts.
LARGE_TRANSCRIPT = 12 * 1024 * 1024
# Sessions whose pipeline is run again from the stored bytes once every restart is over.
RERUN_SAMPLE = 40

# Reads transcripts back from the object store with sessionflow's own S3 client and the
# server's configuration: one line per sha256 read from stdin, "ok" or what went wrong.
_READ_BACK = """
import hashlib, sys
from sessionflow.settings import Settings
from sessionflow.storage import open_store, transcript_key
s = Settings()
store = open_store(s.resolved_storage_url, s3_endpoint_url=s.s3_endpoint_url, data_dir=s.data_dir)
for sha in sys.stdin.read().split():
    try:
        digest = hashlib.sha256()
        with store.open(transcript_key(sha)) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        print(sha, "ok" if digest.hexdigest() == sha else "corrupt:" + digest.hexdigest())
    except Exception as exc:
        print(sha, "error:" + type(exc).__name__ + ":" + str(exc).replace(chr(10), " ")[:300])
"""


@dataclass
class Backfill:
    """One `sessionflow backfill --json` run, in the background. Its output goes to files, so
    that it never waits on a pipe nobody reads while the test restarts containers."""

    process: subprocess.Popen[bytes]
    out: IO[bytes]
    err: IO[bytes]
    code: int | None = None
    report: dict[str, Any] | None = None
    stderr: str = ""

    @classmethod
    def start(cls, stack: Stack, token: str, folder: Path, *extra: str) -> Backfill:
        command = [sys.executable, "-m", "sessionflow", "backfill", str(folder)]
        command += ["--server", stack.url, "--token", token, "--json", *extra]
        # Closed by finish().
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115
        return cls(subprocess.Popen(command, stdout=out, stderr=err), out, err)

    def running(self) -> bool:
        return self.process.poll() is None

    def finish(self, timeout: float) -> Backfill:
        self.code = self.process.wait(timeout=timeout)
        for stream in (self.out, self.err):
            stream.seek(0)
        out = self.out.read().decode(errors="replace")
        self.stderr = self.err.read().decode(errors="replace")
        self.out.close()
        self.err.close()
        try:
            self.report = json.loads(out)
        except ValueError:
            raise AssertionError(f"no report (exit {self.code}): {self.stderr[-3000:]}") from None
        return self

    def __str__(self) -> str:
        return f"exit {self.code}: {self.stderr[-2000:]}\n{json.dumps(self.report)[:3000]}"


def _gave_up_honestly(run: Backfill) -> bool:
    """A run that did not finish the job, and said so: it could not reach the server for
    longer than its retries last, some uploads failed after theirs, or it timed out. Running
    the same command again is then what a user does (and what the CLI tells them)."""
    report = run.report or {}
    return run.code in (1, 124) and bool(
        report.get("error") or report.get("upload_failed") or report.get("timed_out")
    )


def _wait_until_back(stack: Stack, service: str, timeout: float = 120) -> None:
    """Until the service's container runs again and, if it has a health check, passes it."""
    container = stack.container(service)
    deadline = time.monotonic() + timeout
    while True:
        state = subprocess.run(
            [
                "docker",
                "inspect",
                "-f",
                "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                container,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.split()
        if state in (["running"], ["running", "healthy"]):
            return
        assert time.monotonic() < deadline, f"{service} did not come back: {state}"
        time.sleep(0.5)


@pytest.mark.timeout(900)
def test_restarting_each_container_during_a_backfill_loses_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    """The object store, PostgreSQL, a server replica, a worker and the proxy are each
    restarted once, one at a time, while a backfill through the proxy runs. Every session ends
    processed, and every transcript can still be read from the store afterwards: by the store
    itself, and by the pipeline run again from the stored bytes."""
    token = stack.exec("server-1", "sessionflow", "token", "create", "--owner", "restarts")
    projects = tmp_path / "projects"
    write_sample_transcripts(projects, RESTART_SESSIONS, seed=7)
    write_sample_transcripts(projects, 1, seed=8, sizes=lambda _: LARGE_TRANSCRIPT)
    found = discover([projects], max_bytes=256 * 1024 * 1024)
    sessions = {s.session_id: s for s in found.sessions}
    assert len(sessions) == RESTART_SESSIONS  # one file of the samples is not a transcript
    assert max(f.size for s in sessions.values() for f in s.files) >= LARGE_TRANSCRIPT

    def backfill(*extra: str) -> Backfill:
        return Backfill.start(stack, token, projects, "--timeout", "300", *extra)

    stored_query = "SELECT count(*) FROM sessions WHERE owner = 'restarts'"
    started = time.monotonic()
    runs: list[Backfill] = []
    run = backfill()
    timeline: list[str] = []
    try:
        # The first restart once a few sessions are stored: the store has transcripts to lose.
        while int(stack.sql(stored_query)) < RESTART_SESSIONS // 20:
            assert run.running(), f"the backfill ended before any restart: {run.finish(60)}"
            assert time.monotonic() - started < 180, "no session is being stored"
            time.sleep(0.5)
        for service in RESTARTED:
            if not run.running():
                runs.append(run.finish(60))
                assert _gave_up_honestly(run), (
                    f"the backfill ended before {service} was restarted ({timeline}): raise "
                    f"RESTART_SESSIONS. {run}"
                )
                run = backfill()  # as the CLI says: run the same command again
            stored = stack.sql(stored_query)
            subprocess.run(
                ["docker", "restart", "-t", "10", stack.container(service)],
                capture_output=True,
                timeout=120,
                check=True,
            )
            _wait_until_back(stack, service)
            timeline.append(
                f"{service} at {stored} stored, back at {time.monotonic() - started:.0f} s"
            )
        runs.append(run.finish(600))
        if _gave_up_honestly(run) and len(runs) < 3:
            runs.append(backfill().finish(600))
    finally:
        if run.running():
            run.process.kill()
    last = runs[-1]
    detail = f"restarts: {timeline}; runs: {[r.code for r in runs]}\n{last}"
    print(detail[:400])  # shown when the test fails (or with -s)
    for earlier in runs[:-1]:
        assert _gave_up_honestly(earlier), f"{detail}\nan earlier run: {earlier}"
    assert last.report is not None
    assert last.code == 0, detail
    assert last.report["complete"] is True, detail
    assert last.report["upload_failed"] == [], detail
    assert last.report["uploaded"] + last.report["skipped"] == RESTART_SESSIONS, detail
    # Every session processed: none failed because a container went away for a moment.
    assert set(last.report["counts"]) <= {"parsed", "summarized"}, detail
    assert sum(last.report["counts"].values()) == RESTART_SESSIONS, detail

    # The same command again finds everything on the server as it is: nothing to upload.
    again = backfill().finish(300)
    assert again.code == 0, str(again)
    assert again.report is not None
    assert again.report["uploaded"] == 0, str(again)
    assert again.report["skipped"] == RESTART_SESSIONS, str(again)
    assert again.report["complete"] is True, str(again)

    # Every file of every session, read back from the store and hashed.
    shas = sorted({f.sha256 for s in sessions.values() for f in s.files})
    read_back = stack.run(
        "exec", "-T", "server-1", "python3", "-c", _READ_BACK, input="\n".join(shas), timeout=300
    )
    outcome = dict(line.split(" ", 1) for line in read_back.splitlines() if line)
    bad = {sha: why for sha, why in outcome.items() if why != "ok"}
    assert not bad and len(outcome) == len(shas), (
        f"{len(bad)} of {len(shas)} stored transcripts unreadable: {list(bad.items())[:5]}"
    )

    with httpx.Client(base_url=stack.url, headers=auth(token), timeout=30) as client:
        # Every session shows its parse results.
        for session_id in sessions:
            response = client.get(f"/api/sessions/{session_id}")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["lifecycle"] in ("parsed", "summarized"), body["error"]
            assert body["parse_result"] is not None, session_id

        # The pipeline again, from the stored bytes alone (nothing uploaded): naming a
        # session's files with force queues it, and a worker downloads, parses and summarizes
        # it anew.
        large = next(s.session_id for s in sessions.values() if s.size >= LARGE_TRANSCRIPT)
        sample = sorted(sessions)[:: max(1, len(sessions) // RERUN_SAMPLE)]
        sample = [*sample, large] if large not in sample else sample
        before = {}
        for session_id in sample:
            before[session_id] = client.get(f"/api/sessions/{session_id}").json()
            files = [f.wire().model_dump() for f in sessions[session_id].files]
            response = client.put(
                f"/api/sessions/{session_id}/files", params={"force": "true"}, json={"files": files}
            )
            assert response.status_code == 200, response.text
            assert response.json()["queued"] is True
        deadline = time.monotonic() + 180
        while True:
            response = client.post("/api/sessions/batch-status", json={"session_ids": sample})
            statuses = response.json()["statuses"]
            if all(statuses[sid]["lifecycle"] in TERMINAL for sid in sample):
                break
            assert time.monotonic() < deadline, statuses
            time.sleep(1)
        for session_id in sample:
            after = client.get(f"/api/sessions/{session_id}").json()
            assert after["lifecycle"] == before[session_id]["lifecycle"], after["error"]
            assert after["parse_status"] == before[session_id]["parse_status"]
            assert after["version"] > before[session_id]["version"]


def test_every_sessionflow_process_runs_as_a_non_root_user(stack: Stack) -> None:
    for service in ("server-1", "server-2", "worker-1", "worker-2"):
        assert stack.exec(service, "id", "-u") == "10001", service


def test_migrations_are_recorded_once_though_four_processes_applied_them(stack: Stack) -> None:
    migrations = sorted(p.name for p in (ROOT / "sql").glob("[0-9]*.sql"))
    recorded = stack.exec(
        "postgres",
        "psql",
        "-U",
        "sessionflow",
        "-d",
        "sessionflow",
        "-tAc",
        "SELECT count(*) FROM schema_migrations",
    )
    assert int(recorded) == len(migrations)


def _probes_served(container: str) -> int:
    """How many of the test's probe requests this container's access log shows."""
    done = subprocess.run(
        ["docker", "logs", container], capture_output=True, text=True, timeout=60, check=False
    )
    return (done.stdout + done.stderr).count(f"GET {PROBE} 404")


PROBE = "/compose-proxy-probe"  # a path nothing else asks for: each request is one access line


def test_a_replica_added_after_the_proxy_started_gets_its_share_of_requests(
    stack: Stack,
) -> None:
    # A second server-2 container: a new address, which the proxy never saw at its start.
    stack.run("up", "-d", "--no-recreate", "--scale", "server-2=2", "server-2", timeout=300)
    containers = stack.run("ps", "-q", "server-2").split()
    assert len(containers) == 2
    deadline = time.monotonic() + 120
    while True:
        health = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Health.Status}}", *containers],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.split()
        if health == ["healthy", "healthy"]:
            break
        assert time.monotonic() < deadline, f"the new replica never became healthy: {health}"
        time.sleep(1)
    # Round-robin over three replicas: the new one is reached once the proxy's DNS cache
    # (2 s) has expired, so keep asking, a bounded number of times.
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        for _ in range(120):
            assert client.get(PROBE).status_code == 404
            if all(_probes_served(c) > 0 for c in containers):
                break
            time.sleep(0.25)
    assert all(_probes_served(c) > 0 for c in containers), [_probes_served(c) for c in containers]
