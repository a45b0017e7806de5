"""batch-status checks its caller's token inside its one query, and still refuses a token the
way every route does: a revoked or unknown token is a 401 whatever the body (the body's own
errors are only told to a caller whose token is good), and revocation takes effect at once."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import psycopg
import pytest

from sessionflow.tokens import revoke_token, token_id_of
from tests.helpers import auth

URL = "/api/sessions/batch-status"


def revoke(db_dsn: str, token: str) -> None:
    token_id = token_id_of(token)
    assert token_id is not None
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        assert revoke_token(conn, token_id)


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"session_ids": []}', b'{"session_ids": ["' + b"x" * 201 + b'"]}'],
)
async def test_batch_status_refuses_a_revoked_token_with_401_whatever_the_body(
    api: httpx.AsyncClient, make_token: Callable[[str], str], db_dsn: str, body: bytes
) -> None:
    token = make_token("alice")
    assert (await api.post(URL, content=body, headers=auth(token))).status_code == 400
    revoke(db_dsn, token)
    response = await api.post(URL, content=body, headers=auth(token))
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_batch_status_refuses_a_token_revoked_a_moment_ago(
    api: httpx.AsyncClient, make_token: Callable[[str], str], db_dsn: str
) -> None:
    token = make_token("alice")
    ok = await api.post(URL, json={"session_ids": ["s1"]}, headers=auth(token))
    assert ok.status_code == 200
    revoke(db_dsn, token)
    response = await api.post(URL, json={"session_ids": ["s1"]}, headers=auth(token))
    assert response.status_code == 401
    assert response.json()["detail"] == "the API token is unknown or revoked"


async def test_batch_status_refuses_an_unknown_token_and_a_missing_one(
    api: httpx.AsyncClient,
) -> None:
    unknown = await api.post(URL, json={"session_ids": ["s1"]}, headers=auth("sf_nope"))
    assert unknown.status_code == 401
    missing = await api.post(URL, json={"session_ids": ["s1"]})
    assert missing.status_code == 401
    assert "Bearer" in missing.json()["detail"]
