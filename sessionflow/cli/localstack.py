"""Local mode: with no --server, the CLI uses the data dir's local server (embedded PostgreSQL,
API server and worker): the one already running there (`sessionflow serve` in another
terminal, or another CLI's), or one it starts as a `sessionflow serve` process on a free
loopback port. It uses the token kept in the data dir. A server a CLI started stops once no
CLI uses it any more, even one that vanished without a word (see localshare), and stops its
PostgreSQL as it goes. The data stays for the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from sessionflow.cli import localshare
from sessionflow.processes import alive

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0
_POLL = 0.1


class LocalStackError(RuntimeError):
    pass


class StartCancelled(Exception):
    """The caller gave up (Ctrl-C) while the local server started."""


@dataclass
class LocalServer:
    url: str
    token: str
    data_dir: Path
    log_file: Path
    pid: int
    process: subprocess.Popen[bytes] | None  # when this process started it


def _spawn(data_dir: Path, log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as log:
        return subprocess.Popen(
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
                "--while-used",
            ],
            stdin=subprocess.DEVNULL,
            # A file, not a pipe: the server outlives this process when another CLI uses it.
            stdout=log,
            stderr=log,
            env={
                k: v
                for k, v in os.environ.items()
                if k not in ("SESSIONFLOW_PORT", "SESSIONFLOW_HOST")
            },
            # Its own session: a Ctrl-C at the terminal reaches the CLI only; the server stops
            # when no CLI uses it any more.
            start_new_session=True,
        )


def attach(
    data_dir: Path,
    say: Callable[[str], None],
    cancelled: threading.Event | None = None,
    ready_timeout: float = READY_TIMEOUT,
) -> LocalServer:
    """Use the data dir's local server, starting one if none runs; wait until it is ready.
    Raises StartCancelled as soon as `cancelled` is set, LocalStackError if it cannot start."""
    try:
        return _attach(data_dir, say, cancelled, ready_timeout)
    except OSError as exc:  # a data dir this user cannot write, a full disk
        raise LocalStackError(
            f"cannot use the data dir {data_dir}: {exc.strerror or exc}"
        ) from None


def _attach(
    data_dir: Path,
    say: Callable[[str], None],
    cancelled: threading.Event | None,
    ready_timeout: float,
) -> LocalServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = data_dir / "server.log"
    me = os.getpid()
    process: subprocess.Popen[bytes] | None = None
    with localshare.locked(data_dir):
        record = localshare.read_record(data_dir)
        if record is None:
            say(f"Starting the local sessionflow server (data in {data_dir})…")
            process = _spawn(data_dir, log_file)
            record = localshare.ServerRecord(
                pid=process.pid,
                started=localshare.start_time(process.pid) or "",
                url=None,
                while_used=True,
            )
            localshare.write_record(data_dir, record)
        else:
            where = f" at {record.url}" if record.url else ""
            say(f"Using the local sessionflow server{where} (data in {data_dir})")
        localshare.add_client(data_dir, me)
    server = LocalServer("", "", data_dir, log_file, record.pid, process)
    try:
        server.url = _wait_ready(server, time.monotonic() + ready_timeout, ready_timeout, cancelled)
        token_file = data_dir / "token"
        try:
            server.token = token_file.read_text().strip()
        except OSError as exc:
            raise LocalStackError(
                f"cannot read the local token {token_file}: {exc.strerror}"
            ) from None
    except BaseException:
        leave(server)
        raise
    return server


def _wait_ready(
    server: LocalServer, deadline: float, timeout: float, cancelled: threading.Event | None
) -> str:
    """The server's URL once /readyz says ready; every wait is bounded by the deadline."""
    while True:
        if cancelled is not None and cancelled.is_set():
            raise StartCancelled
        record = localshare.read_record(server.data_dir)
        gone = server.process is not None and server.process.poll() is not None
        if gone or record is None or record.pid != server.pid:
            raise LocalStackError(
                f"the local server exited while starting; its log is {server.log_file}"
            )
        remaining = deadline - time.monotonic()
        if record.url:
            try:
                answer = httpx.get(f"{record.url}/readyz", timeout=max(0.1, min(2.0, remaining)))
                if answer.status_code == 200:
                    return record.url
            except httpx.TransportError:
                pass
        if time.monotonic() >= deadline:
            raise LocalStackError(
                f"the local server was not ready within {timeout:.0f} s; its log is "
                f"{server.log_file}"
            )
        time.sleep(_POLL)


def leave(server: LocalServer) -> None:
    """Stop using the server; the last user of a server a CLI started stops it, and waits
    (bounded) until it and its PostgreSQL are down."""
    with localshare.locked(server.data_dir):
        localshare.remove_client(server.data_dir, os.getpid())
        record = localshare.read_record(server.data_dir)
        last = (
            record is not None
            and record.pid == server.pid
            and record.while_used
            and not localshare.clients(server.data_dir)
        )
        if last:
            localshare.clear_record(server.data_dir, server.pid)
            os.kill(server.pid, signal.SIGTERM)
    if last:
        _wait_gone(server)
    # Otherwise another CLI still uses it: it outlives this one (and init reaps it).


def _wait_gone(server: LocalServer) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT
    if server.process is not None:
        try:
            server.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
        return
    while alive(server.pid) and time.monotonic() < deadline:
        time.sleep(_POLL)


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


def remote(server: str, token: str | None) -> str:
    """The URL of --server, once it is known to be usable."""
    url = server_url(server)
    if not token:
        raise LocalStackError("--server needs a token: set SESSIONFLOW_TOKEN or pass --token")
    return url


@contextmanager
def endpoint(
    server: str | None, token: str | None, data_dir: Path, say: Callable[[str], None]
) -> Iterator[tuple[str, str, bool]]:
    """(url, token, local) of the server to talk to: --server as given, or the data dir's
    local server, used for the duration of the block."""
    if server:
        yield remote(server, token), token or "", False
        return
    local = attach(data_dir, say)
    try:
        yield local.url, token or local.token, True
    finally:
        leave(local)
