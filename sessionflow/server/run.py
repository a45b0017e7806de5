"""Running the API for real: resolve the database (embedded or not), migrate, make the first
local token, bind, and serve with uvicorn until told to stop."""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import uvicorn

from sessionflow.db import migrate, migration_dsn
from sessionflow.local import resolve_database
from sessionflow.logs import first_line
from sessionflow.server.app import create_app
from sessionflow.server.ws_protocol import LeanWebSocketProtocol
from sessionflow.settings import Settings
from sessionflow.tokens import count_active_tokens, create_token

log = logging.getLogger(__name__)

LOCAL_OWNER = "local"


class ServeError(RuntimeError):
    """A reason the server cannot start, worded for the person who started it."""


def write_secret(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        f.write(content + "\n")
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


def ensure_local_token(dsn: str, token_file: Path) -> bool:
    """In embedded mode with no token yet, make one for owner 'local' and keep it in
    token_file (mode 0600). Returns whether one was made."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if count_active_tokens(conn) > 0 and token_file.exists():
            return False
        with conn.transaction():
            _, token = create_token(conn, LOCAL_OWNER)
            write_secret(token_file, token)
    return True


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port}: {exc.strerror}; pass another --port"
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def websocket_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn runs the live stream's WebSockets.

    - A frame past settings.ws_message_limit (what the largest valid watch message needs, not
      uvicorn's 16 MiB) is cut with close 1009 as soon as its header gives its length: it is
      never buffered nor parsed.
    - A ping every ws_ping_interval_seconds; a client that does not answer one within as long
      again is dropped (and the watch route drops one that stops reading as quickly).
    - No permessage-deflate: its compressor state would cost each connection tens of KiB,
      whatever the client sends, for messages too small to gain from it.
    - uvicorn's own protocol, keeping less per connection (sessionflow.server.ws_protocol)."""
    return {
        "ws": LeanWebSocketProtocol,
        "ws_max_size": settings.ws_message_limit,
        "ws_ping_interval": settings.ws_ping_interval_seconds,
        "ws_ping_timeout": settings.ws_ping_interval_seconds,
        "ws_per_message_deflate": False,
    }


def serve(
    settings: Settings,
    host: str,
    port: int,
    *,
    say: Callable[[str], None] = print,
) -> None:
    dsn, embedded = resolve_database(settings)
    try:
        migrate(migration_dsn(settings, dsn))
    except psycopg.OperationalError as exc:
        raise ServeError(f"cannot reach the database: {first_line(exc)}") from exc
    if embedded is not None and ensure_local_token(dsn, settings.token_file):
        say(f"Created an API token for owner '{LOCAL_OWNER}' in {settings.token_file}")
    elif embedded is not None:
        say(f"API token for owner '{LOCAL_OWNER}': see {settings.token_file}")
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    if settings.serve_worker:
        from sessionflow.worker.runner import WorkerConfigError, check_settings

        try:
            check_settings(settings)
        except WorkerConfigError as exc:
            raise ServeError(f"{exc}; or run without the worker (--no-worker)") from None
    app = create_app(settings, dsn, migrate_on_start=False, run_worker=settings.serve_worker)
    config = uvicorn.Config(
        app,
        log_level="info",
        # No logging config of uvicorn's own: its records reach the root handler that
        # sessionflow.logs set up (text or JSON, with request ids); the access log is ours.
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        **websocket_options(settings),
    )
    server = uvicorn.Server(config)
    say(f"sessionflow serving on http://{shown_host}:{bound_port}")
    sys.stdout.flush()
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it; with the default handler
    # that kills the process before its exit hooks run, leaving the embedded PostgreSQL up.
    # Leaving by SystemExit instead lets them stop it.
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    server.run(sockets=[sock])


def _exit_after_shutdown(signum: int, _frame: object) -> None:
    raise SystemExit(0)
