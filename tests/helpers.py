"""Plain helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveServer:
    """A real uvicorn serving the app on loopback, in a thread of this process."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the live server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


class Processes:
    """Real `sessionflow serve` and `sessionflow worker` processes on one database and one
    transcript store, each logging to its own file; stop_all() ends them (SIGTERM, then KILL)."""

    def __init__(self, dsn: str, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.dsn = dsn
        self.tmp = tmp
        self.env = {
            **os.environ,
            "SESSIONFLOW_DATABASE_URL": dsn,
            "SESSIONFLOW_STORAGE_URL": (tmp / "store").as_uri(),
            **(env or {}),
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, args: list[str], log: Path, env: dict[str, str] | None) -> Any:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sessionflow", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **(env or {})},
            )
        self.procs.append(proc)
        return proc

    def serve(self, *args: str, env: dict[str, str] | None = None) -> ServeProcess:
        """Start `sessionflow serve` on a free port and wait until /readyz says ready."""
        port = free_port()
        data_dir = self.tmp / f"serve-{port}"
        log = data_dir / "log"
        proc = self._spawn(
            ["serve", "--port", str(port), "--data-dir", str(data_dir), *args], log, env
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    return ServeProcess(url, log, proc)
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve did not become ready:\n{log.read_text()}")

    def worker(self, *args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        """Start `sessionflow worker` and wait until it says it is processing sessions."""
        data_dir = self.tmp / f"worker-{len(self.procs)}"
        log = data_dir / "log"
        proc = self._spawn(["worker", "--data-dir", str(data_dir), *args], log, env)
        deadline = time.monotonic() + 60
        while "processing sessions" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the worker did not start:\n{log.read_text()}")
            time.sleep(0.1)
        return WorkerProcess(log, proc)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class ServeProcess:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]


@dataclass
class WorkerProcess:
    log: Path
    proc: subprocess.Popen[bytes]
