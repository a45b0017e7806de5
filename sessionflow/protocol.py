"""The wire contract shared by server and client: lifecycle vocabulary, request and response
bodies, WebSocket messages. Written once here so both sides cannot drift apart."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema

from sessionflow.limits import default

T = TypeVar("T")

# The defaults of the limits the wire documents (the server enforces its configured ones).
MAX_BATCH_IDS = default("max_batch_ids")
MAX_ID_LENGTH = default("max_id_length")
MAX_SESSION_FILES = default("max_session_files")
MAX_FILE_NAME_LENGTH = 1000  # a file's name as found, relative to its project folder


class Lifecycle(StrEnum):
    QUEUED = "queued"
    DOWNLOADING = "downloading"
    PARSING = "parsing"
    PARSED = "parsed"
    SUMMARIZING = "summarizing"
    SUMMARIZED = "summarized"
    ARCHIVED = "archived"
    FAILED = "failed"


# Every lifecycle state's name, in the order a session goes through them.
LIFECYCLE_STATES: tuple[str, ...] = tuple(state.value for state in Lifecycle)


class ParseStatus(StrEnum):
    PENDING = "pending"
    OK = "ok"
    PARTIAL = "partial"
    FAILED = "failed"


TERMINAL: frozenset[str] = frozenset(
    {Lifecycle.PARSED, Lifecycle.SUMMARIZED, Lifecycle.ARCHIVED, Lifecycle.FAILED}
)

# The same table the database trigger enforces (sql/001_sessions.sql); any state may also go
# back to queued when a changed transcript is re-ingested.
TRANSITIONS: dict[str, frozenset[str]] = {
    Lifecycle.QUEUED: frozenset({Lifecycle.DOWNLOADING, Lifecycle.FAILED}),
    Lifecycle.DOWNLOADING: frozenset({Lifecycle.PARSING, Lifecycle.FAILED}),
    Lifecycle.PARSING: frozenset({Lifecycle.PARSED, Lifecycle.SUMMARIZING, Lifecycle.FAILED}),
    Lifecycle.SUMMARIZING: frozenset({Lifecycle.SUMMARIZED, Lifecycle.FAILED}),
    Lifecycle.PARSED: frozenset({Lifecycle.ARCHIVED}),
    Lifecycle.SUMMARIZED: frozenset({Lifecycle.ARCHIVED}),
    Lifecycle.ARCHIVED: frozenset(),
    Lifecycle.FAILED: frozenset(),
}

# Ids a client may create: they appear in URL paths and logs, so they are kept to a plain,
# unambiguous alphabet (no separators, no control or look-alike characters).
SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$"
_SESSION_ID_RE = re.compile(SESSION_ID_PATTERN)
SHA256_PATTERN = r"^[0-9a-f]{64}$"

# Shapes only: how many ids and how long may be are limits the server checks against its
# settings (defaults MAX_BATCH_IDS, MAX_ID_LENGTH), so that they stay configurable.
# The documents (OpenAPI) give the default limits; the server checks the configured ones.
LookupId = Annotated[
    str,
    StringConstraints(min_length=1),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}),
]
SessionId = Annotated[  # alphabet: is_valid_session_id
    str,
    StringConstraints(min_length=1),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID_LENGTH,
            "pattern": SESSION_ID_PATTERN,
        }
    ),
]
Sha256Hex = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """items in consecutive slices of at most size: batches of ids for requests, queries and
    messages."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def is_valid_session_id(value: str, max_length: int = MAX_ID_LENGTH) -> bool:
    # fullmatch: `$` alone would also accept a trailing newline.
    return 0 < len(value) <= max_length and _SESSION_ID_RE.fullmatch(value) is not None


def lifecycle_states(values: Sequence[str]) -> list[str]:
    """The lifecycle states a list filter names (`state=` of GET /api/sessions, `list --state`):
    each value one name, or several separated by commas, in any case; each once, in the order
    given. ValueError, in words, for a name that is no state or a value that names none."""
    known = ", ".join(LIFECYCLE_STATES)
    chosen: list[str] = []
    for value in values:
        names = [name.strip().lower() for name in value.split(",")]
        if not any(names):  # `state=`: a filter that names nothing is a mistake, not "all"
            raise ValueError(f"the state filter names no state; use one of {known}")
        for name in filter(None, names):
            if name not in LIFECYCLE_STATES:
                raise ValueError(f"{name[:40]!r} is not a state; use one of {known}")
            if name not in chosen:
                chosen.append(name)
    return chosen


def lookup_id_problem(value: str, max_length: int = MAX_ID_LENGTH) -> str | None:
    """Why an id asked about (batch-status, watch) cannot be looked up, or None if it can.
    Any other string is simply not found; NUL is refused because PostgreSQL text cannot
    hold it."""
    if len(value) > max_length:
        return f"is {len(value)} characters; ids are at most {max_length}"
    if "\x00" in value:
        return "contains a NUL character"
    return None


