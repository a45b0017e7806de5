"""Reading a Claude Code transcript into the aggregates the pipeline stores.

A transcript is JSONL: one JSON event per line, as Claude Code writes it under
~/.claude/projects/<project>/<session>.jsonl. The parser streams: it looks at one line at a
time and keeps counters and bounded lists only, so a 200 MB transcript costs no more memory
than its result (plus the longest line). Every field of an event is checked before use: the
format is undocumented and changes between Claude Code versions, so a surprise in one line
skips that line's contribution, never the file.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from sessionflow.transcript import DEFAULT_MAX_LINE_BYTES, EVENT_TYPES, load_object, read_lines

# Bumped whenever a change to the parser changes what it makes of a transcript: a worker parses
# again, in the background, every session whose result an older version made.
PARSER_VERSION = 2

MAX_FILES_KEPT = 200
MAX_PROMPT_CHARS = 500
MAX_SUMMARY_CHARS = 500
MAX_SKIPPED_LINE_NUMBERS = 20
MAX_TOOL_NAMES = 200
MAX_MODELS = 50
OTHER_TOOLS = "(other)"

# Which tools change files, and where their input names the file.
FILE_TOOLS: dict[str, str] = {
    "Edit": "file_path",
    "MultiEdit": "file_path",
    "Write": "file_path",
    "NotebookEdit": "notebook_path",
}

# Claude Code marks messages it made up itself (an interruption, an API error) with this model.
SYNTHETIC_MODEL = "<synthetic>"

# Claude Code records these as user events although nobody asked the model anything: `!` shell
# commands and their output, and interruption markers.
_NOISE_PREFIXES = ("<bash-input>", "<bash-stdout>", "<bash-stderr>", "[Request interrupted by user")
# The output of a slash command that ran locally (/clear, /model, ...): it follows the command
# line, and tells that the command was not a prompt.
_LOCAL_OUTPUT_PREFIXES = ("<local-command-stdout>", "<local-command-stderr>")
_COMMAND_NAME = re.compile(r"<command-name>(.*?)</command-name>", re.DOTALL)
_COMMAND_ARGS = re.compile(r"<command-args>(.*?)</command-args>", re.DOTALL)

# The same assistant message is split over several lines, one per content block, each repeating
# message.id and usage. Those lines are adjacent in practice, so remembering the most recent ids
# is enough to count each message once while keeping memory bounded.
_RECENT_MESSAGE_IDS = 1024


class TranscriptError(Exception):
    """The file is not a transcript this parser can read: retrying will not help. The message
    is a sentence the person who uploaded it can act on."""


class TokenTotals(BaseModel):
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_creation: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output + self.cache_read + self.cache_creation


class ParseResult(BaseModel):
    """What a transcript says about its session. Stored as jsonb and returned by the API."""

    parse_status: Literal["ok", "partial"]
    parser_version: int = PARSER_VERSION

    session_id: str | None = None
    cwd: str | None = None
    git_branch: str | None = None

    first_timestamp: datetime | None = None
    last_timestamp: datetime | None = None
    duration_seconds: float | None = None

    user_prompts: int = 0
    assistant_messages: int = 0
    tool_calls: int = 0
    tool_calls_by_name: dict[str, int] = Field(default_factory=dict)
    tokens: TokenTotals = Field(default_factory=TokenTotals)
    models: list[str] = Field(default_factory=list)

    # The first MAX_FILES_KEPT distinct paths in first-seen order; the total counts them all.
    files_touched: list[str] = Field(default_factory=list)
    files_touched_total: int = 0

    first_prompt: str | None = None  # the first real prompt, cut at MAX_PROMPT_CHARS
    summary: str | None = None  # the transcript's own first `summary` line, if any

    lines_total: int = 0
    lines_skipped: int = 0  # not a JSON object, not UTF-8, or longer than the line cap
    lines_ignored: int = 0  # valid JSON objects that are not user/assistant/system/summary
    events: int = 0
    skipped_line_numbers: list[int] = Field(default_factory=list)  # 1-based, the first few


def parse_file(path: Path, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> ParseResult:
    with path.open("rb") as stream:
        return parse_transcript(read_lines(stream, max_line_bytes), max_line_bytes=max_line_bytes)


def parse_transcript(
    lines: Iterable[bytes], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> ParseResult:
    """Aggregate a session of one main transcript given as raw lines (bytes, with or without
    their newline). See SessionParser."""
    parser = SessionParser(max_line_bytes=max_line_bytes)
    parser.feed(lines, name="transcript.jsonl", role="main")
    return parser.result()


class SessionParser:
    """A session's files, fed one after the other (the main transcript first, then each
    subagent run), aggregated into one ParseResult.

    Raises TranscriptError when the main transcript holds no Claude Code event (or, without
    one, no file does). Lines that are not JSON objects, or longer than max_line_bytes, are
    skipped and counted; the result is then "partial". Pass lines from read_lines() so an
    over-long line is not loaded at all."""

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.acc = _Accumulator()
        self.main_seen = False

    def feed(
        self,
        lines: Iterable[bytes],
        *,
        name: str,
        role: Literal["main", "subagent"],
        agent_id: str | None = None,
    ) -> None:
        acc = self.acc
        events_before = acc.events
        offset = acc.lines_total
        blank = too_long = 0
        for number, raw in enumerate(lines, start=1):
            acc.lines_total = offset + number
            line = raw.rstrip(b"\r\n")
            if len(line) > self.max_line_bytes:
                too_long += 1
                acc.skip(offset + number)
                continue
            if not line.strip():
                blank += 1
                continue
            event = load_object(line)
            if event is None:
                acc.skip(offset + number)
            else:
                acc.feed(event)
        if role == "main":
            self.main_seen = True
            if acc.events == events_before:
                raise TranscriptError(
                    _not_a_transcript(
                        acc.lines_total - offset, blank, too_long, self.max_line_bytes
                    )
                )

    def result(self) -> ParseResult:
        if self.acc.events == 0:
            raise TranscriptError(
                "None of the session's files holds a Claude Code event; upload the session's "
                ".jsonl files from ~/.claude/projects/."
            )
        return self.acc.result()


def _not_a_transcript(lines_total: int, blank: int, too_long: int, max_line_bytes: int) -> str:
    content_lines = lines_total - blank
    if content_lines == 0:
        return (
            "The file is empty: a Claude Code transcript has one JSON event per line; "
            "upload the session's .jsonl file from ~/.claude/projects/."
        )
    lines = "line" if content_lines == 1 else "lines"
    parts = [
        f"The file is not a Claude Code transcript: none of its {content_lines} {lines} is a "
        "JSON event with a 'type' of user, assistant, system or summary"
    ]
    if too_long:
        parts.append(f" ({too_long} longer than the {_size(max_line_bytes)} line limit)")
    parts.append("; upload the session's .jsonl file from ~/.claude/projects/.")
    return "".join(parts)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"


def _int(value: object) -> int:
    # bool is an int in Python; a token count of `true` is junk, not 1.
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    # Naive and aware datetimes cannot be compared; Claude Code writes UTC.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _user_text(content: object) -> str | None:
    """The text of a user event, or None when it has none (tool results, images alone)."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = [
            block["text"]
            for block in content
            if isinstance(block, dict)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        ]
        if not texts:
            return None
        text = "\n".join(texts)
    else:
        return None
    return text.strip() or None


