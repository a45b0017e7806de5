"""The heuristic summarizer's title and text, the summarize threshold, and the registry."""

from __future__ import annotations

import contextlib
import itertools
import sys
import types
from pathlib import Path, PurePosixPath

import pytest

from sessionflow.worker.parse import ParseResult, TokenTotals, parse_file
from sessionflow.worker.summarize import (
    HeuristicSummarizer,
    Summarizer,
    Summary,
    _relative,
    get_summarizer,
    humanize_duration,
    shorten,
    should_summarize,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "transcripts"


def result(**fields: object) -> ParseResult:
    return ParseResult.model_validate({"parse_status": "ok", **fields})


def title(**fields: object) -> str:
    return HeuristicSummarizer().summarize(result(**fields)).title


# --- title -----------------------------------------------------------------------------------


def test_title_is_the_first_line_of_the_first_prompt_whitespace_collapsed() -> None:
    prompt = "\n  Fix   the login\tredirect loop  \nIt happens when the cookie expires."
    assert title(first_prompt=prompt) == "Fix the login redirect loop"


def test_long_title_is_cut_at_a_word_with_an_ellipsis() -> None:
    prompt = "Refactor the database access layer so that every query goes through one module " * 3
    cut = title(first_prompt=prompt)
    assert len(cut) <= 80
    assert cut.endswith("…")
    assert cut.startswith("Refactor the database access layer")
    assert not cut.removesuffix("…").endswith(" ")
    assert prompt.startswith(cut.removesuffix("…"))


def test_title_of_one_unbroken_word_is_cut_hard() -> None:
    cut = title(first_prompt="x" * 200)
    assert cut == "x" * 79 + "…"


def test_title_falls_back_to_the_summary_line_then_the_folder() -> None:
    assert title(summary="Retry HTTP requests") == "Retry HTTP requests"
    assert title(cwd="/home/user/src/myapp") == "Session in myapp"
    assert title() == "Untitled session"


def test_title_of_the_fixture_session() -> None:
    summary = HeuristicSummarizer().summarize(parse_file(FIXTURES / "basic.jsonl"))
    assert summary.title == "Add retries with exponential backoff to the HTTP client."
    assert summary.summarizer == "heuristic"


# --- text ------------------------------------------------------------------------------------


def test_text_names_the_session_in_one_paragraph() -> None:
    text = HeuristicSummarizer().summarize(parse_file(FIXTURES / "basic.jsonl")).text
    assert "\n" not in text
    assert "Asked: “Add retries with exponential backoff" in text
    assert (
        "Changed 3 files: src/myapp/http.py, tests/test_http.py and notebooks/demo.ipynb." in text
    )
    assert "Made 7 tool calls: Bash ×1, Edit ×1, Grep ×1 and 4 other tools." in text
    assert "Took 15 min over 3 prompts and 7 replies." in text
    assert "Models: claude-opus-4-1-20250805, claude-sonnet-4-20250514" in text
    assert "10.6k tokens in (10k from cache), 255 out." in text


def test_text_lists_a_few_files_and_how_many_more() -> None:
    files = [f"/repo/src/m{i}.py" for i in range(10)]
    text = HeuristicSummarizer().text(
        result(cwd="/repo", files_touched=files, files_touched_total=12)
    )
    assert "Changed 12 files: src/m0.py, src/m1.py, src/m2.py and 9 more." in text


def test_text_ranks_tools_by_count() -> None:
    text = HeuristicSummarizer(max_tools=2).text(
        result(tool_calls=10, tool_calls_by_name={"Edit": 2, "Read": 7, "Bash": 1})
    )
    assert "Made 10 tool calls: Read ×7, Edit ×2 and 1 other tool." in text


def test_text_of_a_bare_session_says_nothing_was_changed() -> None:
    text = HeuristicSummarizer().text(result(user_prompts=1, assistant_messages=1))
    assert text == "No files were changed. 1 prompt and 1 reply."


def test_text_mentions_skipped_lines_of_a_partial_parse() -> None:
    text = HeuristicSummarizer().text(
        result(parse_status="partial", lines_skipped=2, tokens=TokenTotals(output=5))
    )
    assert text.endswith("2 unreadable lines were skipped.")


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0 s"),
        (42.4, "42 s"),
        (12 * 60 + 10, "12 min"),
        (3600, "1 h"),
        (2 * 3600 + 5 * 60, "2 h 5 min"),
        (3 * 86400 + 4 * 3600, "3 d 4 h"),
    ],
)
def test_durations_read_like_a_person_would_say_them(seconds: float, expected: str) -> None:
    assert humanize_duration(seconds) == expected


