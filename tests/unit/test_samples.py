"""The sample transcripts: layout, determinism, the mix of kinds, and that the parser reads
each of them the way its kind says."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sessionflow.samples import (
    PROJECTS,
    corrupt,
    generate_not_transcript_bytes,
    generate_transcript_bytes,
    iter_transcript_lines,
    log_uniform_sizes,
    plan_sample_kinds,
    write_sample_transcripts,
)
from sessionflow.transcript import inspect_transcript_head
from sessionflow.worker.parse import TranscriptError, parse_file, parse_transcript
from sessionflow.worker.summarize import should_summarize

SMALL = log_uniform_sizes(5_000, 30_000)


@pytest.fixture(scope="module")
def sixty(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_sample_transcripts(tmp_path_factory.mktemp("samples"), 60, seed=3, sizes=SMALL)


def test_writes_count_files_in_claude_code_project_folders(tmp_path: Path) -> None:
    paths = write_sample_transcripts(tmp_path, 12, seed=1, sizes=SMALL)
    assert len(paths) == len(set(paths)) == 12
    folders = {project.dir_name for project in PROJECTS}
    for path in paths:
        assert path.suffix == ".jsonl"
        assert path.parent.parent == tmp_path
        assert path.parent.name in folders
        assert path.parent.name.startswith("-home-user-")


def test_project_folder_is_named_as_claude_code_names_it() -> None:
    assert PROJECTS[0].cwd == "/home/user/src/myapp"
    assert PROJECTS[0].dir_name == "-home-user-src-myapp"


def test_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    first = write_sample_transcripts(tmp_path / "a", 25, seed=9, sizes=SMALL)
    second = write_sample_transcripts(tmp_path / "b", 25, seed=9, sizes=SMALL)
    assert [p.relative_to(tmp_path / "a") for p in first] == [
        p.relative_to(tmp_path / "b") for p in second
    ]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second, strict=True))


def test_another_seed_writes_other_sessions(tmp_path: Path) -> None:
    first = write_sample_transcripts(tmp_path / "a", 5, seed=1, sizes=SMALL)
    second = write_sample_transcripts(tmp_path / "b", 5, seed=2, sizes=SMALL)
    assert {p.name for p in first}.isdisjoint(p.name for p in second)


@pytest.mark.parametrize(
    ("count", "short", "corrupt_", "foreign"),
    [(10, 0, 0, 0), (19, 1, 0, 0), (20, 1, 1, 0), (50, 2, 1, 1), (100, 5, 2, 1), (2000, 100, 2, 1)],
)
def test_plan_mixes_kinds_by_count(count: int, short: int, corrupt_: int, foreign: int) -> None:
    kinds = plan_sample_kinds(count, seed=5)
    assert len(kinds) == count
    assert kinds.count("short") == short
    assert kinds.count("corrupt") == corrupt_
    assert kinds.count("not_transcript") == foreign
    assert kinds == plan_sample_kinds(count, seed=5)


def test_each_sample_parses_as_its_kind_says(sixty: list[Path]) -> None:
    kinds = plan_sample_kinds(60, seed=3)
    outcomes = []
    for path in sixty:
        try:
            result = parse_file(path)
        except TranscriptError:
            outcomes.append("not_transcript")
            continue
        assert result.session_id == path.stem
        if result.parse_status == "partial":
            assert 2 <= result.lines_skipped <= 4
            outcomes.append("corrupt")
        elif not should_summarize(result):
            assert result.user_prompts == 1
            outcomes.append("short")
        else:
            assert result.tool_calls > 0
            assert result.tokens.output > 0
            assert result.first_prompt
            outcomes.append("normal")
    assert outcomes == kinds
    assert outcomes.count("not_transcript") == 1


def test_head_tells_samples_from_the_foreign_file(sixty: list[Path]) -> None:
    kinds = plan_sample_kinds(60, seed=3)
    for path, kind in zip(sixty, kinds, strict=True):
        with path.open("rb") as lines:
            head = inspect_transcript_head(lines)
        assert head.is_transcript == (kind != "not_transcript")
        assert head.session_id == (None if kind == "not_transcript" else path.stem)


def test_generated_lines_are_compact_json_events_in_time_order() -> None:
    lines = list(iter_transcript_lines(random.Random(4), 40_000))
    events = [json.loads(line) for line in lines]
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    stamps = [e["timestamp"] for e in events if "timestamp" in e]
    assert stamps == sorted(stamps)
    assert {"user", "assistant"} <= {e["type"] for e in events}
    ids = {e["sessionId"] for e in events if "sessionId" in e}
    assert len(ids) == 1


def test_generated_transcript_is_near_its_target_size() -> None:
    rng = random.Random(11)
    for target in (50_000, 500_000, 2_000_000):
        size = len(generate_transcript_bytes(rng, target))
        assert target <= size <= target * 1.6, (target, size)


def test_single_prompt_transcript_is_too_short_to_summarize() -> None:
    data = generate_transcript_bytes(random.Random(2), 100_000, single_prompt=True)
    result = parse_transcript(data.splitlines(keepends=True))
    assert result.user_prompts == 1
    assert not should_summarize(result)


def test_corrupt_lines_make_the_parse_partial() -> None:
    rng = random.Random(6)
    lines = corrupt(rng, list(iter_transcript_lines(rng, 20_000)), bad_lines=3)
    result = parse_transcript(lines)
    assert result.parse_status == "partial"
    assert result.lines_skipped == 3


def test_not_transcript_bytes_are_refused() -> None:
    data = generate_not_transcript_bytes(random.Random(1), 5_000)
    assert len(data) >= 5_000
    with pytest.raises(TranscriptError):
        parse_transcript(data.splitlines(keepends=True))


def test_size_distribution_stays_in_its_range() -> None:
    draw = log_uniform_sizes(50_000, 2_000_000)
    rng = random.Random(0)
    sizes = [draw(rng) for _ in range(1_000)]
    assert min(sizes) >= 50_000
    assert max(sizes) <= 2_000_000
    with pytest.raises(ValueError, match="low <= high"):
        log_uniform_sizes(10, 5)
