"""compose.yaml for real: PostgreSQL, the S3 store, two `serve` replicas behind the nginx proxy
and two workers, in containers built from this checkout. A backfill through the proxy (the
live WebSocket included) must end with every session in a final state.

Runs only when SESSIONFLOW_TEST_COMPOSE=1: .ci/docker.sh sets it once it has started Docker and
built the images (docker/build-images.sh). Elsewhere these tests are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sessionflow.protocol import TERMINAL
from sessionflow.samples import write_sample_transcripts
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.environ.get("SESSIONFLOW_TEST_COMPOSE") != "1",
    reason="needs Docker and the built images: .ci/docker.sh runs these",
)


@dataclass
class Stack:
    compose: list[str]
    url: str

    def run(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [*self.compose, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def exec(self, service: str, *command: str) -> str:
        return self.run("exec", "-T", service, *command).strip()


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
