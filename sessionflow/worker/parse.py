"""Reading a Claude Code session into the aggregates the pipeline stores.

A session is its files: the main transcript and the subagent runs it started. A transcript is
JSONL, one JSON event per line. Claude Code 1.x writes subagent (Task) runs inside the session
file as `isSidechain` lines; 2.0.x writes each run to `agent-<id>.jsonl` beside it and 2.1.x to
`<sessionId>/subagents/agent-<id>.jsonl`. The parser is fed the files one after the other and
reports the session with every run in it, and each run on its own.

It streams: it looks at one line at a time and keeps counters, bounded lists and one compact
record per distinct API response (to count each response once, as below), so a 200 MB
transcript costs a few MB. Every field of an event is checked before use: the format is
undocumented and changes between versions, so a surprise in one line skips that line's
contribution, never the file. Every string that reaches the result is cleaned of what a jsonb
column refuses (NUL, lone surrogates) and cut to one of the MAX_*_CHARS lengths.

Tokens are counted the way ccusage counts them, since that is the figure people check theirs
against: one API response is often written as several lines (one per content block, repeating
its usage, output_tokens growing), and replayed in other files, so usage is counted once per
(message.id, requestId) across all of the session's files, keeping the non-sidechain copy,
else the one with the larger total; lines ccusage refuses are refused here too.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from sessionflow.pricing import Price, price_table
from sessionflow.transcript import DEFAULT_MAX_LINE_BYTES, EVENT_TYPES, load_object, read_lines

__all__ = [
    "MAX_FILES_KEPT",
    "MAX_PROMPT_CHARS",
    "PARSER_VERSION",
    "ParseResult",
    "SessionParser",
    "SubagentRun",
    "TokenTotals",
    "TranscriptError",
    "parse_file",
    "parse_transcript",
    "read_lines",
]

# Bumped whenever a change to the parser changes what it makes of a transcript: a worker parses
# again, in the background, every session whose result an older version made.
PARSER_VERSION = 2

# The most the result holds, whatever the files say: strings are cut to these lengths...
MAX_PROMPT_CHARS = 500
MAX_SUMMARY_CHARS = 500
MAX_DESCRIPTION_CHARS = 500
MAX_PATH_CHARS = 1_000  # cwd, changed files, file names
MAX_NAME_CHARS = 200  # session and agent ids, models, tools, subagent types, git branches
# ...and lists and maps to these sizes (each with its exact total where one is reported).
MAX_FILES_KEPT = 200
MAX_TOOL_NAMES = 200
MAX_MODELS = 50
MAX_SUBAGENTS = 200
MAX_SKIPPED_LINE_NUMBERS = 20
OTHER = "(other)"  # the name the overflow past a cap is counted under
OTHER_TOOLS = OTHER

# What the parser remembers to link and split runs and to tell its title, bounded the same way.
_MAX_TASKS = 1_000  # Task tool calls awaiting the run they started
_MAX_SIDECHAIN_UUIDS = 20_000  # recent 1.x sidechain lines, to follow a run's parentUuid chain
_MAX_SUMMARY_LINES = 1_000  # `summary` lines awaiting a line with their leafUuid
RECENT_UUIDS = 1_000  # the latest lines' uuids, for a summary line written after its leaf
_MAX_UUID_CHARS = 64  # a longer "uuid" is none, and not worth remembering
# The session's id, folder and branch are looked for in this many first events: a line
# without them (gitBranch is empty outside a repository) need not be read again and again.
_NAMES_WITHIN = 1_000

# Which tools change files, and where their input names the file.
FILE_TOOLS: dict[str, str] = {
    "Edit": "file_path",
    "MultiEdit": "file_path",
    "Write": "file_path",
    "NotebookEdit": "notebook_path",
}
# The tool that starts a subagent run (renamed Agent in later versions).
TASK_TOOLS = frozenset({"Task", "Agent"})

# Claude Code marks messages it made up itself (an interruption, an API error) with this model.
SYNTHETIC_MODEL = "<synthetic>"

# Claude Code records these as user events although nobody asked the model anything: `!` shell
# commands and their output.
_NOISE_PREFIXES = ("<bash-input>", "<bash-stdout>", "<bash-stderr>")
_INTERRUPTED = "[Request interrupted by user"
# Older versions wrote the /compact recap without isCompactSummary; it opens with this.
_COMPACT_RECAP = "This session is being continued from a previous conversation"
# The output of a slash command that ran locally (/clear, /model, ...): it follows the command
# line, and tells that the command was not a prompt.
_LOCAL_OUTPUT_PREFIXES = ("<local-command-stdout>", "<local-command-stderr>")
_COMMAND_NAME = re.compile(r"<command-name>(.*?)</command-name>", re.DOTALL)
_COMMAND_ARGS = re.compile(r"<command-args>(.*?)</command-args>", re.DOTALL)
# Context the IDE extension or Claude Code attaches to what the person typed; the text around
# these blocks is the prompt.
_CONTEXT_BLOCK = re.compile(
    r"<(ide_opened_file|ide_selection|ide_diagnostics|system-reminder)>.*?</\1>", re.DOTALL
)

# 2.1.x names Claude Code's own runs a<kind>-<hex> (acompact-a94287, aprompt_suggestion-221b3e,
# aside_question-…); the runs a Task started have plain hex ids.
_NAMED_AGENT = re.compile(r"a([a-z_]+)-[0-9a-f]+")
_AGENT_KINDS = {
    "compact": "compaction",
    "prompt_suggestion": "prompt_suggestion",
    "side_question": "side_question",
}
_WARMUP = "Warmup"  # 2.0.x starts a throwaway run with this prompt in every session

RunKind = Literal["task", "warmup", "compaction", "prompt_suggestion", "side_question", "other"]

# The timestamp form ccusage accepts on a usage line (it drops the line otherwise).
_USAGE_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{3})?(?:Z|[+-]\d\d:\d\d)")
_SEMVER = re.compile(r"\d+\.\d+\.\d")  # a prefix: 2.1.0-beta passes
# ccusage drops a usage line outright when any of these keys is null anywhere in it.
_NULL_REFUSED = frozenset(
    {
        b"id",
        b"cwd",
        b"model",
        b"speed",
        b"costUSD",
        b"version",
        b"sessionId",
        b"requestId",
        b"isApiErrorMessage",
        b"cache_read_input_tokens",
        b"cache_creation_input_tokens",
    }
)
_U64 = 1 << 64


class TranscriptError(Exception):
    """The file is not a transcript this parser can read: retrying will not help. The message
    is a sentence the person who uploaded it can act on."""


class TokenTotals(BaseModel):
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_creation: int = 0  # 5-minute and 1-hour cache writes together

    @property
    def total(self) -> int:
        return self.input + self.output + self.cache_read + self.cache_creation


class SubagentRun(BaseModel):
    """One subagent run of the session: what it was asked, what it did, what it cost."""

    agent_id: str  # Claude Code's id, or sidechain-<n> for a 1.x run, numbered in order
    file: str | None = None  # its own file (2.x); None: written inside the session file (1.x)
    # task: started by a Task/Agent tool call; warmup: 2.0.x's throwaway run; compaction,
    # prompt_suggestion, side_question: Claude Code's own 2.1.x runs; other: another named one.
    kind: RunKind = "task"
    description: str | None = None  # from the Task call that started it, when it is known
    subagent_type: str | None = None
    first_prompt: str | None = None  # cut at MAX_PROMPT_CHARS
    models: list[str] = Field(default_factory=list)
    tokens: TokenTotals = Field(default_factory=TokenTotals)
    cost_usd: float | None = None  # None: some of its tokens came from a model without a price
    unpriced_models: list[str] = Field(default_factory=list)
    assistant_messages: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    api_errors: int = 0
    first_timestamp: datetime | None = None
    last_timestamp: datetime | None = None
    duration_seconds: float | None = None


class ParseResult(BaseModel):
    """What a session's files say about it. Stored as jsonb and returned by the API; results
    stored by older versions are read back with model_validate, so every field added since has
    a default."""

    parse_status: Literal["ok", "partial"]
    parser_version: int = PARSER_VERSION

    session_id: str | None = None
    cwd: str | None = None
    git_branch: str | None = None
    main_transcript: bool = True  # False: only subagent files of the session were given
    files: int = 1  # files fed

    first_timestamp: datetime | None = None
    last_timestamp: datetime | None = None
    duration_seconds: float | None = None

    # The totals below count the whole session, main transcript and every run, except
    # user_prompts, which counts what the person typed.
    user_prompts: int = 0
    assistant_messages: int = 0
    tool_calls: int = 0
    tool_calls_by_name: dict[str, int] = Field(default_factory=dict)
    tokens: TokenTotals = Field(default_factory=TokenTotals)
    tokens_by_model: dict[str, TokenTotals] = Field(default_factory=dict)
    models: list[str] = Field(default_factory=list)
    # List prices from sessionflow/pricing.json (taken on pricing_date). None when any tokens
    # came from a model without a price; those models are in unpriced_models.
    cost_usd: float | None = None
    unpriced_models: list[str] = Field(default_factory=list)
    pricing_date: date | None = None

    # The first MAX_FILES_KEPT distinct paths in first-seen order; the total counts them all.
    files_touched: list[str] = Field(default_factory=list)
    files_touched_total: int = 0

    first_prompt: str | None = None  # the first thing the person typed, cut at MAX_PROMPT_CHARS
    summary: str | None = None  # the session's own first `summary` line (Claude Code's title)

    # Runs in the order they started, the first MAX_SUBAGENTS of subagents_total.
    subagents: list[SubagentRun] = Field(default_factory=list)
    subagents_total: int = 0

    compactions: int = 0  # /compact, by hand or automatic
    api_errors: int = 0  # responses that were an API error (Claude Code's own message)
    api_retries: int = 0  # failed API calls Claude Code retried
    tool_errors: int = 0  # tool results marked is_error
    interruptions: int = 0  # "[Request interrupted by user…]"

    lines_total: int = 0
    lines_skipped: int = 0  # not a JSON object, not UTF-8, or longer than the line cap
    lines_ignored: int = 0  # valid JSON objects that are not user/assistant/system/summary
    events: int = 0
    empty_subagent_files: int = 0  # subagent files without a single event (not an error)
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
    one, no file does); a subagent file without events is only counted. Lines that are not
    JSON objects, or longer than max_line_bytes, are skipped and counted; the result is then
    "partial". Pass lines from read_lines() so an over-long line is not loaded at all."""

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.acc = _Accumulator()

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
        acc.begin_file(name, role, agent_id)
        feed = acc.feed
        max_line_bytes = self.max_line_bytes
        number = 0
        for number, raw in enumerate(lines, start=1):
            line = raw.rstrip(b"\r\n")
            if len(line) > max_line_bytes:
                too_long += 1
                acc.skip(offset + number)
                continue
            if not line.strip():
                blank += 1
                continue
            event = _load(line)
            if event is None:
                acc.skip(offset + number)
            else:
                feed(event, line)
        acc.lines_total = offset + number
        acc.end_file()
        if acc.events == events_before:
            if role == "main":
                raise TranscriptError(
                    _not_a_transcript(number, blank, too_long, self.max_line_bytes)
                )
            acc.empty_subagent_files += 1

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


