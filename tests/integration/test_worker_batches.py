"""Batched commits: a worker moves several sessions through a stage in one transaction, and
every session still goes through every state in its own commit, notified, in order."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable

import httpx
import psycopg

from sessionflow.db import make_pool
from sessionflow.queries import Q
from sessionflow.worker.claims import Claims
from tests.integration.conftest import OWNER, StartWorker, wait_for
from tests.integration.test_worker import transcript, upload

# Every lifecycle change of a session, with the transaction that committed it.
STATE_LOG = """
CREATE TABLE state_log (
    id text, lifecycle text, xid bigint DEFAULT txid_current(),
    at timestamptz DEFAULT clock_timestamp()
);
CREATE FUNCTION log_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.lifecycle IS DISTINCT FROM OLD.lifecycle THEN
        INSERT INTO state_log (id, lifecycle) VALUES (NEW.id, NEW.lifecycle);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER log_state AFTER UPDATE ON sessions FOR EACH ROW EXECUTE FUNCTION log_state();
"""

STEPS = ["downloading", "parsing", "summarizing", "summarized"]


async def test_several_sessions_share_a_stage_commit_and_each_state_is_its_own_commit(
    api: httpx.AsyncClient,
    make_token: Callable[[str], str],
    db_dsn: str,
    start_worker: StartWorker,
) -> None:
    token = make_token(OWNER)
    ids = [f"b{n}" for n in range(24)]
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(STATE_LOG)
    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute(Q.live_listen)
        for n, session_id in enumerate(ids):
            await upload(api, token, session_id, transcript(seed=100 + n, size=8_000))
        worker = await start_worker(worker_concurrency=8, worker_batch_size=8)
        for session_id in ids:
            await wait_for(db_dsn, session_id)
        notified: dict[str, list[str]] = defaultdict(list)
        for note in listener.notifies(timeout=1.0):
            if note.channel == "session_lifecycle":
                payload = json.loads(note.payload)
                notified[payload["id"]].append(payload["lifecycle"])

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        log = conn.execute("SELECT id, lifecycle, xid FROM state_log ORDER BY at").fetchall()
    states: dict[str, list[str]] = defaultdict(list)
    commits: dict[str, set[int]] = defaultdict(set)
    stage_commits: dict[int, set[str]] = defaultdict(set)
    for session_id, lifecycle, xid in log:
        states[session_id].append(lifecycle)
        commits[session_id].add(xid)
        if lifecycle != "downloading":  # set by the claim, which is batched anyway
            stage_commits[xid].add(session_id)

    for session_id in ids:
        assert states[session_id] == STEPS, session_id
        assert len(commits[session_id]) == len(STEPS), session_id  # one commit per state
        assert notified[session_id] == ["queued", *STEPS], session_id  # every one notified
    shared = [sessions for sessions in stage_commits.values() if len(sessions) > 1]
    assert shared, "no stage commit held more than one session"
    assert worker.claims.commits.writes > worker.claims.commits.commits


def _ingest(db_dsn: str, ids: list[str]) -> None:
    """Queue sessions straight through the ingest statement (their files are never read)."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for session_id in ids:
            params = {"owner": OWNER, "id": session_id, "key": "k", "size": 1}
            params |= {"sha256": "a" * 64, "files": None, "force": True}
            conn.execute(Q.session_ingest, params)


async def test_a_write_refused_in_a_shared_commit_fails_its_own_job_only(db_dsn: str) -> None:
    _ingest(db_dsn, ["good", "bad"])
    pool = make_pool(db_dsn, min_size=1, max_size=2, timeout=5)
    await pool.open(wait=True)
    try:
        claims = Claims(pool, worker_id="w", lease_seconds=30, batch=8)
        jobs = {job.id: job for job in await claims.claim(2)}
        await asyncio.gather(
            claims.advance(jobs["good"], "parsing"), claims.advance(jobs["bad"], "parsing")
        )
        shared = (claims.commits.commits, claims.commits.writes)
        good, bad = await asyncio.gather(
            claims.start_summarizing(jobs["good"], "ok", '{"title": "fine"}', 2),
            # jsonb cannot hold NUL: PostgreSQL refuses this value.
            claims.start_summarizing(jobs["bad"], "ok", '{"title": "\\u0000"}', 2),
            return_exceptions=True,
        )
    finally:
        await pool.close()

    assert good is True
    assert isinstance(bad, psycopg.DataError)
    assert shared == (1, 2)  # the two advances went in one commit
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        states = dict(conn.execute("SELECT id, lifecycle FROM sessions").fetchall())
    assert states == {"good": "summarizing", "bad": "parsing"}


async def test_writes_of_running_jobs_wait_for_each_other_and_share_one_statement(
    db_dsn: str,
) -> None:
    """Under load a write lingers for the other running jobs' writes (worker_commit_linger):
    writes that arrive apart still share one statement, each keeps its own fence, and a batch
    as large as the batch size is written whole (its LIMIT is the planner's hint, not a cut)."""
    ids = ["lost", "s1", "s2", "s3"]
    _ingest(db_dsn, ids)
    pool = make_pool(db_dsn, min_size=1, max_size=2, timeout=5)
    await pool.open(wait=True)
    try:
        claims = Claims(
            pool, worker_id="w", lease_seconds=30, batch=4, linger=30.0, writers=lambda: 4
        )
        jobs = {job.id: job for job in await claims.claim(4)}
        _ingest(db_dsn, ["lost"])  # a re-ingest takes that job away: its write must not land

        async def later(n: int, session_id: str) -> bool:
            await asyncio.sleep(0.05 * n)
            return await claims.advance(jobs[session_id], "parsing")

        held = await asyncio.wait_for(
            asyncio.gather(*(later(n, session_id) for n, session_id in enumerate(ids))), 20
        )
    finally:
        await pool.close()

    assert held == [False, True, True, True]
    assert (claims.commits.commits, claims.commits.writes) == (1, 4)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        states = dict(conn.execute("SELECT id, lifecycle FROM sessions").fetchall())
    assert states == {"s1": "parsing", "s2": "parsing", "s3": "parsing", "lost": "queued"}


async def test_a_lone_job_does_not_linger(db_dsn: str) -> None:
    _ingest(db_dsn, ["alone"])
    pool = make_pool(db_dsn, min_size=1, max_size=2, timeout=5)
    await pool.open(wait=True)
    try:
        # A linger no test could sit out: were it applied, the wait below would time out.
        claims = Claims(
            pool, worker_id="w", lease_seconds=30, batch=8, linger=3600.0, writers=lambda: 1
        )
        [job] = await claims.claim(1)
        assert await asyncio.wait_for(claims.advance(job, "parsing"), 20)
    finally:
        await pool.close()
