"""sessionflow behind PgBouncer in transaction mode, as many production sites run PostgreSQL:
a real pgbouncer (Debian's package; 1.18 has no prepared-statement support) on a loopback port
in front of the test PostgreSQL, a real `sessionflow serve` and the real CLI.

Through a transaction pooler each transaction may run on another server connection, so
nothing that lives in a session works: prepared statements, LISTEN, session-level locks."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sessionflow.db import migrate, migrations, through_pooler
from sessionflow.samples import write_sample_transcripts
from tests.conftest import drop_database
from tests.helpers import Processes, auth, cli_env, db_counts, free_port

OWNER = "alice"


def _find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    if found is None and os.access("/usr/sbin/pgbouncer", os.X_OK):
        found = "/usr/sbin/pgbouncer"  # Debian's, off a non-root PATH
    return found


PGBOUNCER = _find_pgbouncer()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PGBOUNCER is None,
        reason="pgbouncer is not installed (apt-get install pgbouncer; CI installs it from "
        ".ci/apt-packages)",
    ),
]


@dataclass
class Bouncer:
    port: int
    user: str
    log: Path

    def dsn(self, direct_dsn: str) -> str:
        """direct_dsn's database, reached through this pgbouncer."""
        return make_conninfo(direct_dsn, host="127.0.0.1", port=str(self.port))

    def stats(self, database: str) -> dict[str, Any]:
        """The admin console's SHOW STATS row of database (it speaks the simple protocol only,
        hence libpq's exec)."""
        admin = f"host=127.0.0.1 port={self.port} dbname=pgbouncer user={self.user}"
        with psycopg.connect(admin, autocommit=True) as conn:
            result = conn.pgconn.exec_(b"SHOW STATS")
            names = [result.fname(i).decode() for i in range(result.nfields)]
            for row in range(result.ntuples):
                values = [(result.get_value(row, i) or b"").decode() for i in range(result.nfields)]
                if dict(zip(names, values, strict=True))["database"] == database:
                    return dict(zip(names, values, strict=True))
        raise AssertionError(f"pgbouncer has no stats of {database}")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _run_as(server_host: str) -> list[str]:
    """pgbouncer refuses to run as root: as root, run it as the user that owns the server's
    socket directory (who can reach the socket), or as nobody for a TCP server."""
    if os.geteuid() != 0:
        return []
    if server_host.startswith("/"):
        return ["-u", pwd.getpwuid(Path(server_host).stat().st_uid).pw_name]
    return ["-u", "nobody"]


