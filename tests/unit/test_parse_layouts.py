"""A session with its subagent runs, in each layout Claude Code has written them: 1.x inline
sidechains, 2.0.x agent-<id>.jsonl beside the session, 2.1.x <session>/subagents/. The
fixtures under layouts/ are hand-written; files are fed as the worker feeds them (main first,
then subagent files by name)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sessionflow.transcript import read_lines
from sessionflow.worker.parse import MAX_PROMPT_CHARS, ParseResult, SessionParser, parse_transcript

LAYOUTS = Path(__file__).parent.parent / "fixtures" / "transcripts" / "layouts"
V1 = LAYOUTS / "v1" / "5e7b1c00-0000-4000-8000-000000000001.jsonl"
V20 = LAYOUTS / "v2_0"
V20_SESSION = "5e7b1c00-0000-4000-8000-000000000002"
V21 = LAYOUTS / "v2_1"
V21_SESSION = "5e7b1c00-0000-4000-8000-000000000003"


def parse(*files: tuple[Path, str | None]) -> ParseResult:
    """(path, agent id) pairs, the main transcript's agent id None."""
    parser = SessionParser()
    for path, agent_id in files:
        role = "main" if agent_id is None else "subagent"
        with path.open("rb") as stream:
            name = path.relative_to(path.parents[2 if path.parent.name == "subagents" else 0])
            parser.feed(read_lines(stream), name=str(name), role=role, agent_id=agent_id)
    return parser.result()


@pytest.fixture(scope="module")
def v1() -> ParseResult:
    return parse((V1, None))


@pytest.fixture(scope="module")
def v20() -> ParseResult:
    return parse(
        (V20 / f"{V20_SESSION}.jsonl", None),
        (V20 / "agent-a1b2c3d.jsonl", "a1b2c3d"),
        (V20 / "agent-a9f8e7d.jsonl", "a9f8e7d"),
    )


@pytest.fixture(scope="module")
def v21() -> ParseResult:
    runs = V21 / V21_SESSION / "subagents"
    return parse(
        (V21 / f"{V21_SESSION}.jsonl", None),
        (runs / "agent-a3c4e5f.jsonl", "a3c4e5f"),
        (runs / "agent-acompact-1a2b3c.jsonl", "acompact-1a2b3c"),
        (runs / "agent-aprompt_suggestion-4d5e6f.jsonl", "aprompt_suggestion-4d5e6f"),
    )


# --- 1.x: sidechains inside the session file ------------------------------------------------


def test_v1_inline_sidechains_are_split_into_runs_with_stable_ids(v1: ParseResult) -> None:
    assert [run.agent_id for run in v1.subagents] == ["sidechain-1", "sidechain-2"]
    assert [run.file for run in v1.subagents] == [None, None]
    assert v1.subagents_total == 2


def test_v1_runs_are_linked_to_their_task_call_by_prompt(v1: ParseResult) -> None:
    first, second = v1.subagents
    assert (first.description, first.subagent_type) == ("Audit checkout", "general-purpose")
    assert first.first_prompt == "Read src/checkout and list every bug."
    assert (second.description, second.kind) == ("Audit pricing", "task")


def test_v1_each_run_counts_its_own_messages_tools_errors_and_tokens(v1: ParseResult) -> None:
    first, second = v1.subagents
    assert (first.assistant_messages, first.tool_calls, first.tool_errors) == (2, 1, 1)
    assert first.tokens.model_dump() == {
        "input": 11,
        "output": 50,
        "cache_read": 1100,
        "cache_creation": 50,
    }
    assert first.duration_seconds == 21.0
    assert second.tokens.total == 4 + 25 + 400
    assert first.cost_usd == pytest.approx((11 * 3 + 50 * 15 + 50 * 3.75 + 1100 * 0.3) / 1e6)


def test_v1_session_totals_include_every_run(v1: ParseResult) -> None:
    assert v1.tokens.model_dump() == {
        "input": 21,
        "output": 230,
        "cache_read": 6700,
        "cache_creation": 350,
    }
    assert v1.assistant_messages == 6
    assert v1.tool_calls == 4
    assert v1.tool_errors == 1
    assert v1.user_prompts == 1  # the runs' prompts were written by the agent, not typed


def test_v1_keeps_its_own_summary_and_ignores_another_sessions(v1: ParseResult) -> None:
    # The file opens with another session's title; its own comes last, after its leaf.
    assert v1.summary == "Checkout and pricing audit"
    assert v1.first_prompt == "Audit the checkout flow and the pricing module."


def test_v1_a_run_started_by_a_line_of_the_session_is_split_by_its_user_line() -> None:
    # Some 1.x runs start from the session's line that called the Task, not from null.
    def line(uuid: str, parent: str | None, kind: str, side: bool, content: object) -> bytes:
        message = {"role": kind, "content": content, "model": "claude-sonnet-4-20250514"}
        event = {"type": kind, "uuid": uuid, "parentUuid": parent, "isSidechain": side}
        return json.dumps({**event, "message": message}).encode()

    result = parse_transcript(
        [
            line("m1", None, "user", False, "Review both modules."),
            line("m2", "m1", "assistant", False, "Starting two reviews."),
            line("s1", "m2", "user", True, "Review module A."),
            line("s2", "s1", "assistant", True, "A is fine."),
            line("t1", "m2", "user", True, "Review module B."),
            line("s3", "s2", "assistant", True, "Also, A has no tests."),
            line("t2", "t1", "assistant", True, "B is fine."),
        ]
    )
    first, second = result.subagents
    assert (first.first_prompt, first.assistant_messages) == ("Review module A.", 2)
    assert (second.first_prompt, second.assistant_messages) == ("Review module B.", 1)


