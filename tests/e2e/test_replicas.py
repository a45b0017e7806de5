"""Past one machine, for real: two `sessionflow serve --no-worker` replicas and a separate
`sessionflow worker` on one database. A client watching through replica A sees every change
the worker makes to sessions uploaded through replica B, to their exact final states: the
NOTIFY of each change reaches every replica's hub."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import random
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sessionflow.client.watch import watch
from sessionflow.protocol import TERMINAL, SessionStatus
from sessionflow.samples import generate_not_transcript_bytes, generate_transcript_bytes
from tests.helpers import Processes, auth, free_port

pytestmark = pytest.mark.slow


def upload(url: str, token: str, session_id: str, data: bytes) -> None:
    response = httpx.put(
        f"{url}/api/sessions/{session_id}/transcript",
        content=gzip.compress(data),
        headers={
            **auth(token),
            "Content-Encoding": "gzip",
            "X-Content-SHA256": hashlib.sha256(data).hexdigest(),
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text


def counters(url: str) -> dict[str, float]:
    text = httpx.get(url, timeout=10).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_a_client_of_replica_a_sees_every_change_to_sessions_uploaded_through_b(
    procs: Processes, make_token: Callable[[str], str]
) -> None:
    fast_figures = {"SESSIONFLOW_METRICS_DB_INTERVAL_SECONDS": "0.1"}
    a = procs.serve("--no-worker", env=fast_figures)
    b = procs.serve("--no-worker", env=fast_figures)
    metrics_port = free_port()
    worker = procs.worker("--metrics-port", str(metrics_port), "--concurrency", "2")
    token = make_token("alice")
    rng = random.Random(11)
    transcripts = {f"r{n}": generate_transcript_bytes(rng, 20_000) for n in range(8)}
    transcripts["r-bad"] = generate_not_transcript_bytes(rng, 2_000)
    ids = sorted(transcripts)

    async def watch_a_while_b_ingests() -> dict[str, list[SessionStatus]]:
        seen: dict[str, list[SessionStatus]] = {sid: [] for sid in ids}
        snapshot_taken = asyncio.Event()
        uploads: asyncio.Task[None] | None = None

        async def ingest_through_b() -> None:
            await snapshot_taken.wait()
            for sid in ids:
                await asyncio.to_thread(upload, b.url, token, sid, transcripts[sid])

        async with contextlib.aclosing(watch(a.url, token, ids, reconnect=False)) as updates:
            async with asyncio.timeout(120):
                async for update in updates:
                    if update.snapshot:
                        # Watched before they exist: everything after comes through A's hub.
                        assert sorted(update.not_found) == ids
                        snapshot_taken.set()
                        uploads = asyncio.create_task(ingest_through_b())
                        continue
                    for sid, status in update.statuses.items():
                        seen[sid].append(status)
                    if all(s and s[-1].lifecycle in TERMINAL for s in seen.values()):
                        break
        assert uploads is not None
        await uploads
        return seen

    seen = asyncio.run(watch_a_while_b_ingests())

    # Exactly what the database holds now, read through the other replica.
    final = httpx.post(
        f"{b.url}/api/sessions/batch-status", json={"session_ids": ids}, headers=auth(token)
    ).json()["statuses"]
    for sid in ids:
        last = seen[sid][-1]
        assert (last.lifecycle, last.parse_status, last.version) == (
            final[sid]["lifecycle"],
            final[sid]["parse_status"],
            final[sid]["version"],
        ), sid
        versions = [s.version for s in seen[sid]]
        assert versions == sorted(set(versions)), f"{sid}: {versions}"
    assert final["r-bad"]["lifecycle"] == "failed"
    assert all(final[sid]["lifecycle"] in ("parsed", "summarized") for sid in ids if sid != "r-bad")
    assert worker.proc.poll() is None

    # The worker's own exporter counted the same work.
    worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    figures = counters(worker_metrics)
    assert figures["sessionflow_jobs_claimed_total"] == len(ids)
    assert figures["sessionflow_jobs_failed_total"] == 1
    assert figures["sessionflow_pickup_latency_seconds_count"] == len(ids)
    # The replicas do no pipeline work, but both count the sessions the same way.
    for replica in (a, b):
        deadline = time.monotonic() + 30
        while True:  # the database's figures are read in the background, every 0.1 s here
            sessions = {
                sample.labels["lifecycle"]: sample.value
                for family in text_string_to_metric_families(
                    httpx.get(f"{replica.url}/metrics").text
                )
                for sample in family.samples
                if sample.name == "sessionflow_sessions"
            }
            if sessions.get("failed") == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert sessions["failed"] == 1
        assert sessions["parsed"] + sessions["summarized"] == len(ids) - 1
        assert counters(f"{replica.url}/metrics")["sessionflow_jobs_claimed_total"] == 0
    # What the client saw went through A's hub; no one watched through B.
    assert counters(f"{a.url}/metrics")["sessionflow_notify_send_latency_seconds_count"] > 0
    assert counters(f"{b.url}/metrics")["sessionflow_notify_send_latency_seconds_count"] == 0
