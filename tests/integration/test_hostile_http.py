"""Hostile HTTP input: every request here gets a clear 4xx in the API's error shape, nothing
crashes, and nothing is stored (no session, no registration, no blob, no staging file).

Covered elsewhere and not repeated: 501 ids and sessions, 201-character ids, bad upload
headers, gzip bombs and truncated gzip, oversized declared bodies, bad tokens
(test_ingest.py, test_batch_status.py)."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import AsyncIterator, Callable

import httpx
import psycopg
import pytest

from sessionflow.settings import Settings
from tests.helpers import auth

TRANSCRIPT = b'{"type":"user","sessionId":"s1","message":{"role":"user","content":"hi"}}\n'
SHA = hashlib.sha256(TRANSCRIPT).hexdigest()
TEN_KB_ID = "x" * 10 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def nothing_stored(dsn: str, settings: Settings) -> None:
    with psycopg.connect(dsn) as conn:
        sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()
        registrations = conn.execute("SELECT count(*) FROM session_registrations").fetchone()
    assert sessions == (0,)
    assert registrations == (0,)
    store = settings.data_dir / "transcripts"
    files = [p for p in store.rglob("*") if p.is_file()] if store.exists() else []
    assert files == []


def assert_clear_4xx(response: httpx.Response, *allowed: int) -> None:
    assert response.status_code in (allowed or (400,)), response.text
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert isinstance(body.get("detail"), str) and body["detail"]


def registration(session_id: object, **extra: object) -> dict[str, object]:
    return {"id": session_id, "sha256": SHA, "size": len(TRANSCRIPT), **extra}


# Ids nobody may create: separators, traversal, control characters, look-alikes of ASCII,
# a trailing newline (which a `$`-anchored pattern lets through), and 10 KB.
HOSTILE_IDS = {
    "slash": "a/b",
    "backslash": "a\\b",
    "traversal": "../../etc/passwd",
    "nul": "a\x00b",
    "newline-inside": "a\nb",
    "trailing-newline": "abc\n",
    "cyrillic-a": "\u0430bc",  # looks like "abc"
    "fullwidth": "\uff41bc",
    "zero-width-joiner": "ab\u200dc",
    "rtl-override": "abc\u202e",
    "space": "a b",
    "leading-dot": ".hidden",
    "ten-kb": TEN_KB_ID,
}


@pytest.mark.parametrize("session_id", list(HOSTILE_IDS.values()), ids=list(HOSTILE_IDS))
async def test_register_refuses_a_hostile_id_and_stores_nothing(
    api: httpx.AsyncClient,
    make_token: Callable[[str], str],
    db_dsn: str,
    settings: Settings,
    session_id: str,
) -> None:
    response = await api.post(
        "/api/sessions",
        json={"sessions": [registration("ok-1"), registration(session_id)]},
        headers=auth(make_token("alice")),
    )
    assert_clear_4xx(response)
    assert "invalid session id" in response.json()["detail"]
    nothing_stored(db_dsn, settings)


# The same ids, percent-encoded into the URL path.
HOSTILE_PATHS = {
    "encoded-slash": "a%2Fb",
    "encoded-traversal": "..%2F..%2Fetc%2Fpasswd",
    "dot-dot": "..",
    "nul": "a%00b",
    "trailing-newline": "abc%0A",
    "cyrillic-a": "%D0%B0bc",
    "fullwidth": "%EF%BD%81bc",
    "invalid-utf8": "%FF%FE",
    "lone-surrogate": "%ED%A0%80",
    "ten-kb": TEN_KB_ID,
}


@pytest.mark.parametrize("path_id", list(HOSTILE_PATHS.values()), ids=list(HOSTILE_PATHS))
async def test_upload_to_a_hostile_path_is_4xx_and_stores_nothing(
    api: httpx.AsyncClient,
    make_token: Callable[[str], str],
    db_dsn: str,
    settings: Settings,
    path_id: str,
) -> None:
    response = await api.put(
        f"/api/sessions/{path_id}/transcript",
        content=TRANSCRIPT,
        headers={**auth(make_token("alice")), "X-Content-SHA256": SHA},
    )
    # 400 for an id the route sees; 404/405 where the path no longer matches a route.
    assert_clear_4xx(response, 400, 404, 405)
    nothing_stored(db_dsn, settings)
    staging = settings.data_dir / "transcripts" / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


@pytest.mark.parametrize("path_id", list(HOSTILE_PATHS.values()), ids=list(HOSTILE_PATHS))
async def test_reading_a_hostile_path_is_4xx(
    api: httpx.AsyncClient, make_token: Callable[[str], str], path_id: str
) -> None:
    response = await api.get(f"/api/sessions/{path_id}", headers=auth(make_token("alice")))
    assert_clear_4xx(response, 400, 404, 405)


async def test_a_look_alike_id_never_reads_the_session_it_imitates(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    put = await api.put(
        "/api/sessions/abc/transcript",
        content=TRANSCRIPT,
        headers={**auth(token), "X-Content-SHA256": SHA},
    )
    assert put.status_code == 200
    for look_alike in ("\u0430bc", "\uff41bc", "ABC", "abc\n", "ab\u200dc"):
        status = await api.post(
            "/api/sessions/batch-status", json={"session_ids": [look_alike]}, headers=auth(token)
        )
        assert status.status_code == 200
        assert status.json() == {"statuses": {}, "not_found": [look_alike]}


REGISTER_BODIES: dict[str, bytes] = {
    "array": b"[]",
    "null": b"null",
    "string": b'"sessions"',
    "number": b"42",
    "no-sessions": b"{}",
    "sessions-object": b'{"sessions": {"id": "a"}}',
    "sessions-null": b'{"sessions": null}',
    "id-number": json.dumps({"sessions": [registration(7)]}).encode(),
    "id-list": json.dumps({"sessions": [registration(["a"])]}).encode(),
    "size-float": json.dumps({"sessions": [{**registration("a"), "size": 1.5}]}).encode(),
    "size-bool": json.dumps({"sessions": [{**registration("a"), "size": True}]}).encode(),
    "size-negative": json.dumps({"sessions": [{**registration("a"), "size": -1}]}).encode(),
    "sha-upper": json.dumps({"sessions": [{**registration("a"), "sha256": SHA.upper()}]}).encode(),
    "metadata-list": json.dumps({"sessions": [registration("a", metadata=[1])]}).encode(),
    "metadata-string": json.dumps({"sessions": [registration("a", metadata="x")]}).encode(),
    "metadata-nul-value": json.dumps(
        {"sessions": [registration("a", metadata={"k": "x\x00y"})]}
    ).encode(),
    "metadata-nul-key": json.dumps(
        {"sessions": [registration("a", metadata={"deep": [{"k\x00": 1}]})]}
    ).encode(),
    "metadata-deeply-nested": (
        b'{"sessions": [{"id": "a", "sha256": "'
        + SHA.encode()
        + b'", "size": 1, "metadata": {"k": '
        + b"[" * 20_000
        + b"]" * 20_000
        + b"}}]}"
    ),
    "unknown-field": json.dumps({"sessions": [registration("a", owner="bob")]}).encode(),
    "duplicate-id": json.dumps({"sessions": [registration("a"), registration("a")]}).encode(),
    "invalid-utf8": b'{"sessions": [{"id": "\xff\xfe", "sha256": "' + SHA.encode() + b'"}]}',
    "lone-surrogate": b'{"sessions": [{"id": "\\ud800", "sha256": "' + SHA.encode() + b'"}]}',
    "truncated": json.dumps({"sessions": [registration("a")]}).encode()[:-3],
    "trailing-garbage": json.dumps({"sessions": [registration("a")]}).encode() + b"}{",
    "nul-byte-raw": b'{"sessions": [\x00]}',
}


@pytest.mark.parametrize("body", list(REGISTER_BODIES.values()), ids=list(REGISTER_BODIES))
async def test_register_refuses_a_malformed_body_with_400_and_stores_nothing(
    api: httpx.AsyncClient,
    make_token: Callable[[str], str],
    db_dsn: str,
    settings: Settings,
    body: bytes,
) -> None:
    response = await api.post(
        "/api/sessions",
        content=body,
        headers={**auth(make_token("alice")), "Content-Type": "application/json"},
    )
    assert_clear_4xx(response)
    nothing_stored(db_dsn, settings)


async def test_100000_sessions_in_one_registration_are_refused_and_none_stored(
    api: httpx.AsyncClient, make_token: Callable[[str], str], db_dsn: str, settings: Settings
) -> None:
    sessions = [registration(f"s{i}") for i in range(100_000)]
    response = await api.post(
        "/api/sessions", json={"sessions": sessions}, headers=auth(make_token("alice"))
    )
    assert_clear_4xx(response, 400, 413)
    nothing_stored(db_dsn, settings)


BATCH_BODIES: dict[str, tuple[object, str]] = {
    "100000-ids": ({"session_ids": [f"s{i}" for i in range(100_000)]}, "100000"),
    "ten-kb-id": ({"session_ids": [TEN_KB_ID]}, "10240 characters"),
    "nul-id": ({"session_ids": ["ok", "a\x00b"]}, "NUL"),
    "ids-object": ({"session_ids": {"a": 1}}, "session_ids"),
    "ids-string": ({"session_ids": "abc"}, "session_ids"),
    "nested-list": ({"session_ids": [["a"]]}, "session_ids.0"),
    "bool-id": ({"session_ids": [True]}, "session_ids.0"),
}


@pytest.mark.parametrize(("body", "mentions"), list(BATCH_BODIES.values()), ids=list(BATCH_BODIES))
async def test_batch_status_refuses_hostile_ids_with_400(
    api: httpx.AsyncClient, make_token: Callable[[str], str], body: object, mentions: str
) -> None:
    response = await api.post(
        "/api/sessions/batch-status", json=body, headers=auth(make_token("alice"))
    )
    assert_clear_4xx(response)
    assert mentions in response.json()["detail"]


async def test_a_json_body_streamed_without_a_length_is_cut_off_at_the_limit(
    api: httpx.AsyncClient, make_token: Callable[[str], str], db_dsn: str, settings: Settings
) -> None:
    """No Content-Length to refuse up front: the reader must stop at the limit itself."""

    async def endless() -> AsyncIterator[bytes]:
        yield b'{"sessions": [' + json.dumps(registration("a")).encode()
        for i in range(4096):  # 4096 x ~1 KB: twice the 2 MiB limit, if it ever got there
            yield b"," + json.dumps(registration(f"s{i}", metadata={"p": "x" * 900})).encode()
        yield b"]}"

    response = await api.post("/api/sessions", content=endless(), headers=auth(make_token("alice")))
    assert_clear_4xx(response, 413)
    nothing_stored(db_dsn, settings)


async def test_a_gzipped_json_body_is_refused_unread(
    api: httpx.AsyncClient, make_token: Callable[[str], str], db_dsn: str, settings: Settings
) -> None:
    bomb = gzip.compress(b'{"sessions": [' + b" " * (20 * 1024 * 1024) + b"]}")
    response = await api.post(
        "/api/sessions",
        content=bomb,
        headers={**auth(make_token("alice")), "Content-Encoding": "gzip"},
    )
    assert_clear_4xx(response, 415)
    nothing_stored(db_dsn, settings)


@pytest.fixture
def small_limit_settings(settings: Settings) -> Settings:
    settings.max_transcript_bytes = 64 * 1024
    return settings


@pytest.mark.parametrize(
    "body",
    [
        # Two gzip members, the second a bomb: nothing past the first may be trusted.
        gzip.compress(TRANSCRIPT) + gzip.compress(b"\0" * (20 * 1024 * 1024)),
        # A valid member followed by garbage.
        gzip.compress(TRANSCRIPT) + b"\x00garbage" * 100,
        # A bomb streamed in many small chunks (the limit holds across chunks).
        gzip.compress(b"{}\n" * (10 * 1024 * 1024)),
    ],
    ids=["bomb-in-a-second-member", "trailing-garbage", "bomb-of-lines"],
)
async def test_a_hostile_gzip_upload_is_refused_and_stores_nothing(
    small_limit_settings: Settings,
    api: httpx.AsyncClient,
    make_token: Callable[[str], str],
    db_dsn: str,
    body: bytes,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = await api.put(
        "/api/sessions/s1/transcript",
        content=chunks(),
        headers={
            **auth(make_token("alice")),
            "Content-Encoding": "gzip",
            "X-Content-SHA256": "0" * 64,
        },
    )
    assert_clear_4xx(response, 400, 413)
    nothing_stored(db_dsn, small_limit_settings)
    staging = small_limit_settings.data_dir / "transcripts" / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


async def test_another_owners_token_changes_nothing_of_alices(
    api: httpx.AsyncClient, make_token: Callable[[str], str], db_dsn: str
) -> None:
    alice, bob = make_token("alice"), make_token("bob")
    await api.post(
        "/api/sessions",
        json={"sessions": [registration("s1", metadata={"project": "alice's"})]},
        headers=auth(alice),
    )
    first = await api.put(
        "/api/sessions/s1/transcript",
        content=TRANSCRIPT,
        headers={**auth(alice), "X-Content-SHA256": SHA},
    )
    assert first.status_code == 200
    with psycopg.connect(db_dsn) as conn:
        before = conn.execute(
            "SELECT s.version, s.lifecycle, r.metadata FROM sessions s"
            " JOIN session_registrations r USING (owner, id) WHERE owner = 'alice'"
        ).fetchall()

    # Bob does everything he can with Alice's id: it only ever touches a session of his own.
    await api.post(
        "/api/sessions",
        json={"sessions": [registration("s1", metadata={"project": "bob's"})]},
        headers=auth(bob),
    )
    forced = await api.put(
        "/api/sessions/s1/transcript",
        content=TRANSCRIPT,
        params={"force": "true"},
        headers={**auth(bob), "X-Content-SHA256": SHA},
    )
    assert forced.status_code == 200
    status = await api.post(
        "/api/sessions/batch-status", json={"session_ids": ["s1"]}, headers=auth(bob)
    )
    assert status.json()["statuses"]["s1"]["version"] == forced.json()["version"]

    with psycopg.connect(db_dsn) as conn:
        after = conn.execute(
            "SELECT s.version, s.lifecycle, r.metadata FROM sessions s"
            " JOIN session_registrations r USING (owner, id) WHERE owner = 'alice'"
        ).fetchall()
        owners = conn.execute("SELECT owner FROM sessions ORDER BY owner").fetchall()
    assert after == before
    assert owners == [("alice",), ("bob",)]


@pytest.mark.parametrize(
    "query", ["force=maybe", "force=", "force=1&force=x", "force=%00"], ids=str
)
async def test_a_malformed_query_is_400(
    api: httpx.AsyncClient,
    make_token: Callable[[str], str],
    db_dsn: str,
    settings: Settings,
    query: str,
) -> None:
    response = await api.put(
        f"/api/sessions/s1/transcript?{query}",
        content=TRANSCRIPT,
        headers={**auth(make_token("alice")), "X-Content-SHA256": SHA},
    )
    assert_clear_4xx(response)
    nothing_stored(db_dsn, settings)
