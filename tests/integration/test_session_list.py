"""GET /api/sessions: the owner's sessions, most recently active first, a page at a time by an
opaque keyset cursor; its filters, its limits, and who sees what."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from sessionflow.db import migrate, migrations
from tests.conftest import drop_database
from tests.helpers import auth

URL = "/api/sessions"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

Insert = Callable[..., None]


@pytest.fixture
def insert(db_dsn: str) -> Insert:
    """insert(owner, id, modified=None, **columns): a session row as an upload leaves it, with
    metadata.modified (when its files were last written) and any other column given."""

    def add(owner: str, session_id: str, modified: datetime | None = None, **columns: Any) -> None:
        metadata = columns.pop("metadata", {"project": "-home-u-src-app"})
        if modified is not None:
            metadata = {**metadata, "modified": modified.isoformat()}
        values = {
            "owner": owner,
            "id": session_id,
            "transcript_key": "k",
            "transcript_size": 1,
            "transcript_sha256": "a" * 64,
            "metadata": Jsonb(metadata),
            **{k: Jsonb(v) if isinstance(v, dict) else v for k, v in columns.items()},
        }
        query = sql.SQL("INSERT INTO sessions ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, values)),
            sql.SQL(", ").join(map(sql.Placeholder, values)),
        )
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute(query, values)

    return add


async def page(
    api: httpx.AsyncClient, token: str, **params: Any
) -> tuple[list[dict[str, Any]], str | None]:
    response = await api.get(URL, params=params, headers=auth(token))
    assert response.status_code == 200, response.text
    body = response.json()
    return body["sessions"], body["next_cursor"]


async def every_page(api: httpx.AsyncClient, token: str, **params: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(1000):  # bounded: a cursor that never ends fails the test
        sessions, cursor = await page(
            api, token, **params, **({"cursor": cursor} if cursor else {})
        )
        ids += [s["id"] for s in sessions]
        if cursor is None:
            return ids
    raise AssertionError("the listing did not end")


PARSE_RESULT = {
    "parse_status": "ok",
    "cwd": "/home/u/src/Infra-Tools",
    "first_prompt": "fix the   flaky\ntest",
    "user_prompts": 3,
    "duration_seconds": 754.5,
    "tokens": {"input": 100, "output": 20, "cache_read": 3000, "cache_creation": 400},
    "cost_usd": 0.0123,
}


async def test_list_shows_newest_first_with_each_sessions_figures(
    api: httpx.AsyncClient, make_token: Callable[[str], str], insert: Insert
) -> None:
    token = make_token("alice")
    insert("alice", "old", T0)
    insert(
        "alice",
        "done",
        T0 + timedelta(hours=2),
        lifecycle="summarized",
        parse_status="ok",
        parse_result=PARSE_RESULT,
        summary={"title": "Fix the flaky test", "text": "..."},
    )
    insert(
        "alice",
        "mid",
        T0 + timedelta(hours=1),
        lifecycle="parsed",
        parse_result={**PARSE_RESULT, "cost_usd": None, "summary": "Claude's own title"},
    )
    sessions, cursor = await page(api, token)
    assert cursor is None
    assert [s["id"] for s in sessions] == ["done", "mid", "old"]
    done, mid, old = sessions
    assert done == {
        "id": "done",
        "lifecycle": "summarized",
        "parse_status": "ok",
        "active_at": (T0 + timedelta(hours=2)).isoformat().replace("+00:00", "Z"),
        "project": "Infra-Tools",
        "title": "Fix the flaky test",
        "duration_seconds": 754.5,
        "tokens": 3520,
        "cost_usd": 0.0123,
    }
    assert mid["title"] == "Claude's own title" and mid["cost_usd"] is None
    # Not parsed yet: the project folder the client named, and no figures.
    assert old["project"] == "-home-u-src-app"
    assert (old["title"], old["tokens"], old["duration_seconds"]) == (None, None, None)


async def test_list_orders_by_when_the_session_happened_not_by_upload(
    api: httpx.AsyncClient, make_token: Callable[[str], str], insert: Insert
) -> None:
    token = make_token("alice")
    insert("alice", "written-last-week", datetime.now(UTC) - timedelta(days=7))
    insert("alice", "written-yesterday", datetime.now(UTC) - timedelta(days=1))
    insert("alice", "no-time-given")  # the upload's time
    # A time in the future, or not a time at all, is no reason to refuse the upload or to
    # put the session on top forever.
    insert("alice", "future", datetime.now(UTC) + timedelta(days=300))
    insert("alice", "garbled", metadata={"modified": "yesterday-ish"})
    insert("alice", "wrong-type", metadata={"modified": 12})
    insert("alice", "endless", metadata={"modified": "infinity"})
    insert("alice", "before-time", metadata={"modified": "-infinity"})
    insert("alice", "ancient", metadata={"modified": "0044-03-15 BC"})
    ids = await every_page(api, token)
    assert ids[-2:] == ["written-yesterday", "written-last-week"]
    assert set(ids[:-2]) == {
        "no-time-given",
        "future",
        "garbled",
        "wrong-type",
        "endless",
        "before-time",
        "ancient",
    }
    sessions, _ = await page(api, token)
    assert all(datetime.fromisoformat(s["active_at"]) <= datetime.now(UTC) for s in sessions)


async def test_a_parsed_session_is_listed_by_its_transcripts_own_time(
    api: httpx.AsyncClient, make_token: Callable[[str], str], insert: Insert, db_dsn: str
) -> None:
    # Files copied yesterday (their mtime), a conversation of last March: once parsed, the
    # transcript's last timestamp is when the session happened. Lifecycle steps move nothing.
    token = make_token("alice")
    copied = datetime.now(UTC) - timedelta(days=1)
    insert("alice", "copied", copied)
    insert("alice", "other", copied - timedelta(hours=1))
    assert await every_page(api, token) == ["copied", "other"]
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("UPDATE sessions SET lifecycle = 'downloading' WHERE id = 'copied'")
        assert await every_page(api, token) == ["copied", "other"]
        conn.execute("UPDATE sessions SET lifecycle = 'parsing' WHERE id = 'copied'")
        conn.execute(
            "UPDATE sessions SET lifecycle = 'parsed', parse_result = %s WHERE id = 'copied'",
            (Jsonb({"last_timestamp": T0.isoformat().replace("+00:00", "Z")}),),
        )
    sessions, _ = await page(api, token)
    assert [s["id"] for s in sessions] == ["other", "copied"]
    assert datetime.fromisoformat(sessions[1]["active_at"]) == T0


async def test_list_pages_follow_the_cursor_to_the_end_with_ties_broken_by_id(
    api: httpx.AsyncClient, make_token: Callable[[str], str], insert: Insert
) -> None:
    token = make_token("alice")
    # 25 sessions, many sharing a time: the id orders those.
    expected = []
    for i in range(25):
        insert("alice", f"s{i:02d}", T0 + timedelta(minutes=i // 4))
    expected = sorted(
        (f"s{i:02d}" for i in range(25)), key=lambda sid: (int(sid[1:]) // 4, sid), reverse=True
    )
    first, cursor = await page(api, token, limit=10)
    assert len(first) == 10 and cursor is not None
    assert await every_page(api, token, limit=10) == expected
    assert await every_page(api, token, limit=1) == expected
    assert await every_page(api, token, limit=25) == expected


async def test_list_paging_is_stable_under_concurrent_inserts(
    api: httpx.AsyncClient, make_token: Callable[[str], str], insert: Insert
) -> None:
    token = make_token("alice")
    existing = [f"e{i:03d}" for i in range(60)]
    for i, sid in enumerate(existing):
        insert("alice", sid, T0 + timedelta(minutes=i // 3))
    seen: list[str] = []
    cursor = None
    added = 0
    for _ in range(100):
        sessions, cursor = await page(api, token, limit=7, **({"cursor": cursor} if cursor else {}))
        seen += [s["id"] for s in sessions]
        if cursor is None:
            break
        # Between two pages, sessions arrive everywhere in the order: newer than all, older
        # than all, at the very time of the page's last session (before and after it by id),
        # and beside sessions not seen yet.
        last = sessions[-1]
        at = datetime.fromisoformat(last["active_at"])
        for when, sid in (
            (T0 + timedelta(days=1), f"new-top-{added}"),
            (T0 - timedelta(days=1), f"new-bottom-{added}"),
            (at, f"{last['id']}-after"),
            (at, f"{last['id'][:-1]}-{added}"),
            (at - timedelta(minutes=2), f"new-mid-{added}"),
        ):
            insert("alice", sid, when)
            added += 1
    assert cursor is None
    assert len(seen) == len(set(seen)), "a session was listed twice"
    assert [sid for sid in seen if sid in set(existing)] == sorted(
        existing, key=lambda sid: (int(sid[1:]) // 3, sid), reverse=True
    ), "a session that existed at the start was skipped or out of order"


async def test_list_shows_only_the_callers_sessions(
    api: httpx.AsyncClient, make_token: Callable[[str], str], insert: Insert
) -> None:
    alice, bob = make_token("alice"), make_token("bob")
    for i in range(5):
        insert("alice", f"alice-{i}", T0 + timedelta(minutes=i))
    insert("bob", "bob-0", T0 + timedelta(minutes=2, seconds=30))
    assert await every_page(api, bob, limit=1) == ["bob-0"]
    assert len(await every_page(api, alice, limit=2)) == 5
    assert await every_page(api, make_token("carol")) == []


async def test_another_owners_cursor_is_refused_and_reveals_nothing(
    api: httpx.AsyncClient, make_token: Callable[[str], str], insert: Insert
) -> None:
    alice, bob = make_token("alice"), make_token("bob")
    for i in range(3):
        insert("alice", f"alice-secret-{i}", T0 + timedelta(minutes=i))
    insert("bob", "bob-0", T0)
    _, alices_cursor = await page(api, alice, limit=1)
    assert alices_cursor is not None
    stolen = await api.get(URL, params={"cursor": alices_cursor}, headers=auth(bob))
    garbage = await api.get(URL, params={"cursor": "AAAA"}, headers=auth(bob))
    assert stolen.status_code == garbage.status_code == 400
    # The same answer as for a damaged cursor: nothing says whose it was or what it held.
    assert stolen.json() == garbage.json()
    assert stolen.json()["error"] == "invalid_cursor"
    assert "alice" not in stolen.text


async def test_a_cursor_only_continues_the_listing_it_came_from(
    api: httpx.AsyncClient, make_token: Callable[[str], str], insert: Insert
) -> None:
    token = make_token("alice")
    for i in range(3):
        insert("alice", f"s{i}", T0 + timedelta(minutes=i), lifecycle="failed")
    _, cursor = await page(api, token, limit=1, state="failed")
    assert cursor is not None
    other = await api.get(
        URL, params={"cursor": cursor, "state": "queued", "limit": 1}, headers=auth(token)
    )
    assert other.status_code == 400 and other.json()["error"] == "invalid_cursor"
    same = await api.get(
        URL, params={"cursor": cursor, "state": "failed", "limit": 5}, headers=auth(token)
    )
    assert [s["id"] for s in same.json()["sessions"]] == ["s1", "s0"]


async def test_list_requires_a_bearer_token(api: httpx.AsyncClient) -> None:
    for headers in ({}, auth("sf_not_a_token")):
        response = await api.get(URL, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"


async def test_list_filters_by_state_project_and_since(
    api: httpx.AsyncClient, make_token: Callable[[str], str], insert: Insert
) -> None:
    token = make_token("alice")
    insert("alice", "q", T0, metadata={"project": "-home-u-src-web"})
    insert("alice", "f", T0 + timedelta(hours=1), lifecycle="failed")
    insert(
        "alice",
        "p",
        T0 + timedelta(hours=2),
        lifecycle="parsed",
        parse_result={**PARSE_RESULT, "cwd": "/home/u/src/web/"},
    )
    insert("alice", "s", T0 + timedelta(hours=3), lifecycle="summarized", parse_result=PARSE_RESULT)
    assert await every_page(api, token, state="failed") == ["f"]
    assert await every_page(api, token, state=["parsed", "failed"]) == ["p", "f"]
    assert await every_page(api, token, state="parsed,summarized") == ["s", "p"]
    assert await every_page(api, token, project="web") == ["p"]
    # The name as shown, in any case, or a path that ends in it; unparsed: the folder's name.
    assert await every_page(api, token, project="infra-tools") == ["s"]
    assert await every_page(api, token, project="/home/u/src/Infra-Tools/") == ["s"]
    assert await every_page(api, token, project="-home-u-src-web") == ["q"]
    assert await every_page(api, token, project="-home-u-src-app", state="failed") == ["f"]
    since = (T0 + timedelta(hours=1)).isoformat()
    assert await every_page(api, token, since=since) == ["s", "p", "f"]
    assert await every_page(api, token, since="2026-03-01T14:00:00") == ["s", "p"]  # UTC
    assert await every_page(api, token, since=since, state="failed", limit=1) == ["f"]


@pytest.mark.parametrize(
    ("params", "error", "mentions"),
    [
        ({"state": "done"}, "invalid_request", "queued, downloading"),
        # Found by the OpenAPI fuzz test: an empty filter read as no filter.
        ({"state": ""}, "invalid_request", "names no state"),
        ({"state": " , "}, "invalid_request", "names no state"),
        ({"since": "last tuesday"}, "invalid_request", "since"),
        # A number would read as seconds since 1970: not what the API documents, refused.
        ({"since": "6193586848400"}, "invalid_request", "ISO 8601"),
        ({"limit": "501"}, "invalid_request", "1 to 500"),
        ({"limit": "0"}, "invalid_request", "limit"),
        ({"cursor": "not a cursor!"}, "invalid_cursor", "start again"),
        ({"cursor": "x" * 5000}, "invalid_cursor", "start again"),
        ({"cursor": "eyJhIjoiMjAyNi0wMS0wMSIsImkiOiJ4IiwiayI6IiJ9"}, "invalid_cursor", "start"),
        ({"project": "a\x00b"}, "invalid_request", "NUL"),
    ],
)
async def test_list_refuses_bad_filters_in_words(
    api: httpx.AsyncClient,
    make_token: Callable[[str], str],
    params: dict[str, str],
    error: str,
    mentions: str,
) -> None:
    response = await api.get(URL, params=params, headers=auth(make_token("alice")))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error
    assert mentions in response.json()["detail"]


async def test_list_page_limit_is_the_servers_setting(
    settings: Any, db_dsn: str, make_token: Callable[[str], str], insert: Insert
) -> None:
    from sessionflow.server.app import create_app

    app = create_app(settings.model_copy(update={"max_list_page": 2}), db_dsn)
    token = make_token("alice")
    for i in range(3):
        insert("alice", f"s{i}", T0 + timedelta(minutes=i))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            refused = await client.get(URL, params={"limit": 3}, headers=auth(token))
            assert refused.status_code == 400
            assert "1 to 2" in refused.json()["detail"]
            assert await every_page(client, token, limit=2) == ["s2", "s1", "s0"]


# --- summary_skipped: why a parsed session has no summary -----------------------------------


@pytest.mark.parametrize(
    ("prompts", "sentence"),
    [
        (1, "1 typed prompt; sessions with fewer than 2 are not summarized"),
        (0, "0 typed prompts; sessions with fewer than 2 are not summarized"),
    ],
)
async def test_session_detail_says_why_a_parsed_session_was_not_summarized(
    api: httpx.AsyncClient,
    make_token: Callable[[str], str],
    insert: Insert,
    prompts: int,
    sentence: str,
) -> None:
    token = make_token("alice")
    insert("alice", "short", lifecycle="parsed", parse_result={"user_prompts": prompts})
    insert("alice", "long", lifecycle="summarized", parse_result={"user_prompts": 5})
    insert("alice", "waiting")
    short = (await api.get(f"{URL}/short", headers=auth(token))).json()
    assert short["summary"] is None
    assert short["summary_skipped"] == sentence
    for other in ("long", "waiting"):
        body = (await api.get(f"{URL}/{other}", headers=auth(token))).json()
        assert body["summary_skipped"] is None


# --- the migration -------------------------------------------------------------------------


@pytest.fixture
def empty_dsn(pg_admin_dsn: str) -> Iterator[str]:
    name = "sf_list_migrate"
    drop_database(pg_admin_dsn, name)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(pg_admin_dsn, dbname=name)
    drop_database(pg_admin_dsn, name)


def test_migration_gives_existing_sessions_their_time(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (name text PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in migrations():
            if migration.name >= "005":
                break
            conn.execute(migration.path.read_bytes())
            conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (migration.name,))
        for sid, metadata in (
            ("dated", {"modified": T0.isoformat()}),
            ("undated", None),
            ("garbled", {"modified": "soon"}),
        ):
            conn.execute(
                "INSERT INTO sessions (owner, id, transcript_key, transcript_size, "
                "transcript_sha256, metadata, lifecycle) "
                "VALUES ('o', %s, 'k', 1, repeat('a', 64), %s, 'parsed')",
                (sid, json.dumps(metadata) if metadata else None),
            )
    assert "005_session_list" in migrate(empty_dsn)
    with psycopg.connect(empty_dsn) as conn:
        rows = dict(conn.execute("SELECT id, active_at = created_at FROM sessions").fetchall())
        dated = conn.execute("SELECT active_at FROM sessions WHERE id = 'dated'").fetchone()
    assert dated == (T0,)
    assert rows == {"dated": False, "undated": True, "garbled": True}
