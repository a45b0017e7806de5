"""`sessionflow list` (and `show`'s word on a parsed session) as a real subprocess against a
real `sessionflow serve` on a real PostgreSQL; the table in a pseudo-terminal of each width."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from rich.cells import cell_len

from tests.helpers import Processes, cli_env, run_cli
from tests.pty_screen import run_in_pty

NOW = datetime.now(UTC).replace(microsecond=0)


def add_session(dsn: str, owner: str, session_id: str, ago: timedelta, **columns: Any) -> None:
    """A session row as the pipeline leaves it, active `ago` before now."""
    metadata = {"project": columns.pop("project", "-home-u-src-app")}
    metadata["modified"] = (NOW - ago).isoformat()
    values = {
        "owner": owner,
        "id": session_id,
        "metadata": Jsonb(metadata),
        "lifecycle": columns.pop("lifecycle", "queued"),
        "parse_result": Jsonb(columns.pop("parse_result")) if "parse_result" in columns else None,
        "summary": Jsonb(columns.pop("summary")) if "summary" in columns else None,
    }
    assert not columns
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sessions (owner, id, transcript_key, transcript_size, "
            "transcript_sha256, metadata, lifecycle, parse_result, summary) VALUES "
            "(%(owner)s, %(id)s, 'k', 1, repeat('a', 64), %(metadata)s, %(lifecycle)s, "
            "%(parse_result)s, %(summary)s)",
            values,
        )


def result(cwd: str, prompt: str, tokens: int, cost: float | None, seconds: float) -> Any:
    return {
        "parse_status": "ok",
        "cwd": cwd,
        "first_prompt": prompt,
        "user_prompts": 4,
        "duration_seconds": seconds,
        "tokens": {"input": tokens, "output": 0, "cache_read": 0, "cache_creation": 0},
        "cost_usd": cost,
    }


UUIDS = [f"{i:08x}-1111-4222-8333-444455556666" for i in range(5)]


@pytest.fixture
def listed(procs: Processes, db_dsn: str, make_token: Callable[[str], str]) -> tuple[str, str]:
    """A server with five sessions of alice's (one of bob's), and alice's token."""
    server = procs.serve("--no-worker")
    add_session(
        db_dsn,
        "alice",
        UUIDS[0],
        timedelta(minutes=5),
        lifecycle="summarized",
        parse_result=result("/home/u/src/infra-tools", "x", 1_234_567, 3.21, 3725),
        summary={"title": "Make the deploy script retry on a flaky registry", "text": "."},
    )
    add_session(
        db_dsn,
        "alice",
        UUIDS[1],
        timedelta(hours=3),
        lifecycle="parsed",
        # Text from a transcript: markup, an escape sequence, wide characters, a newline.
        parse_result=result(
            "/home/u/src/a-project-with-a-very-long-name-indeed",
            "[/api] returns 500 \x1b[31mred\x1b[0m when 日本語のテキスト\nis posted",
            950,
            None,
            42,
        ),
    )
    add_session(db_dsn, "alice", UUIDS[2], timedelta(days=2), lifecycle="failed")
    add_session(db_dsn, "alice", UUIDS[3], timedelta(days=9), lifecycle="queued")
    add_session(
        db_dsn,
        "alice",
        UUIDS[4],
        timedelta(days=40),
        lifecycle="summarized",
        parse_result=result("/home/u/src/web", "y", 88_000, 0.5, 600),
        summary={"title": "Old work", "text": "."},
    )
    add_session(db_dsn, "bob", "bobs-secret-session", timedelta(minutes=1))
    return server.url, make_token("alice")


@pytest.mark.parametrize("columns", [120, 80, 60])
def test_list_table_fits_the_terminal_with_whole_labels(
    listed: tuple[str, str], tmp_path: Path, columns: int
) -> None:
    url, token = listed
    run = run_in_pty(
        ["list", "--server", url], cli_env(token, tmp_path), columns, timeout=60, size_in_env=False
    )
    code, text = run.returncode, run.output.replace("\r\n", "\n")
    assert code == 0, text
    lines = text.rstrip("\n").split("\n")
    assert "Traceback" not in text
    for line in lines:
        assert cell_len(line) <= columns, f"wider than {columns}: {line!r}"
    header = lines[0].split()
    # The labels are whole words, in their order; which ones depends on the room.
    assert header[:2] == ["when", "title"] and "state" in header
    assert set(header) <= {"when", "title", "project", "state", "duration", "tokens", "cost", "id"}
    rows = lines[1:6]
    assert len(rows) == 5
    # Newest first, each session on one line, state words as they are.
    states = ["summarized", "parsed", "failed", "queued", "summarized"]
    for row, state in zip(rows, states, strict=True):
        assert f" {state}" in row
    assert "bobs-secret-session" not in text
    # A transcript's text is printed as text: the markup stays, the escape sequence is gone.
    assert "\x1b" not in text
    assert "[/api] returns" in rows[1]
    if columns >= 120:
        assert header == ["when", "title", "project", "state", "duration", "tokens", "cost"]
        assert "infra-tools" in rows[0] and "1.2M" in rows[0] and "$3.21" in rows[0]
        assert "1h02m" in rows[0]
        assert "–" in rows[1]  # no price, no cost: a dash, never a wrong figure
    if columns <= 60:
        assert "tokens" not in header and "cost" not in header
    # Where the id does not fit, the table says how to get it.
    assert "--json" in text


