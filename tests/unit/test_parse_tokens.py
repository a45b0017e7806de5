"""Token totals counted the way ccusage counts them: one response once across all of a
session's files, whichever lines ccusage refuses refused here too."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sessionflow.worker.parse import ParseResult, SessionParser, parse_transcript

SESSION = "7c1d2e3f-0000-4000-8000-00000000a001"
SONNET = "claude-sonnet-4-5-20250929"


def jsonl(*events: dict[str, Any]) -> list[bytes]:
    # Compact, as Claude Code writes: ccusage's null rule reads the raw bytes.
    return [json.dumps(event, separators=(",", ":")).encode() + b"\n" for event in events]


def usage(
    input: int = 0,
    output: int = 0,
    write: int = 0,
    read: int = 0,
    split: tuple[int, int] | None = None,
) -> dict[str, Any]:
    counts: dict[str, Any] = {
        "input_tokens": input,
        "output_tokens": output,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
    }
    if split is not None:
        counts["cache_creation"] = {
            "ephemeral_5m_input_tokens": split[0],
            "ephemeral_1h_input_tokens": split[1],
        }
    return counts


def assistant(
    message_id: str | None,
    request_id: str | None,
    counts: dict[str, Any],
    *,
    model: str = SONNET,
    sidechain: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": None,
        "usage": counts,
    }
    if message_id is not None:
        message["id"] = message_id
    event: dict[str, Any] = {
        "type": "assistant",
        "isSidechain": sidechain,
        "sessionId": SESSION,
        "version": "2.1.39",
        "timestamp": "2025-11-03T10:00:05.000Z",
        "message": message,
    }
    if request_id is not None:
        event["requestId"] = request_id
    return {**event, **extra}


def prompt(text: str = "go", **extra: Any) -> dict[str, Any]:
    return {
        "type": "user",
        "sessionId": SESSION,
        "timestamp": "2025-11-03T10:00:00.000Z",
        "message": {"role": "user", "content": text},
        **extra,
    }


def session(main: Sequence[bytes] | None, *runs: tuple[str, Sequence[bytes]]) -> ParseResult:
    parser = SessionParser()
    if main is not None:
        parser.feed(main, name=f"{SESSION}.jsonl", role="main")
    for agent_id, lines in runs:
        parser.feed(lines, name=f"agent-{agent_id}.jsonl", role="subagent", agent_id=agent_id)
    return parser.result()


def totals(result: ParseResult) -> tuple[int, int, int, int]:
    t = result.tokens
    return t.input, t.output, t.cache_creation, t.cache_read


# --- one response, many lines ----------------------------------------------------------------


def test_split_lines_of_one_response_count_once_at_the_final_output() -> None:
    result = parse_transcript(
        jsonl(
            prompt(),
            assistant("msg_1", "req_1", usage(5, 10, 100, 1000)),
            assistant("msg_1", "req_1", usage(5, 40, 100, 1000)),
            assistant("msg_1", "req_1", usage(5, 75, 100, 1000)),
        )
    )
    assert totals(result) == (5, 75, 100, 1000)
    assert result.assistant_messages == 1


def test_a_later_smaller_copy_does_not_replace_the_larger_one() -> None:
    result = parse_transcript(
        jsonl(
            assistant("msg_1", "req_1", usage(5, 75, 0, 0)),
            assistant("msg_1", "req_1", usage(5, 10, 0, 0)),
        )
    )
    assert totals(result) == (5, 75, 0, 0)


def test_dedupe_is_global_not_a_window_of_recent_messages() -> None:
    others = [assistant(f"msg_{i}", f"req_{i}", usage(1, 1, 0, 0)) for i in range(3_000)]
    first = assistant("msg_far", "req_far", usage(100, 100, 0, 0))
    result = parse_transcript(jsonl(first, *others, first))
    assert result.tokens.input == 3_000 + 100


def test_same_message_id_under_another_request_id_counts_twice_in_the_main_session() -> None:
    result = parse_transcript(
        jsonl(
            assistant("msg_1", "req_1", usage(5, 5, 0, 0)),
            assistant("msg_1", "req_2", usage(7, 7, 0, 0)),
        )
    )
    assert totals(result) == (12, 12, 0, 0)


def test_lines_without_a_message_id_are_never_deduplicated() -> None:
    line = assistant(None, "req_1", usage(3, 4, 0, 0))
    result = parse_transcript(jsonl(line, line, line))
    assert totals(result) == (9, 12, 0, 0)
    assert result.assistant_messages == 3


# --- across files --------------------------------------------------------------------------------


def test_a_response_in_the_main_file_and_an_agent_file_counts_once_as_the_main_copy() -> None:
    main = jsonl(prompt(), assistant("msg_shared", "req_s", usage(10, 20, 0, 300)))
    # The agent's copy is bigger (its stream went on): the non-sidechain copy still wins.
    replay = assistant("msg_shared", "req_s", usage(10, 90, 0, 300), sidechain=True)
    own = assistant("msg_own", "req_o", usage(1, 2, 0, 0), sidechain=True)
    result = session(main, ("a1b2c3d", jsonl(prompt("Find it.", isSidechain=True), replay, own)))
    assert totals(result) == (11, 22, 0, 300)
    (run,) = result.subagents
    assert (run.tokens.input, run.tokens.output) == (1, 2)
    assert run.assistant_messages == 1


def test_a_sidechain_copy_seen_first_gives_way_to_the_main_copy() -> None:
    result = session(
        None,
        ("a1", jsonl(assistant("msg_x", "req_x", usage(10, 90, 0, 0), sidechain=True))),
        ("a2", jsonl(assistant("msg_x", "req_x", usage(10, 20, 0, 0), sidechain=False))),
    )
    assert totals(result) == (10, 20, 0, 0)


def test_a_sidechain_replay_under_a_new_request_id_is_the_same_response() -> None:
    # ccusage #913: a /btw side question replays the parent's messages with new requestIds.
    main = jsonl(assistant("msg_p", "req_parent", usage(1, 1, 0, 500)))
    side = jsonl(assistant("msg_p", "req_replay", usage(1, 1, 0, 50_000), sidechain=True))
    result = session(main, ("aside_question-0a1b2c", side))
    assert totals(result) == (1, 1, 0, 500)


# --- what a line counts as ---------------------------------------------------------------------


def test_cache_writes_are_the_5m_and_1h_split_when_the_line_has_one() -> None:
    result = parse_transcript(
        jsonl(
            # cache_creation_input_tokens disagrees with its split: the split wins, as in ccusage
            assistant("msg_1", "req_1", usage(1, 1, 999, 0, split=(100, 250))),
            assistant("msg_2", "req_2", usage(1, 1, 40, 0)),
        )
    )
    assert result.tokens.cache_creation == 100 + 250 + 40


def test_lines_ccusage_refuses_are_not_counted() -> None:
    refused = [
        # a null for a key ccusage cannot take (the <synthetic> API error lines have one)
        assistant("m1", "r1", {**usage(5, 5), "speed": None}),
        assistant("m2", "r2", usage(5, 5), version="beta"),
        assistant("m3", "r3", usage(5, 5), requestId=""),
        assistant("m4", "r4", usage(5, 5), timestamp="2025-11-03 10:00:05"),
        assistant("m5", "r5", {**usage(5, 5), "input_tokens": 5.0}),
        assistant("m6", "r6", {**usage(5, 5), "output_tokens": -1}),
        assistant("m7", "r7", {"input_tokens": 5}),  # no output_tokens
        assistant("m8", "r8", usage(5, 5), isSidechain="no"),
        assistant("m9", "r9", {**usage(5, 5), "speed": "warp"}),
    ]
    kept = assistant("m10", "r10", {**usage(5, 5), "speed": "standard"})
    result = parse_transcript(jsonl(*refused, kept))
    assert totals(result) == (5, 5, 0, 0)
    assert result.assistant_messages == 10  # still messages, just not counted tokens


def test_a_refused_copy_does_not_stop_a_valid_copy_of_the_same_response() -> None:
    result = parse_transcript(
        jsonl(
            assistant("m1", "r1", {**usage(5, 50), "speed": None}),
            assistant("m1", "r1", usage(5, 20)),
        )
    )
    assert totals(result) == (5, 20, 0, 0)


def test_usage_totals_by_model_add_up_to_the_session() -> None:
    result = parse_transcript(
        jsonl(
            assistant("m1", "r1", usage(1, 2, 3, 4)),
            assistant("m2", "r2", usage(10, 20, 30, 40), model="claude-haiku-4-5-20251001"),
            assistant("m3", "r3", usage(0, 0, 0, 0), model="<synthetic>"),
        )
    )
    by_model = {name: t.total for name, t in result.tokens_by_model.items()}
    assert by_model == {SONNET: 10, "claude-haiku-4-5-20251001": 100}
    assert result.tokens.total == 110


def test_memory_holds_one_compact_record_per_response_not_per_line() -> None:
    lines = jsonl(
        *[assistant(f"msg_{i // 5}", f"req_{i // 5}", usage(1, i % 5, 0, 0)) for i in range(5_000)]
    )
    parser = SessionParser()
    parser.feed(lines, name="t.jsonl", role="main")
    assert len(parser.acc.messages) == 1_000
    assert parser.result().tokens.output == 1_000 * 4