@pytest.fixture(scope="module")
def bouncer(pg_admin_dsn: str) -> Iterator[Bouncer]:
    """A pgbouncer in transaction mode on a free loopback port, in front of the test
    PostgreSQL, serving any of its databases; clients are trusted (loopback only)."""
    assert PGBOUNCER is not None
    server = conninfo_to_dict(pg_admin_dsn)
    host = str(server.get("host") or "127.0.0.1")
    user = str(server.get("user") or "postgres")
    target = f"host={_quote(host)} port={server.get('port') or 5432} user={_quote(user)}"
    if server.get("password"):
        target += f" password={_quote(str(server['password']))}"
    port = free_port()
    # Readable by the user pgbouncer switches to when started as root.
    folder = Path(tempfile.mkdtemp(prefix="sessionflow-pgbouncer-"))
    folder.chmod(0o755)
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"* = {target}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {folder / 'users.txt'}",
                f"admin_users = {user}",
                "pool_mode = transaction",
                # Fewer server connections than clients: transactions really move around.
                "default_pool_size = 4",
                "max_client_conn = 200",
                "",
            ]
        )
    )
    for path in folder.iterdir():
        path.chmod(0o644)
    log = folder / "pgbouncer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PGBOUNCER, *_run_as(host), str(folder / "pgbouncer.ini")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        dsn = make_conninfo(pg_admin_dsn, host="127.0.0.1", port=str(port))
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"pgbouncer exited:\n{log.read_text()}"
            try:
                with psycopg.connect(dsn, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"pgbouncer never answered:\n{log.read_text()}") from None
                time.sleep(0.1)
        yield Bouncer(port, user, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def transcripts(tmp_path: Path) -> Path:
    folder = tmp_path / "projects"
    write_sample_transcripts(folder, 20, seed=3)
    return folder


@pytest.fixture
def procs_for(tmp_path: Path) -> Iterator[Callable[..., Processes]]:
    """procs_for(database_url, **env) -> Processes on that URL, all stopped at the end."""
    made: list[Processes] = []

    def make(database_url: str, **env: str) -> Processes:
        made.append(Processes(database_url, tmp_path, env=env))
        return made[-1]

    yield make
    for procs in made:
        procs.stop_all()


def backfill(server_url: str, token: str, folder: Path, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "sessionflow", "backfill", str(folder)),
            *("--server", server_url, "--json", "--poll-interval", "0.5", "--timeout", "180"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=cli_env(token, folder.parent),
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    report["stderr"] = result.stderr
    return report


def ask_batch_status_concurrently(
    url: str, token: str, ids: list[str], *, clients: int = 4, rounds: int = 10
) -> list[dict[str, Any]]:
    """Every answer of `clients` threads each asking `rounds` times for ids: more often than
    psycopg's prepare threshold (5), over connections that pgbouncer moves between servers."""
    answers: list[dict[str, Any]] = []
    problems: list[str] = []

    def ask() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(rounds):
                response = client.post(
                    "/api/sessions/batch-status", json={"session_ids": ids}, headers=auth(token)
                )
                if response.status_code != 200:
                    problems.append(f"{response.status_code} {response.text}")
                    return
                answers.append(response.json())

    threads = [threading.Thread(target=ask) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not problems, problems[:3]
    assert len(answers) == clients * rounds
    return answers


def statuses_in_database(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, lifecycle FROM sessions WHERE owner = %s", (OWNER,)
        ).fetchall()
    return dict(rows)


def test_through_pgbouncer_the_live_stream_reports_every_final_state(
    bouncer: Bouncer,
    db_dsn: str,
    transcripts: Path,
    make_token: Callable[[str], str],
    procs_for: Callable[..., Processes],
) -> None:
    procs = procs_for(
        bouncer.dsn(db_dsn),
        SESSIONFLOW_DATABASE_POOLER="transaction",
        SESSIONFLOW_LISTEN_DATABASE_URL=db_dsn,
    )
    server = procs.serve()
    token = make_token(OWNER)
    report = backfill(server.url, token, transcripts)
    assert report["complete"] is True
    assert report["transport"] == "websocket"
    assert report["counts"] == db_counts(db_dsn, OWNER)
    assert sum(report["counts"].values()) == report["uploaded"] > 0

    truth = statuses_in_database(db_dsn)
    for answer in ask_batch_status_concurrently(server.url, token, sorted(truth)):
        assert answer["not_found"] == []
        assert {sid: s["lifecycle"] for sid, s in answer["statuses"].items()} == truth

    database = str(conninfo_to_dict(db_dsn)["dbname"])
    assert int(bouncer.stats(database)["total_xact_count"]) > 100  # it all went through it
    log = server.log.read_text()
    assert "prepared statement" not in log
    assert "Traceback" not in log


def test_without_a_listen_url_the_server_says_live_updates_are_off_and_clients_poll(
    bouncer: Bouncer,
    db_dsn: str,
    transcripts: Path,
    make_token: Callable[[str], str],
    procs_for: Callable[..., Processes],
) -> None:
    procs = procs_for(
        bouncer.dsn(db_dsn),
        SESSIONFLOW_DATABASE_POOLER="transaction",
        SESSIONFLOW_WORKER_POLL_SECONDS="0.5",  # the worker cannot be woken by NOTIFY either
    )
    server = procs.serve()
    log = server.log.read_text()
    assert "LISTEN cannot work through a transaction pooler" in log
    assert "SESSIONFLOW_LISTEN_DATABASE_URL" in log

    report = backfill(server.url, make_token(OWNER), transcripts)
    assert report["complete"] is True
    assert report["transport"] == "poll"  # not a WebSocket that would never hear a change
    assert "live updates unavailable" in report["stderr"]
    assert report["counts"] == db_counts(db_dsn, OWNER)
    assert sum(report["counts"].values()) == report["uploaded"] > 0


def test_a_pooler_in_the_way_is_found_named_and_never_prepared_on(
    bouncer: Bouncer,
    db_dsn: str,
    transcripts: Path,
    make_token: Callable[[str], str],
    procs_for: Callable[..., Processes],
) -> None:
    assert through_pooler(bouncer.dsn(db_dsn), timeout=5)
    assert not through_pooler(db_dsn, timeout=5)

    procs = procs_for(bouncer.dsn(db_dsn))  # no pooler setting: auto
    uploader = procs.serve("--no-worker")
    token = make_token(OWNER)
    report = backfill(uploader.url, token, transcripts, "--no-wait")
    assert report["uploaded"] > 0
    log = uploader.log.read_text()
    assert "reaches PostgreSQL through a connection pooler: prepared statements are off" in log
    assert "SESSIONFLOW_DATABASE_POOLER=transaction" in log

    ids = sorted(statuses_in_database(db_dsn))
    for answer in ask_batch_status_concurrently(uploader.url, token, ids):
        assert sorted(answer["statuses"]) == ids


def test_migrations_through_pgbouncer_apply_once_and_leave_no_lock_held(
    bouncer: Bouncer, pg_admin_dsn: str
) -> None:
    name = "sf_pgbouncer_migrate"
    drop_database(pg_admin_dsn, name)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    direct = make_conninfo(pg_admin_dsn, dbname=name)
    try:
        results: list[list[str]] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                results.append(migrate(bouncer.dsn(direct)))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        assert sorted(n for applied in results for n in applied) == [m.name for m in migrations()]
        assert migrate(bouncer.dsn(direct)) == []
        with psycopg.connect(direct) as conn:
            held = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND database = (SELECT oid FROM pg_database WHERE datname = %s)",
                (name,),
            )
            assert held.fetchone() == (0,)
    finally:
        drop_database(pg_admin_dsn, name)
