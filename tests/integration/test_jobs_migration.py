"""sql/004_jobs.sql upgrades a database in place: a database made by the previous release
(migrations 001-003, the job on the sessions row), with sessions in every state, is migrated
and a new worker takes each one to where it belongs."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sessionflow.db import make_pool, migrate, migrations
from sessionflow.samples import generate_transcript_bytes
from sessionflow.settings import Settings
from sessionflow.storage import open_store, transcript_key
from sessionflow.worker.claims import JobFile
from sessionflow.worker.parse import PARSER_VERSION
from sessionflow.worker.runner import Worker
from sessionflow.worker.stages import parse_files
from tests.conftest import drop_database

LIVE_LEASE_SECONDS = 3.0

# id: (lifecycle, attempts, lease: None | "live" | "expired", run_after offset s, priority)
OLD_SESSIONS: dict[str, tuple[str, int, str | None, float, int]] = {
    "queued": ("queued", 0, None, 0, 0),
    "queued-background": ("queued", 0, None, 0, 1),
    "retry-waiting": ("downloading", 1, None, 1.0, 0),
    "downloading-live": ("downloading", 1, "live", 0, 0),
    "downloading-expired": ("downloading", 1, "expired", 0, 0),
    "parsing-live": ("parsing", 1, "live", 0, 0),
    "parsing-expired": ("parsing", 2, "expired", 0, 0),
    "summarizing-live": ("summarizing", 1, "live", 0, 0),
    "summarizing-expired": ("summarizing", 1, "expired", 0, 0),
    # Its worker died on the last attempt the limit allows: the next claim fails it.
    "parsing-exhausted": ("parsing", 3, "expired", 0, 0),
    "summarized": ("summarized", 1, None, 0, 0),
    "failed": ("failed", 3, None, 0, 0),
}


@pytest.fixture
def old_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh database at the previous release's schema (001-003)."""
    name = f"sf_jobs_migration_{os.getpid()}"
    drop_database(pg_admin_dsn, name)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=name)
    migrate(dsn, until="003_token_revocation")
    yield dsn
    drop_database(pg_admin_dsn, name)


