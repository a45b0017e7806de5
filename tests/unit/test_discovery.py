"""Discovery: *.jsonl files gathered into sessions as Claude Code lays them out (1.x, 2.0.x,
2.1.x), every file accounted for, none silently replacing another."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from sessionflow.client.discovery import discover
from sessionflow.protocol import session_digest
from sessionflow.samples import write_sample_transcripts

PARENT = "6f1c2d3e-0a1b-4c2d-8e3f-405162738495"
OTHER = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f2a3b4c5d"


def line(session_id: str | None, text: str, **extra: object) -> bytes:
    event: dict[str, object] = {
        "type": "user",
        "message": {"role": "user", "content": text},
        **extra,
    }
    if session_id is not None:
        event["sessionId"] = session_id
    return json.dumps(event).encode() + b"\n"


def write(path: Path, *lines: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return path


def agent(session_id: str | None, agent_id: str, text: str = "Warmup") -> bytes:
    return line(session_id, text, agentId=agent_id, isSidechain=True)


@pytest.fixture
def projects(tmp_path: Path) -> Path:
    """A projects folder with the three layouts mixed: a 1.x session, a 2.0.x session with an
    agent file beside it, a 2.1.x session with a subagents folder."""
    root = tmp_path / "projects"
    write(
        root / "-src-old" / f"{OTHER}.jsonl",
        line(OTHER, "hi"),
        line(OTHER, "task", isSidechain=True),
    )
    write(root / "-src-app" / f"{PARENT}.jsonl", line(PARENT, "build it"))
    write(root / "-src-app" / "agent-1a2b3c4d.jsonl", agent(PARENT, "1a2b3c4d"))
    third = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
    write(root / "-src-new" / f"{third}.jsonl", line(third, "ship it"))
    write(
        root / "-src-new" / third / "subagents" / "agent-a1b2c3d.jsonl",
        agent(third, "a1b2c3d", "Find the callers"),
    )
    return root


def test_subagent_files_join_the_session_their_lines_name(projects: Path) -> None:
    found = discover([projects], max_bytes=1 << 20)
    by_id = {s.session_id: s for s in found.sessions}
    assert len(by_id) == 3 and not found.skipped
    assert found.files_found == found.files_in_sessions == 5
    parent = by_id[PARENT]
    assert [(f.name, f.role, f.agent_id) for f in parent.files] == [
        (f"{PARENT}.jsonl", "main", None),
        ("agent-1a2b3c4d.jsonl", "subagent", "1a2b3c4d"),
    ]
    third = next(s for sid, s in by_id.items() if sid not in (PARENT, OTHER))
    assert third.files[1].name == f"{third.session_id}/subagents/agent-a1b2c3d.jsonl"
    assert third.project == "-src-new"  # the folder above <session>/subagents/
    # 1.x: the sidechain lines are inside the one file.
    assert [f.role for f in by_id[OTHER].files] == ["main"]


def test_no_walk_order_makes_a_subagent_file_a_session(projects: Path) -> None:
    files = sorted(projects.rglob("*.jsonl"))
    for seed in range(5):
        order = files[:]
        random.Random(seed).shuffle(order)
        found = discover(order, max_bytes=1 << 20)
        assert sorted(s.session_id for s in found.sessions) == sorted(
            s.session_id for s in discover([projects], max_bytes=1 << 20).sessions
        )
        assert all(s.main is not None for s in found.sessions)


def test_a_run_without_its_main_file_is_still_its_session(tmp_path: Path) -> None:
    write(tmp_path / "p" / "agent-aa11bb22.jsonl", agent(PARENT, "aa11bb22"))
    write(tmp_path / "p" / "agent-cc33dd44.jsonl", agent(PARENT, "cc33dd44"))
    (session,) = discover([tmp_path], max_bytes=1 << 20).sessions
    assert session.session_id == PARENT
    assert session.main is None and len(session.files) == 2
    registration = session.registration()
    assert registration.metadata is not None
    assert registration.metadata["main_transcript_missing"] is True
    assert registration.files is not None and len(registration.files) == 2


def test_a_2_1_run_whose_lines_name_no_session_takes_its_folders(tmp_path: Path) -> None:
    write(tmp_path / "p" / PARENT / "subagents" / "agent-a9.jsonl", agent(None, "a9"))
    (session,) = discover([tmp_path], max_bytes=1 << 20).sessions
    assert session.session_id == PARENT


def test_two_different_main_files_of_one_session_are_both_named(tmp_path: Path) -> None:
    a = write(tmp_path / "one" / f"{PARENT}.jsonl", line(PARENT, "first version"))
    b = write(tmp_path / "two" / f"{PARENT}.jsonl", line(PARENT, "another one entirely"))
    os.utime(a, (1_000, 1_000))
    os.utime(b, (2_000, 2_000))
    found = discover([tmp_path], max_bytes=1 << 20)
    (session,) = found.sessions
    assert session.main is not None and session.main.path == b  # the newer
    ((path, why),) = found.skipped
    assert path == a
    assert str(b) in why and PARENT in why and "different content" in why


def test_copies_and_older_copies_are_skipped_with_the_reason(tmp_path: Path) -> None:
    full = (line(PARENT, "one"), line(PARENT, "two"))
    kept = write(tmp_path / "a" / f"{PARENT}.jsonl", *full)
    copy = write(tmp_path / "b" / f"{PARENT}.jsonl", *full)
    older = write(tmp_path / "c" / f"{PARENT}.jsonl", full[0])
    found = discover([tmp_path], max_bytes=1 << 20)
    assert found.sessions[0].main is not None
    reasons = dict(found.skipped)
    assert set(reasons) == {copy, older} or set(reasons) == {kept, older}
    assert "same bytes" in next(why for p, why in found.skipped if p != older)
    assert "older copy" in reasons[older]


def test_files_past_the_limit_of_a_session_are_named(tmp_path: Path) -> None:
    write(tmp_path / f"{PARENT}.jsonl", line(PARENT, "hi"))
    for n in range(4):
        write(tmp_path / f"agent-{n:08x}.jsonl", agent(PARENT, f"{n:08x}"))
    found = discover([tmp_path], max_bytes=1 << 20, max_files_per_session=3)
    assert len(found.sessions[0].files) == 3
    assert len(found.skipped) == 2
    assert all("more than 3 files" in why for _, why in found.skipped)


def test_a_file_of_only_claude_code_records_says_it_holds_no_conversation(
    tmp_path: Path,
) -> None:
    snapshot = json.dumps({"type": "file-history-snapshot", "messageId": "m"}).encode() + b"\n"
    write(tmp_path / f"{PARENT}.jsonl", snapshot, snapshot)
    found = discover([tmp_path], max_bytes=1 << 20)
    ((_, why),) = found.skipped
    assert "no conversation" in why and "file-history-snapshot" in why


def test_a_file_over_the_limit_is_skipped_not_fatal(tmp_path: Path) -> None:
    write(tmp_path / f"{PARENT}.jsonl", line(PARENT, "x" * 5000))
    write(tmp_path / f"{OTHER}.jsonl", line(OTHER, "small"))
    found = discover([tmp_path], max_bytes=1000)
    assert [s.session_id for s in found.sessions] == [OTHER]
    assert "over the 1,000-byte limit" in found.skipped[0][1]


def test_registration_of_one_file_is_its_hash_and_of_several_their_digest(
    projects: Path,
) -> None:
    found = discover([projects], max_bytes=1 << 20)
    for session in found.sessions:
        registration = session.registration()
        if len(session.files) == 1:
            main = session.files[0]
            assert registration.files is None
            assert registration.sha256 == hashlib.sha256(main.path.read_bytes()).hexdigest()
        else:
            assert registration.files is not None
            assert registration.sha256 == session_digest(registration.files)
            assert registration.size == sum(f.path.stat().st_size for f in session.files)


def test_samples_write_every_layout_and_discovery_keeps_each_session_once(
    tmp_path: Path,
) -> None:
    mains = write_sample_transcripts(tmp_path, 60, seed=11)
    found = discover([tmp_path], max_bytes=1 << 30)
    # Sixty samples hold one file that is not a transcript: 59 sessions, every one of them
    # named by its main file, and that file skipped.
    ((foreign, _),) = found.skipped
    assert sorted(s.session_id for s in found.sessions) == sorted(
        p.stem for p in mains if p != foreign
    )
    names = [f.name for s in found.sessions for f in s.files if f.role == "subagent"]
    assert any("/subagents/agent-" in n for n in names)  # 2.1.x
    assert any(n.startswith("agent-") for n in names)  # 2.0.x
    assert found.files_in_sessions + 1 == found.files_found
