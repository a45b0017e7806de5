"""Uploads at the edge: bytes after the end of a gzip stream, bodies larger than any valid
transcript, the event loop kept free while a large upload is inflated and hashed, and the
table of registered-but-not-uploaded sessions kept bounded."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import time
import zlib
from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest

from sessionflow.settings import Settings
from tests.helpers import LiveServer, auth, free_port

TRANSCRIPT = b'{"type":"user","sessionId":"s1","message":{"role":"user","content":"hi"}}\n'


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(server_or_api: httpx.Client, token: str, body: bytes, digest: str) -> httpx.Response:
    return server_or_api.put(
        "/api/sessions/s1/transcript",
        content=body,
        headers={**auth(token), "X-Content-SHA256": digest, "Content-Encoding": "gzip"},
    )


@pytest.fixture
def server(settings: Settings, db_dsn: str) -> Iterator[LiveServer]:
    from sessionflow.server.app import create_app

    live = LiveServer(create_app(settings, db_dsn), free_port()).start()
    yield live
    live.stop()


def stored(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM sessions").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize(
    "junk",
    [b"x", os.urandom(4 * 1024 * 1024), gzip.compress(b"more")],
    ids=["one byte", "4 MiB", "a second gzip member"],
)
def test_any_byte_after_the_end_of_the_gzip_stream_is_a_400(
    server: LiveServer, make_token: Callable[[str], str], db_dsn: str, junk: bytes
) -> None:
    token = make_token("alice")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = put(client, token, gzip.compress(TRANSCRIPT) + junk, sha(TRANSCRIPT))
    assert response.status_code == 400, response.text
    assert "after the end of its gzip stream" in response.json()["detail"]
    assert stored(db_dsn) == 0


def test_a_gzip_body_larger_than_any_valid_transcript_is_refused_whatever_it_inflates_to(
    settings: Settings, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    from sessionflow.server.app import create_app

    limit = 1024 * 1024
    app = create_app(settings.model_copy(update={"max_transcript_bytes": limit}), db_dsn)
    live = LiveServer(app, free_port()).start()
    # 16 MiB of empty deflate blocks: it inflates to nothing, so only the size as sent can
    # stop it, and nothing else would before the end.
    deflate = zlib.compressobj(6, zlib.DEFLATED, 31)
    pieces = [deflate.compress(b"")]
    block = deflate.flush(zlib.Z_FULL_FLUSH)
    pieces.append(block * (16 * 1024 * 1024 // len(block)))
    pieces.append(deflate.flush())
    try:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            response = put(client, make_token("alice"), b"".join(pieces), sha(b""))
    finally:
        live.stop()
    assert response.status_code == 413, response.text
    assert "more than any transcript within the 1048576-byte limit" in response.json()["detail"]
    assert stored(db_dsn) == 0


def test_inflating_and_hashing_a_large_upload_runs_off_the_event_loop(
    server: LiveServer, make_token: Callable[[str], str]
) -> None:
    data = TRANSCRIPT * (48 * 1024 * 1024 // len(TRANSCRIPT))  # 48 MiB, compresses well
    body = gzip.compress(data, compresslevel=1)
    loop_thread = server.thread.ident
    assert loop_thread is not None
    loop_clock = time.pthread_getcpuclockid(loop_thread)
    token = make_token("alice")
    with httpx.Client(base_url=server.url, timeout=120) as client:
        loop_before, process_before = time.clock_gettime(loop_clock), time.process_time()
        response = put(client, token, body, sha(data))
        loop_used = time.clock_gettime(loop_clock) - loop_before
        process_used = time.process_time() - process_before
    assert response.status_code == 200, response.text
    # Inflating 48 MiB and hashing it is most of the work; the loop only receives the
    # compressed body. (A share of CPU, not a wall-clock time.)
    assert loop_used < 0.35 * process_used, (loop_used, process_used)


async def test_registrations_of_sessions_never_uploaded_expire_and_are_bounded(
    settings: Settings, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    from sessionflow.server.app import create_app

    bounded = settings.model_copy(
        update={"max_pending_registrations": 3, "registration_ttl_seconds": 0.5}
    )
    app = create_app(bounded, db_dsn)
    token = make_token("alice")

    def sessions(*ids: str) -> dict[str, object]:
        return {"sessions": [{"id": i, "sha256": sha(i.encode()), "size": 1} for i in ids]}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
            first = await api.post(
                "/api/sessions", json=sessions("a", "b", "c"), headers=auth(token)
            )
            assert first.status_code == 200
            over = await api.post("/api/sessions", json=sessions("d"), headers=auth(token))
            assert over.status_code == 429
            assert "SESSIONFLOW_MAX_PENDING_REGISTRATIONS" in over.json()["detail"]
            # An upload forgets its registration; time forgets the others.
            upload = await api.put(
                "/api/sessions/a/transcript",
                content=TRANSCRIPT,
                headers={**auth(token), "X-Content-SHA256": sha(TRANSCRIPT)},
            )
            assert upload.status_code == 200
            with psycopg.connect(db_dsn) as conn:
                assert conn.execute("SELECT count(*) FROM session_registrations").fetchone() == (2,)
            await asyncio.sleep(0.6)
            later = await api.post(
                "/api/sessions", json=sessions("d", "e", "f"), headers=auth(token)
            )
            assert later.status_code == 200, later.text
            with psycopg.connect(db_dsn) as conn:
                ids = conn.execute("SELECT id FROM session_registrations ORDER BY id").fetchall()
            assert ids == [("d",), ("e",), ("f",)]
            # Sessions already stored as they are wait for nothing and count for nothing.
            again = await api.post(
                "/api/sessions",
                json={
                    "sessions": [{"id": "a", "sha256": sha(TRANSCRIPT), "size": len(TRANSCRIPT)}]
                },
                headers=auth(token),
            )
            assert again.status_code == 200 and again.json()["upload"] == []
