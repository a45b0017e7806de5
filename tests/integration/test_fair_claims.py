"""Claiming is fair across owners: round-robin over the owners with queued work, new work
before background work, whatever one owner has queued."""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
import pytest

from sessionflow.db import make_pool
from sessionflow.queries import Q
from sessionflow.worker.claims import Claims, Job


def ingest(dsn: str, owner: str, session_id: str) -> None:
    """Queue a session through the ingest statement the API runs (one transaction each, so
    each is queued after the one before)."""
    sha256 = hashlib.sha256(f"{owner}/{session_id}".encode()).hexdigest()
    params: dict[str, Any] = {
        "owner": owner,
        "id": session_id,
        "key": f"transcripts/{sha256}",
        "size": 1,
        "sha256": sha256,
        "files": None,
        "force": True,
    }
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(Q.session_ingest, params).fetchone() is not None


async def claim_one_at_a_time(dsn: str, times: int) -> list[Job]:
    pool = make_pool(dsn, min_size=1, max_size=1, timeout=5)
    await pool.open(wait=True)
    try:
        claims = Claims(pool, worker_id="w", lease_seconds=30)
        jobs: list[Job] = []
        for _ in range(times):
            jobs += await claims.claim(1)
        return jobs
    finally:
        await pool.close()


async def test_jobs_queued_as_aaaabbc_are_claimed_as_abcabaa(db_dsn: str) -> None:
    for n, owner in enumerate("AAAABBC"):
        ingest(db_dsn, owner, f"{owner}{n}")

    jobs = await claim_one_at_a_time(db_dsn, 8)

    assert "".join(job.owner for job in jobs) == "ABCABAA"
    # Each owner's own sessions still go oldest first.
    assert [job.id for job in jobs if job.owner == "A"] == ["A0", "A1", "A2", "A3"]


async def test_a_small_owner_queued_behind_a_backlog_is_claimed_next(db_dsn: str) -> None:
    for n in range(200):
        ingest(db_dsn, "big", f"big-{n}")
    first = await claim_one_at_a_time(db_dsn, 3)  # the backlog is being worked on
    ingest(db_dsn, "small", "small-0")
    ingest(db_dsn, "small", "small-1")

    jobs = await claim_one_at_a_time(db_dsn, 4)

    assert [job.owner for job in first] == ["big"] * 3
    assert [job.id for job in jobs if job.owner == "small"] == ["small-0", "small-1"]
    assert [job.owner for job in jobs[:3]] == ["small", "big", "small"]


async def test_background_work_waits_for_new_work_of_every_owner(db_dsn: str) -> None:
    ingest(db_dsn, "A", "old")
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET priority = 1 WHERE id = 'old'")  # as requeue_outdated
    ingest(db_dsn, "B", "new-1")
    ingest(db_dsn, "B", "new-2")

    jobs = await claim_one_at_a_time(db_dsn, 3)

    assert [job.id for job in jobs] == ["new-1", "new-2", "old"]


@pytest.mark.parametrize("limit", [1, 5])
async def test_one_claim_takes_each_owners_first_job_before_anyones_second(
    db_dsn: str, limit: int
) -> None:
    for n in range(10):
        ingest(db_dsn, "A", f"A{n}")
    ingest(db_dsn, "B", "B0")
    ingest(db_dsn, "C", "C0")
    pool = make_pool(db_dsn, min_size=1, max_size=1, timeout=5)
    await pool.open(wait=True)
    try:
        jobs = await Claims(pool, worker_id="w", lease_seconds=30).claim(limit)
    finally:
        await pool.close()

    owners = sorted(job.owner for job in jobs)
    assert owners == sorted("ABCAA"[:limit])
