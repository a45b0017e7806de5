"""The polling contract of POST /api/sessions/batch-status, for valid and invalid input."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import httpx
import pytest

from tests.helpers import auth

URL = "/api/sessions/batch-status"


async def upload(api: httpx.AsyncClient, token: str, session_id: str, body: bytes = b"") -> None:
    body = body or f'{{"type":"user","sessionId":"{session_id}"}}\n'.encode()
    response = await api.put(
        f"/api/sessions/{session_id}/transcript",
        content=body,
        headers={**auth(token), "X-Content-SHA256": hashlib.sha256(body).hexdigest()},
    )
    assert response.status_code == 200, response.text


async def test_batch_status_reports_known_and_not_found(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    await upload(api, token, "s1")
    await upload(api, token, "s2")
    response = await api.post(URL, json={"session_ids": ["s1", "s2", "nope"]}, headers=auth(token))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"statuses", "not_found"}
    assert set(body["statuses"]) == {"s1", "s2"}
    for status in body["statuses"].values():
        assert status["lifecycle"] == "queued"
        assert status["parse_status"] == "pending"
        assert isinstance(status["version"], int)
    assert body["not_found"] == ["nope"]


async def test_batch_status_answers_duplicate_ids_once(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    await upload(api, token, "s1")
    response = await api.post(
        URL, json={"session_ids": ["s1", "s1", "x", "x"]}, headers=auth(token)
    )
    assert response.status_code == 200
    assert list(response.json()["statuses"]) == ["s1"]
    assert response.json()["not_found"] == ["x"]


async def test_batch_status_accepts_500_ids(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    ids = [f"id-{i}" for i in range(500)]
    response = await api.post(URL, json={"session_ids": ids}, headers=auth(token))
    assert response.status_code == 200
    assert response.json()["not_found"] == ids


async def test_batch_status_hides_other_owners_sessions(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    alice, bob = make_token("alice"), make_token("bob")
    await upload(api, alice, "secret")
    response = await api.post(URL, json={"session_ids": ["secret"]}, headers=auth(bob))
    assert response.status_code == 200
    assert response.json() == {"statuses": {}, "not_found": ["secret"]}


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (b"", "empty"),
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "object"),
        (b"{}", "session_ids"),
        (b'{"ids": ["a"]}', "session_ids"),
        (b'{"session_ids": "a"}', "session_ids"),
        (b'{"session_ids": [1, 2]}', "session_ids.0"),
        (b'{"session_ids": [null]}', "session_ids.0"),
        (b'{"session_ids": []}', "at least 1"),
        (b'{"session_ids": [""]}', "session_ids.0"),
        (b'{"session_ids": ["a"], "extra": 1}', "extra"),
    ],
)
async def test_batch_status_rejects_invalid_body_with_400(
    api: httpx.AsyncClient, make_token: Callable[[str], str], body: bytes, mentions: str
) -> None:
    response = await api.post(
        URL, content=body, headers={**auth(make_token("a")), "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    payload = response.json()
    assert payload["error"] == "invalid_request"
    assert mentions.lower() in payload["detail"].lower()


async def test_batch_status_rejects_501_ids(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    ids = [f"id-{i}" for i in range(501)]
    response = await api.post(URL, json={"session_ids": ids}, headers=auth(make_token("a")))
    assert response.status_code == 400
    assert "501" in response.json()["detail"]


async def test_batch_status_rejects_id_longer_than_200(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    token = make_token("a")
    ok = await api.post(URL, json={"session_ids": ["x" * 200]}, headers=auth(token))
    assert ok.status_code == 200
    response = await api.post(URL, json={"session_ids": ["x" * 201]}, headers=auth(token))
    assert response.status_code == 400
    assert "201 characters" in response.json()["detail"]


async def test_batch_status_refuses_oversized_body_with_413(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    body = b'{"session_ids": ["' + b"x" * (3 * 1024 * 1024) + b'"]}'
    response = await api.post(URL, content=body, headers=auth(make_token("a")))
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
    ],
)
async def test_batch_status_requires_a_valid_bearer_token(
    api: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await api.post(URL, json={"session_ids": ["a"]}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
