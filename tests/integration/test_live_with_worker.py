"""The live stream with the real pipeline: clients watch ids before they exist, their
transcripts are uploaded through the API, and the server's in-process worker drives every
session to an end. Each client ends with exactly its owner's final states and never sees a
state of another owner's session (every owner uses the same ids).

200 clients with 2 sessions each here; the 200 x 50 test in test_live_fanout.py plays the
worker in SQL, as the real one processes some tens of sessions a second on this machine: far
too slow for 10,000 sessions in a test."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import psycopg
import pytest

from sessionflow.client.http import SessionflowClient
from sessionflow.client.watch import watch
from sessionflow.protocol import TERMINAL
from sessionflow.samples import generate_not_transcript_bytes, generate_transcript_bytes
from sessionflow.server.app import create_app
from sessionflow.settings import Settings
from sessionflow.tokens import create_token
from tests.helpers import LiveServer, free_port
from tests.integration.live_support import State

CLIENTS = 200
SESSIONS = 2
IDS = [f"s{i}" for i in range(SESSIONS)]
GUARD = 120.0  # stops a hung test; measures nothing

pytestmark = pytest.mark.slow


class VersionLedger:
    """Which owner every version belongs to, from a LISTEN connection of the test's own."""

    def __init__(self, dsn: str) -> None:
        self.owners: dict[int, str] = {}
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._conn.execute("LISTEN session_lifecycle")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for note in self._conn.notifies(timeout=0.1):
                payload = json.loads(note.payload)
                self.owners[payload["version"]] = payload["owner"]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._conn.close()


@pytest.fixture
def ledger(db_dsn: str) -> Iterator[VersionLedger]:
    ledger = VersionLedger(db_dsn)
    yield ledger
    ledger.close()


@pytest.fixture
def server_with_worker(db_dsn: str, tmp_path: Path) -> Iterator[LiveServer]:
    settings = Settings(
        database_url=db_dsn,
        data_dir=tmp_path / "data",
        worker_concurrency=4,
        worker_parser="thread",
        worker_poll_seconds=0.5,
    )
    server = LiveServer(create_app(settings, db_dsn, run_worker=True), free_port()).start()
    yield server
    server.stop()


def transcript(rng: random.Random) -> bytes:
    """Mostly sessions worth summarizing; some too short (they stay parsed); some files that
    are not transcripts at all (they fail)."""
    kind = rng.random()
    if kind < 0.1:
        return generate_not_transcript_bytes(rng, 2_000)
    return generate_transcript_bytes(rng, 4_000, single_prompt=kind < 0.3)


async def follow(url: str, token: str, received: list[int]) -> dict[str, State]:
    merged: dict[str, State] = {}
    async with aclosing(watch(url, token, IDS)) as updates:
        async for update in updates:
            if update.snapshot:
                merged.clear()
            for sid, s in update.statuses.items():
                assert s.version is not None
                received.append(s.version)
                merged[sid] = (s.lifecycle.value, s.parse_status.value, s.version)
            if len(merged) == SESSIONS and all(lc in TERMINAL for lc, _, _ in merged.values()):
                return merged
    raise AssertionError("the stream ended")


async def test_watchers_end_with_the_final_states_the_real_worker_leaves(
    server_with_worker: LiveServer, db_dsn: str, ledger: VersionLedger
) -> None:
    owners = [f"owner-{n:03d}" for n in range(CLIENTS)]
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        tokens = {owner: create_token(conn, owner)[1] for owner in owners}
    received: dict[str, list[int]] = {owner: [] for owner in owners}
    rng = random.Random(42)
    async with asyncio.timeout(GUARD):
        # Watching first: every id is not found yet, and appears as a delta once uploaded.
        watchers = [
            asyncio.create_task(follow(server_with_worker.url, tokens[o], received[o]))
            for o in owners
        ]
        for owner in owners:
            async with SessionflowClient(server_with_worker.url, tokens[owner]) as client:
                for sid in IDS:
                    data = transcript(rng)
                    await client.upload(sid, data, hashlib.sha256(data).hexdigest())
        views = await asyncio.gather(*watchers)

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT owner, id, lifecycle, parse_status, version FROM sessions")
        table: dict[str, dict[str, State]] = {owner: {} for owner in owners}
        for owner, sid, lifecycle, parse_status, version in rows:
            table[owner][sid] = (lifecycle, parse_status, version)
    outcomes = {lc for view in views for lc, _, _ in view.values()}
    assert {"summarized", "parsed", "failed"} <= outcomes
    for owner, view in zip(owners, views, strict=True):
        assert view == table[owner], owner
        leaked = [v for v in received[owner] if ledger.owners.get(v) != owner]
        assert leaked == [], f"{owner} received versions of other owners' sessions: {leaked}"
