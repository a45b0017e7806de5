"""parse_transcript on hand-written Claude Code transcripts: what it counts, what it skips, when
it refuses a file, and that it streams."""

from __future__ import annotations

import io
import json
import random
import tracemalloc
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sessionflow.samples import iter_transcript_lines
from sessionflow.transcript import inspect_file, inspect_transcript_head, read_lines
from sessionflow.worker.parse import (
    MAX_FILES_KEPT,
    MAX_PROMPT_CHARS,
    ParseResult,
    TranscriptError,
    parse_file,
    parse_transcript,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "transcripts"
SESSION = "0c2f4b8e-6a1d-4c3b-9e57-2d8f1a6b7c90"
CWD = "/home/user/src/myapp"


def jsonl(*events: object) -> list[bytes]:
    return [json.dumps(event).encode() + b"\n" for event in events]


def user(content: object, **extra: object) -> dict[str, object]:
    return {
        "type": "user",
        "sessionId": "s-1",
        "timestamp": "2025-08-20T10:00:00.000Z",
        "message": {"role": "user", "content": content},
        **extra,
    }


def assistant(message_id: str | None, blocks: Sequence[object], **usage: int) -> dict[str, object]:
    message: dict[str, object] = {
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": list(blocks),
        "usage": usage,
    }
    if message_id is not None:
        message["id"] = message_id
    return {"type": "assistant", "timestamp": "2025-08-20T10:00:05.000Z", "message": message}


def edit(name: str, **tool_input: str) -> dict[str, object]:
    return {"type": "tool_use", "id": f"toolu_{name}", "name": name, "input": tool_input}


@pytest.fixture(scope="module")
def basic() -> ParseResult:
    return parse_file(FIXTURES / "basic.jsonl")


# --- the hand-written session ------------------------------------------------------------


def test_basic_counts_prompts_but_not_meta_local_commands_interruptions_or_sidechains(
    basic: ParseResult,
) -> None:
    # Typed: the first prompt, the text-block prompt, "Thanks, commit it.". Not typed: the
    # isMeta caveat, /clear (it ran locally), its stdout, tool results, the interruption
    # marker and the subagent's prompt.
    assert basic.user_prompts == 3


def test_basic_counts_each_assistant_message_once_across_its_repeated_lines(
    basic: ParseResult,
) -> None:
    # msg A spans three lines and msg B two; with C, the one without an id, D, the
    # <synthetic> one and the sidechain's E, that is seven messages.
    assert basic.assistant_messages == 7


def test_basic_counts_tool_calls_by_name(basic: ParseResult) -> None:
    assert basic.tool_calls == 7
    assert basic.tool_calls_by_name == {
        "Bash": 1,
        "Edit": 1,
        "Grep": 1,
        "MultiEdit": 1,
        "NotebookEdit": 1,
        "Read": 1,
        "Write": 1,
    }


def test_basic_counts_usage_once_per_message_id_keeping_the_largest_figure(
    basic: ParseResult,
) -> None:
    # msg B's second line reports output_tokens 120 where its first said 100: the message
    # cost 120, not 220 and not 100.
    assert basic.tokens.model_dump() == {
        "input": 10 + 5 + 3 + 1 + 2 + 0 + 1,
        "output": 50 + 120 + 30 + 10 + 40 + 0 + 5,
        "cache_read": 1000 + 2000 + 3000 + 4000,
        "cache_creation": 200 + 300 + 100,
    }
    assert basic.tokens.total == 22 + 255 + 10000 + 600


def test_basic_lists_models_sorted_without_synthetic(basic: ParseResult) -> None:
    assert basic.models == ["claude-opus-4-1-20250805", "claude-sonnet-4-20250514"]


def test_basic_lists_files_changed_by_edit_write_multiedit_and_notebookedit_once(
    basic: ParseResult,
) -> None:
    assert basic.files_touched == [
        f"{CWD}/src/myapp/http.py",
        f"{CWD}/tests/test_http.py",
        f"{CWD}/notebooks/demo.ipynb",
    ]
    assert basic.files_touched_total == 3


def test_basic_takes_envelope_timestamps_and_duration(basic: ParseResult) -> None:
    assert basic.session_id == SESSION
    assert basic.cwd == CWD
    assert basic.git_branch == "feature/retry"
    assert basic.first_timestamp == datetime(2025, 8, 20, 10, 0, tzinfo=UTC)
    assert basic.last_timestamp == datetime(2025, 8, 20, 10, 15, tzinfo=UTC)
    assert basic.duration_seconds == 900.0


def test_basic_keeps_first_prompt_and_summary_line(basic: ParseResult) -> None:
    assert basic.first_prompt == (
        "Add retries with   exponential backoff to the HTTP client.\nKeep the public API unchanged."
    )
    assert basic.summary == "Retry HTTP requests with exponential backoff"


def test_basic_accounts_for_every_line(basic: ParseResult) -> None:
    assert basic.parse_status == "ok"
    assert (basic.lines_total, basic.lines_skipped, basic.lines_ignored, basic.events) == (
        25,
        0,
        1,  # the file-history-snapshot
        24,
    )
    assert basic.skipped_line_numbers == []


def test_result_round_trips_through_json(basic: ParseResult) -> None:
    stored = json.loads(json.dumps(basic.model_dump(mode="json")))
    assert stored["first_timestamp"] == "2025-08-20T10:00:00Z"
    assert ParseResult.model_validate(stored) == basic


def test_a_result_stored_before_subagents_and_costs_still_reads_back() -> None:
    stored = {
        "parse_status": "ok",
        "session_id": SESSION,
        "user_prompts": 2,
        "tokens": {"input": 1, "output": 2, "cache_read": 3, "cache_creation": 4},
        "models": ["claude-sonnet-4-20250514"],
        "first_prompt": "hello",
    }
    old = ParseResult.model_validate(stored)
    assert (old.subagents, old.subagents_total, old.cost_usd) == ([], 0, None)
    assert (old.main_transcript, old.files, old.tokens_by_model) == (True, 1, {})


def test_basic_prices_the_session_and_lists_its_sidechain_run(basic: ParseResult) -> None:
    assert basic.cost_usd is not None and basic.cost_usd > 0
    (run,) = basic.subagents
    assert (run.agent_id, run.first_prompt) == (
        "sidechain-1",
        "Find every caller of get() in the codebase.",
    )
    assert run.tool_calls == 1
    assert basic.interruptions == 1


# --- damaged and foreign files -------------------------------------------------------------


def test_malformed_lines_are_skipped_counted_and_make_the_result_partial() -> None:
    result = parse_file(FIXTURES / "malformed.jsonl")
    assert result.parse_status == "partial"
    # A line cut short, a JSON array, a merge-conflict marker; the blank line is no fault.
    assert result.lines_skipped == 3
    assert result.skipped_line_numbers == [3, 5, 6]
    assert result.lines_total == 7
    assert result.events == 3
    assert result.user_prompts == 2
    assert result.files_touched == ["/home/user/src/api-server/src/routes/orders.ts"]


def test_empty_file_is_refused_with_a_sentence_saying_so() -> None:
    with pytest.raises(TranscriptError, match=r"^The file is empty"):
        parse_file(FIXTURES / "empty.jsonl")


def test_blank_lines_only_count_as_empty() -> None:
    with pytest.raises(TranscriptError, match=r"^The file is empty"):
        parse_transcript([b"\n", b"   \r\n", b""])


def test_jsonl_of_objects_without_type_is_not_a_transcript() -> None:
    with pytest.raises(TranscriptError) as caught:
        parse_file(FIXTURES / "not_transcript.jsonl")
    message = str(caught.value)
    assert message.startswith("The file is not a Claude Code transcript: none of its 3 lines")
    assert "'type'" in message


def test_json_array_file_is_not_a_transcript() -> None:
    text = json.dumps([user("hello"), user("again")], indent=2)
    with pytest.raises(TranscriptError, match="not a Claude Code transcript"):
        parse_transcript(io.BytesIO(text.encode()))


def test_binary_garbage_is_not_a_transcript() -> None:
    with pytest.raises(TranscriptError, match="none of its 2 lines"):
        parse_transcript([b"\x89PNG\r\n", b"\x00\xff\xfe\x01"])


def test_objects_of_unknown_type_only_are_not_a_transcript() -> None:
    with pytest.raises(TranscriptError):
        parse_transcript(jsonl({"type": "click", "x": 1}, {"type": "file-history-snapshot"}))


def test_line_longer_than_the_cap_is_skipped_and_counted() -> None:
    long_prompt = user("x" * 5_000)
    lines = jsonl(user("short one"), long_prompt, user("another"))
    result = parse_transcript(lines, max_line_bytes=1_000)
    assert result.lines_skipped == 1
    assert result.skipped_line_numbers == [2]
    assert result.user_prompts == 2
    assert result.parse_status == "partial"


def test_read_lines_never_yields_more_than_the_cap_of_a_long_line() -> None:
    data = b"".join(jsonl(user("a"))) + b"y" * 100_000 + b"\n" + b"".join(jsonl(user("b")))
    lines = list(read_lines(io.BytesIO(data), max_line_bytes=1_000))
    assert len(lines) == 3
    assert max(len(line) for line in lines) <= 1_002
    result = parse_transcript(lines, max_line_bytes=1_000)
    assert (result.lines_skipped, result.user_prompts) == (1, 2)


def test_read_lines_keeps_a_line_of_exactly_the_cap_with_crlf() -> None:
    line = json.dumps(user("z" * 50)).encode()
    lines = list(read_lines(io.BytesIO(line + b"\r\n" + line), max_line_bytes=len(line)))
    assert lines == [line + b"\r\n", line]
    assert parse_transcript(lines, max_line_bytes=len(line)).lines_skipped == 0


def _lines_by_readline(data: bytes, max_line_bytes: int) -> list[bytes]:
    """What read_lines yields, told the slow way: each line asked of the stream in turn."""
    stream, limit, lines = io.BytesIO(data), max_line_bytes + 2, []
    while line := stream.readline(limit):
        if len(line) == limit and not line.endswith(b"\n"):
            while (rest := stream.readline(limit)) and not rest.endswith(b"\n"):
                pass
        lines.append(line)
    return lines


@pytest.mark.parametrize("block_size", [1, 2, 3, 7, 64, 1001, 1002, 1003, 4096])
def test_read_lines_cuts_blocks_into_the_lines_readline_would_give(block_size: int) -> None:
    shapes = [
        b"",
        b"a",
        b"a\n",
        b"\n\n",
        b"x" * 10 + b"\n" + b"y" * 3,
        b"y" * 5000 + b"\nz\n",
        b"q" * 1001,
        b"q" * 1002,
        b"q" * 1003,
        b"q" * 1001 + b"\n",
        b"q" * 1000 + b"\r\n" + b"w",
        b"".join(jsonl(user("a"))) + b"y" * 100_000 + b"\n" + b"".join(jsonl(user("b"))),
    ]
    for data in shapes:
        for max_line_bytes in (1, 3, 1000):
            seen: list[bytes] = []
            lines = list(
                read_lines(
                    io.BytesIO(data), max_line_bytes, on_block=seen.append, block_size=block_size
                )
            )
            assert lines == _lines_by_readline(data, max_line_bytes), (data[:20], max_line_bytes)
            assert b"".join(seen) == data  # every byte passes on_block once


def test_only_too_long_lines_say_so_in_the_error() -> None:
    with pytest.raises(TranscriptError, match=r"1 longer than the 1 KiB line limit"):
        parse_transcript(jsonl(user("x" * 2_000)), max_line_bytes=1024)


# --- details of the format -----------------------------------------------------------------


def test_tool_result_only_user_events_are_not_prompts() -> None:
    result = parse_transcript(
        jsonl(
            user("do it"),
            user([{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]),
            user([{"type": "image", "source": {}}]),
        )
    )
    assert result.user_prompts == 1


def test_slash_command_followed_by_a_prompt_counts_both_and_titles_the_command() -> None:
    command = "<command-message>review</command-message>\n<command-name>/review</command-name>\n"
    command += "<command-args>src/app.py</command-args>"
    result = parse_transcript(
        jsonl(user(command), user("expanded command prompt", isMeta=True), assistant("m", []))
    )
    assert result.user_prompts == 1
    assert result.first_prompt == "/review src/app.py"

    typed = parse_transcript(jsonl(user(command), assistant("m", []), user("a real question")))
    assert typed.user_prompts == 2
    assert typed.first_prompt == "/review src/app.py"  # typed first, so the first prompt


def test_compact_summary_is_not_a_prompt() -> None:
    recap = user("This session is being continued from a previous conversation.")
    result = parse_transcript(jsonl({**recap, "isCompactSummary": True}, user("go on")))
    assert (result.user_prompts, result.first_prompt) == (1, "go on")


def test_api_errors_are_counted_with_or_without_their_flag_and_retries_apart() -> None:
    def synthetic(message_id: str, text: str, **extra: object) -> dict[str, object]:
        message = {
            "id": message_id,
            "model": "<synthetic>",
            "content": [{"type": "text", "text": text}],
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return {"type": "assistant", "message": message, **extra}

    retry = {"type": "system", "subtype": "api_error", "retryAttempt": 1, "maxRetries": 10}
    result = parse_transcript(
        jsonl(
            user("go"),
            retry,
            synthetic("e1", "API Error: 529 overloaded", isApiErrorMessage=True),
            synthetic("e2", "API Error: 500 Internal server error"),  # older: no flag
            synthetic("e3", "Limit reached · resets 7pm", isApiErrorMessage=True),
            synthetic("e4", "No response requested."),  # made up, but not an error
        )
    )
    assert (result.api_errors, result.api_retries) == (3, 1)
    assert result.models == []


def test_tool_errors_count_results_marked_is_error() -> None:
    def tool_result(error: object) -> dict[str, object]:
        return {"type": "tool_result", "tool_use_id": "t", "content": "x", "is_error": error}

    result = parse_transcript(
        jsonl(user([tool_result(True), tool_result(False)]), user([tool_result("true")]))
    )
    assert result.tool_errors == 1


def test_first_prompt_is_cut_to_a_bounded_length() -> None:
    result = parse_transcript(jsonl(user("word " * 1_000)))
    assert result.first_prompt is not None
    assert len(result.first_prompt) == MAX_PROMPT_CHARS


def test_files_touched_are_capped_but_counted_in_full() -> None:
    blocks = [edit("Write", file_path=f"/p/f{i}.py") for i in range(MAX_FILES_KEPT + 50)]
    blocks.append(edit("Edit", file_path="/p/f0.py"))  # already seen
    result = parse_transcript(jsonl(user("write many"), assistant(None, blocks)))
    assert len(result.files_touched) == MAX_FILES_KEPT
    assert result.files_touched[:2] == ["/p/f0.py", "/p/f1.py"]
    assert result.files_touched_total == MAX_FILES_KEPT + 50


def test_wrongly_typed_fields_are_ignored_not_fatal() -> None:
    weird = [
        {"type": "assistant", "message": "not a dict"},
        {"type": "assistant", "message": {"content": "text", "usage": {"input_tokens": "9"}}},
        {"type": "assistant", "message": {"usage": {"output_tokens": True}, "content": [1, None]}},
        {"type": "user", "timestamp": "yesterday", "message": {"content": 42}},
        {"type": "user", "timestamp": 7, "cwd": ["x"], "message": {"content": [{"type": "text"}]}},
        {"type": "summary", "summary": None},
    ]
    result = parse_transcript(jsonl(*weird))
    assert result.events == 6
    assert result.tokens.total == 0
    assert result.user_prompts == 0
    assert result.first_timestamp is None
    assert result.duration_seconds is None
    assert result.cwd is None


def test_naive_and_aware_timestamps_mix_without_error() -> None:
    result = parse_transcript(
        jsonl(
            {**user("a"), "timestamp": "2025-08-20T10:00:00"},
            {**user("b"), "timestamp": "2025-08-20T10:30:00+00:00"},
        )
    )
    assert result.duration_seconds == 1800.0


# --- the head ------------------------------------------------------------------------------


def test_head_of_a_transcript_gives_its_session_id() -> None:
    head = inspect_file(FIXTURES / "basic.jsonl")
    assert head.is_transcript
    assert head.session_id == SESSION
    assert head.reason is None


def test_head_of_a_summary_only_start_is_a_transcript_without_id() -> None:
    lines = jsonl(*[{"type": "summary", "summary": f"s{i}", "leafUuid": "u"} for i in range(60)])
    head = inspect_transcript_head(lines, max_lines=50)
    assert head.is_transcript
    assert head.session_id is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [("empty.jsonl", "The file is empty."), ("not_transcript.jsonl", "none of its first 3")],
)
def test_head_of_a_non_transcript_says_why(name: str, reason: str) -> None:
    head = inspect_file(FIXTURES / name)
    assert not head.is_transcript
    assert head.session_id is None
    assert head.reason is not None
    assert reason in head.reason


def test_head_reads_no_further_than_it_needs() -> None:
    consumed = 0

    def lines() -> Iterator[bytes]:
        nonlocal consumed
        for line in jsonl(*[user(f"p{i}") for i in range(1_000)]):
            consumed += 1
            yield line

    assert inspect_transcript_head(lines()).session_id == "s-1"
    assert consumed == 1


def test_head_raises_nothing_on_garbage() -> None:
    head = inspect_transcript_head([b"\xff" * 10, b"[" * 100_000, b"{}", b"null"])
    assert not head.is_transcript


# --- streaming -----------------------------------------------------------------------------


@pytest.mark.slow
def test_parsing_a_50_mb_stream_keeps_memory_far_below_its_size() -> None:
    size = 50 * 1024 * 1024
    rng = random.Random(7)
    next(iter_transcript_lines(random.Random(0), 1_000))  # build the shared corpus first
    produced = 0

    def lines() -> Iterator[bytes]:
        nonlocal produced
        for line in iter_transcript_lines(rng, size):
            produced += len(line)
            yield line

    tracemalloc.start()
    try:
        result = parse_transcript(lines())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert produced >= size
    assert result.parse_status == "ok"
    assert result.user_prompts >= 2
    assert peak < 10 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