def test_shorten_leaves_short_text_alone() -> None:
    assert shorten("short", 80) == "short"


# --- threshold -------------------------------------------------------------------------------


def test_should_summarize_needs_the_minimum_number_of_prompts() -> None:
    assert not should_summarize(result(user_prompts=1))
    assert should_summarize(result(user_prompts=2))
    assert not should_summarize(result(user_prompts=2), min_user_prompts=3)
    assert should_summarize(result(user_prompts=0), min_user_prompts=0)


# --- registry --------------------------------------------------------------------------------


class EchoSummarizer:
    name = "echo"

    def summarize(self, result: ParseResult) -> Summary:
        return Summary(title=result.first_prompt or "", text="", summarizer=self.name)


class NotASummarizer:
    pass


@pytest.fixture
def plugin_module(monkeypatch: pytest.MonkeyPatch) -> str:
    module = types.ModuleType("sessionflow_test_plugins")
    module.EchoSummarizer = EchoSummarizer  # type: ignore[attr-defined]
    module.NotASummarizer = NotASummarizer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__name__


def test_get_summarizer_heuristic_is_built_in() -> None:
    summarizer = get_summarizer("heuristic")
    assert isinstance(summarizer, HeuristicSummarizer)
    assert isinstance(summarizer, Summarizer)


def test_get_summarizer_imports_a_module_class_path(plugin_module: str) -> None:
    summarizer = get_summarizer(f"{plugin_module}:EchoSummarizer")
    assert isinstance(summarizer, EchoSummarizer)
    assert summarizer.summarize(result(first_prompt="hi")).title == "hi"


def test_get_summarizer_accepts_a_real_module_path() -> None:
    path = "sessionflow.worker.summarize:HeuristicSummarizer"
    assert isinstance(get_summarizer(path), HeuristicSummarizer)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gpt", r"Unknown summarizer 'gpt': use 'heuristic' or a class path"),
        ("no.such.module:Thing", r"cannot import module 'no.such.module'"),
        ("sessionflow.worker.summarize:Nope", r"has no 'Nope'"),
        (":Thing", r"Unknown summarizer"),
    ],
)
def test_get_summarizer_rejects_a_bad_name_clearly(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_summarizer(name)


def test_get_summarizer_rejects_a_class_that_is_not_a_summarizer(plugin_module: str) -> None:
    with pytest.raises(ValueError, match="needs a `name` string and a `summarize"):
        get_summarizer(f"{plugin_module}:NotASummarizer")


def test_a_changed_file_is_named_from_the_session_folder_exactly_as_pathlib_would() -> None:
    # The fast path is string slicing; every shape pathlib normalizes must come out the same.
    parts = ["", "a", ".", "..", "b.c", ".x"]
    paths = {
        lead + "/".join(combo) + trail
        for n in (1, 2, 3)
        for combo in itertools.product(parts, repeat=n)
        for lead in ("/", "", "//")
        for trail in ("", "/")
    }
    cwds = ["/", "//", "/a", "/a/", "a", "/a/b", "//a", "/a//b", "/a/.", "/a/./b", ".", "", None]
    for path in paths:
        for cwd in cwds:
            for prefix in ("", "/a/", "/a/b/", "a/"):
                full = prefix + path.lstrip("/") if prefix else path
                expected = full
                if cwd:
                    with contextlib.suppress(ValueError):
                        expected = str(PurePosixPath(full).relative_to(cwd))
                assert _relative(full, cwd) == expected, (full, cwd)
