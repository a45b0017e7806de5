"""The pipeline worker against a real PostgreSQL: uploads go through the real API, a real
Worker (in this process, short lease and poll settings) takes them to a terminal state."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import psycopg
import pytest

from sessionflow.db import make_pool
from sessionflow.queries import Q
from sessionflow.samples import (
    corrupt,
    generate_not_transcript_bytes,
    generate_transcript_bytes,
    iter_transcript_lines,
)
from sessionflow.settings import Settings
from sessionflow.storage import ObjectStore, StorageError, open_store, transcript_key
from sessionflow.worker import stages
from sessionflow.worker.claims import Claims
from sessionflow.worker.runner import Worker, WorkerConfigError
from tests.helpers import auth
from tests.integration.conftest import OWNER, TERMINAL, StartWorker, row, wait_for


@pytest.fixture
def token(make_token: Callable[[str], str]) -> str:
    return make_token(OWNER)


def transcript(seed: int = 1, size: int = 30_000, **options: Any) -> bytes:
    return generate_transcript_bytes(random.Random(seed), size, **options)


async def upload(
    api: httpx.AsyncClient, token: str, session_id: str, data: bytes, *, force: bool = False
) -> None:
    response = await api.put(
        f"/api/sessions/{session_id}/transcript",
        params={"force": "true"} if force else None,
        content=gzip.compress(data),
        headers={
            **auth(token),
            "Content-Encoding": "gzip",
            "X-Content-SHA256": hashlib.sha256(data).hexdigest(),
        },
    )
    assert response.status_code == 200, response.text


class LifecycleLog:
    """Every lifecycle NOTIFY of a session, in order, from a listening connection."""

    def __init__(self, db_dsn: str) -> None:
        self.conn = psycopg.connect(db_dsn, autocommit=True)
        self.conn.execute("LISTEN session_lifecycle")

    def states(self, session_id: str) -> list[str]:
        seen = []
        for note in self.conn.notifies(timeout=0.2):
            payload = json.loads(note.payload)
            if payload["id"] == session_id:
                seen.append(payload["lifecycle"])
        return seen

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def lifecycle_log(db_dsn: str) -> Iterator[LifecycleLog]:
    log = LifecycleLog(db_dsn)
    yield log
    log.close()


# -- the happy paths ------------------------------------------------------------------------


async def test_an_uploaded_transcript_is_parsed_and_summarized_step_by_step(
    api: httpx.AsyncClient,
    token: str,
    db_dsn: str,
    start_worker: StartWorker,
    lifecycle_log: LifecycleLog,
) -> None:
    await start_worker(worker_parser="process")
    await upload(api, token, "s1", transcript())
    done = await wait_for(db_dsn, "s1")

    assert done["lifecycle"] == "summarized", done["error"]
    assert done["parse_status"] == "ok"
    assert done["error"] is None
    assert done["attempts"] == 1
    assert done["lease_token"] is None
    assert lifecycle_log.states("s1") == [
        "queued",
        "downloading",
        "parsing",
        "summarizing",
        "summarized",
    ]
    detail = (await api.get("/api/sessions/s1", headers=auth(token))).json()
    assert detail["lifecycle"] == "summarized"
    assert detail["parse_result"]["user_prompts"] >= 2
    assert detail["parse_result"]["parse_status"] == "ok"
    assert detail["summary"]["summarizer"] == "heuristic"
    assert detail["summary"]["title"]


async def test_a_one_prompt_session_stops_at_parsed_without_a_summary(
    api: httpx.AsyncClient,
    token: str,
    db_dsn: str,
    start_worker: StartWorker,
    lifecycle_log: LifecycleLog,
) -> None:
    await start_worker()
    await upload(api, token, "short", transcript(seed=2, size=2_000, single_prompt=True))
    done = await wait_for(db_dsn, "short")

    assert done["lifecycle"] == "parsed"
    assert done["parse_status"] == "ok"
    assert done["parse_result"]["user_prompts"] == 1
    assert done["summary"] is None
    assert lifecycle_log.states("short") == ["queued", "downloading", "parsing", "parsed"]


async def test_a_malformed_line_makes_the_parse_partial(
    api: httpx.AsyncClient, token: str, db_dsn: str, start_worker: StartWorker
) -> None:
    rng = random.Random(3)
    lines = corrupt(rng, list(iter_transcript_lines(rng, 20_000)), bad_lines=1)
    await start_worker(worker_parser="process")
    await upload(api, token, "bent", b"".join(lines))
    done = await wait_for(db_dsn, "bent")

    assert done["lifecycle"] == "summarized"
    assert done["parse_status"] == "partial"
    assert done["parse_result"]["lines_skipped"] == 1
    assert done["error"] is None


async def test_an_empty_file_fails_at_once_with_a_clear_error(
    api: httpx.AsyncClient, token: str, db_dsn: str, start_worker: StartWorker
) -> None:
    await start_worker()
    await upload(api, token, "empty", b"")
    done = await wait_for(db_dsn, "empty")

    assert done["lifecycle"] == "failed"
    assert done["parse_status"] == "failed"
    assert done["attempts"] == 1  # permanent: no retry
    assert "The file is empty" in done["error"]
    assert ".jsonl" in done["error"]  # says what to upload instead


async def test_a_file_that_is_not_a_transcript_fails_at_once_with_a_clear_error(
    api: httpx.AsyncClient, token: str, db_dsn: str, start_worker: StartWorker
) -> None:
    await start_worker(worker_parser="process")  # the parser's error crosses processes
    await upload(api, token, "log", generate_not_transcript_bytes(random.Random(4), 5_000))
    done = await wait_for(db_dsn, "log")

    assert done["lifecycle"] == "failed"
    assert done["parse_status"] == "failed"
    assert done["attempts"] == 1
    assert "not a Claude Code transcript" in done["error"]


async def test_a_transcript_missing_from_the_store_fails_at_once(
    api: httpx.AsyncClient,
    token: str,
    db_dsn: str,
    worker_settings: Settings,
    start_worker: StartWorker,
) -> None:
    data = transcript(seed=5)
    await upload(api, token, "gone", data)
    store = open_store(worker_settings.resolved_storage_url)
    assert isinstance(store.url, str)
    stored = Path(store.url.removeprefix("file://")) / transcript_key(
        hashlib.sha256(data).hexdigest()
    )
    stored.unlink()
    await start_worker()
    done = await wait_for(db_dsn, "gone")

    assert done["lifecycle"] == "failed"
    assert done["attempts"] == 1
    assert "missing from the object store" in done["error"]
    assert "upload the session again" in done["error"]


async def test_a_damaged_stored_transcript_fails_at_once(
    api: httpx.AsyncClient,
    token: str,
    db_dsn: str,
    worker_settings: Settings,
    start_worker: StartWorker,
) -> None:
    data = transcript(seed=6)
    await upload(api, token, "rot", data)
    store_root = Path(open_store(worker_settings.resolved_storage_url).url.removeprefix("file://"))
    (store_root / transcript_key(hashlib.sha256(data).hexdigest())).write_bytes(data[:-10])
    await start_worker(worker_parser="process")
    done = await wait_for(db_dsn, "rot")

    assert done["lifecycle"] == "failed"
    assert "damaged" in done["error"]


# -- transient failures ----------------------------------------------------------------------


class FlakyStore:
    """A store whose first `failures` opens raise StorageError (as an unreachable S3 would)."""

    def __init__(self, inner: ObjectStore, failures: int) -> None:
        self.inner = inner
        self.url = inner.url
        self.failures = failures
        self.opens = 0

    def open(self, key: str) -> BinaryIO:
        self.opens += 1
        if self.opens <= self.failures:
            raise StorageError("could not connect to the endpoint URL http://s3.invalid")
        return self.inner.open(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_transient_storage_error_is_retried_with_backoff_then_succeeds(
    api: httpx.AsyncClient,
    token: str,
    db_dsn: str,
    worker_settings: Settings,
    start_worker: StartWorker,
) -> None:
    store = FlakyStore(open_store(worker_settings.resolved_storage_url), failures=1)
    await start_worker(store)
    await upload(api, token, "flaky", transcript(seed=7))
    done = await wait_for(db_dsn, "flaky")

    assert done["lifecycle"] == "summarized"
    assert done["attempts"] == 2
    assert done["error"] is None  # the retry's reason is cleared by the success


async def test_transient_errors_fail_the_session_after_the_last_attempt(
    api: httpx.AsyncClient,
    token: str,
    db_dsn: str,
    worker_settings: Settings,
    start_worker: StartWorker,
) -> None:
    store = FlakyStore(open_store(worker_settings.resolved_storage_url), failures=100)
    await start_worker(store, worker_max_attempts=3)
    await upload(api, token, "down", transcript(seed=8))
    retrying = await wait_for(db_dsn, "down", {"downloading", *TERMINAL})
    done = await wait_for(db_dsn, "down")

    assert retrying["lifecycle"] in ("downloading", "failed")
    assert done["lifecycle"] == "failed"
    assert done["attempts"] == 3
    assert store.opens == 3
    assert done["error"].startswith("gave up after 3 attempts: the object store failed")
    assert "s3.invalid" in done["error"]


async def test_a_retrying_session_shows_why_in_its_error(
    api: httpx.AsyncClient,
    token: str,
    db_dsn: str,
    worker_settings: Settings,
    start_worker: StartWorker,
) -> None:
    store = FlakyStore(open_store(worker_settings.resolved_storage_url), failures=100)
    # A long backoff holds the session between attempts, where a user would look at it.
    await start_worker(store, worker_retry_base_seconds=60, worker_retry_max_seconds=60)
    await upload(api, token, "wait", transcript(seed=9))
    deadline = asyncio.get_running_loop().time() + 30
    while (current := row(db_dsn, "wait"))["error"] is None:
        assert asyncio.get_running_loop().time() < deadline, current
        await asyncio.sleep(0.05)

    assert current["lifecycle"] == "downloading"
    assert current["lease_token"] is None
    assert current["delayed"] is True
    assert current["error"].startswith("attempt 1 of 3 failed, will retry: the object store")


# -- leases, crashes and fencing ------------------------------------------------------------


async def claim_directly(
    db_dsn: str, *, lease_seconds: float, limit: int = 1, worker_id: str = "crashed"
) -> list[Any]:
    """Claim as a worker that then dies: nobody renews or finishes what it took."""
    pool = make_pool(db_dsn, min_size=1, max_size=1, timeout=5)
    await pool.open(wait=True)
    try:
        return await Claims(pool, worker_id=worker_id, lease_seconds=lease_seconds).claim(limit)
    finally:
        await pool.close()


async def test_a_session_whose_worker_died_is_finished_by_another_after_its_lease_expires(
    api: httpx.AsyncClient, token: str, db_dsn: str, start_worker: StartWorker
) -> None:
    await upload(api, token, "orphan", transcript(seed=10))
    [job] = await claim_directly(db_dsn, lease_seconds=1.0)
    assert job.attempt == 1
    assert row(db_dsn, "orphan")["lease_owner"] == "crashed"

    await start_worker()
    done = await wait_for(db_dsn, "orphan")

    assert done["lifecycle"] == "summarized"
    assert done["attempts"] == 2


async def test_a_session_that_keeps_killing_its_worker_fails_after_the_last_attempt(
    api: httpx.AsyncClient, token: str, db_dsn: str, start_worker: StartWorker
) -> None:
    await upload(api, token, "killer", transcript(seed=11))
    for _ in range(3):  # three workers in a row die on it; each lease expires
        [job] = await claim_directly(db_dsn, lease_seconds=0.01)
        await asyncio.sleep(0.05)
    assert job.attempt == 3

    await start_worker(worker_max_attempts=3)
    done = await wait_for(db_dsn, "killer")

    assert done["lifecycle"] == "failed"
    assert done["error"].startswith("gave up after 3 attempts: the last one stopped")


async def test_the_lease_of_a_long_job_is_renewed_so_no_other_worker_takes_it(
    api: httpx.AsyncClient,
    token: str,
    db_dsn: str,
    worker_settings: Settings,
    start_worker: StartWorker,
) -> None:
    gate = threading.Event()
    store = GatedStore(open_store(worker_settings.resolved_storage_url), gate)
    first = await start_worker(store)
    await upload(api, token, "long", transcript(seed=12))
    await wait_for(db_dsn, "long", {"downloading"})
    second = await start_worker()
    holder = row(db_dsn, "long")["lease_owner"]
    assert holder == first.worker_id

    await asyncio.sleep(3 * worker_settings.worker_lease_seconds)  # several lease periods
    assert row(db_dsn, "long")["lease_owner"] == first.worker_id
    assert second.running_jobs == 0
    gate.set()
    done = await wait_for(db_dsn, "long")

    assert done["lifecycle"] == "summarized"
    assert done["attempts"] == 1  # claimed once: never processed by two workers


async def test_a_worker_drops_a_session_re_ingested_under_it(
    api: httpx.AsyncClient,
    token: str,
    db_dsn: str,
    worker_settings: Settings,
    start_worker: StartWorker,
) -> None:
    gate = threading.Event()
    store = GatedStore(open_store(worker_settings.resolved_storage_url), gate)
    first = await start_worker(store, worker_concurrency=1)
    await upload(api, token, "moving", transcript(seed=13))
    await wait_for(db_dsn, "moving", {"downloading"})

    # A changed transcript arrives: the row is queued again and its lease cleared.
    await upload(api, token, "moving", transcript(seed=14))
    await start_worker()
    gate.set()
    done = await wait_for(db_dsn, "moving")
    for _ in range(200):
        if first.outcomes["lost"]:
            break
        await asyncio.sleep(0.05)

    assert done["lifecycle"] == "summarized"
    assert done["attempts"] == 1  # counted afresh from the re-ingest
    # Its lease renewal or its next fenced write found the lease gone: it gave up quietly.
    assert first.outcomes["lost"] == 1


async def test_a_fenced_write_cannot_move_a_session_backwards(
    api: httpx.AsyncClient, token: str, db_dsn: str
) -> None:
    await upload(api, token, "back", transcript(seed=15))
    [job] = await claim_directly(db_dsn, lease_seconds=30)
    pool = make_pool(db_dsn, min_size=1, max_size=1, timeout=5)
    await pool.open(wait=True)
    try:
        claims = Claims(pool, worker_id="w", lease_seconds=30)
        assert await claims.advance(job, "downloading")
        assert await claims.advance(job, "parsing")
        with pytest.raises(psycopg.errors.CheckViolation, match="illegal lifecycle transition"):
            await claims.advance(job, "downloading")
        with pytest.raises(psycopg.errors.CheckViolation, match="parsing -> summarized"):
            await claims.finish_summarized(job, "{}")
    finally:
        await pool.close()
    assert row(db_dsn, "back")["lifecycle"] == "parsing"


# -- stopping ---------------------------------------------------------------------------------


class GatedStore:
    """A store whose reads wait for a gate: a job that takes as long as the test wants."""

    def __init__(self, inner: ObjectStore, gate: threading.Event) -> None:
        self.inner = inner
        self.url = inner.url
        self.gate = gate
        self.opened = threading.Event()

    def open(self, key: str) -> BinaryIO:
        self.opened.set()
        if not self.gate.wait(timeout=60):
            raise StorageError("the test's gate never opened")
        return self.inner.open(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_graceful_stop_gives_running_jobs_back_without_counting_the_attempt(
    api: httpx.AsyncClient,
    token: str,
    db_dsn: str,
    worker_settings: Settings,
    start_worker: StartWorker,
) -> None:
    gate = threading.Event()
    store = GatedStore(open_store(worker_settings.resolved_storage_url), gate)
    worker = await start_worker(store)
    await upload(api, token, "held", transcript(seed=16))
    await wait_for(db_dsn, "held", {"downloading"})
    assert await asyncio.to_thread(store.opened.wait, 10)

    await worker.stop(grace=0)
    gate.set()
    given_back = row(db_dsn, "held")
    assert given_back["lifecycle"] == "downloading"
    assert given_back["lease_token"] is None
    assert given_back["attempts"] == 0
    assert given_back["delayed"] is False

    await start_worker()
    done = await wait_for(db_dsn, "held")
    assert done["lifecycle"] == "summarized"
    assert done["attempts"] == 1


async def test_a_graceful_stop_lets_a_running_job_finish_within_the_grace_period(
    api: httpx.AsyncClient,
    token: str,
    db_dsn: str,
    worker_settings: Settings,
    start_worker: StartWorker,
) -> None:
    gate = threading.Event()
    store = GatedStore(open_store(worker_settings.resolved_storage_url), gate)
    worker = await start_worker(store)
    await upload(api, token, "finishing", transcript(seed=17))
    await wait_for(db_dsn, "finishing", {"downloading"})

    stopping = asyncio.create_task(worker.stop(grace=30))
    await asyncio.sleep(0.2)
    await upload(api, token, "late", transcript(seed=18))  # not claimed: it is stopping
    gate.set()
    await stopping

    assert row(db_dsn, "finishing")["lifecycle"] == "summarized"
    late = row(db_dsn, "late")
    assert late["lifecycle"] == "queued"
    assert late["attempts"] == 0


# -- waking ---------------------------------------------------------------------------------


async def test_a_notification_wakes_the_worker_long_before_its_safety_poll(
    api: httpx.AsyncClient, token: str, db_dsn: str, start_worker: StartWorker
) -> None:
    worker = await start_worker(worker_poll_seconds=3600)
    await asyncio.sleep(0.3)  # let it settle into waiting
    await upload(api, token, "woken", transcript(seed=19))
    done = await wait_for(db_dsn, "woken", within=30)

    assert done["lifecycle"] == "summarized"
    assert worker.listener.notifications >= 1


async def test_the_safety_poll_alone_finds_queued_sessions(
    api: httpx.AsyncClient, token: str, db_dsn: str, start_worker: StartWorker
) -> None:
    worker = await start_worker(worker_listen=False, worker_poll_seconds=0.2)
    await upload(api, token, "polled", transcript(seed=20))
    done = await wait_for(db_dsn, "polled")

    assert done["lifecycle"] == "summarized"
    assert worker.listener.sessions == 0


async def test_the_listener_reconnects_and_listens_again_when_its_connection_is_killed(
    api: httpx.AsyncClient, token: str, db_dsn: str, start_worker: StartWorker
) -> None:
    worker = await start_worker(worker_poll_seconds=3600)
    for _ in range(200):
        if worker.listener.listening:
            break
        await asyncio.sleep(0.05)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query = %s",
            (Q.jobs_listen,),
        ).fetchone()
    assert killed == (1,)
    for _ in range(200):
        if worker.listener.sessions >= 2 and worker.listener.listening:
            break
        await asyncio.sleep(0.05)
    assert worker.listener.sessions == 2

    await upload(api, token, "after", transcript(seed=21))
    done = await wait_for(db_dsn, "after")
    assert done["lifecycle"] == "summarized"


async def upload_backlog(
    api: httpx.AsyncClient, token: str, prefix: str, count: int, *, seed: int
) -> list[str]:
    """`count` small sessions queued before any worker runs; returns their ids."""
    ids = [f"{prefix}{i}" for i in range(count)]
    for i, session_id in enumerate(ids):
        await upload(api, token, session_id, transcript(seed=seed + i, size=8_000))
    return ids


async def test_concurrent_workers_share_a_backlog_and_process_each_session_once(
    api: httpx.AsyncClient, token: str, db_dsn: str, start_worker: StartWorker
) -> None:
    ids = await upload_backlog(api, token, "b", 12, seed=100)
    workers = [await start_worker(), await start_worker(), await start_worker()]
    for session_id in ids:
        await wait_for(db_dsn, session_id)

    def finished() -> int:
        return sum(w.outcomes["summarized"] + w.outcomes["parsed"] for w in workers)

    for _ in range(200):  # a worker counts a job just after its last write lands
        if finished() == len(ids):
            break
        await asyncio.sleep(0.02)
    assert all(row(db_dsn, s)["attempts"] == 1 for s in ids)
    assert finished() == len(ids)


async def test_a_busy_worker_reuses_its_connections_and_gives_them_back_when_idle(
    api: httpx.AsyncClient, token: str, db_dsn: str, start_worker: StartWorker
) -> None:
    ids = await upload_backlog(api, token, "c", 12, seed=200)
    worker = await start_worker(worker_concurrency=2)
    for session_id in ids:
        assert (await wait_for(db_dsn, session_id))["lifecycle"] == "summarized"

    pool = worker.claims.pool
    # Without reuse a session takes two checkouts (its claim, its job); the heartbeat takes a few.
    assert pool.get_stats()["requests_num"] < len(ids)
    for _ in range(200):  # the claim that finds the queue empty hands them back
        stats = pool.get_stats()
        if stats["pool_available"] == stats["pool_size"]:
            break
        await asyncio.sleep(0.02)
    stats = pool.get_stats()
    assert stats["pool_available"] == stats["pool_size"]


def test_an_unknown_summarizer_is_refused_with_a_sentence(
    worker_settings: Settings, db_dsn: str
) -> None:
    settings = worker_settings.model_copy(update={"summarizer": "nope"})
    pool = make_pool(db_dsn, min_size=1, max_size=1, timeout=5)
    with pytest.raises(WorkerConfigError, match="SESSIONFLOW_SUMMARIZER"):
        Worker(settings, dsn=db_dsn, pool=pool, store=open_store(settings.resolved_storage_url))


@pytest.mark.parametrize(("keep_seconds", "checkouts"), [(3600.0, 1), (0.0, 3)])
async def test_a_kept_connection_goes_back_to_the_pool_once_kept_for_keep_seconds(
    db_dsn: str, keep_seconds: float, checkouts: int
) -> None:
    pool = make_pool(db_dsn, min_size=1, max_size=2, timeout=5)
    await pool.open(wait=True)
    try:
        claims = Claims(pool, worker_id="w", lease_seconds=30, keep=1, keep_seconds=keep_seconds)
        for _ in range(3):
            async with claims.connection() as conn:
                await conn.execute("SELECT 1")
        # Within keep_seconds the one connection is reused; past it, each use is a checkout
        # the pool checks (and retires at its max lifetime).
        assert pool.get_stats()["requests_num"] == checkouts
        await claims.return_kept()
    finally:
        await pool.close()


async def test_waiting_for_a_free_parser_does_not_count_against_the_job_timeout(
    api: httpx.AsyncClient,
    token: str,
    db_dsn: str,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One parser, three jobs held, each parse 0.6 s: the last job waits 1.2 s for the parser,
    # longer than the 1 s an attempt may take, but only its own parse counts.
    real_parse = stages.parse_files

    def slow_parse(*args: Any) -> Any:
        time.sleep(0.6)
        return real_parse(*args)

    monkeypatch.setattr(stages, "parse_files", slow_parse)
    ids = await upload_backlog(api, token, "p", 3, seed=300)
    worker = await start_worker(
        worker_parser="thread",
        worker_parsers=1,
        worker_concurrency=3,
        worker_job_timeout_seconds=1.0,
    )
    for session_id in ids:
        assert (await wait_for(db_dsn, session_id))["lifecycle"] in TERMINAL
    assert all(row(db_dsn, s)["attempts"] == 1 for s in ids)
    assert worker.outcomes["retried"] == 0
    assert worker.outcomes["summarized"] + worker.outcomes["parsed"] == 3
