"""Metrics and logs of real processes: /metrics of a `sessionflow serve` after sessions went
through its pipeline, and the JSON access log with request ids that the same server writes."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from sessionflow.protocol import TERMINAL
from sessionflow.samples import generate_transcript_bytes
from tests.helpers import Processes, auth

pytestmark = pytest.mark.slow


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, by (name, labels)."""
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def figure(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples[(name, frozenset(labels.items()))]


def upload(url: str, token: str, session_id: str, data: bytes, **headers: str) -> httpx.Response:
    response = httpx.put(
        f"{url}/api/sessions/{session_id}/transcript",
        content=gzip.compress(data),
        headers={
            **auth(token),
            "Content-Encoding": "gzip",
            "X-Content-SHA256": hashlib.sha256(data).hexdigest(),
            **headers,
        },
    )
    assert response.status_code == 200, response.text
    return response


def wait_final(url: str, token: str, ids: list[str], within: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        response = httpx.post(
            f"{url}/api/sessions/batch-status", json={"session_ids": ids}, headers=auth(token)
        )
        statuses = response.json()["statuses"]
        if len(statuses) == len(ids) and all(s["lifecycle"] in TERMINAL for s in statuses.values()):
            return dict(statuses)
        assert time.monotonic() < deadline, f"not final in time: {statuses}"
        time.sleep(0.1)


def test_metrics_of_a_real_server_move_with_the_pipeline(
    procs: Processes, make_token: Callable[[str], str]
) -> None:
    server = procs.serve(env={"SESSIONFLOW_METRICS_DB_INTERVAL_SECONDS": "0.1"})
    token = make_token("alice")
    rng = random.Random(7)
    upload(server.url, token, "m1", generate_transcript_bytes(rng, 30_000))
    first = wait_final(server.url, token, ["m1"])["m1"]["lifecycle"]

    async def watched_while_it_runs() -> dict[Any, float]:
        # Watch m2 before it exists, so that its every change reaches this client through
        # the hub: the notification-to-send latency gets observations.
        async with connect(
            server.url.replace("http", "ws") + "/api/sessions/watch",
            additional_headers=auth(token),
        ) as ws:
            await ws.send(json.dumps({"type": "watch", "session_ids": ["m2"]}))
            snapshot = json.loads(await ws.recv())
            assert snapshot["not_found"] == ["m2"]
            await asyncio.to_thread(
                upload, server.url, token, "m2", generate_transcript_bytes(rng, 30_000)
            )
            async with asyncio.timeout(60):
                while True:
                    message = json.loads(await ws.recv())
                    state = message["statuses"].get("m2")
                    if state and state["lifecycle"] in TERMINAL:
                        break
            return await asyncio.to_thread(scrape, f"{server.url}/metrics")

    during = asyncio.run(watched_while_it_runs())
    second = wait_final(server.url, token, ["m2"])["m2"]["lifecycle"]
    assert {first, second} <= {"parsed", "summarized"}

    assert figure(during, "sessionflow_websocket_connections") == 1
    assert figure(during, "sessionflow_notify_send_latency_seconds_count") >= 1
    finals = [first, second]
    deadline = time.monotonic() + 30
    while True:  # the database's figures are read in the background, every 0.1 s here
        after = scrape(f"{server.url}/metrics")  # no token needed
        counts = [figure(after, "sessionflow_sessions", lifecycle=s) for s in set(finals)]
        if counts == [finals.count(s) for s in set(finals)] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for lifecycle in ("parsed", "summarized"):
        expected = finals.count(lifecycle)
        assert figure(after, "sessionflow_sessions", lifecycle=lifecycle) == expected
    for lifecycle in ("queued", "downloading", "parsing", "summarizing", "failed"):
        assert figure(after, "sessionflow_sessions", lifecycle=lifecycle) == 0
    assert figure(after, "sessionflow_jobs_claimed_total") == 2
    succeeded = sum(
        figure(after, "sessionflow_jobs_succeeded_total", outcome=o)
        for o in ("parsed", "summarized")
    )
    assert succeeded == 2
    assert figure(after, "sessionflow_jobs_failed_total") == 0
    assert figure(after, "sessionflow_jobs_retried_total") == 0
    assert figure(after, "sessionflow_pickup_latency_seconds_count") == 2
    for stage in ("download", "parse"):
        assert figure(after, "sessionflow_stage_duration_seconds_count", stage=stage) == 2
    assert figure(
        after, "sessionflow_stage_duration_seconds_count", stage="summarize"
    ) == finals.count("summarized")
    assert 0 <= figure(after, "sessionflow_pg_notification_queue_usage") < 0.5
    assert figure(after, "sessionflow_listen_reconnects_total", listener="hub") == 0
    deadline = time.monotonic() + 10
    while figure(scrape(f"{server.url}/metrics"), "sessionflow_websocket_connections") != 0:
        assert time.monotonic() < deadline, "the closed WebSocket is still counted"
        time.sleep(0.1)


def test_metrics_can_be_turned_off(procs: Processes) -> None:
    server = procs.serve("--no-worker", env={"SESSIONFLOW_METRICS_ENABLED": "false"})
    assert httpx.get(f"{server.url}/metrics").status_code == 404
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_json_access_log_carries_the_request_id_and_owner_never_the_token(
    procs: Processes, make_token: Callable[[str], str]
) -> None:
    server = procs.serve("--no-worker", env={"SESSIONFLOW_LOG_FORMAT": "json"})
    token = make_token("alice")
    given = upload(server.url, token, "r1", b'{"type":"user"}\n', **{"X-Request-ID": "trace.r1-7"})
    assert given.headers["x-request-id"] == "trace.r1-7"
    made = httpx.get(f"{server.url}/api/sessions/r1?secret=token-in-query", headers=auth(token))
    assert made.status_code == 200
    minted = made.headers["x-request-id"]
    assert minted and minted != "trace.r1-7"
    insane = httpx.get(f"{server.url}/healthz", headers={"X-Request-ID": "no spaces allowed"})
    assert insane.headers["x-request-id"] != "no spaces allowed"
    refused = httpx.get(f"{server.url}/api/sessions/r1", headers=auth("sf_wrong"))
    assert refused.status_code == 401

    def access_lines() -> list[dict[str, Any]]:
        lines = [
            json.loads(line) for line in server.log.read_text().splitlines() if line[:1] == "{"
        ]
        return [line for line in lines if line["logger"] == "sessionflow.access"]

    deadline = time.monotonic() + 10
    while len(access_lines()) < 5:  # readyz polls, upload, get, healthz, refused
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.05)
    by_id = {line["request_id"]: line for line in access_lines()}
    put = by_id["trace.r1-7"]
    assert put["method"] == "PUT"
    assert put["path"] == "/api/sessions/r1/transcript"
    assert put["status"] == 200
    assert put["owner"] == "alice"
    assert put["duration_ms"] >= 0
    get = by_id[minted]
    assert get["path"] == "/api/sessions/r1"  # without the query string
    assert get["owner"] == "alice"
    assert any(line["status"] == 401 and "owner" not in line for line in access_lines())
    text = server.log.read_text()
    assert token not in text
    assert "sf_wrong" not in text
    assert "token-in-query" not in text
    assert "Bearer" not in text
    # Every line is JSON, uvicorn's own included.
    for line in text.splitlines():
        if line.strip() and not line.startswith(
            ("Created an API", "API token", "sessionflow serving")
        ):
            json.loads(line)
