"""A session is its files: registering a session of several files, uploading each file once
(content-addressed, per owner), naming the set, and re-ingesting when the set changes."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from sessionflow.protocol import SessionFile, session_digest
from sessionflow.settings import Settings
from tests.helpers import auth

MAIN = b'{"type":"user","sessionId":"s1","message":{"role":"user","content":"hi"}}\n'
RUN_A = b'{"type":"user","sessionId":"s1","agentId":"a1","isSidechain":true,"message":{"role":"user","content":"Warmup"}}\n'  # noqa: E501
RUN_B = b'{"type":"user","sessionId":"s1","agentId":"b2","isSidechain":true,"message":{"role":"user","content":"Find it"}}\n'  # noqa: E501


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(data: bytes, role: str = "main", agent_id: str | None = None) -> dict[str, Any]:
    name = f"agent-{agent_id}.jsonl" if agent_id else "s1.jsonl"
    return {
        "name": name,
        "role": role,
        "agent_id": agent_id,
        "sha256": sha(data),
        "size": len(data),
    }


def digest(files: list[dict[str, Any]]) -> str:
    return session_digest([SessionFile(**f) for f in files])


def registration(session_id: str, files: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": session_id,
        "sha256": digest(files),
        "size": sum(f["size"] for f in files),
        "files": files,
    }


async def register(api: httpx.AsyncClient, token: str, *sessions: dict[str, Any]) -> httpx.Response:
    return await api.post("/api/sessions", json={"sessions": list(sessions)}, headers=auth(token))


async def upload_file(
    api: httpx.AsyncClient, token: str, data: bytes, *, url_sha: str | None = None
) -> httpx.Response:
    return await api.put(
        f"/api/files/{url_sha or sha(data)}",
        content=gzip.compress(data),
        headers={**auth(token), "Content-Encoding": "gzip"},
    )


async def name_files(
    api: httpx.AsyncClient,
    token: str,
    session_id: str,
    files: list[dict[str, Any]],
    *,
    force: bool = False,
) -> httpx.Response:
    return await api.put(
        f"/api/sessions/{session_id}/files",
        json={"files": files},
        headers=auth(token),
        params={"force": "true"} if force else None,
    )


async def test_a_session_of_several_files_is_uploaded_once_and_queued(
    api: httpx.AsyncClient, make_token: Callable[[str], str], db_dsn: str
) -> None:
    token = make_token("alice")
    files = [entry(MAIN), entry(RUN_A, "subagent", "a1")]
    answer = (await register(api, token, registration("s1", files))).json()
    assert answer["upload"] == ["s1"]
    assert sorted(answer["missing_files"]["s1"]) == sorted([sha(MAIN), sha(RUN_A)])

    for data in (MAIN, RUN_A):
        response = await upload_file(api, token, data)
        assert response.status_code == 200, response.text
        assert response.json() == {"sha256": sha(data), "size": len(data)}
    named = await name_files(api, token, "s1", files)
    assert named.status_code == 200, named.text
    assert named.json()["queued"] is True and named.json()["lifecycle"] == "queued"

    detail = (await api.get("/api/sessions/s1", headers=auth(token))).json()
    assert detail["transcript_sha256"] == digest(files)
    assert detail["transcript_size"] == len(MAIN) + len(RUN_A)
    assert [(f["role"], f["agent_id"], f["sha256"]) for f in detail["files"]] == [
        ("main", None, sha(MAIN)),
        ("subagent", "a1", sha(RUN_A)),
    ]
    # The same set again is nothing to do.
    again = (await register(api, token, registration("s1", files))).json()
    assert again == {"upload": [], "missing_files": {}}
    assert (await name_files(api, token, "s1", files)).json()["queued"] is False


async def test_a_subagent_run_found_later_reingests_its_session_asking_only_for_it(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    first = [entry(MAIN), entry(RUN_A, "subagent", "a1")]
    for data in (MAIN, RUN_A):
        await upload_file(api, token, data)
    await name_files(api, token, "s1", first)

    more = [*first, entry(RUN_B, "subagent", "b2")]
    answer = (await register(api, token, registration("s1", more))).json()
    assert answer == {"upload": ["s1"], "missing_files": {"s1": [sha(RUN_B)]}}
    await upload_file(api, token, RUN_B)
    named = await name_files(api, token, "s1", more)
    assert named.json()["queued"] is True


async def test_a_session_cannot_name_files_its_owner_never_uploaded(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    alice, bob = make_token("alice"), make_token("bob")
    files = [entry(MAIN), entry(RUN_A, "subagent", "a1")]
    await upload_file(api, bob, MAIN)
    await upload_file(api, bob, RUN_A)
    # Alice knows the hashes of Bob's files but never sent them: that reads nothing of his.
    response = await name_files(api, alice, "s1", files)
    assert response.status_code == 409
    assert response.json()["error"] == "files_missing"
    answer = (await register(api, alice, registration("s1", files))).json()
    assert sorted(answer["missing_files"]["s1"]) == sorted([sha(MAIN), sha(RUN_A)])
    assert (await api.get("/api/sessions/s1", headers=auth(alice))).status_code == 404


async def test_a_one_file_session_named_through_files_reads_as_an_uploaded_transcript(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    await upload_file(api, token, MAIN)
    named = await name_files(api, token, "s1", [entry(MAIN)])
    assert named.json()["queued"] is True
    detail = (await api.get("/api/sessions/s1", headers=auth(token))).json()
    assert detail["transcript_sha256"] == sha(MAIN)  # the digest of one main file is its hash
    # ... so the one-request upload of the same bytes is no change.
    response = await api.put(
        "/api/sessions/s1/transcript",
        content=MAIN,
        headers={**auth(token), "X-Content-SHA256": sha(MAIN)},
    )
    assert response.json()["queued"] is False


async def test_the_server_measures_file_sizes_itself(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    await upload_file(api, token, MAIN)
    lying = [{**entry(MAIN), "size": 1}]
    assert (await name_files(api, token, "s1", lying)).status_code == 200
    detail = (await api.get("/api/sessions/s1", headers=auth(token))).json()
    assert detail["files"][0]["size"] == len(MAIN)


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ([entry(MAIN), entry(RUN_A)], "2 main transcripts"),
        ([entry(MAIN), entry(RUN_A, "subagent")], "needs its agent_id"),
        (
            [entry(RUN_A, "subagent", "a1"), {**entry(RUN_B, "subagent", "a1")}],
            "listed twice",
        ),
        ([{**entry(MAIN), "agent_id": "x"}], "main transcript has an agent_id"),
        ([entry(RUN_A, "subagent", "bad id")], "invalid agent_id"),
        ([{**entry(MAIN), "name": "x" * 1001}], "over 1000 characters"),
        ([{**entry(MAIN), "role": "other"}], "role"),
    ],
)
async def test_an_impossible_set_of_files_is_a_400_that_says_why(
    api: httpx.AsyncClient, make_token: Callable[[str], str], files: list[Any], says: str
) -> None:
    token = make_token("alice")
    response = await name_files(api, token, "s1", files)
    assert response.status_code == 400, response.text
    assert says in response.json()["detail"]
    if all(f["role"] in ("main", "subagent") for f in files):
        response = await register(
            api, token, {"id": "s1", "sha256": sha(b"x"), "size": 1, "files": files}
        )
        assert response.status_code == 400, response.text


async def test_files_per_session_are_limited_by_the_setting(
    settings: Settings, db_dsn: str, make_token: Callable[[str], str]
) -> None:
    from sessionflow.server.app import create_app

    app = create_app(settings.model_copy(update={"max_session_files": 2}), db_dsn)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
            token = make_token("alice")
            files = [entry(MAIN), entry(RUN_A, "subagent", "a1"), entry(RUN_B, "subagent", "b2")]
            response = await register(api, token, registration("s1", files))
            assert response.status_code == 400
            assert "the limit is 2 (SESSIONFLOW_MAX_SESSION_FILES)" in response.json()["detail"]


async def test_registration_must_carry_the_digest_of_its_files(
    api: httpx.AsyncClient, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    files = [entry(MAIN), entry(RUN_A, "subagent", "a1")]
    response = await register(api, token, {**registration("s1", files), "sha256": sha(MAIN)})
    assert response.status_code == 400
    assert "digest of its files" in response.json()["detail"]


async def test_a_file_whose_bytes_do_not_match_its_url_is_refused_and_not_recorded(
    api: httpx.AsyncClient, make_token: Callable[[str], str], db_dsn: str
) -> None:
    token = make_token("alice")
    response = await upload_file(api, token, MAIN, url_sha=sha(RUN_A))
    assert response.status_code == 400
    assert "sha256" in response.json()["detail"]
    assert (await upload_file(api, token, MAIN, url_sha="NOT-A-HASH")).status_code == 400
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM transcript_files").fetchone() == (0,)


async def test_files_route_needs_a_token(api: httpx.AsyncClient) -> None:
    response = await api.put(f"/api/files/{sha(MAIN)}", content=MAIN)
    assert response.status_code == 401


def test_digest_of_a_session_ignores_names_and_order() -> None:
    a = [entry(MAIN), entry(RUN_A, "subagent", "a1"), entry(RUN_B, "subagent", "b2")]
    b = [{**f, "name": "moved/" + f["name"]} for f in reversed(a)]
    assert digest(a) == digest(b)
    assert digest(a) != digest(a[:2])
    assert digest([entry(MAIN)]) == sha(MAIN)
    assert json.dumps(digest(a))  # hex, as the column's check wants