# --- 2.0.x: agent-<id>.jsonl beside the session ---------------------------------------------


def test_v20_agent_file_joins_its_parent_with_the_task_it_was_asked(v20: ParseResult) -> None:
    task, _warmup = v20.subagents
    assert (task.agent_id, task.file) == ("a1b2c3d", "agent-a1b2c3d.jsonl")
    # Linked by the agentId the Task call's result names.
    assert (task.description, task.subagent_type) == ("Find the router", "Explore")
    assert task.first_prompt == "Find where routes are registered."
    assert task.models == ["claude-haiku-4-5-20251001"]
    assert (task.assistant_messages, task.tool_calls) == (2, 1)


def test_v20_warmup_runs_are_told_apart(v20: ParseResult) -> None:
    task, warmup = v20.subagents
    assert (task.kind, warmup.kind) == ("task", "warmup")
    assert warmup.description is None
    assert warmup.tokens.input == 900


def test_v20_session_counts_every_file_and_prices_each_model(v20: ParseResult) -> None:
    assert v20.files == 3
    assert v20.main_transcript
    assert v20.tokens.model_dump() == {
        "input": 938,
        "output": 218,
        "cache_read": 2600,
        "cache_creation": 1500,
    }
    assert v20.models == ["claude-haiku-4-5-20251001", "claude-opus-4-5-20251101"]
    opus = 10 * 5 + 50 * 25 + 1000 * 6.25 + 2 * 5 + 120 * 25 + 1000 * 0.5 + 5 + 5 * 25 + 1100 * 0.5
    haiku = 20 + 30 * 5 + 500 * 1.25 + 5 + 10 * 5 + 500 * 0.1 + 900 + 3 * 5
    assert v20.cost_usd == pytest.approx((opus + haiku) / 1e6)
    assert v20.tokens_by_model["claude-haiku-4-5-20251001"].input == 20 + 5 + 900


def test_a_session_of_subagent_files_alone_has_no_main_transcript() -> None:
    result = parse((V20 / "agent-a1b2c3d.jsonl", "a1b2c3d"))
    assert not result.main_transcript
    assert result.session_id == V20_SESSION  # the parent's, from the agent's lines
    assert result.first_prompt is None
    assert result.user_prompts == 0
    (run,) = result.subagents
    assert run.description is None  # the Task that asked it was in the missing main file
    assert result.tokens.total == run.tokens.total


def test_a_subagent_file_without_events_is_counted_not_fatal() -> None:
    parser = SessionParser()
    with (V20 / f"{V20_SESSION}.jsonl").open("rb") as stream:
        parser.feed(read_lines(stream), name="main.jsonl", role="main")
    parser.feed([b'{"type":"file-history-snapshot"}\n'], name="agent-x.jsonl", role="subagent")
    result = parser.result()
    assert result.empty_subagent_files == 1
    assert result.subagents == []
    assert result.files == 2


# --- 2.1.x: <session>/subagents/ ------------------------------------------------------------


def test_v21_subagents_folder_runs_are_kinds_of_their_own(v21: ParseResult) -> None:
    assert [(run.agent_id, run.kind) for run in v21.subagents] == [
        ("a3c4e5f", "task"),
        ("acompact-1a2b3c", "compaction"),
        ("aprompt_suggestion-4d5e6f", "prompt_suggestion"),
    ]
    assert v21.subagents[0].file == f"{V21_SESSION}/subagents/agent-a3c4e5f.jsonl"
    assert v21.subagents[0].description == "Check the CSS"


def test_v21_a_main_response_replayed_in_a_run_is_counted_once_for_the_main(
    v21: ParseResult,
) -> None:
    suggestion = v21.subagents[2]
    assert suggestion.assistant_messages == 1  # its own answer, not the replayed one
    assert suggestion.tokens.model_dump() == {
        "input": 2,
        "output": 3,
        "cache_read": 500,
        "cache_creation": 0,
    }
    assert v21.tokens.model_dump() == {
        "input": 18,
        "output": 558,
        "cache_read": 7450,
        "cache_creation": 3000,
    }


def test_v21_prices_one_hour_cache_writes(v21: ParseResult) -> None:
    micro = 18 * 5 + 558 * 25 + 1000 * 6.25 + 2000 * 10 + 7450 * 0.5
    assert v21.cost_usd == pytest.approx(micro / 1e6)
    assert v21.pricing_date is not None


def test_v21_counts_compaction_api_errors_and_what_was_typed(v21: ParseResult) -> None:
    assert v21.compactions == 1
    assert v21.api_errors == 1
    assert v21.models == ["claude-opus-4-6"]  # the API error's <synthetic> is not a model
    assert v21.first_prompt == "Make the header sticky."  # the IDE block is not typed
    assert v21.user_prompts == 2  # the compaction recap is not a prompt


def test_every_layout_round_trips_through_stored_json(
    v1: ParseResult, v20: ParseResult, v21: ParseResult
) -> None:
    for result in (v1, v20, v21):
        stored = json.loads(result.model_dump_json())
        assert ParseResult.model_validate(stored) == result


def test_run_prompts_are_cut_like_the_session_prompt() -> None:
    long_prompt = "Summarize " + "every file " * 200
    lines = [json.dumps({"type": "user", "isSidechain": True, "message": {"content": long_prompt}})]
    parser = SessionParser()
    parser.feed([line.encode() for line in lines], name="agent-a1.jsonl", role="subagent")
    (run,) = parser.result().subagents
    assert run.first_prompt is not None
    assert len(run.first_prompt) == MAX_PROMPT_CHARS
