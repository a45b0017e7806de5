"""GET /metrics of the app in-process, with its worker and hub on real PostgreSQL: aggregate
counts across owners (and nothing of any one owner), and the LISTEN reconnect counters."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from sessionflow.protocol import TERMINAL
from sessionflow.samples import generate_transcript_bytes
from sessionflow.server.app import create_app
from sessionflow.server.live import APPLICATION_NAME
from sessionflow.settings import Settings
from sessionflow.worker.runner import LISTEN_APPLICATION_NAME as WORKER_LISTEN_NAME
from tests.helpers import auth

GUARD = 60.0  # stops a hung test; measures nothing


@pytest.fixture
async def app(settings: Settings, db_dsn: str) -> AsyncIterator[FastAPI]:
    fast = settings.model_copy(
        update={
            "worker_parser": "thread",
            "worker_ping_seconds": 0.5,
            "worker_poll_seconds": 1,
            "metrics_db_interval_seconds": 0.1,
        }
    )
    application = create_app(fast, db_dsn, run_worker=True)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sessionflow.test") as c:
        yield c


async def samples(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[Any]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


async def upload(client: httpx.AsyncClient, token: str, sid: str, data: bytes) -> None:
    response = await client.put(
        f"/api/sessions/{sid}/transcript",
        content=gzip.compress(data),
        headers={
            **auth(token),
            "Content-Encoding": "gzip",
            "X-Content-SHA256": hashlib.sha256(data).hexdigest(),
        },
    )
    assert response.status_code == 200, response.text


async def until_final(client: httpx.AsyncClient, token: str, ids: list[str]) -> None:
    async with asyncio.timeout(GUARD):
        while True:
            response = await client.post(
                "/api/sessions/batch-status", json={"session_ids": ids}, headers=auth(token)
            )
            statuses = response.json()["statuses"]
            if len(statuses) == len(ids) and all(
                s["lifecycle"] in TERMINAL for s in statuses.values()
            ):
                return
            await asyncio.sleep(0.05)


async def test_session_counts_are_aggregate_across_owners_and_name_no_one(
    client: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    rng = random.Random(5)
    tokens = {"alice-secret-owner": make_token("alice-secret-owner"), "bob": make_token("bob")}
    for owner, token in tokens.items():
        for n in range(3):
            await upload(client, token, f"{owner}-{n}", generate_transcript_bytes(rng, 10_000))
    await upload(client, tokens["bob"], "junk", b"not json at all\n")
    for owner, token in tokens.items():
        ids = [f"{owner}-{n}" for n in range(3)] + (["junk"] if owner == "bob" else [])
        await until_final(client, token, ids)

    async with asyncio.timeout(GUARD):  # the database figures are read in the background
        while True:
            figures = await samples(client)
            by_lifecycle = {
                dict(labels)["lifecycle"]: value
                for (name, labels), value in figures.items()
                if name == "sessionflow_sessions"
            }
            # A snapshot read before the last session finished shows it still in flight (a
            # worker claims several at once, so none need be queued by then): wait for one that
            # shows all seven final.
            final = sum(by_lifecycle.get(state, 0) for state in ("parsed", "summarized", "failed"))
            if sum(by_lifecycle.values()) == 7 and final == 7:
                break
            await asyncio.sleep(0.05)
    assert by_lifecycle["failed"] == 1
    assert by_lifecycle["parsed"] + by_lifecycle["summarized"] == 6
    assert figures[("sessionflow_jobs_claimed_total", frozenset())] == 7
    assert figures[("sessionflow_jobs_failed_total", frozenset())] == 1
    text = (await client.get("/metrics")).text
    assert "alice" not in text
    assert "bob" not in text


async def test_lost_listen_connections_are_counted_for_the_hub_and_the_worker(
    app: FastAPI, client: httpx.AsyncClient, db_dsn: str
) -> None:
    hub_reconnects = ("sessionflow_listen_reconnects_total", frozenset({("listener", "hub")}))
    worker_reconnects = (
        "sessionflow_listen_reconnects_total",
        frozenset({("listener", "worker")}),
    )
    before = await samples(client)
    assert before[hub_reconnects] == 0
    assert before[worker_reconnects] == 0
    links = (app.state.live_hub.link, app.state.worker.listener)
    async with asyncio.timeout(GUARD):
        # Both LISTENs established first: a backend killed while its LISTEN is still on the
        # way is a failed first attempt, not a reconnect (and over TCP that window is wide).
        await asyncio.gather(*(link.up.wait() for link in links))
        assert all(link.listening for link in links)
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name IN (%s, %s)",
                (APPLICATION_NAME, WORKER_LISTEN_NAME),
            )
            assert await cur.fetchone() == (2,)
        while True:
            after = await samples(client)
            if after[hub_reconnects] >= 1 and after[worker_reconnects] >= 1:
                break
            await asyncio.sleep(0.05)
    assert after[hub_reconnects] == 1
    assert after[worker_reconnects] == 1
    assert all(link.sessions == 2 for link in links)


async def test_metrics_are_not_served_when_turned_off(settings: Settings, db_dsn: str) -> None:
    application = create_app(settings.model_copy(update={"metrics_enabled": False}), db_dsn)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get("/metrics")).status_code == 404
            assert (await c.get("/healthz")).status_code == 200


async def test_a_flood_of_scrapes_costs_no_query_and_leaves_the_api_answering(
    settings: Settings, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    small = settings.model_copy(update={"pool_max_size": 2, "metrics_db_interval_seconds": 3600})
    application = create_app(small, db_dsn)
    token = make_token("alice")
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            figures = application.state.database_figures
            async with asyncio.timeout(GUARD):
                await figures.read_once.wait()  # the one read at start

            async def scrape() -> int:
                return (await client.get("/metrics")).status_code

            async def ask() -> int:
                response = await client.post(
                    "/api/sessions/batch-status", json={"session_ids": ["x"]}, headers=auth(token)
                )
                return response.status_code

            codes = await asyncio.gather(
                *[scrape() for _ in range(300)], *[ask() for _ in range(20)]
            )
            assert set(codes) == {200}
            assert figures.reads == 1  # 300 scrapes, not one more read of the database
