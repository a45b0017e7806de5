"""Turning a parse result into a title and a paragraph a person can skim.

A summarizer is anything with a `name` and a `summarize(result) -> Summary` method. The
built-in HeuristicSummarizer needs no network; get_summarizer() also accepts
"package.module:ClassName", so another one (an LLM-backed one, say) is chosen by
configuration without this module knowing it.
"""

from __future__ import annotations

import importlib
import re
from pathlib import PurePosixPath
from typing import Protocol, runtime_checkable

from pydantic import BaseModel

from sessionflow.worker.parse import ParseResult

HEURISTIC = "heuristic"
ELLIPSIS = "…"

_WHITESPACE = re.compile(r"\s+")


class Summary(BaseModel):
    title: str
    text: str
    summarizer: str  # the name of the summarizer that wrote it


@runtime_checkable
class Summarizer(Protocol):
    name: str

    def summarize(self, result: ParseResult) -> Summary: ...


def should_summarize(result: ParseResult, min_user_prompts: int = 2) -> bool:
    """Whether a session is worth a summary; one below the threshold stays `parsed`."""
    return result.user_prompts >= min_user_prompts


def get_summarizer(name: str) -> Summarizer:
    """The summarizer a configuration names: "heuristic", or "package.module:ClassName" for a
    class that is imported and instantiated without arguments. Raises ValueError otherwise."""
    if name == HEURISTIC:
        return HeuristicSummarizer()
    module_name, sep, class_name = name.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(
            f"Unknown summarizer {name!r}: use {HEURISTIC!r} or a class path like "
            "'package.module:ClassName'."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"Summarizer {name!r}: cannot import module {module_name!r} ({exc})."
        ) from exc
    cls = getattr(module, class_name, None)
    if not callable(cls):
        raise ValueError(f"Summarizer {name!r}: module {module_name!r} has no {class_name!r}.")
    try:
        instance = cls()
    except Exception as exc:
        raise ValueError(f"Summarizer {name!r}: creating {class_name} failed: {exc}") from exc
    if not isinstance(instance, Summarizer) or not isinstance(getattr(instance, "name", None), str):
        raise ValueError(
            f"Summarizer {name!r}: {class_name} needs a `name` string and a "
            "`summarize(result)` method."
        )
    return instance


class HeuristicSummarizer:
    """A summary made from the parse result alone: the first prompt as title, and a paragraph
    of what changed, what ran, for how long and at what cost."""

    name: str = HEURISTIC

    def __init__(self, *, title_chars: int = 80, max_files: int = 3, max_tools: int = 3) -> None:
        self.title_chars = title_chars
        self.max_files = max_files
        self.max_tools = max_tools

    def summarize(self, result: ParseResult) -> Summary:
        return Summary(title=self.title(result), text=self.text(result), summarizer=self.name)

    def title(self, result: ParseResult) -> str:
        for source in (result.first_prompt, result.summary):
            line = _first_line(source)
            if line:
                return shorten(line, self.title_chars)
        if result.cwd:
            where = PurePosixPath(result.cwd).name or result.cwd
            return shorten(f"Session in {where}", self.title_chars)
        return "Untitled session"

    def text(self, result: ParseResult) -> str:
        sentences: list[str] = []
        if result.first_prompt:
            asked = shorten(_collapse(result.first_prompt), 160)
            stop = "" if asked.endswith((".", "?", "!", ELLIPSIS)) else "."
            sentences.append(f"Asked: “{asked}”{stop}")
        elif result.summary:
            sentences.append(f"{shorten(_collapse(result.summary), 160).rstrip('.')}.")
        sentences.append(self._files(result))
        if result.tool_calls:
            sentences.append(self._tools(result))
        sentences.append(_conversation(result))
        if result.models or result.tokens.total:
            sentences.append(_cost(result))
        if result.lines_skipped:
            n = result.lines_skipped
            sentences.append(f"{n} unreadable line{'s were' if n != 1 else ' was'} skipped.")
        return " ".join(s for s in sentences if s)

    def _files(self, result: ParseResult) -> str:
        total = result.files_touched_total
        if total == 0:
            return "No files were changed."
        shown = [_relative(path, result.cwd) for path in result.files_touched[: self.max_files]]
        more = total - len(shown)
        listing = _join(shown, f"{more} more" if more > 0 else None)
        return f"Changed {total} file{'s' if total != 1 else ''}: {listing}."

    def _tools(self, result: ParseResult) -> str:
        ranked = sorted(result.tool_calls_by_name.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = [f"{name} ×{count}" for name, count in ranked[: self.max_tools]]
        rest = len(ranked) - len(shown)
        listing = _join(shown, f"{rest} other tool{'s' if rest != 1 else ''}" if rest else None)
        calls = result.tool_calls
        return f"Made {calls} tool call{'s' if calls != 1 else ''}: {listing}."


def shorten(text: str, limit: int) -> str:
    """text cut to at most limit characters, at a word boundary when one is near, with an
    ellipsis when anything was cut."""
    if len(text) <= limit:
        return text
    cut = text[: max(1, limit - len(ELLIPSIS))]
    space = cut.rfind(" ")
    if space >= len(cut) * 0.6:  # a word boundary not too far back
        cut = cut[:space]
    return cut.rstrip(" ,.;:-") + ELLIPSIS


def humanize_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def humanize_count(n: int) -> str:
    for suffix, scale in (("B", 1_000_000_000), ("M", 1_000_000), ("k", 1_000)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + suffix
    return str(n)


def _conversation(result: ParseResult) -> str:
    prompts, replies = result.user_prompts, result.assistant_messages
    exchange = (
        f"{prompts} prompt{'s' if prompts != 1 else ''} and "
        f"{replies} repl{'ies' if replies != 1 else 'y'}"
    )
    if result.duration_seconds is None:
        return f"{exchange[0].upper()}{exchange[1:]}."
    return f"Took {humanize_duration(result.duration_seconds)} over {exchange}."


def _cost(result: ParseResult) -> str:
    parts = []
    if result.models:
        label = "Model" if len(result.models) == 1 else "Models"
        parts.append(f"{label}: {', '.join(result.models)}")
    tokens = result.tokens
    if tokens.total:
        parts.append(
            f"{humanize_count(tokens.input + tokens.cache_read + tokens.cache_creation)} tokens "
            f"in ({humanize_count(tokens.cache_read)} from cache), "
            f"{humanize_count(tokens.output)} out"
        )
    return "; ".join(parts) + "."


def _first_line(text: str | None) -> str:
    if not text:
        return ""
    for line in text.splitlines():
        collapsed = _collapse(line)
        if collapsed:
            return collapsed
    return ""


def _collapse(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def _plain(path: str) -> bool:
    """Whether pathlib would keep path as written: no empty or "." parts, no trailing "/"."""
    return not (
        "//" in path or "/./" in path or path.startswith("./") or path.endswith(("/.", "/"))
    )


def _relative(path: str, cwd: str | None) -> str:
    """A path as seen from the session's folder, which is shorter and what the person knows."""
    if cwd:
        # The usual case in plain string operations (a tenth of pathlib's cost, once per file
        # of every summary); any path pathlib would normalize first goes the long way.
        prefix = cwd.rstrip("/") + "/"
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            if rest[:1] not in ("", "/") and rest != "." and _plain(rest) and _plain(cwd + "x"):
                return rest
        try:
            return str(PurePosixPath(path).relative_to(cwd))
        except ValueError:
            pass
    return path


def _join(items: list[str], tail: str | None) -> str:
    if tail:
        return f"{', '.join(items)} and {tail}"
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"
