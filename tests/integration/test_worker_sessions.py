"""Sessions of several files through the real client, API and Worker: a session is parsed with
all its subagent runs, with or without its main transcript, and results an older parser made
are parsed again in the background, behind new work."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from sessionflow.client.discovery import LocalSession, discover
from sessionflow.client.http import SessionflowClient
from sessionflow.client.upload import UploadOptions, backfill
from sessionflow.samples import PROJECTS, SubagentRun, iter_transcript_lines
from sessionflow.settings import Settings
from sessionflow.storage import transcript_key
from sessionflow.worker.parse import PARSER_VERSION
from tests.helpers import LEASE_LOG, LiveServer
from tests.integration.conftest import OWNER, StartWorker, row, wait_for


def write_session(folder: Path, seed: int, *, keep_main: bool = True) -> str:
    """A 2.x sample session with at least one subagent run in its own file; returns its id."""
    for attempt in range(50):
        rng = random.Random(seed * 100 + attempt)
        runs: list[SubagentRun] = []
        session_id = f"s{seed}-{attempt}"
        lines = list(
            iter_transcript_lines(
                rng, 60_000, session_id=session_id, project=PROJECTS[0], runs=runs
            )
        )
        if any(run.lines[0].find(b'"Warmup"') < 0 for run in runs):
            break
    else:
        raise AssertionError("no sample session with a subagent run of its own file")
    project = folder / PROJECTS[0].dir_name
    project.mkdir(parents=True, exist_ok=True)
    if keep_main:
        (project / f"{session_id}.jsonl").write_bytes(b"".join(lines))
    for run in runs:
        path = run.path(project, session_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(run.lines))
    return session_id


async def upload_all(server: LiveServer, token: str, folder: Path) -> list[LocalSession]:
    """Upload every session under folder with the real client, over real HTTP."""
    found = discover([folder], max_bytes=1 << 30)
    async with SessionflowClient(server.url, token) as client:
        result = await backfill(client, found.sessions, UploadOptions())
    assert not result.failed, result.failed
    return found.sessions


@pytest.fixture
def token(make_token: Callable[[str], str]) -> str:
    return make_token(OWNER)


async def test_a_session_is_parsed_with_every_subagent_run_it_has(
    live_server: LiveServer, token: str, tmp_path: Path, db_dsn: str, start_worker: StartWorker
) -> None:
    session_id = write_session(tmp_path / "p", 1)
    (session,) = await upload_all(live_server, token, tmp_path / "p")
    assert len(session.files) >= 2
    await start_worker()
    done = await wait_for(db_dsn, session_id)
    assert done["lifecycle"] in ("parsed", "summarized"), done["error"]
    result = done["parse_result"]
    assert result["parser_version"] == PARSER_VERSION
    # The main transcript alone has fewer tokens than the session with its runs.
    main_only = tmp_path / "main-only"
    main_only.mkdir()
    assert session.main is not None
    (main_only / session.main.path.name).write_bytes(session.main.path.read_bytes())
    from sessionflow.worker.parse import parse_file

    alone = parse_file(main_only / session.main.path.name)
    assert sum(result["tokens"].values()) > alone.tokens.total
    with psycopg.connect(db_dsn) as conn:
        stored = conn.execute(
            "SELECT parser_version FROM sessions WHERE owner = %s AND id = %s",
            (OWNER, session_id),
        ).fetchone()
    assert stored == (PARSER_VERSION,)


async def test_a_session_of_subagent_runs_alone_is_processed(
    live_server: LiveServer, token: str, tmp_path: Path, db_dsn: str, start_worker: StartWorker
) -> None:
    session_id = write_session(tmp_path / "p", 2, keep_main=False)
    (session,) = await upload_all(live_server, token, tmp_path / "p")
    assert session.main is None
    await start_worker()
    done = await wait_for(db_dsn, session_id)
    assert done["lifecycle"] in ("parsed", "summarized"), done["error"]
    async with SessionflowClient(live_server.url, token) as client:
        detail = await client.get_session(session_id)
    assert {f.role for f in detail.files} == {"subagent"}
    assert detail.metadata is not None and detail.metadata["main_transcript_missing"] is True


async def test_a_damaged_subagent_file_fails_the_session_naming_the_file(
    live_server: LiveServer,
    token: str,
    tmp_path: Path,
    db_dsn: str,
    start_worker: StartWorker,
    settings: Settings,
) -> None:
    session_id = write_session(tmp_path / "p", 3)
    (session,) = await upload_all(live_server, token, tmp_path / "p")
    run = session.files[-1]
    stored = settings.data_dir / "transcripts" / transcript_key(run.sha256)
    stored.write_bytes(stored.read_bytes() + b"\n")
    await start_worker()
    done = await wait_for(db_dsn, session_id)
    assert done["lifecycle"] == "failed"
    assert run.name in done["error"] and "damaged" in done["error"]


async def test_results_of_an_older_parser_are_parsed_again_behind_new_work(
    live_server: LiveServer, token: str, tmp_path: Path, db_dsn: str, start_worker: StartWorker
) -> None:
    old_ids = [write_session(tmp_path / "old", n) for n in (4, 5)]
    await upload_all(live_server, token, tmp_path / "old")
    worker = await start_worker()
    for sid in old_ids:
        await wait_for(db_dsn, sid)
    await worker.stop(grace=0)

    # As a previous release would have left them: no parser version recorded.
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("UPDATE sessions SET parser_version = NULL")
        conn.execute(LEASE_LOG)
    new_id = write_session(tmp_path / "new", 6)
    await upload_all(live_server, token, tmp_path / "new")

    await start_worker(worker_concurrency=1)
    await wait_for(db_dsn, new_id)
    with psycopg.connect(db_dsn) as conn:
        for _ in range(600):  # each old session claimed again, and finished
            again = conn.execute(
                "SELECT count(*) FROM sessions WHERE parser_version = %s", (PARSER_VERSION,)
            ).fetchone()
            if again == (3,):
                break
            await asyncio.sleep(0.05)
        versions = conn.execute("SELECT DISTINCT parser_version FROM sessions").fetchall()
        first_claims = conn.execute(
            "SELECT id FROM lease_log GROUP BY id ORDER BY min(at)"
        ).fetchall()
    assert versions == [(PARSER_VERSION,)]
    assert first_claims[0] == (new_id,)  # new work first
    assert {sid for (sid,) in first_claims[1:]} == set(old_ids)
    assert row(db_dsn, old_ids[0])["attempts"] == 1


async def test_a_session_an_older_release_replaced_by_a_subagent_log_gets_its_transcript_back(
    live_server: LiveServer, token: str, tmp_path: Path, db_dsn: str, start_worker: StartWorker
) -> None:
    session_id = write_session(tmp_path / "p", 7)
    (session,) = discover([tmp_path / "p"], max_bytes=1 << 30).sessions
    run = session.files[-1]
    # What the previous release did when it met the run's file first: one "transcript", the
    # run's bytes, under the parent's id.
    async with SessionflowClient(live_server.url, token) as client:
        await client.upload(session_id, run.path.read_bytes(), run.sha256)
    await start_worker()
    before = await wait_for(db_dsn, session_id)

    (again,) = await upload_all(live_server, token, tmp_path / "p")
    assert again.session_id == session_id
    done = await wait_for(db_dsn, session_id, {"parsed", "summarized", "failed"})
    with psycopg.connect(db_dsn) as conn:
        (files,) = conn.execute(
            "SELECT session_files(files, transcript_sha256, transcript_size, metadata) "
            "FROM sessions WHERE id = %s",
            (session_id,),
        ).fetchone() or (None,)
    assert sorted(f["sha256"] for f in files) == sorted(f.sha256 for f in session.files)
    assert done["lifecycle"] in ("parsed", "summarized"), done["error"]
    assert done["parse_result"]["user_prompts"] > before["parse_result"]["user_prompts"]


async def test_nul_bytes_and_huge_strings_in_a_transcript_are_cleaned_not_retried(
    live_server: LiveServer, token: str, tmp_path: Path, db_dsn: str, start_worker: StartWorker
) -> None:
    from sessionflow.worker.parse import MAX_NAME_CHARS, MAX_PATH_CHARS, MAX_PROMPT_CHARS

    huge = "x" * 1_000_000
    nul = "a\u0000b"
    events = [
        {
            "type": "user",
            "sessionId": "hostile",
            "cwd": f"/src/{nul}{huge}",
            "gitBranch": f"main{nul}{huge}",
            "timestamp": "2025-08-20T10:00:00.000Z",
            "message": {"role": "user", "content": f"do it {nul} {huge}"},
        },
        {
            "type": "assistant",
            "sessionId": "hostile",
            "timestamp": "2025-08-20T10:00:05.000Z",
            "requestId": "req_1",
            "message": {
                "id": "msg_1",
                "role": "assistant",
                "model": f"claude{nul}{huge}",
                "usage": {"input_tokens": 3, "output_tokens": 5},
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": f"Edit{nul}{huge}",
                        "input": {"file_path": f"/src/{nul}{huge}.py"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "Write",
                        "input": {"file_path": f"/src/{nul}{huge}.py"},
                    },
                ],
            },
        },
    ]
    folder = tmp_path / "p" / "-src"
    folder.mkdir(parents=True)
    (folder / "hostile.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    await upload_all(live_server, token, tmp_path / "p")
    await start_worker()
    done = await wait_for(db_dsn, "hostile")
    assert done["lifecycle"] in ("parsed", "summarized"), done["error"]
    assert done["attempts"] == 1  # not retried as if the database were away
    result = done["parse_result"]
    assert "\u0000" not in json.dumps(result)
    assert len(result["cwd"]) <= MAX_PATH_CHARS
    assert len(result["git_branch"]) <= MAX_NAME_CHARS
    assert len(result["first_prompt"]) <= MAX_PROMPT_CHARS
    assert all(len(m) <= MAX_NAME_CHARS for m in result["models"])
    assert all(len(name) <= MAX_NAME_CHARS for name in result["tool_calls_by_name"])
    assert all(len(path) <= MAX_PATH_CHARS for path in result["files_touched"])
