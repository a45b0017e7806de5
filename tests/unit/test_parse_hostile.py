"""Whatever a transcript's strings hold, the result can be stored: no NUL, no lone surrogate
(a jsonb column refuses both), every string cut to its maximum, every list and map capped."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sessionflow.worker.parse import (
    MAX_DESCRIPTION_CHARS,
    MAX_MODELS,
    MAX_NAME_CHARS,
    MAX_PATH_CHARS,
    MAX_PROMPT_CHARS,
    MAX_SUBAGENTS,
    MAX_SUMMARY_CHARS,
    MAX_TOOL_NAMES,
    ParseResult,
    SessionParser,
    parse_transcript,
)

HUGE = 1_000_000


def hostile(label: str) -> str:
    # NUL, a lone surrogate (json.loads makes one of "\ud800"), then a megabyte.
    return f"{label}\x00\ud800" + "x" * HUGE


def dumps(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def envelope(**extra: Any) -> dict[str, Any]:
    return {
        "sessionId": hostile("session"),
        "cwd": hostile("/home/cwd"),
        "gitBranch": hostile("branch"),
        "timestamp": "2025-11-03T10:00:00.000Z",
        **extra,
    }


def session_lines() -> list[bytes]:
    task = {
        "type": "tool_use",
        "id": "toolu_task",
        "name": "Task",
        "input": {
            "description": hostile("describe"),
            "subagent_type": hostile("type"),
            "prompt": hostile("prompt"),
        },
    }
    edit = {
        "type": "tool_use",
        "id": "toolu_edit",
        "name": "Edit",
        "input": {"file_path": hostile("/path")},
    }
    odd_tool = {"type": "tool_use", "id": "toolu_odd", "name": hostile("tool"), "input": {}}
    return [
        dumps({"type": "summary", "summary": hostile("title"), "leafUuid": "u-1"}),
        dumps(envelope(type="user", uuid="u-1", message={"content": hostile("typed")})),
        dumps(
            envelope(
                type="assistant",
                uuid="u-2",
                requestId="req_1",
                message={
                    "id": "msg_1",
                    "model": hostile("model"),
                    "content": [task, edit, odd_tool],
                    "usage": {"input_tokens": 1, "output_tokens": 1},
                },
            )
        ),
        dumps(
            envelope(
                type="user",
                uuid="u-3",
                message={"content": [{"type": "tool_result", "tool_use_id": "toolu_task"}]},
                toolUseResult={"agentId": hostile("agent")},
            )
        ),
    ]


def agent_lines() -> list[bytes]:
    return [
        dumps(envelope(type="user", isSidechain=True, agentId=hostile("agent"),
                       message={"content": hostile("prompt")})),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def result() -> ParseResult:
    parser = SessionParser()
    parser.feed(session_lines(), name=hostile("main.jsonl"), role="main")
    parser.feed(agent_lines(), name=hostile("agent-file.jsonl"), role="subagent")
    return parser.result()


def strings(value: object) -> list[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings(v))]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []


def test_the_result_encodes_without_nul_or_lone_surrogates(result: ParseResult) -> None:
    encoded = result.model_dump_json()
    encoded.encode("utf-8")  # strict: a lone surrogate would raise here
    assert "\\u0000" not in encoded
    for text in strings(json.loads(encoded)):
        assert "\x00" not in text
        text.encode("utf-8")


def test_the_result_stays_small_whatever_the_strings(result: ParseResult) -> None:
    assert len(result.model_dump_json()) < 20_000


def test_each_field_is_cut_to_its_maximum(result: ParseResult) -> None:
    assert result.session_id is not None and len(result.session_id) <= MAX_NAME_CHARS
    assert result.cwd is not None and len(result.cwd) <= MAX_PATH_CHARS
    assert result.git_branch is not None and len(result.git_branch) <= MAX_NAME_CHARS
    assert result.first_prompt is not None and len(result.first_prompt) <= MAX_PROMPT_CHARS
    assert result.summary is not None and len(result.summary) <= MAX_SUMMARY_CHARS
    assert result.files_touched and len(result.files_touched[0]) <= MAX_PATH_CHARS
    assert all(len(name) <= MAX_NAME_CHARS for name in result.models)
    assert all(len(name) <= MAX_NAME_CHARS for name in result.tool_calls_by_name)
    assert all(len(name) <= MAX_NAME_CHARS for name in result.tokens_by_model)
    assert all(len(name) <= MAX_NAME_CHARS for name in result.unpriced_models)
    (run,) = result.subagents
    assert len(run.agent_id) <= MAX_NAME_CHARS
    assert run.file is not None and len(run.file) <= MAX_PATH_CHARS
    assert run.first_prompt is not None and len(run.first_prompt) <= MAX_PROMPT_CHARS
    assert run.description is not None and len(run.description) <= MAX_DESCRIPTION_CHARS
    assert run.subagent_type is not None and len(run.subagent_type) <= MAX_NAME_CHARS


def test_cleaned_strings_keep_what_was_readable(result: ParseResult) -> None:
    assert result.cwd is not None and result.cwd.startswith("/home/cwd")
    assert result.first_prompt is not None and result.first_prompt.startswith("typed")
    assert result.unpriced_models and result.unpriced_models[0].startswith("model")


def test_subagent_runs_are_listed_up_to_the_cap_and_all_counted() -> None:
    parser = SessionParser()
    for i in range(MAX_SUBAGENTS + 25):
        line = {
            "type": "assistant",
            "isSidechain": True,
            "timestamp": "2025-11-03T10:00:00.000Z",
            "message": {
                "id": f"msg_{i}",
                "model": "claude-haiku-4-5-20251001",
                "usage": {"input_tokens": 1, "output_tokens": 1},
            },
        }
        parser.feed([dumps(line)], name=f"agent-a{i:05x}.jsonl", role="subagent")
    result = parser.result()
    assert len(result.subagents) == MAX_SUBAGENTS
    assert result.subagents_total == MAX_SUBAGENTS + 25
    assert result.tokens.input == MAX_SUBAGENTS + 25
    assert not result.main_transcript


def test_tool_and_model_names_are_capped() -> None:
    blocks = [
        {"type": "tool_use", "id": f"t{i}", "name": f"mcp__tool_{i}", "input": {}}
        for i in range(MAX_TOOL_NAMES + 10)
    ]
    lines = [
        dumps({"type": "assistant", "message": {"model": f"model-{i}", "content": blocks}})
        for i in range(MAX_MODELS + 10)
    ]
    result = parse_transcript(lines)
    assert len(result.tool_calls_by_name) <= MAX_TOOL_NAMES + 1  # + "(other)"
    assert result.tool_calls == (MAX_TOOL_NAMES + 10) * (MAX_MODELS + 10)
    assert len(result.models) == MAX_MODELS