def test_list_json_lists_every_field_and_pages_through_the_server(
    listed: tuple[str, str], tmp_path: Path
) -> None:
    url, token = listed
    out = run_cli(token, tmp_path, "list", "--server", url, "--json", "--limit", "0")
    assert out.returncode == 0, out.stderr
    page = json.loads(out.stdout)
    assert [s["id"] for s in page["sessions"]] == UUIDS
    assert page["next_cursor"] is None
    first = page["sessions"][0]
    assert first["title"] == "Make the deploy script retry on a flaky registry"
    assert (first["project"], first["tokens"], first["cost_usd"]) == ("infra-tools", 1234567, 3.21)
    # --limit stops early, and says there is more.
    two = run_cli(token, tmp_path, "list", "--server", url, "--limit", "2", COLUMNS="200")
    assert two.returncode == 0, two.stderr
    assert UUIDS[0] in two.stdout and UUIDS[1] in two.stdout and UUIDS[2] not in two.stdout
    assert "--limit 100 shows more" in two.stdout
    one_page = json.loads(
        run_cli(token, tmp_path, "list", "--server", url, "--json", "--limit", "3").stdout
    )
    assert [s["id"] for s in one_page["sessions"]] == UUIDS[:3]
    assert one_page["next_cursor"] is not None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--state", "failed"], [2]),
        (["--state", "summarized,queued"], [0, 3, 4]),
        (["--state", "parsed", "--state", "failed"], [1, 2]),
        (["--project", "INFRA-tools"], [0]),
        (["--project", "/home/u/src/web"], [4]),
        (["--project", "nowhere"], []),
        (["--since", "7d"], [0, 1, 2]),
        (["--since", "12h"], [0, 1]),
        (["--since", (NOW - timedelta(days=10)).date().isoformat()], [0, 1, 2, 3]),
        (["--since", (NOW - timedelta(hours=1)).isoformat()], [0]),
        (["--since", "30d", "--state", "queued"], [3]),
    ],
)
def test_list_filters(
    listed: tuple[str, str], tmp_path: Path, args: list[str], expected: list[int]
) -> None:
    url, token = listed
    out = run_cli(token, tmp_path, "list", "--server", url, "--json", *args)
    assert out.returncode == 0, out.stderr
    assert [s["id"] for s in json.loads(out.stdout)["sessions"]] == [UUIDS[i] for i in expected]


def test_list_project_dot_is_the_current_directorys_project(
    listed: tuple[str, str], tmp_path: Path
) -> None:
    url, token = listed
    here = tmp_path / "src" / "Infra-Tools"
    here.mkdir(parents=True)
    out = subprocess.run(
        [sys.executable, "-m", "sessionflow", "list", "--server", url, "--json", "--project", "."],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=here,
        env=cli_env(token, tmp_path),
    )
    assert out.returncode == 0, out.stderr
    assert [s["id"] for s in json.loads(out.stdout)["sessions"]] == [UUIDS[0]]


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--since", "last tuesday"], "is not a time: give an age (30m, 12h, 7d, 2w)"),
        (["--since", "7x"], "is not a time"),
        (["--state", "done"], "'done' is not a state; use one of queued"),
        (["--state", ""], "names no state; use one of queued"),
        (["--limit", "-1"], "--limit"),
    ],
)
def test_list_bad_options_are_usage_errors_in_words(
    tmp_path: Path, args: list[str], mentions: str
) -> None:
    # No server is needed, none is started: the option is refused first.
    out = run_cli("sf_x", tmp_path, "list", *args, "--data-dir", str(tmp_path / "d"), COLUMNS="200")
    assert out.returncode == 2, out
    assert mentions in " ".join(out.stderr.split())
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "d").exists()


