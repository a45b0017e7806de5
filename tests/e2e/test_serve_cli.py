"""`sessionflow serve` and `sessionflow token` as real processes on the embedded default."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port

pytestmark = pytest.mark.slow


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessionflow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or os.environ.copy(),
        check=False,
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    data_dir = tmp_path / "data"
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
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
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "serving on" in line:
            break
    url = f"http://127.0.0.1:{port}"
    assert any(url in line for line in lines), lines
    for _ in range(200):
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    yield url, data_dir, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    log.close()


def test_serve_prints_url_and_writes_a_private_token_file(
    served: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    url, data_dir, proc = served
    token_file = data_dir / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    response = httpx.post(
        f"{url}/api/sessions/batch-status",
        json={"session_ids": ["x"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.json() == {"statuses": {}, "not_found": ["x"]}
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert token not in out + (data_dir.parent / "serve.log").read_text()  # never logged


def test_token_create_prints_only_a_token_that_works_and_revoke_stops_it(
    served: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    url, data_dir, _ = served
    created = cli("token", "create", "--owner", "bob", "--data-dir", str(data_dir))
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert re.fullmatch(r"sf_[0-9a-f]{12}_\S+", token)
    assert created.stdout == token + "\n"
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{url}/api/sessions/x", headers=headers).status_code == 404
    token_id = token.split("_")[1]
    revoked = cli("token", "revoke", token_id, "--data-dir", str(data_dir))
    assert revoked.returncode == 0, revoked.stderr
    assert httpx.get(f"{url}/api/sessions/x", headers=headers).status_code == 401


def test_serve_on_a_busy_port_says_so(
    tmp_path: Path, served: tuple[str, Path, subprocess.Popen[str]]
) -> None:
    url, data_dir, _ = served
    port = url.rsplit(":", 1)[1]
    result = cli("serve", "--port", port, "--data-dir", str(data_dir))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_token_revoke_of_garbage_is_a_clear_error(tmp_path: Path) -> None:
    result = cli("token", "revoke", "not-a-token", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "neither a token nor a token id" in result.stderr
