"""batch-status is answered ahead of FastAPI (sessionflow.server.batch_status) in the served app,
and through FastAPI's routing when that dispatch is off: two paths to one contract. Both are
asked the same requests over real HTTP, on one database, and must answer them alike: status,
body, the headers a client reads, the request id, and the access line."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from sessionflow.server.app import App, create_app
from sessionflow.settings import Settings
from sessionflow.tokens import revoke_token, token_id_of
from tests.helpers import LiveServer, auth, free_port

URL = "/api/sessions/batch-status"
# The headers a client may act on; date and server differ by nature.
COMPARED_HEADERS = ("content-type", "content-length", "www-authenticate", "retry-after", "allow")


@pytest.fixture
def servers(settings: Settings, db_dsn: str) -> Iterator[tuple[LiveServer, LiveServer]]:
    settings = settings.model_copy(update={"max_json_body_bytes": 64 * 1024})
    lean_app = create_app(settings, db_dsn)
    routed_app = create_app(settings, db_dsn, migrate_on_start=False)
    assert isinstance(routed_app, App) and routed_app.batch_status is not None
    routed_app.batch_status = None  # FastAPI's own route answers
    lean = LiveServer(lean_app, free_port()).start()
    try:
        routed = LiveServer(routed_app, free_port()).start()
        try:
            yield lean, routed
        finally:
            routed.stop()
    finally:
        lean.stop()


def upload(url: str, token: str, session_id: str) -> None:
    body = f'{{"type":"user","sessionId":"{session_id}"}}\n'.encode()
    response = httpx.put(
        f"{url}/api/sessions/{session_id}/transcript",
        content=body,
        headers={**auth(token), "X-Content-SHA256": hashlib.sha256(body).hexdigest()},
    )
    assert response.status_code == 200, response.text


def answer(url: str, content: bytes, headers: dict[str, str]) -> dict[str, Any]:
    response = httpx.post(f"{url}{URL}", content=content, headers=headers)
    return {
        "status": response.status_code,
        "body": response.json(),
        "headers": {name: response.headers.get(name) for name in COMPARED_HEADERS},
        "request_id": response.headers.get("x-request-id"),
    }


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        {
            name: getattr(record, name)
            for name in ("method", "path", "status", "request_id", "owner")
        }
        for record in caplog.records
        if record.name == "sessionflow.access" and record.path == URL
    ]


def ids_body(ids: list[str]) -> bytes:
    return json.dumps({"session_ids": ids}).encode()


def test_batch_status_answers_alike_ahead_of_fastapi_and_through_it(
    servers: tuple[LiveServer, LiveServer],
    make_token: Callable[[str], str],
    db_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lean, routed = servers
    alice, bob, revoked = make_token("alice"), make_token("bob"), make_token("carol")
    upload(lean.url, alice, "s1")
    upload(lean.url, alice, "s2")
    upload(lean.url, bob, "bobs")
    token_id = token_id_of(revoked)
    assert token_id is not None
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        assert revoke_token(conn, token_id)

    json_type = {"Content-Type": "application/json"}
    cases: dict[str, tuple[bytes, dict[str, str]]] = {
        "known, unknown and duplicate ids": (
            ids_body(["s2", "nope", "s1", "s2", "nope"]),
            auth(alice),
        ),
        "another owner's session": (ids_body(["bobs", "s1"]), auth(alice)),
        "500 ids": (ids_body([f"id-{i}" for i in range(500)]), auth(alice)),
        "501 ids": (ids_body([f"id-{i}" for i in range(501)]), auth(alice)),
        "an id too long": (ids_body(["s1", "x" * 201]), auth(alice)),
        "an id holding NUL": (ids_body(["s1", "a\x00b"]), auth(alice)),
        "no ids": (ids_body([]), auth(alice)),
        "not JSON": (b"{not json", auth(alice)),
        "an empty body": (b"", auth(alice)),
        "the wrong shape": (b'{"session_ids": "s1", "more": 1}', auth(alice)),
        "a body over the limit": (ids_body(["y" * 100] * 700), auth(alice)),
        "a compressed body": (
            gzip.compress(ids_body(["s1"])),
            {**auth(alice), "Content-Encoding": "gzip"},
        ),
        "no token": (ids_body(["s1"]), {}),
        "not a bearer token": (ids_body(["s1"]), {"Authorization": "Basic abc"}),
        "an unknown token": (ids_body(["s1"]), auth("sf_nope")),
        "a revoked token": (ids_body(["s1"]), auth(revoked)),
        "a revoked token and a bad body": (b"{not json", auth(revoked)),
    }
    seen_statuses = set()
    for name, (content, headers) in cases.items():
        for with_id in (False, True):
            sent = {**json_type, **headers}
            if with_id:
                sent["X-Request-ID"] = "req-" + str(len(name))
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="sessionflow.access"):
                ahead = answer(lean.url, content, sent)
                routed_answer = answer(routed.url, content, sent)
            lines = access_lines(caplog)
            seen_statuses.add(ahead["status"])
            if with_id:
                assert ahead["request_id"] == sent["X-Request-ID"], name
            else:  # each path makes an id of its own
                assert ahead["request_id"] and routed_answer["request_id"], name
                ahead["request_id"] = routed_answer["request_id"] = None
            assert ahead == routed_answer, name
            assert len(lines) == 2, name
            if not with_id:
                for line in lines:
                    line["request_id"] = None
            assert lines[0] == lines[1], name
    assert seen_statuses == {200, 400, 401, 413, 415}


def test_batch_status_ahead_of_fastapi_leaves_other_methods_to_fastapi(
    servers: tuple[LiveServer, LiveServer], make_token: Callable[[str], str]
) -> None:
    lean, routed = servers
    token = make_token("alice")
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        for headers in ({}, auth(token)):
            answers = [
                httpx.request(method, f"{url}{URL}", headers=headers, content=ids_body(["s1"]))
                for url in (lean.url, routed.url)
            ]
            ahead, routed_answer = (
                (r.status_code, r.json(), r.headers.get("allow")) for r in answers
            )
            assert ahead == routed_answer, (method, headers)
            assert ahead[0] in (400, 401, 404, 405), (method, headers)


@pytest.mark.parametrize(
    ("body", "found", "not_found"),
    [
        # Escapes, non-ASCII and layout, no id twice: PostgreSQL reads the body as sent.
        (
            '{ "session_ids" : [ "\\u0073\\u0031", "s\\/x", "\u00e9", "\\ud83d\\ude00",\n'
            '  "tab\\there", "quote\\"d", "back\\\\slash", "\u65e5\u672c" ] }',
            ["s1"],
            ["s/x", "\u00e9", "\U0001f600", "tab\there", 'quote"d', "back\\slash", "\u65e5\u672c"],
        ),
        # The same id twice, once escaped: the server sends its own body of distinct ids.
        ('{"session_ids": ["\u00e9", "s1", "\\u00e9", "\\u0073\\u0031"]}', ["s1"], ["\u00e9"]),
        # A key repeated: the last one counts, for PostgreSQL as for the server's validation.
        ('{"session_ids": ["nope"], "session_ids": ["x", "s1"]}', ["s1"], ["x"]),
    ],
)
async def test_batch_status_reads_ids_as_sent_like_its_validation(
    api: httpx.AsyncClient,
    make_token: Callable[[str], str],
    body: str,
    found: list[str],
    not_found: list[str],
) -> None:
    token = make_token("alice")
    content = b'{"type":"user","sessionId":"s1"}\n'
    uploaded = await api.put(
        "/api/sessions/s1/transcript",
        content=content,
        headers={**auth(token), "X-Content-SHA256": hashlib.sha256(content).hexdigest()},
    )
    assert uploaded.status_code == 200
    response = await api.post(URL, content=body.encode(), headers=auth(token))
    assert response.status_code == 200, response.text
    assert list(response.json()["statuses"]) == found
    assert response.json()["not_found"] == not_found
