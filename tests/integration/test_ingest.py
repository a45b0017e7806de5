"""Registering sessions and uploading transcripts: verification, limits, idempotence."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from sessionflow.settings import Settings
from sessionflow.storage import transcript_key
from tests.helpers import auth

TRANSCRIPT = b'{"type":"user","sessionId":"s1","message":{"role":"user","content":"hi"}}\n'


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def put(
    api: httpx.AsyncClient,
    token: str,
    session_id: str,
    body: bytes,
    *,
    digest: str | None = None,
    gzipped: bool = False,
    force: bool = False,
) -> httpx.Response:
    headers = {**auth(token), "X-Content-SHA256": digest or sha(body)}
    content = body
    if gzipped:
        headers["Content-Encoding"] = "gzip"
        content = gzip.compress(body)
    return await api.put(
        f"/api/sessions/{session_id}/transcript",
        content=content,
        headers=headers,
        params={"force": "true"} if force else None,
    )


def stored_files(settings: Settings) -> list[Path]:
    root = settings.data_dir / "transcripts" / "transcripts"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def test_register_asks_only_for_unknown_or_changed_transcripts(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    assert (await put(api, token, "known", TRANSCRIPT)).status_code == 200
    changed = TRANSCRIPT + b"{}\n"
    assert (await put(api, token, "changed", TRANSCRIPT)).status_code == 200
    body = {
        "sessions": [
            {"id": "known", "sha256": sha(TRANSCRIPT), "size": len(TRANSCRIPT)},
            {"id": "changed", "sha256": sha(changed), "size": len(changed)},
            {"id": "new", "sha256": sha(b"x"), "size": 1, "metadata": {"project": "/src/app"}},
        ]
    }
    response = await api.post("/api/sessions", json=body, headers=auth(token))
    assert response.status_code == 200
    assert response.json() == {"upload": ["changed", "new"], "missing_files": {}}


async def test_register_keeps_metadata_for_the_upload(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    body = {
        "sessions": [
            {"id": "s1", "sha256": sha(TRANSCRIPT), "size": 10, "metadata": {"project": "/p"}}
        ]
    }
    assert (await api.post("/api/sessions", json=body, headers=auth(token))).status_code == 200
    assert (await put(api, token, "s1", TRANSCRIPT)).status_code == 200
    detail = (await api.get("/api/sessions/s1", headers=auth(token))).json()
    assert detail["metadata"] == {"project": "/p"}


@pytest.mark.parametrize(
    ("session", "mentions"),
    [
        ({"id": "../etc/passwd", "sha256": "a" * 64, "size": 1}, "invalid session id"),
        ({"id": "a/b", "sha256": "a" * 64, "size": 1}, "invalid session id"),
        ({"id": "nul\u0000", "sha256": "a" * 64, "size": 1}, "invalid session id"),
        ({"id": "\u0430pple", "sha256": "a" * 64, "size": 1}, "invalid session id"),
        ({"id": "x" * 201, "sha256": "a" * 64, "size": 1}, "invalid session id"),
        ({"id": "ok", "sha256": "nothex", "size": 1}, "sha256"),
        ({"id": "ok", "sha256": "a" * 64, "size": -1}, "size"),
        ({"id": "ok", "sha256": "a" * 64, "size": "1"}, "size"),
    ],
)
async def test_register_rejects_invalid_sessions_with_400(
    api: httpx.AsyncClient,
    make_token: Callable[[str], str],
    session: dict[str, object],
    mentions: str,
) -> None:
    response = await api.post(
        "/api/sessions", json={"sessions": [session]}, headers=auth(make_token("a"))
    )
    assert response.status_code == 400, response.text
    assert mentions in response.json()["detail"]


async def test_register_rejects_501_sessions(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    sessions = [{"id": f"s{i}", "sha256": "a" * 64, "size": 1} for i in range(501)]
    response = await api.post(
        "/api/sessions", json={"sessions": sessions}, headers=auth(make_token("a"))
    )
    assert response.status_code == 400
    assert "at most 500" in response.json()["detail"]


async def test_upload_stores_content_addressed_and_queues(
    api: httpx.AsyncClient, make_token: Callable[[str], str], settings: Settings
) -> None:
    response = await put(api, make_token("alice"), "s1", TRANSCRIPT, gzipped=True)
    assert response.status_code == 200
    assert response.json()["queued"] is True
    assert response.json()["lifecycle"] == "queued"
    files = stored_files(settings)
    assert [f.name for f in files] == [f"{sha(TRANSCRIPT)}.jsonl"]
    assert files[0].read_bytes() == TRANSCRIPT
    assert str(files[0]).endswith(transcript_key(sha(TRANSCRIPT)))


async def test_upload_of_same_bytes_is_a_noop_unless_forced(
    api: httpx.AsyncClient, make_token: Callable[[str], str], db_dsn: str
) -> None:
    token = make_token("alice")
    first = (await put(api, token, "s1", TRANSCRIPT)).json()
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("UPDATE sessions SET lifecycle = 'downloading'")
    again = await put(api, token, "s1", TRANSCRIPT, gzipped=True)
    assert again.status_code == 200
    assert again.json()["queued"] is False
    assert again.json()["lifecycle"] == "downloading"
    forced = (await put(api, token, "s1", TRANSCRIPT, force=True)).json()
    assert forced["queued"] is True
    assert forced["lifecycle"] == "queued"
    assert forced["version"] > again.json()["version"] > first["version"]


async def test_upload_with_wrong_hash_is_400_and_stores_nothing(
    api: httpx.AsyncClient, make_token: Callable[[str], str], settings: Settings
) -> None:
    token = make_token("alice")
    response = await put(api, token, "s1", TRANSCRIPT, digest="0" * 64)
    assert response.status_code == 400
    assert "sha256" in response.json()["detail"]
    assert stored_files(settings) == []
    status = await api.post(
        "/api/sessions/batch-status", json={"session_ids": ["s1"]}, headers=auth(token)
    )
    assert status.json()["not_found"] == ["s1"]
    assert list((settings.data_dir / "transcripts" / ".staging").iterdir()) == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 400),
        ({"X-Content-SHA256": "xyz"}, 400),
        ({"X-Content-SHA256": "a" * 64, "Content-Encoding": "br"}, 415),
        ({"X-Content-SHA256": "a" * 64, "Content-Encoding": "gzip"}, 400),
    ],
)
async def test_upload_rejects_bad_headers(
    api: httpx.AsyncClient, make_token: Callable[[str], str], headers: dict[str, str], status: int
) -> None:
    response = await api.put(
        "/api/sessions/s1/transcript",
        content=b"not gzip",
        headers={**auth(make_token("a")), **headers},
    )
    assert response.status_code == status
    assert response.json()["detail"]


async def test_upload_with_bad_id_is_400(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    response = await put(api, make_token("a"), "bad%00id", TRANSCRIPT)
    assert response.status_code == 400


@pytest.fixture
def small_limit_settings(settings: Settings) -> Settings:
    settings.max_transcript_bytes = 64 * 1024
    return settings


async def test_gzip_bomb_is_refused_with_413_without_inflating_it(
    small_limit_settings: Settings, api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    bomb_plain = b"\0" * (50 * 1024 * 1024)  # 50 MiB of zeros: ~50 KB gzipped
    response = await api.put(
        "/api/sessions/bomb/transcript",
        content=gzip.compress(bomb_plain),
        headers={
            **auth(make_token("a")),
            "Content-Encoding": "gzip",
            "X-Content-SHA256": sha(bomb_plain),
        },
    )
    assert response.status_code == 413
    assert "64" in response.json()["detail"] or "limit" in response.json()["detail"]


async def test_plain_upload_over_the_limit_is_413(
    small_limit_settings: Settings, api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    body = b"x" * (65 * 1024)
    response = await put(api, make_token("a"), "big", body)
    assert response.status_code == 413


async def test_truncated_gzip_is_400(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    compressed = gzip.compress(TRANSCRIPT * 100)
    response = await api.put(
        "/api/sessions/s1/transcript",
        content=compressed[: len(compressed) // 2],
        headers={
            **auth(make_token("a")),
            "Content-Encoding": "gzip",
            "X-Content-SHA256": sha(TRANSCRIPT * 100),
        },
    )
    assert response.status_code == 400
    assert "truncated" in response.json()["detail"]


async def test_get_session_is_404_for_another_owner(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    alice, bob = make_token("alice"), make_token("bob")
    await put(api, alice, "s1", TRANSCRIPT)
    assert (await api.get("/api/sessions/s1", headers=auth(alice))).status_code == 200
    response = await api.get("/api/sessions/s1", headers=auth(bob))
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_same_id_under_two_owners_are_separate_sessions(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    alice, bob = make_token("alice"), make_token("bob")
    await put(api, alice, "s1", TRANSCRIPT)
    await put(api, bob, "s1", TRANSCRIPT + b"\n")
    a = (await api.get("/api/sessions/s1", headers=auth(alice))).json()
    b = (await api.get("/api/sessions/s1", headers=auth(bob))).json()
    assert a["transcript_sha256"] != b["transcript_sha256"]


async def test_revoked_token_is_refused(
    api: httpx.AsyncClient, make_token: Callable[[str], str], db_dsn: str
) -> None:
    from sessionflow.tokens import revoke_token, token_id_of

    token = make_token("alice")
    assert (await api.get("/api/sessions/x", headers=auth(token))).status_code == 404
    token_id = token_id_of(token)
    assert token_id is not None
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        assert revoke_token(conn, token_id)
    assert (await api.get("/api/sessions/x", headers=auth(token))).status_code == 401