def nul_path(value: Any) -> str | None:
    """Where a JSON value holds a NUL character (in a key or a string), as a path such as
    `metadata.tags[2]`, or None. PostgreSQL's text and jsonb cannot hold NUL. Iterative, so a
    deeply nested value cannot exhaust the stack."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return path or "the top"
        elif isinstance(item, dict):
            for key, child in item.items():
                child_path = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and "\x00" in key:
                    return child_path.replace("\x00", "\\0")
                stack.append((child_path, child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# --- errors ------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    error: str
    detail: str


# --- batch status (the polling contract) --------------------------------------------------


class BatchStatusRequest(_Strict):
    # Its 500 ids are rarely seen twice: caching them as pydantic does every string by default
    # cost the hot path more than it saved (a third of this body's validation).
    model_config = ConfigDict(cache_strings="keys")

    session_ids: list[LookupId] = Field(min_length=1)


class SessionStatus(BaseModel):
    lifecycle: Lifecycle
    parse_status: ParseStatus
    version: int | None = None


class BatchStatusResponse(BaseModel):
    statuses: dict[str, SessionStatus]
    not_found: list[str]


# --- registration and upload ---------------------------------------------------------------

FileRole = Literal["main", "subagent"]

FileName = Annotated[
    str,
    StringConstraints(min_length=1),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_FILE_NAME_LENGTH}),
]


class SessionFile(_Strict):
    """One file of a session: its main transcript, or the transcript of one subagent run.

    name is where the file was found, relative to its project folder, for people to read; the
    bytes are known by sha256 alone."""

    name: FileName
    role: FileRole
    agent_id: SessionId | None = None  # a subagent run's id (Claude Code's agentId)
    sha256: Sha256Hex
    size: int = Field(ge=0)


def session_digest(files: Sequence[SessionFile]) -> str:
    """What a session's files add up to, as one sha256: equal exactly when the same contents
    play the same parts. A session of one main transcript is that file's own sha256 (as a
    session was before it could have several files), so nothing uploaded earlier looks
    changed. Names are left out: moving a project folder changes nothing."""
    if len(files) == 1 and files[0].role == "main":
        return files[0].sha256
    lines = sorted(f"{f.role} {f.agent_id or '-'} {f.sha256}\n" for f in files)
    return hashlib.sha256(("sessionflow-files/1\n" + "".join(lines)).encode()).hexdigest()


class SessionRegistration(_Strict):
    id: SessionId
    sha256: Sha256Hex  # session_digest(files); of a one-file session, the file's sha256
    size: int = Field(ge=0)  # of all its files
    metadata: dict[str, Any] | None = None
    files: list[SessionFile] | None = None  # None: one main transcript (sha256, size)


class RegisterRequest(_Strict):
    sessions: list[SessionRegistration] = Field(min_length=1)


class RegisterResponse(BaseModel):
    upload: list[str]  # the sessions whose files the server needs, or whose set of files changed
    # Of the sessions in upload that listed files: the sha256s of the files this owner has
    # not uploaded yet. The others are on the server already and need only be named.
    missing_files: dict[str, list[str]] = Field(default_factory=dict)


class SessionFilesRequest(_Strict):
    """PUT /api/sessions/{id}/files: the session is these files (each uploaded before with
    PUT /api/files/{sha256}); a changed set queues the session again."""

    files: list[SessionFile] = Field(min_length=1)


class FileUploadResponse(BaseModel):
    sha256: str
    size: int


class UploadResponse(BaseModel):
    id: str
    queued: bool
    lifecycle: Lifecycle
    version: int


class SessionDetail(BaseModel):
    id: str
    lifecycle: Lifecycle
    parse_status: ParseStatus
    version: int
    error: str | None
    attempts: int
    transcript_sha256: str
    transcript_size: int
    metadata: dict[str, Any] | None
    files: list[SessionFile]
    parser_version: int | None
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    finished_at: datetime | None
    parse_result: dict[str, Any] | None
    summary: dict[str, Any] | None
    # Why a `parsed` session was not summarized, as a sentence (None otherwise, and from
    # servers older than the field).
    summary_skipped: str | None = None


# --- listing (GET /api/sessions) ------------------------------------------------------------

# Sessions per page when the request does not say (the most is the server's max_list_page).
DEFAULT_LIST_PAGE = 50


class SessionListItem(BaseModel):
    """One session as the listing shows it: figures the parse result has, None until then."""

    id: str
    lifecycle: Lifecycle
    parse_status: ParseStatus
    # When the session was last active: its transcript's last timestamp once parsed, until
    # then its files' last write as the client reported it (else the upload's time); never in
    # the future. The listing is ordered by it, newest first (sql/005_session_list.sql).
    active_at: datetime
    project: str | None
    title: str | None
    duration_seconds: float | None
    tokens: int | None  # input, output, cache reads and writes, with its subagent runs
    cost_usd: float | None  # None: not parsed yet, or a model without a price


class SessionListPage(BaseModel):
    sessions: list[SessionListItem]
    # Pass it back as ?cursor= (with the same filters) for the next page; None: the last page.
    next_cursor: str | None


# --- live stream (WS /api/sessions/watch) --------------------------------------------------


class WatchMessage(_Strict):
    type: Literal["watch"]
    session_ids: list[LookupId] = Field(min_length=1)


class StatusesMessage(BaseModel):
    type: Literal["statuses"] = "statuses"
    statuses: dict[str, SessionStatus]
    not_found: list[str] = Field(default_factory=list)


class ErrorMessage(BaseModel):
    type: Literal["error"] = "error"
    error: str
    detail: str


# Close codes of the live stream.
WS_CLOSE_POLICY = 1008
WS_CLOSE_UNAUTHORIZED = 4401
