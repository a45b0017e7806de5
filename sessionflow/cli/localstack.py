"""Local mode: with no --server, the CLI runs the embedded stack (embedded PostgreSQL, API server
and worker) as a child `sessionflow serve` process on a free loopback port, uses the token it
keeps in the data dir, and stops it at the end. The data stays for the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0


class LocalStackError(RuntimeError):
    pass


@dataclass(frozen=True)
class LocalStack:
    url: str
    token: str
    data_dir: Path
    log_file: Path


def _wait_for_url(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "serving on " in line:
            return line.rsplit("serving on ", 1)[1].strip()
    raise LocalStackError("the local server did not start")


def _wait_ready(url: str, proc: subprocess.Popen[str], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalStackError("the local server exited while starting")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise LocalStackError(f"the local server was not ready within {READY_TIMEOUT:.0f} s")


@contextmanager
def local_stack(data_dir: Path) -> Iterator[LocalStack]:
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = data_dir / "server.log"
    with log_file.open("a") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sessionflow",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--data-dir",
                str(data_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={
                k: v
                for k, v in os.environ.items()
                if k not in ("SESSIONFLOW_PORT", "SESSIONFLOW_HOST")
            },
            # Its own session: a Ctrl-C at the terminal reaches the CLI only, which then stops
            # the server in order.
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            try:
                url = _wait_for_url(proc, deadline)
                _wait_ready(url, proc, deadline)
            except LocalStackError as exc:
                raise LocalStackError(f"{exc}; its log is {log_file}") from None
            token_file = data_dir / "token"
            try:
                token = token_file.read_text().strip()
            except OSError as exc:
                raise LocalStackError(
                    f"cannot read the local token {token_file}: {exc.strerror}"
                ) from None
            yield LocalStack(url=url, token=token, data_dir=data_dir, log_file=log_file)
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def server_url(value: str) -> str:
    """--server as a URL: `localhost:8000` is taken as http://localhost:8000; anything but
    http(s) is refused at once, with what to pass instead."""
    text = value.strip().rstrip("/")
    if "://" not in text:
        text = f"http://{text}"
    parsed = urlsplit(text)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise LocalStackError(
            f"--server {value!r} is not a server's URL: give http://HOST:PORT or "
            "https://HOST (SESSIONFLOW_URL)"
        )
    return text


@contextmanager
def endpoint(
    server: str | None, token: str | None, data_dir: Path, say: Callable[[str], None]
) -> Iterator[tuple[str, str, bool]]:
    """(url, token, local) of the server to talk to: --server as given, or a local one that
    runs for the duration of the block."""
    if server:
        url = server_url(server)
        if not token:
            raise LocalStackError("--server needs a token: set SESSIONFLOW_TOKEN or pass --token")
        yield url, token, False
        return
    say(f"Starting the local sessionflow server (data in {data_dir})…")
    with local_stack(data_dir) as stack:
        yield stack.url, token or stack.token, True
