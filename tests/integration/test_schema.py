"""The schema: migrations under concurrency, the lifecycle guard, versions and NOTIFY."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from sessionflow.db import migrate, migrations
from sessionflow.protocol import TRANSITIONS, Lifecycle
from tests.conftest import drop_database

INSERT = (
    "INSERT INTO sessions"
    " (owner, id, transcript_key, transcript_size, transcript_sha256, lifecycle)"
    " VALUES ('o', %s, 'k', 1, repeat('a', 64), %s)"
)


@pytest.fixture
def empty_dsn(pg_admin_dsn: str) -> Iterator[str]:
    name = "sf_empty_migrate"
    drop_database(pg_admin_dsn, name)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(pg_admin_dsn, dbname=name)
    drop_database(pg_admin_dsn, name)


def test_concurrent_migrations_apply_each_file_once(empty_dsn: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(empty_dsn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    applied = sorted(name for result in results for name in result)
    assert applied == [m.name for m in migrations()]
    with psycopg.connect(empty_dsn) as conn:
        rows = conn.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()
    assert [r[0] for r in rows] == [m.name for m in migrations()]


def _states_reaching(target: str) -> list[str]:
    return [src for src, targets in TRANSITIONS.items() if target in targets]


def _place(conn: psycopg.Connection, session_id: str, path: list[str]) -> None:
    conn.execute(INSERT, (session_id, path[0]))
    for state in path[1:]:
        conn.execute("UPDATE sessions SET lifecycle = %s WHERE id = %s", (state, session_id))


# A legal way to reach each state from queued.
PATHS = {
    "queued": ["queued"],
    "downloading": ["queued", "downloading"],
    "parsing": ["queued", "downloading", "parsing"],
    "parsed": ["queued", "downloading", "parsing", "parsed"],
    "summarizing": ["queued", "downloading", "parsing", "summarizing"],
    "summarized": ["queued", "downloading", "parsing", "summarizing", "summarized"],
    "archived": ["queued", "downloading", "parsing", "parsed", "archived"],
    "failed": ["queued", "failed"],
}


@pytest.mark.parametrize("source", [s.value for s in Lifecycle])
@pytest.mark.parametrize("target", [s.value for s in Lifecycle])
def test_database_enforces_the_lifecycle_table(db_dsn: str, source: str, target: str) -> None:
    legal = target in TRANSITIONS[source] or target == "queued" or target == source
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        _place(conn, "s", PATHS[source])
        update = "UPDATE sessions SET lifecycle = %s WHERE id = 's'"
        if legal:
            conn.execute(update, (target,))
        else:
            with pytest.raises(psycopg.errors.CheckViolation, match="illegal lifecycle transition"):
                conn.execute(update, (target,))


def test_visible_changes_bump_version_and_notify(db_dsn: str) -> None:
    with (
        psycopg.connect(db_dsn, autocommit=True) as listener,
        psycopg.connect(db_dsn, autocommit=True) as conn,
    ):
        listener.execute("LISTEN session_lifecycle")
        listener.execute("LISTEN session_jobs")
        conn.execute(INSERT, ("s", "queued"))
        v1 = conn.execute("SELECT version FROM sessions").fetchone()
        conn.execute("UPDATE sessions SET metadata = '{}'")  # invisible: no bump, no notify
        v2 = conn.execute("SELECT version FROM sessions").fetchone()
        conn.execute("UPDATE sessions SET lifecycle = 'downloading'")
        conn.execute("UPDATE sessions SET parse_status = 'ok'")
        v3 = conn.execute("SELECT version FROM sessions").fetchone()
        notes = list(listener.notifies(timeout=1.0, stop_after=4))
    assert v1 == v2
    assert v1 is not None and v3 is not None and v3[0] > v1[0]
    channels = [n.channel for n in notes]
    assert channels.count("session_jobs") == 1
    lifecycle = [json.loads(n.payload) for n in notes if n.channel == "session_lifecycle"]
    assert [p["lifecycle"] for p in lifecycle] == ["queued", "downloading", "downloading"]
    assert lifecycle[-1] == {
        "owner": "o",
        "id": "s",
        "lifecycle": "downloading",
        "parse_status": "ok",
        "version": v3[0],
    }


def test_lifecycle_steps_touch_no_index(db_dsn: str) -> None:
    # sql/006: no index depends on lifecycle, so a step writes a heap-only tuple (HOT), while a
    # new parse result, which the listing's indexes read, still updates them.
    with psycopg.connect(db_dsn) as conn:
        conn.execute(INSERT, ("hot", "queued"))
        conn.commit()
        hot = "SELECT pg_stat_get_xact_tuples_hot_updated('sessions'::regclass)"
        for step in ("downloading", "parsing"):
            conn.execute("UPDATE sessions SET lifecycle = %s WHERE id = 'hot'", (step,))
        steps = conn.execute(hot).fetchone()
        conn.execute(
            "UPDATE sessions SET lifecycle = 'summarizing', parse_status = 'ok',"
            " parse_result = '{\"cwd\": \"/p\"}', parser_version = 1 WHERE id = 'hot'"
        )
        result = conn.execute(hot).fetchone()
        conn.execute("UPDATE sessions SET lifecycle = 'summarized' WHERE id = 'hot'")
        final = conn.execute(hot).fetchone()
    assert (steps, result, final) == ((2,), (2,), (3,))


async def test_health_and_readiness(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


async def test_readiness_reports_missing_migrations(
    api: httpx.AsyncClient, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_migrations")
    ready = await api.get("/readyz")
    assert ready.status_code == 503
    assert "migrations not applied" in ready.json()["problems"][0]
