"""The real CLI backfills a folder laid out like ~/.claude/projects with Claude Code's three
layouts mixed (1.x inline sidechains, 2.0.x agent files beside the sessions, 2.1.x subagents
folders), plus the awkward cases: a session whose main file is gone, two different files
claiming one session, a file of Claude Code's own records. Every session is kept once with
all its runs, every file is accounted for, and the token totals and costs equal ccusage's
(the tool people trust for them) when ccusage is installed (CI installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sessionflow.client.discovery import discover
from sessionflow.samples import _PROMPTS, write_sample_transcripts
from tests.helpers import Processes, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def projects(tmp_path: Path) -> dict[str, Any]:
    """~/.claude/projects with every layout, and notes on the awkward files planted in it."""
    root = tmp_path / "home" / ".claude" / "projects"
    write_sample_transcripts(root, 40, seed=14)
    found = discover([root], max_bytes=1 << 30)
    with_runs = [s for s in found.sessions if len(s.files) > 1 and s.main is not None]
    assert len(with_runs) >= 3, "the seed should give sessions with subagent files"
    # A session whose main transcript was deleted: its runs must still make it.
    orphaned = with_runs[0]
    assert orphaned.main is not None
    orphaned.main.path.unlink()
    # Another file claiming a session with different content (not an older copy).
    claimed = with_runs[1]
    assert claimed.main is not None
    rival = root / "-elsewhere" / claimed.main.path.name
    rival.parent.mkdir()
    rival.write_bytes(claimed.main.path.read_bytes().splitlines(keepends=True)[0] + b"{}\n")
    # A file of Claude Code's own records and nothing else.
    records = root / orphaned.project / "0a0b0c0d-0e0f-4a1b-8c2d-3e4f5a6b7c8d.jsonl"
    records.write_text(json.dumps({"type": "file-history-snapshot", "messageId": "m"}) + "\n")
    return {
        "root": root,
        "orphaned": orphaned.session_id,
        "claimed": claimed.session_id,
        "rival": rival,
        "records": records,
    }


def stored_sessions(dsn: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, session_files(files, transcript_sha256, transcript_size, metadata), "
            "lifecycle, parse_result, metadata FROM sessions"
        ).fetchall()
    return {
        sid: {"files": files, "lifecycle": lifecycle, "result": result, "metadata": meta}
        for sid, files, lifecycle, result, meta in rows
    }


def test_a_projects_folder_of_every_layout_keeps_each_session_once_with_all_its_runs(
    procs: Processes,
    projects: dict[str, Any],
    make_token: Callable[[str], str],
    db_dsn: str,
) -> None:
    root: Path = projects["root"]
    home = root.parent.parent
    server = procs.serve()
    token = make_token("alice")
    result = run_cli(
        token, home, "backfill", "--json", "--server", server.url
    )  # the default folder
    report = json.loads(result.stdout)
    assert report["complete"] is True, result.stderr

    expected = discover([root], max_bytes=1 << 30)
    stored = stored_sessions(db_dsn)
    # Every session once, none named after a subagent file, each with all its files.
    assert sorted(stored) == sorted(s.session_id for s in expected.sessions)
    assert not any(sid.startswith("agent-") for sid in stored)
    for session in expected.sessions:
        files = stored[session.session_id]["files"]
        assert sorted(f["sha256"] for f in files) == sorted(f.sha256 for f in session.files)
        assert stored[session.session_id]["lifecycle"] in ("parsed", "summarized")
    layouts = Counter(
        "2.1" if "/subagents/" in f["name"] else "2.0" if f["role"] == "subagent" else "main"
        for s in stored.values()
        for f in s["files"]
    )
    assert layouts["2.0"] and layouts["2.1"] and layouts["main"]

    # Every file found is in a session or named with its reason.
    files = report["files"]
    all_files = sorted(root.rglob("*.jsonl"))
    assert files["found"] == len(all_files)
    assert files["in_sessions"] + len(report["files_skipped"]) == len(all_files)
    skipped = {item["path"]: item["reason"] for item in report["files_skipped"]}
    assert "no conversation" in skipped[str(projects["records"])]
    rival_paths = [p for p in skipped if p.endswith(f"{projects['claimed']}.jsonl")]
    assert len(rival_paths) == 1 and "different content" in skipped[rival_paths[0]]
    assert report["main_transcript_missing"] == [projects["orphaned"]]

    # The session whose main transcript is gone says so, and lists its runs.
    orphan = projects["orphaned"]
    shown = run_cli(token, home, "show", orphan, "--server", server.url)
    assert shown.returncode == 0, shown.stderr
    assert "Main transcript:" in shown.stdout and "missing" in shown.stdout
    detail = json.loads(
        run_cli(token, home, "show", orphan, "--json", "--server", server.url).stdout
    )
    runs = [f for f in detail["files"] if f["role"] == "subagent"]
    assert len(detail["parse_result"]["subagents"]) >= len(runs) > 0

    # What a person typed is the first prompt: never a Warmup, a Task prompt or markup.
    typed = [re.compile(re.escape(p).replace(re.escape("{file}"), ".+")) for p in _PROMPTS]
    for sid, session in stored.items():
        first = (session["result"] or {}).get("first_prompt")
        if first is not None and sid != orphan:
            assert any(p.fullmatch(first) for p in typed), (sid, first)


def ccusage_binary() -> str | None:
    return os.environ.get("SESSIONFLOW_TEST_CCUSAGE") or shutil.which("ccusage")


@pytest.mark.skipif(ccusage_binary() is None, reason="ccusage is not installed (CI installs it)")
def test_token_totals_and_costs_equal_ccusage(
    procs: Processes,
    projects: dict[str, Any],
    make_token: Callable[[str], str],
    db_dsn: str,
    tmp_path: Path,
) -> None:
    root: Path = projects["root"]
    server = procs.serve()
    result = run_cli(
        make_token("alice"), root.parent.parent, "backfill", "--json", "--server", server.url
    )
    assert json.loads(result.stdout)["complete"] is True, result.stderr

    config = tmp_path / "ccusage-config"
    shutil.copytree(root, config / "projects")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CLAUDE")},
        "CLAUDE_CONFIG_DIR": str(config),
        "HOME": str(tmp_path / "ccusage-home"),
        "TZ": "UTC",
    }
    binary = ccusage_binary()
    assert binary is not None
    answer = subprocess.run(
        [binary, "claude", "session", "--json", "--offline"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )
    rows = {(r["projectPath"], r["sessionId"]): r for r in json.loads(answer.stdout)["sessions"]}

    compared = 0
    for session in discover([root], max_bytes=1 << 30).sessions:
        if session.session_id == projects["claimed"]:
            continue  # two files claim it; ccusage counts both, we keep the newer
        # ccusage keys a row by file: a session's own file and its 2.1.x subagents folder
        # under the session's id, each 2.0.x agent file under agent-<id>.
        keys = {(session.project, session.session_id)}
        keys |= {
            (session.project, f.path.stem)
            for f in session.files
            if f.role == "subagent" and "/subagents/" not in f.name
        }
        theirs = [rows[k] for k in keys if k in rows]
        if not theirs:
            continue
        ours = stored_sessions(db_dsn)[session.session_id]["result"]
        assert ours["tokens"] == {
            "input": sum(r["inputTokens"] for r in theirs),
            "output": sum(r["outputTokens"] for r in theirs),
            "cache_read": sum(r["cacheReadTokens"] for r in theirs),
            "cache_creation": sum(r["cacheCreationTokens"] for r in theirs),
        }, session.session_id
        their_cost = sum(r["totalCost"] for r in theirs)
        assert ours["cost_usd"] == pytest.approx(their_cost, rel=0.01), session.session_id
        compared += 1
    assert compared >= 30