def _fill_old_schema(dsn: str, store_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """Sessions in every state, written as the previous release wrote them; returns when the
    live leases run out."""
    store = open_store(f"file://{store_dir}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        lease_until = conn.execute(
            "SELECT now() + make_interval(secs => %s)", (LIVE_LEASE_SECONDS,)
        ).fetchone()
        assert lease_until is not None
        for n, (session_id, spec) in enumerate(OLD_SESSIONS.items()):
            lifecycle, attempts, lease, run_after, priority = spec
            data = generate_transcript_bytes(random.Random(n), 20_000)
            sha256 = hashlib.sha256(data).hexdigest()
            path = tmp_path / f"{session_id}.jsonl"
            path.write_bytes(data)
            store.put_file(transcript_key(sha256), path)
            final = lifecycle in ("summarized", "failed")
            # A session in summarizing has its parse result stored, as start_summarizing does.
            parsed = parse_files(
                [(JobFile("t.jsonl", "main", None, sha256, len(data)), path)], 10**6
            )
            result = parsed[1] if lifecycle == "summarizing" else '{"old": true}'
            conn.execute(
                """
                INSERT INTO sessions (owner, id, lifecycle, parse_status, transcript_key,
                    transcript_size, transcript_sha256, attempts, run_after, priority,
                    lease_token, lease_owner, lease_expires_at, error, parse_result,
                    parser_version, summary)
                VALUES ('alice', %(id)s, %(lifecycle)s, %(parse_status)s, %(key)s, %(size)s,
                    %(sha256)s, %(attempts)s, now() + make_interval(secs => %(run_after)s),
                    %(priority)s,
                    CASE WHEN %(lease)s::text IS NULL THEN NULL ELSE gen_random_uuid() END,
                    CASE WHEN %(lease)s::text IS NULL THEN NULL ELSE 'old-worker' END,
                    CASE %(lease)s::text WHEN 'live' THEN %(until)s
                        WHEN 'expired' THEN now() - interval '1 second' END,
                    %(error)s, %(parse_result)s, %(parser_version)s, %(summary)s)
                """,
                {
                    "id": session_id,
                    "lifecycle": lifecycle,
                    "parse_status": "pending"
                    if lifecycle in ("queued", "downloading", "parsing")
                    else parsed[0].parse_status,
                    "key": transcript_key(sha256),
                    "size": len(data),
                    "sha256": sha256,
                    "attempts": attempts,
                    "run_after": run_after,
                    "priority": priority,
                    "lease": lease,
                    "until": lease_until[0],
                    "error": "an old failure" if lifecycle == "failed" else None,
                    "parse_result": result if final or lifecycle == "summarizing" else None,
                    "parser_version": PARSER_VERSION
                    if final or lifecycle == "summarizing"
                    else None,
                    "summary": '{"old": true}' if lifecycle == "summarized" else None,
                },
            )
    return {"lease_until": lease_until[0]}


def _sessions(dsn: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            "SELECT id, lifecycle, version, error, attempts, finished_at, summary, "
            "j.lease_owner, j.lease_expires_at, j.done, j.priority "
            "FROM sessions JOIN jobs AS j USING (owner, id)"
        )
        names = [d.name for d in cur.description or ()]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


async def test_a_database_of_the_previous_release_migrates_and_every_session_finishes(
    old_dsn: str, worker_settings: Settings, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    old = _fill_old_schema(old_dsn, store_dir, tmp_path)
    with psycopg.connect(old_dsn, autocommit=True) as conn:
        before = dict(conn.execute("SELECT id, version FROM sessions").fetchall())

    # The upgrade applies 004 first, then whatever came after it (the list's 005, ...).
    later = [m.name for m in migrations() if m.name >= "004"]
    assert migrate(old_dsn) == later and later[0] == "004_jobs"

    # Every job moved across as it stood.
    moved = _sessions(old_dsn)
    assert set(moved) == set(OLD_SESSIONS)
    for session_id, (lifecycle, attempts, lease, _run_after, priority) in OLD_SESSIONS.items():
        job = moved[session_id]
        assert job["attempts"] == attempts, session_id
        assert job["priority"] == priority, session_id
        assert job["done"] == (lifecycle in ("summarized", "failed")), session_id
        assert job["lease_owner"] == ("old-worker" if lease else None), session_id
        if lease == "live":
            assert job["lease_expires_at"] == old["lease_until"]
    assert {k: v["version"] for k, v in moved.items()} == before  # nothing visible changed

    settings = worker_settings.model_copy(
        update={"storage_url": f"file://{store_dir}", "worker_max_attempts": 3}
    )
    pool = make_pool(old_dsn, min_size=1, max_size=6, timeout=5)
    await pool.open(wait=True)
    worker = Worker(settings, dsn=old_dsn, pool=pool, store=open_store(f"file://{store_dir}"))
    await worker.start()
    try:
        for _ in range(600):  # bounded: 60 s
            done = _sessions(old_dsn)
            if all(s["done"] for s in done.values()):
                break
            await asyncio.sleep(0.1)
    finally:
        await worker.stop(grace=0)
        await pool.close()

    done = _sessions(old_dsn)
    assert {k: v["lifecycle"] for k, v in done.items()} == {
        **{k: "summarized" for k in OLD_SESSIONS},
        "parsing-exhausted": "failed",
        "failed": "failed",
    }
    for session_id, (lifecycle, attempts, lease, _run_after, _priority) in OLD_SESSIONS.items():
        row = done[session_id]
        if lifecycle in ("summarized", "failed"):  # finished before: left exactly as it was
            assert row["version"] == before[session_id], session_id
            assert row["attempts"] == attempts, session_id
            continue
        assert row["lease_owner"] is None, session_id
        if session_id == "parsing-exhausted":
            assert row["error"].startswith("gave up after 3 attempts: the last one stopped")
            continue
        assert row["error"] is None, session_id
        assert row["summary"] is not None, session_id
        # Claimed once by the new worker, on top of the old release's attempts.
        assert row["attempts"] == attempts + 1, session_id
        if lease == "live":  # the old worker's lease was honoured to its end
            finished_at: datetime = row["finished_at"]
            assert finished_at >= old["lease_until"], session_id