# --- small readers ---------------------------------------------------------------------------

# The C scanner json.loads ends in.
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _load(line: bytes) -> dict[str, Any] | None:
    """load_object(line), without json.loads' detours (encoding detection, two Python frames)
    for a line that starts as a UTF-8 JSON object, the only kind Claude Code writes: a few
    microseconds a line, which is a good part of the parser's own time. Any other line goes
    the long way, so the result is always the same."""
    if line[:1] != b"{" or line[1:2] == b"\x00":  # not an object, or UTF-16/32
        return load_object(line)
    try:
        text = line.decode("utf-8", "surrogatepass")  # as json.loads decodes bytes
        value, end = _scan(text, 0)
    except (ValueError, RecursionError, StopIteration):
        return None
    if end != len(text) and text[end:].strip(" \t\n\r"):
        return None  # json.loads: "Extra data"
    return value if type(value) is dict else None


def _clean(text: str, limit: int) -> str:
    """text cut to limit characters, without NUL or lone surrogates (a jsonb column refuses
    both, and pydantic cannot encode the second)."""
    text = text[:limit]  # first, so a 1 MB string costs no more than a short one
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _name(value: object, limit: int = MAX_NAME_CHARS) -> str | None:
    """A non-empty string field, cleaned; None for anything else."""
    if isinstance(value, str) and value:
        return _clean(value, limit) or None
    return None


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    # Naive and aware datetimes cannot be compared; Claude Code writes UTC.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _content_text(content: object) -> str | None:
    """The text of a message's content (a string, or its text blocks joined), or None when it
    has none (tool results, images alone)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = [
        block["text"]
        for block in content
        if isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    ]
    return "\n".join(texts) if texts else None


def _without_context(text: str) -> str:
    """What the person typed: text without the IDE's and Claude Code's context blocks."""
    if "<" in text:
        text = _CONTEXT_BLOCK.sub("", text)
    return text.strip()


def _command_text(text: str) -> str:
    """A slash command as it was typed ("/review src/app.py") rather than Claude Code's
    markup."""
    name_match = _COMMAND_NAME.search(text)
    args_match = _COMMAND_ARGS.search(text)
    name = name_match.group(1).strip() if name_match else ""
    args = args_match.group(1).strip() if args_match else ""
    if name and not name.startswith("/"):
        name = "/" + name  # 1.0.x wrote the name without its slash
    return f"{name} {args}".strip() or text.strip()


def _refuses_null(line: bytes) -> bool:
    """Whether ccusage would drop this usage line for a null it cannot take: it looks, in the
    raw bytes, for `"<key>":null` with one of _NULL_REFUSED as the key, at any depth."""
    start = 0
    while True:
        at = line.find(b":null", start)
        if at < 0:
            return False
        end = at - 1
        if end >= 0 and line[end] != 0x22:  # '"': tolerate what stands between key and colon
            end = line.rfind(b'"', 0, end + 1)
        if end > 0:
            begin = line.rfind(b'"', 0, end)
            if begin >= 0 and line[begin + 1 : end] in _NULL_REFUSED:
                return True
        start = at + 5


# --- the parts of the session ----------------------------------------------------------------


class _Task(NamedTuple):
    """A Task/Agent tool call: what a run was asked."""

    description: str | None
    subagent_type: str | None


class _Entry(NamedTuple):
    """One counted API response, as compact as it can be: ccusage's dedupe needs the first
    three fields, the totals and costs the rest."""

    request: int | None  # hash of requestId
    sidechain: bool
    speed: str | None  # "standard", "fast" or None (absent)
    input: int
    output: int
    write_5m: int
    write_1h: int
    read: int
    model: str | None
    run: int  # index into _Accumulator.runs
    cost_usd: float | None  # the line's own costUSD (written by old versions)

    @property
    def total(self) -> int:
        return self.input + self.output + self.write_5m + self.write_1h + self.read


def _replaces(new: _Entry, kept: _Entry) -> bool:
    """ccusage's choice between two copies of one response: the main session's copy, then the
    larger total (the last of a streamed message's lines), then the one that states its speed."""
    if new.sidechain != kept.sidechain:
        return kept.sidechain
    new_total, kept_total = new.total, kept.total
    if new_total != kept_total:
        return new_total > kept_total
    return new.speed is not None and kept.speed is None


class _Run:
    """What one part of the session did: the main transcript (run 0) or a subagent run."""

    __slots__ = (
        "agent_id",
        "api_errors",
        "assistant_messages",
        "file",
        "first",
        "first_prompt",
        "last",
        "models",
        "prompt_key",
        "tool_calls",
        "tool_errors",
    )

    def __init__(self, agent_id: str, file: str | None) -> None:
        self.agent_id = agent_id
        self.file = file
        self.first_prompt: str | None = None
        self.prompt_key: int | None = None  # hash of the whole first prompt, to find its Task
        self.models: dict[str, None] = {}
        self.assistant_messages = 0
        self.tool_calls = 0
        self.tool_errors = 0
        self.api_errors = 0
        self.first: datetime | None = None  # its earliest and latest timestamps
        self.last: datetime | None = None


class _Accumulator:
    """Running totals over the events of a session's files."""

    def __init__(self) -> None:
        self.lines_total = 0
        self.lines_skipped = 0
        self.lines_ignored = 0
        self.events = 0
        self.files = 0
        self.main_transcript = False
        self.empty_subagent_files = 0
        self.skipped_line_numbers: list[int] = []
        self.session_id: str | None = None
        self.cwd: str | None = None
        self.git_branch: str | None = None
        self.names_pending = True
        self.user_prompts = 0
        self.assistant_messages = 0
        self.tool_calls = 0
        self.tool_errors = 0
        self.api_errors = 0
        self.api_retries = 0
        self.interruptions = 0
        self.compact_boundaries = 0
        self.compact_recaps = 0
        self.tools: dict[str, int] = {}
        self.models: dict[str, None] = {}
        self.model_names: dict[str, str] = {}  # as written -> as reported (cleaned, capped)
        self.files_kept: dict[str, None] = {}  # insertion-ordered set of the kept paths
        # hash() of every distinct path, so the total stays exact past the kept ones at a few
        # dozen bytes a path; a 64-bit collision within one session is not a concern.
        self.file_hashes: set[int] = set()
        self.first_prompt: str | None = None
        self.pending_command: str | None = None  # a slash command not yet known to be a prompt

        # Usage: hash(message.id) -> [index of the run it was first seen in, kept entries...];
        # entries of responses without an id, which are never deduplicated, in a list.
        self.messages: dict[int, list[Any]] = {}
        self.unkeyed: list[_Entry] = []
        self.repeat: tuple[int, object, object, dict[str, Any]] | None = None
        self.line_time: datetime | None = None  # the timestamp of the line being read

        # Runs: runs[0] is the main transcript; past MAX_SUBAGENTS, runs share one overflow.
        self.runs: list[_Run] = [_Run("main", None)]
        self.runs_total = 0
        self.overflow: int | None = None
        self.file_run: int | None = None  # the run of the subagent file being fed
        self.file_agent: str | None = None
        self.file_name: str | None = None
        self.feeding_subagent = False
        self.sidechain_uuids: dict[int, int] = {}  # 1.x: hash(uuid) -> run index
        self.last_inline: int | None = None

        # Linking runs to the Task calls that started them.
        self.tasks: dict[int, _Task] = {}  # hash(tool_use id) -> what it asked
        self.task_prompts: dict[int, list[_Task]] = {}  # hash(prompt) -> Tasks that asked it
        self.task_prompts_held = 0
        self.agent_tasks: dict[str, _Task] = {}  # agentId (from the tool result) -> its Task

        # Summary lines: (line order, text) by hash(leafUuid), until a line with that uuid;
        # and the uuids of the latest lines, for a summary written just after its leaf.
        self.pending_summaries: dict[int, list[tuple[int, str]]] = {}
        self.recent_uuids: deque[str] = deque(maxlen=RECENT_UUIDS)
        self.summary_lines = 0
        self.summary: tuple[int, str] | None = None

    # --- files -------------------------------------------------------------------------------

    def begin_file(
        self, name: str, role: Literal["main", "subagent"], agent_id: str | None
    ) -> None:
        self.files += 1
        self.file_run = None
        self.feeding_subagent = role == "subagent"
        self.file_name = name
        self.file_agent = agent_id
        if role == "main":
            self.main_transcript = True

    def end_file(self) -> None:
        self.file_run = None
        self.feeding_subagent = False

    def skip(self, number: int) -> None:
        self.lines_skipped += 1
        if len(self.skipped_line_numbers) < MAX_SKIPPED_LINE_NUMBERS:
            self.skipped_line_numbers.append(number)

    def _new_run(self, agent_id: str, file: str | None) -> int:
        self.runs_total += 1
        if len(self.runs) > MAX_SUBAGENTS:
            if self.overflow is None:
                self.overflow = len(self.runs)
                self.runs.append(_Run(OTHER, None))
            return self.overflow
        self.runs.append(_Run(agent_id, file))
        return len(self.runs) - 1

    def _file_run(self, event: dict[str, Any]) -> int:
        """The run of the subagent file being fed, made at its first event."""
        if self.file_run is None:
            name = self.file_name or ""
            agent_id = (
                self.file_agent
                or _name(event.get("agentId"))
                or name.rsplit("/", 1)[-1].removeprefix("agent-").removesuffix(".jsonl")
            )
            self.file_run = self._new_run(
                _clean(agent_id, MAX_NAME_CHARS), _clean(name, MAX_PATH_CHARS)
            )
        return self.file_run

    def _inline_run(self, event: dict[str, Any], kind: object) -> int:
        """The 1.x run a sidechain line of the session file belongs to: a user line that does
        not follow another sidechain line starts one (its parentUuid is null, or the session's
        line that called the Task); every other line joins the run of the line it follows."""
        parent = event.get("parentUuid")
        run = self.sidechain_uuids.get(hash(parent)) if isinstance(parent, str) else None
        if run is None:
            starts = kind == "user" and (
                parent is None or _content_text(_message_content(event)) is not None
            )
            if starts or self.last_inline is None:
                run = self._new_run(f"sidechain-{self.runs_total + 1}", None)
            else:
                run = self.last_inline
        uuid = event.get("uuid")
        if isinstance(uuid, str):
            chain = self.sidechain_uuids
            chain[hash(uuid)] = run
            if len(chain) > _MAX_SIDECHAIN_UUIDS:
                del chain[next(iter(chain))]
        self.last_inline = run
        return run

    # --- events ------------------------------------------------------------------------------

    def feed(self, event: dict[str, Any], line: bytes) -> None:
        kind = event.get("type")
        message = event.get("message")
        if kind not in EVENT_TYPES:
            self.lines_ignored += 1
            # ccusage counts the usage of any line that carries one; so does this.
            if type(message) is dict and type(message.get("usage")) is dict:
                self.line_time = _timestamp(event.get("timestamp"))
                self._usage(event, message, message["usage"], line, self._run_of(event, kind))
            return
        self.events += 1
        if kind == "summary":
            self._summary_line(event)
            return
        if self.feeding_subagent or event.get("isSidechain") is True:
            run_index = self._run_of(event, kind)
        else:
            run_index = 0
        run = self.runs[run_index]
        # The envelope, written out here: this runs for every line.
        if self.names_pending and self.events <= _NAMES_WITHIN:
            self._names(event)
        ts = self.line_time = _timestamp(event.get("timestamp"))
        if ts is not None:
            # min/max rather than first/last line: resumed sessions are not always in order.
            if run.first is None or ts < run.first:
                run.first = ts
            if run.last is None or ts > run.last:
                run.last = ts
        uuid = event.get("uuid")
        if type(uuid) is str and len(uuid) <= _MAX_UUID_CHARS:  # (a hostile one is no leaf)
            self.recent_uuids.append(uuid)
            if self.pending_summaries:
                confirmed = self.pending_summaries.pop(hash(uuid), None)
                if confirmed:
                    self._own_summary(min(confirmed))
        if type(message) is dict:
            if kind == "assistant":
                self._assistant(event, message, line, run_index, run)
            elif kind == "user":
                self._user(event, message, run_index, run)
            elif type(message.get("usage")) is dict:
                self._usage(event, message, message["usage"], line, run_index)
        elif kind == "system":
            self._system(event)

    def _run_of(self, event: dict[str, Any], kind: object) -> int:
        if self.feeding_subagent:
            return self._file_run(event)
        if event.get("isSidechain") is True:
            return self._inline_run(event, kind)
        return 0

    def _names(self, event: dict[str, Any]) -> None:
        """The session's id, folder and branch: the first of each the lines give."""
        if self.session_id is None:
            self.session_id = _name(event.get("sessionId"))
        if self.cwd is None:
            self.cwd = _name(event.get("cwd"), MAX_PATH_CHARS)
        if self.git_branch is None:
            self.git_branch = _name(event.get("gitBranch"))
        self.names_pending = None in (self.session_id, self.cwd, self.git_branch)

    def _summary_line(self, event: dict[str, Any]) -> None:
        """Claude Code writes the titles of other sessions into a file too; a summary is this
        session's when its leafUuid is a line of this session: a line after it (remembered
        until then), or one of the RECENT_UUIDS lines before it (Claude Code writes a
        session's own title just after its last message). A summary whose leaf came longer
        before is taken for another session's: no title rather than a wrong one."""
        text = event.get("summary")
        if not isinstance(text, str) or not text.strip():
            return
        order = self.summary_lines
        self.summary_lines += 1
        if self.summary is not None and self.summary[0] < order:
            return  # an earlier one is already known to be the session's own
        entry = (order, _clean(text.strip(), MAX_SUMMARY_CHARS))
        leaf = event.get("leafUuid")
        if not isinstance(leaf, str):
            self._own_summary(entry)  # nothing says it is another session's
            return
        if leaf in self.recent_uuids:
            self._own_summary(entry)
        elif self.summary_lines <= _MAX_SUMMARY_LINES:
            self.pending_summaries.setdefault(hash(leaf), []).append(entry)

    def _own_summary(self, entry: tuple[int, str]) -> None:
        if self.summary is None or entry[0] < self.summary[0]:
            self.summary = entry

    def _system(self, event: dict[str, Any]) -> None:
        subtype = event.get("subtype")
        if subtype == "compact_boundary":
            self.compact_boundaries += 1
        elif subtype == "api_error":
            self.api_retries += 1
        elif subtype == "local_command":
            content = event.get("content")
            if isinstance(content, str) and content.startswith(_LOCAL_OUTPUT_PREFIXES):
                self.pending_command = None  # newer versions write the output as a system line

    def _user(self, event: dict[str, Any], message: dict[str, Any], index: int, run: _Run) -> None:
        """A user line: its text (a prompt, maybe) and its tool results (errors, and the
        agentId a Task call's result names), in one pass over its blocks."""
        content = message.get("content")
        if type(content) is str:
            text: str | None = content
        elif type(content) is list:
            texts: list[str] = []
            task_id = None
            for block in content:
                if type(block) is not dict:
                    continue
                block_type = block.get("type")
                if block_type == "tool_result":
                    if block.get("is_error") is True:
                        self.tool_errors += 1
                        run.tool_errors += 1
                    if task_id is None:
                        task_id = block.get("tool_use_id")
                elif block_type == "text":
                    block_text = block.get("text")
                    if type(block_text) is str:
                        texts.append(block_text)
            if task_id is not None and self.tasks:
                result = event.get("toolUseResult")
                if type(result) is dict and "agentId" in result:
                    self._task_result(result, task_id)
            text = "\n".join(texts) if texts else None
        else:
            text = None
        if index == 0:
            if text is not None or self.pending_command is not None:
                self._prompt(event, text)
        elif text is not None:
            self._run_prompt(event, text, run)

    def _task_result(self, result: dict[str, Any], task_id: object) -> None:
        """2.x: the result of a Task call names the agentId of the run it started."""
        if isinstance(task_id, str):
            task = self.tasks.get(hash(task_id))
            agent = _name(result.get("agentId"))  # as the run's own id is written
            if agent is not None and task is not None and len(self.agent_tasks) < _MAX_TASKS:
                self.agent_tasks[agent] = task

    def _prompt(self, event: dict[str, Any], text: str | None) -> None:
        """Whether a user line of the main transcript is something the person typed."""
        if text is not None:
            text = text.strip()
            if text.startswith(_LOCAL_OUTPUT_PREFIXES):
                self.pending_command = None  # it ran locally: nothing was asked of the model
                return
        self._commit_command()
        # isMeta: Claude Code's own caveats and command expansions; isCompactSummary: the recap
        # /compact writes.
        if not text or event.get("isMeta") or event.get("isCompactSummary"):
            if event.get("isCompactSummary"):
                self.compact_recaps += 1
            return
        if text.startswith(_INTERRUPTED):
            self.interruptions += 1
            return
        if text.startswith(_NOISE_PREFIXES):
            return
        if "<command-name>" in text:
            self.pending_command = _command_text(text)
            return
        if text.startswith(_COMPACT_RECAP):
            self.compact_recaps += 1
            return
        typed = _without_context(text)
        if not typed:
            return
        self.user_prompts += 1
        if self.first_prompt is None:
            self.first_prompt = _clean(typed, MAX_PROMPT_CHARS)

    def _commit_command(self) -> None:
        """Count the pending slash command as a prompt: what followed it was not local output
        (a custom command such as /review expands into a prompt for the model)."""
        if self.pending_command is None:
            return
        self.user_prompts += 1
        if self.first_prompt is None:
            self.first_prompt = _clean(self.pending_command, MAX_PROMPT_CHARS)
        self.pending_command = None

    def _run_prompt(self, event: dict[str, Any], text: str, run: _Run) -> None:
        """A subagent run's first prompt: the first text its user lines hold."""
        if text.startswith(_INTERRUPTED):
            self.interruptions += 1
            return
        if run.prompt_key is not None or event.get("isMeta"):
            return
        asked = _without_context(text)
        if asked:
            run.prompt_key = hash(asked)
            run.first_prompt = _clean(asked, MAX_PROMPT_CHARS)

    def _assistant(
        self, event: dict[str, Any], message: dict[str, Any], line: bytes, index: int, run: _Run
    ) -> None:
        if self.pending_command is not None:
            self._commit_command()
        model = message.get("model")
        if type(model) is str and model and model != SYNTHETIC_MODEL:
            name = self.model_names.get(model) if len(model) <= MAX_NAME_CHARS else None
            if name is None:
                name = self._model_name(model)
            if name not in run.models:
                if len(run.models) < MAX_MODELS:
                    run.models[name] = None
                if name not in self.models and len(self.models) < MAX_MODELS:
                    self.models[name] = None
        usage = message.get("usage")
        content = message.get("content")
        message_id = message.get("id")
        if type(message_id) is str and message_id:
            key = hash(message_id)
            seen = self.messages.get(key)
            if seen is not None:
                repeat = self.repeat
                if type(usage) is dict and not (
                    repeat is not None
                    and repeat[0] == key
                    and repeat[3] == usage
                    and repeat[1] == event.get("requestId")
                    and repeat[2] == event.get("isSidechain")
                ):  # (the next line of the response just kept, with its usage: no change)
                    self._usage(event, message, usage, line, index, key)
                if seen[0] != index:
                    # The same response replayed in another run's lines: it was counted where
                    # it was first seen, so its blocks are not counted again.
                    return
                if type(content) is list:
                    self._blocks(content, run)
                return
            self.messages[key] = [index]
        else:
            key = None
        self.assistant_messages += 1
        run.assistant_messages += 1
        if event.get("isApiErrorMessage") is True or (
            model == SYNTHETIC_MODEL and (_content_text(content) or "").startswith("API Error")
        ):
            self.api_errors += 1
            run.api_errors += 1
        if type(usage) is dict:
            self._usage(event, message, usage, line, index, key)
        if type(content) is list:
            self._blocks(content, run)

    def _blocks(self, content: list[Any], run: _Run) -> None:
        for block in content:
            if type(block) is dict and block.get("type") == "tool_use":
                self._tool_use(block, run)

    def _model_name(self, model: str) -> str:
        """A model's name as reported: cleaned, and OTHER past MAX_MODELS names."""
        name = _clean(model, MAX_NAME_CHARS) or OTHER
        if len(self.model_names) < MAX_MODELS:
            if len(model) <= MAX_NAME_CHARS:  # a longer one is not worth keeping as a key
                self.model_names[model] = name
            return name
        return name if name in self.models else OTHER

    def _usage(
        self,
        event: dict[str, Any],
        message: dict[str, Any],
        usage: dict[str, Any],
        line: bytes,
        run: int,
        key: int | None = None,
    ) -> None:
        """Count a line's usage once per response, as ccusage does: it takes only what its
        schema reads (so a line with a wrongly typed field is dropped whole), and keeps one
        copy of each (message.id, requestId) across all of the session's files. key: the
        hash of message.id, when the caller has it."""
        repeat = self.repeat
        if (
            repeat is not None
            and repeat[0] == key
            and repeat[3] == usage
            and repeat[1] == event.get("requestId")
            and repeat[2] == event.get("isSidechain")
        ):
            return  # the next line of the response just kept, with the same usage: no change
        entry = _entry(event, message, usage, run)
        if entry is None:
            return
        if key is None:
            message_id = message.get("id")
            if message_id is None:
                if _accepted(event, message, line, self.line_time):
                    self.unkeyed.append(entry)
                return
            if type(message_id) is not str:
                return
            key = hash(message_id)
        slots = self.messages.get(key)
        if slots is None:
            if _accepted(event, message, line, self.line_time):
                self.messages[key] = [run, entry]
                self._kept(key, event, usage)
            return
        match = None
        for i in range(1, len(slots)):
            if slots[i].request == entry.request:
                match = i
                break
        else:
            # A sidechain replay of a response under another requestId is the same response
            # (ccusage, after its issue #913: /btw runs replay the parent's messages).
            for i in range(1, len(slots)):
                if entry.sidechain or slots[i].sidechain:
                    match = i
                    break
        # Only a line that would count needs all of ccusage's checks: the repeated lines of a
        # streamed response mostly change nothing.
        if match is None:
            if _accepted(event, message, line, self.line_time):
                slots.append(entry)
                self._kept(key, event, usage)
        elif _replaces(entry, slots[match]) and _accepted(event, message, line, self.line_time):
            slots[match] = entry
            self._kept(key, event, usage)

    def _kept(self, key: int, event: dict[str, Any], usage: dict[str, Any]) -> None:
        """Remember the line just kept: the next line of the same response, with the same
        usage, cannot replace it (ccusage keeps the first of equals), so it is skipped."""
        self.repeat = (key, event.get("requestId"), event.get("isSidechain"), usage)

    def _tool_use(self, block: dict[str, Any], run: _Run) -> None:
        self.tool_calls += 1
        run.tool_calls += 1
        name = block.get("name")
        if not isinstance(name, str) or not name:
            name = OTHER_TOOLS
        tools = self.tools
        if name not in tools:
            name = _clean(name, MAX_NAME_CHARS) or OTHER_TOOLS
            if name not in tools and len(tools) >= MAX_TOOL_NAMES:
                name = OTHER_TOOLS  # MCP servers can bring any number of tool names
        tools[name] = tools.get(name, 0) + 1
        tool_input = block.get("input")
        if type(tool_input) is not dict:
            return
        if name in TASK_TOOLS:
            self._task(block, tool_input)
            return
        key = FILE_TOOLS.get(name)
        if key is None:
            return
        path = tool_input.get(key)
        if not isinstance(path, str) or not path:
            return
        digest = hash(path)
        if digest in self.file_hashes:
            return
        self.file_hashes.add(digest)
        if len(self.files_kept) < MAX_FILES_KEPT:
            self.files_kept[_clean(path, MAX_PATH_CHARS)] = None

    def _task(self, block: dict[str, Any], tool_input: dict[str, Any]) -> None:
        """Remember what a Task call asked, for the run it starts: 2.x names the run's agentId
        in the call's result; 1.x only repeats the prompt as the run's first."""
        task = _Task(
            _name(tool_input.get("description"), MAX_DESCRIPTION_CHARS),
            _name(tool_input.get("subagent_type")),
        )
        tool_use_id = block.get("id")
        if isinstance(tool_use_id, str):
            self.tasks[hash(tool_use_id)] = task
            if len(self.tasks) > _MAX_TASKS:
                del self.tasks[next(iter(self.tasks))]
        prompt = tool_input.get("prompt")
        if isinstance(prompt, str) and self.task_prompts_held < _MAX_TASKS:
            self.task_prompts_held += 1
            self.task_prompts.setdefault(hash(_without_context(prompt)), []).append(task)

    # --- the result --------------------------------------------------------------------------

    def result(self) -> ParseResult:
        self._commit_command()
        first = last = None  # the session's: the earliest and latest of its runs'
        for run in self.runs:
            if run.first is not None and (first is None or run.first < first):
                first = run.first
            if run.last is not None and (last is None or run.last > last):
                last = run.last
        totals = _Totals(len(self.runs))
        add = totals.add
        for slots in self.messages.values():
            if len(slots) == 2:  # one kept entry: nearly always
                add(slots[1])
            else:
                for i in range(1, len(slots)):
                    add(slots[i])
        for entry in self.unkeyed:
            add(entry)
        totals.finish()
        cost, unpriced = totals.cost(None)
        listed = self.runs[1 : self.overflow]  # the overflow is counted, not listed
        subagents = [self._subagent(i, run, totals) for i, run in enumerate(listed, start=1)]
        summary = self.summary[1] if self.summary is not None else None
        return ParseResult.model_validate(
            dict(
                parse_status="partial" if self.lines_skipped else "ok",
                session_id=self.session_id,
                cwd=self.cwd,
                git_branch=self.git_branch,
                main_transcript=self.main_transcript,
                files=self.files,
                first_timestamp=first,
                last_timestamp=last,
                duration_seconds=_duration(first, last),
                user_prompts=self.user_prompts,
                assistant_messages=self.assistant_messages,
                tool_calls=self.tool_calls,
                tool_calls_by_name=dict(sorted(self.tools.items(), key=lambda kv: (-kv[1], kv[0]))),
                tokens=_token_totals(totals.session),
                tokens_by_model={
                    model: _token_totals(counts)
                    for model, counts in sorted(totals.by_model.items(), key=lambda kv: kv[0])
                },
                models=sorted(self.models),
                cost_usd=cost,
                unpriced_models=unpriced,
                pricing_date=price_table().taken,
                files_touched=list(self.files_kept),
                files_touched_total=len(self.file_hashes),
                first_prompt=self.first_prompt,
                summary=summary,
                subagents=subagents,
                subagents_total=self.runs_total,
                compactions=max(self.compact_boundaries, self.compact_recaps),
                api_errors=self.api_errors,
                api_retries=self.api_retries,
                tool_errors=self.tool_errors,
                interruptions=self.interruptions,
                lines_total=self.lines_total,
                lines_skipped=self.lines_skipped,
                lines_ignored=self.lines_ignored,
                events=self.events,
                empty_subagent_files=self.empty_subagent_files,
                skipped_line_numbers=self.skipped_line_numbers,
            )
        )

    def _subagent(self, index: int, run: _Run, totals: _Totals) -> dict[str, Any]:
        """A SubagentRun's fields."""
        task = self.agent_tasks.get(run.agent_id)
        if task is None and run.prompt_key is not None:
            asked = self.task_prompts.get(run.prompt_key)
            if asked:
                task = asked.pop(0)  # two Tasks that asked the same: one run each, in order
        cost, unpriced = totals.cost(index)
        return dict(
            agent_id=run.agent_id,
            file=run.file,
            kind=_run_kind(run),
            description=task.description if task else None,
            subagent_type=task.subagent_type if task else None,
            first_prompt=run.first_prompt,
            models=sorted(run.models),
            tokens=_token_totals(totals.runs[index]),
            cost_usd=cost,
            unpriced_models=unpriced,
            assistant_messages=run.assistant_messages,
            tool_calls=run.tool_calls,
            tool_errors=run.tool_errors,
            api_errors=run.api_errors,
            first_timestamp=run.first,
            last_timestamp=run.last,
            duration_seconds=_duration(run.first, run.last),
        )


def _message_content(event: dict[str, Any]) -> object:
    message = event.get("message")
    return message.get("content") if type(message) is dict else None


def _entry(
    event: dict[str, Any], message: dict[str, Any], usage: dict[str, Any], run: int
) -> _Entry | None:
    """A line's usage as ccusage reads it, or None where its token counts are not what
    ccusage's schema takes (unsigned integers): it drops such a line whole. The line's other
    fields are checked by _accepted, only when the entry would count."""
    get = usage.get
    input_tokens = get("input_tokens")
    output_tokens = get("output_tokens")
    creation = get("cache_creation_input_tokens")
    read = get("cache_read_input_tokens")
    if creation is None:
        creation = 0
    if read is None:
        read = 0
    if not (
        type(input_tokens) is int
        and type(output_tokens) is int
        and type(creation) is int
        and type(read) is int
        and min(input_tokens, output_tokens, creation, read) >= 0
        and max(input_tokens, output_tokens, creation, read) < _U64
    ):
        return None
    # Cache writes: the 5-minute/1-hour split where the line has one, else all 5-minute.
    split = get("cache_creation")
    write_5m: Any
    write_1h: Any
    if split is None:
        write_5m, write_1h = creation, 0
    elif type(split) is dict:
        write_5m = split.get("ephemeral_5m_input_tokens")
        write_1h = split.get("ephemeral_1h_input_tokens")
        if write_5m is None:
            write_5m = 0
        if write_1h is None:
            write_1h = 0
        if not (
            type(write_5m) is int
            and type(write_1h) is int
            and min(write_5m, write_1h) >= 0
            and max(write_5m, write_1h) < _U64
        ):
            return None
    else:
        return None
    speed = get("speed")
    if speed is not None and speed != "standard" and speed != "fast":
        return None
    request = event.get("requestId")
    cost = event.get("costUSD")
    return _new_entry(
        _Entry,
        (
            hash(request) if request is not None else None,
            event.get("isSidechain") is True,
            speed,
            input_tokens,
            output_tokens,
            write_5m,
            write_1h,
            read,
            _cut(message.get("model")),
            run,
            float(cost) if type(cost) is float or type(cost) is int else None,
        ),
    )


def _cut(model: object) -> object:
    """A model id as an entry keeps it: a hostile one must not hold megabytes per entry."""
    if type(model) is str and len(model) > MAX_NAME_CHARS:
        return model[:MAX_NAME_CHARS]
    return model


def _accepted(
    event: dict[str, Any], message: dict[str, Any], line: bytes, time: datetime | None
) -> bool:
    """Whether ccusage keeps a usage line whose counts it can read: not when an optional field
    has the wrong type, an id is empty, the version is not semver, the timestamp is not one it
    reads (time: the line's, as read already), or a key it cannot take null is null."""
    for value in (
        message.get("model"),
        message.get("id"),
        event.get("requestId"),
        event.get("sessionId"),
    ):
        if value is not None and (type(value) is not str or not value):
            return False
    version = event.get("version")
    if version is not None and (type(version) is not str or not _SEMVER.match(version)):
        return False
    for flag in (event.get("isSidechain"), event.get("isApiErrorMessage")):
        if flag is not None and type(flag) is not bool:
            return False
    cost = event.get("costUSD")
    if cost is not None and type(cost) is not float and type(cost) is not int:
        return False
    # (A timestamp read is a string; ccusage takes only the RFC 3339 forms of it.)
    if time is None or not _USAGE_TIMESTAMP.fullmatch(event["timestamp"]):
        return False
    return not _refuses_null(line)


# tuple.__new__ builds an _Entry without the Python-level __new__ NamedTuple adds.
_new_entry = tuple.__new__


class _Totals:
    """The kept entries summed by run and by model, and their cost.

    Below the long-context threshold a price is linear in the tokens, so entries are summed by
    (run, model, speed) and each sum priced once; an entry past it is priced on its own."""

    def __init__(self, runs: int) -> None:
        # (run, model, fast, priced already) -> input, output, 5-minute writes, 1-hour
        # writes, reads
        self.sums: dict[tuple[int, str | None, bool, bool], list[int]] = {}
        self.costs = [0.0] * runs
        self.unpriced: list[dict[str, None]] = [{} for _ in range(runs)]
        self.prices: dict[str, Price | None] = {}
        self.threshold = price_table().threshold
        self.session = [0, 0, 0, 0, 0]
        self.runs = [[0, 0, 0, 0, 0] for _ in range(runs)]
        self.by_model: dict[str, list[int]] = {}

    def add(self, entry: _Entry) -> None:
        _, _, speed, input_, output, write_5m, write_1h, read, model, run, given = entry
        fast = speed == "fast"
        priced = given is not None
        if priced:  # old versions wrote what the response cost
            self.costs[run] += given  # type: ignore[operator]
        elif max(input_, output, write_5m, write_1h, read) > self.threshold:
            self._price(run, model, fast, [input_, output, write_5m, write_1h, read], one=True)
            priced = True
        key = (run, model, fast, priced)
        sums = self.sums.get(key)
        if sums is None:
            self.sums[key] = [input_, output, write_5m, write_1h, read]
        else:
            sums[0] += input_
            sums[1] += output
            sums[2] += write_5m
            sums[3] += write_1h
            sums[4] += read

    def finish(self) -> None:
        session = self.session
        for (run, model, fast, priced), counts in self.sums.items():
            per_run = self.runs[run]
            for i in range(5):
                session[i] += counts[i]
                per_run[i] += counts[i]
            if model is not None and model != SYNTHETIC_MODEL:
                name = _clean(model, MAX_NAME_CHARS) or OTHER
                if name not in self.by_model and len(self.by_model) >= MAX_MODELS:
                    name = OTHER
                per_model = self.by_model.setdefault(name, [0, 0, 0, 0, 0])
                for i, value in enumerate(counts):
                    per_model[i] += value
            if not priced:
                self._price(run, model, fast, counts)

    def _price(
        self, run: int, model: str | None, fast: bool, counts: list[int], one: bool = False
    ) -> None:
        """Add to a run's cost: one entry's (one), or a sum of entries each within the
        long-context threshold (priced linearly)."""
        if not any(counts) or model == SYNTHETIC_MODEL:
            return
        cost = None
        price = None
        if model is not None:
            if model not in self.prices:
                self.prices[model] = price_table().find(model)
            price = self.prices[model]
            if price is not None:
                cost = (price.cost if one else price.cost_below_threshold)(
                    input=counts[0],
                    output=counts[1],
                    cache_write_5m=counts[2],
                    cache_write_1h=counts[3],
                    cache_read=counts[4],
                    fast=fast,
                )
        if cost is not None:
            self.costs[run] += cost
            return
        if model is None:
            name = "(no model)"
        elif price is not None:  # a price, but none for fast mode
            name = _clean(f"{model}-fast", MAX_NAME_CHARS)
        else:
            name = _clean(model, MAX_NAME_CHARS) or OTHER
        unpriced = self.unpriced[run]
        unpriced[name if len(unpriced) < MAX_MODELS else OTHER] = None

    def cost(self, run: int | None) -> tuple[float | None, list[str]]:
        """USD for a run (None: the whole session), or None with the models that have no
        price: a partial sum would pass for the whole cost."""
        runs = range(len(self.runs)) if run is None else (run,)
        unpriced: dict[str, None] = {}
        for i in runs:
            unpriced.update(self.unpriced[i])
        if unpriced:
            return None, sorted(unpriced)[:MAX_MODELS]
        # To a ten-billionth of a dollar: float noise off, fractions of a cent kept.
        return round(sum(self.costs[i] for i in runs), 10), []


def _token_totals(counts: list[int]) -> dict[str, int]:
    """TokenTotals' fields, for ParseResult to validate along with the rest (quicker than a
    model built on its own)."""
    return {
        "input": counts[0],
        "output": counts[1],
        "cache_read": counts[4],
        "cache_creation": counts[2] + counts[3],
    }


def _duration(first: datetime | None, last: datetime | None) -> float | None:
    if first is None or last is None:
        return None
    return (last - first).total_seconds()


def _run_kind(run: _Run) -> RunKind:
    named = _NAMED_AGENT.fullmatch(run.agent_id)
    if named:
        kind = _AGENT_KINDS.get(named.group(1), "other")
        return kind  # type: ignore[return-value]
    if run.first_prompt == _WARMUP:
        return "warmup"
    return "task"
