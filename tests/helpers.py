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

    def serve(
        self, *args: str, env: dict[str, str] | None = None, port: int | None = None
    ) -> ServeProcess:
        """Start `sessionflow serve` (on a free port unless given one: a restart takes the
        same) and wait until /readyz says ready."""
        port = port or free_port()
        data_dir = self.tmp / f"serve-{port}-{len(self.procs)}"
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


def cli_env(token: str, home: Path) -> dict[str, str]:
    """The environment of a CLI run: this token, this home, no colour, no other settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONFLOW_")}
    return {**env, "SESSIONFLOW_TOKEN": token, "HOME": str(home), "NO_COLOR": "1"}


def run_cli(
    token: str, home: Path, *args: str, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """`sessionflow ARGS` as a subprocess with cli_env(token, home) (plus env), to the end."""
    return subprocess.run(
        [sys.executable, "-m", "sessionflow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**cli_env(token, home), **env},
    )


def start_backfill(server_url: str, token: str, folder: Path, *args: str) -> Any:
    """`sessionflow backfill FOLDER --server URL ARGS` as a subprocess (text pipes)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sessionflow",
            "backfill",
            str(folder),
            "--server",
            server_url,
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(token, folder.parent),
    )


def db_counts(dsn: str, owner: str) -> dict[str, int]:
    """Sessions of owner per lifecycle state, as the database has them."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT lifecycle, count(*) FROM sessions WHERE owner = %s GROUP BY 1", (owner,)
        ).fetchall()
    return {lifecycle: n for lifecycle, n in rows}


class CuttingProxy:
    """A TCP proxy on loopback that can cut every open connection (and from then on refuse
    WebSocket upgrades, as a proxy or firewall that drops long-lived connections would), or
    refuse every new connection for a while (the network is down)."""

    def __init__(self, target_port: int) -> None:
        import asyncio

        self.target_port = target_port
        self.port = free_port()
        self.block_websockets = False
        self.refusing = False
        self.connections = 0
        self.writers: list[Any] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self.ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: Any, writer: Any) -> None:
        import asyncio

        self.connections += 1
        if self.refusing:
            writer.transport.abort()
            return
        first = await reader.read(65536)
        if self.block_websockets and b"upgrade: websocket" in first.lower():
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]
        up_writer.write(first)

        async def pipe(src: Any, dst: Any) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self, *, block_websockets: bool = True) -> None:
        """Abort every open connection; later WebSocket upgrades get 403 if asked."""

        def do() -> None:
            self.block_websockets = block_websockets
            for w in self.writers:
                w.transport.abort()
            self.writers.clear()

        self.loop.call_soon_threadsafe(do)

    def outage(self, down: bool) -> None:
        """While down, every open connection is cut and every new one is dropped at once."""

        def do() -> None:
            self.refusing = down
            if down:
                for w in self.writers:
                    w.transport.abort()
                self.writers.clear()

        self.loop.call_soon_threadsafe(do)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


# Every lease a worker takes or renews (on the session's row in jobs), timed by the database,
# for tests that prove no two workers ever held one session at once.
LEASE_LOG = """
CREATE TABLE lease_log (
    id text, lease_owner text, lease_token uuid, lease_expires_at timestamptz,
    at timestamptz DEFAULT clock_timestamp()
);
CREATE FUNCTION log_lease() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.lease_token IS NOT NULL THEN
        INSERT INTO lease_log (id, lease_owner, lease_token, lease_expires_at)
        VALUES (NEW.id, NEW.lease_owner, NEW.lease_token, NEW.lease_expires_at);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER log_lease AFTER UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION log_lease();
"""