def _command_text(text: str) -> str:
    """A slash command as it was typed ("/review src/app.py"), not as Claude Code's markup."""
    name = _COMMAND_NAME.search(text)
    args = _COMMAND_ARGS.search(text)
    typed = " ".join(m.group(1).strip() for m in (name, args) if m and m.group(1).strip())
    return typed or text


class _Accumulator:
    """Running totals over the events of one transcript."""

    def __init__(self) -> None:
        self.lines_total = 0
        self.lines_skipped = 0
        self.lines_ignored = 0
        self.events = 0
        self.skipped_line_numbers: list[int] = []
        self.session_id: str | None = None
        self.cwd: str | None = None
        self.git_branch: str | None = None
        self.first: datetime | None = None
        self.last: datetime | None = None
        self.user_prompts = 0
        self.assistant_messages = 0
        self.tool_calls = 0
        self.tools: dict[str, int] = {}
        self.tokens = [0, 0, 0, 0]  # input, output, cache_read, cache_creation
        self.models: set[str] = set()
        self.files: dict[str, None] = {}  # insertion-ordered set of the kept paths
        # hash() of every distinct path, so the total stays exact past the kept ones at a few
        # dozen bytes a path; a 64-bit collision within one session is not a concern.
        self.file_hashes: set[int] = set()
        self.first_prompt: str | None = None
        self.first_command: str | None = None  # the title's fallback when nothing else was typed
        self.pending_command: str | None = None  # a slash command not yet known to be a prompt
        self.summary: str | None = None
        self.recent: OrderedDict[str, tuple[int, int, int, int]] = OrderedDict()

    def skip(self, number: int) -> None:
        self.lines_skipped += 1
        if len(self.skipped_line_numbers) < MAX_SKIPPED_LINE_NUMBERS:
            self.skipped_line_numbers.append(number)

    def feed(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind not in EVENT_TYPES:
            self.lines_ignored += 1
            return
        self.events += 1
        if kind == "summary":
            text = event.get("summary")
            if self.summary is None and isinstance(text, str) and text.strip():
                self.summary = text.strip()[:MAX_SUMMARY_CHARS]
            return
        self._envelope(event)
        message = event.get("message")
        if not isinstance(message, dict):
            return
        if kind == "user":
            self._user(event, message)
        elif kind == "assistant":
            self._assistant(message)

    def _envelope(self, event: dict[str, Any]) -> None:
        if self.session_id is None:
            self.session_id = _str(event.get("sessionId"))
        if self.cwd is None:
            self.cwd = _str(event.get("cwd"))
        if self.git_branch is None:
            self.git_branch = _str(event.get("gitBranch"))
        ts = _timestamp(event.get("timestamp"))
        if ts is not None:
            # min/max rather than first/last line: resumed sessions are not always in order.
            if self.first is None or ts < self.first:
                self.first = ts
            if self.last is None or ts > self.last:
                self.last = ts

    def _user(self, event: dict[str, Any], message: dict[str, Any]) -> None:
        text = _user_text(message.get("content"))
        if text is not None and text.startswith(_LOCAL_OUTPUT_PREFIXES):
            self.pending_command = None  # it ran locally: nothing was asked of the model
            return
        self._commit_command()
        # isMeta: Claude Code's own caveats; isCompactSummary: the recap /compact writes;
        # isSidechain: a prompt the agent wrote to a subagent. None was typed by the person.
        if event.get("isMeta") or event.get("isCompactSummary") or event.get("isSidechain"):
            return
        if text is None or text.startswith(_NOISE_PREFIXES):
            return
        if "<command-name>" in text:
            self.pending_command = _command_text(text)[:MAX_PROMPT_CHARS]
            return
        self.user_prompts += 1
        if self.first_prompt is None:
            self.first_prompt = text[:MAX_PROMPT_CHARS]

    def _commit_command(self) -> None:
        """Count the pending slash command as a prompt: what followed it was not local output
        (a custom command such as /review expands into a prompt for the model)."""
        if self.pending_command is None:
            return
        self.user_prompts += 1
        if self.first_command is None:
            self.first_command = self.pending_command
        self.pending_command = None

    def _assistant(self, message: dict[str, Any]) -> None:
        self._commit_command()
        model = message.get("model")
        known = isinstance(model, str) and model not in ("", SYNTHETIC_MODEL)
        if known and len(self.models) < MAX_MODELS:
            self.models.add(str(model))
        self._message_and_usage(message)
        content = message.get("content")
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    self._tool_use(block)

    def _message_and_usage(self, message: dict[str, Any]) -> None:
        usage = message.get("usage")
        if isinstance(usage, dict):
            counts = (
                _int(usage.get("input_tokens")),
                _int(usage.get("output_tokens")),
                _int(usage.get("cache_read_input_tokens")),
                _int(usage.get("cache_creation_input_tokens")),
            )
        else:
            counts = (0, 0, 0, 0)
        message_id = message.get("id")
        if not isinstance(message_id, str) or not message_id:
            self.assistant_messages += 1
            self._add(counts)
            return
        counted = self.recent.get(message_id)
        if counted is None:
            self.assistant_messages += 1
            self._add(counts)
            self.recent[message_id] = counts
            if len(self.recent) > _RECENT_MESSAGE_IDS:
                self.recent.popitem(last=False)
            return
        # A repeat of a message already counted. Older Claude Code versions wrote a growing
        # output_tokens on the later lines, so keep the largest figure seen, not the first.
        self.recent.move_to_end(message_id)
        self._add(tuple(max(0, new - old) for new, old in zip(counts, counted, strict=True)))
        self.recent[message_id] = (
            max(counts[0], counted[0]),
            max(counts[1], counted[1]),
            max(counts[2], counted[2]),
            max(counts[3], counted[3]),
        )

    def _add(self, counts: tuple[int, ...]) -> None:
        for i, value in enumerate(counts):
            self.tokens[i] += value

    def _tool_use(self, block: dict[str, Any]) -> None:
        self.tool_calls += 1
        name = block.get("name")
        if not isinstance(name, str) or not name:
            name = OTHER_TOOLS
        if name not in self.tools and len(self.tools) >= MAX_TOOL_NAMES:
            name = OTHER_TOOLS  # MCP servers can bring any number of tool names
        self.tools[name] = self.tools.get(name, 0) + 1
        key = FILE_TOOLS.get(name)
        tool_input = block.get("input")
        if key is None or not isinstance(tool_input, dict):
            return
        path = tool_input.get(key)
        if not isinstance(path, str) or not path:
            return
        digest = hash(path)
        if digest in self.file_hashes:
            return
        self.file_hashes.add(digest)
        if len(self.files) < MAX_FILES_KEPT:
            self.files[path] = None

    def result(self) -> ParseResult:
        self._commit_command()
        duration = None
        if self.first is not None and self.last is not None:
            duration = (self.last - self.first).total_seconds()
        return ParseResult(
            parse_status="partial" if self.lines_skipped else "ok",
            session_id=self.session_id,
            cwd=self.cwd,
            git_branch=self.git_branch,
            first_timestamp=self.first,
            last_timestamp=self.last,
            duration_seconds=duration,
            user_prompts=self.user_prompts,
            assistant_messages=self.assistant_messages,
            tool_calls=self.tool_calls,
            tool_calls_by_name=dict(sorted(self.tools.items(), key=lambda kv: (-kv[1], kv[0]))),
            tokens=TokenTotals(
                input=self.tokens[0],
                output=self.tokens[1],
                cache_read=self.tokens[2],
                cache_creation=self.tokens[3],
            ),
            models=sorted(self.models),
            files_touched=list(self.files),
            files_touched_total=len(self.file_hashes),
            first_prompt=self.first_prompt or self.first_command,
            summary=self.summary,
            lines_total=self.lines_total,
            lines_skipped=self.lines_skipped,
            lines_ignored=self.lines_ignored,
            events=self.events,
            skipped_line_numbers=self.skipped_line_numbers,
        )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