def test_list_says_so_when_there_is_nothing(
    procs: Processes, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    server = procs.serve("--no-worker")
    out = run_cli(make_token("nobody"), tmp_path, "list", "--server", server.url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "No sessions found."


def test_list_with_a_refused_token_is_an_error_sentence(procs: Processes, tmp_path: Path) -> None:
    server = procs.serve("--no-worker")
    out = run_cli("sf_wrong", tmp_path, "list", "--server", server.url)
    assert out.returncode == 1
    assert out.stderr.startswith("Error: ") and "token" in out.stderr
    assert "Traceback" not in out.stderr


def test_list_against_a_server_without_the_listing_says_so_in_words(tmp_path: Path) -> None:
    class Old(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # what a server of the previous release answers
            body = b'{"error":"method_not_allowed","detail":"Method Not Allowed"}'
            self.send_response(405)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Old)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        out = run_cli("sf_x", tmp_path, "list", "--server", url)
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 1
    assert out.stderr.startswith("Error: ") and "cannot list sessions" in out.stderr
    assert "405" not in out.stderr


# --- a real backfill, processed by the real worker, then listed and shown -----------------

SESSION = "5e551011-aaaa-4bbb-8ccc-000000000001"


def one_prompt_transcript(folder: Path) -> None:
    project = folder / "-home-u-src-demo"
    project.mkdir(parents=True)
    lines = [
        {
            "type": "user",
            "sessionId": SESSION,
            "uuid": "u1",
            "timestamp": "2026-03-01T12:00:00.000Z",
            "cwd": "/home/u/src/demo",
            "message": {"role": "user", "content": "[/api] returns 500"},
        },
        {
            "type": "assistant",
            "sessionId": SESSION,
            "uuid": "a1",
            "parentUuid": "u1",
            "timestamp": "2026-03-01T12:00:09.000Z",
            "requestId": "req_1",
            "message": {
                "id": "msg_1",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": "Looking."}],
                "usage": {"input_tokens": 10, "output_tokens": 5},
            },
        },
    ]
    (project / f"{SESSION}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_show_says_why_a_parsed_session_was_not_summarized_fits_the_terminal_and_list_shows_it(
    procs: Processes, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    server = procs.serve()
    token = make_token("alice")
    folder = tmp_path / "projects"
    one_prompt_transcript(folder)
    done = run_cli(token, tmp_path, "backfill", str(folder), "--server", server.url, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"] == {"parsed": 1}

    shown = run_cli(token, tmp_path, "show", SESSION, "--server", server.url, COLUMNS="100")
    assert shown.returncode == 0, shown.stderr
    assert "Not summarized: 1 typed prompt; sessions with fewer than 2 are not summarized" in (
        shown.stdout
    )
    as_json = run_cli(token, tmp_path, "show", SESSION, "--server", server.url, "--json")
    assert json.loads(as_json.stdout)["summary_skipped"] == (
        "1 typed prompt; sessions with fewer than 2 are not summarized"
    )

    listed = run_cli(token, tmp_path, "list", "--server", server.url, "--json")
    (item,) = json.loads(listed.stdout)["sessions"]
    assert (item["id"], item["lifecycle"], item["project"]) == (SESSION, "parsed", "demo")
    assert item["title"] == "[/api] returns 500" and item["tokens"] == 15

    # On a narrow terminal every line fits, and a long value wraps under its own column.
    narrow = run_in_pty(
        ["show", SESSION, "--server", server.url], cli_env(token, tmp_path), 40, timeout=60
    )
    assert narrow.returncode == 0, narrow.output
    screen = [line for line in narrow.final if line.strip()]
    assert all(cell_len(line) <= 40 for line in screen), screen
    tokens = next(i for i, line in enumerate(screen) if line.startswith("  Tokens:"))
    column = screen[tokens].index("input")
    assert screen[tokens + 1][:column].strip() == "", screen[tokens : tokens + 2]
    assert screen[tokens + 1][column:].strip(), screen[tokens : tokens + 2]


@pytest.mark.slow
def test_list_in_local_mode_starts_the_embedded_stack(tmp_path: Path) -> None:
    folder = tmp_path / "projects"
    one_prompt_transcript(folder)
    data = tmp_path / "data"
    done = run_cli("", tmp_path, "backfill", str(folder), "--data-dir", str(data), "--json")
    assert done.returncode == 0, done.stderr
    out = run_cli("", tmp_path, "list", "--data-dir", str(data), timeout=180, COLUMNS="120")
    assert out.returncode == 0, out.stderr
    assert "Starting the local sessionflow server" in out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert header.split()[:3] == ["when", "title", "project"]
    assert "[/api] returns 500" in row and "demo" in row and "parsed" in row
