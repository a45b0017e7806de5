"""The wire contract shared by server and client: lifecycle vocabulary, request and response
bodies, WebSocket messages. Written once here so both sides cannot drift apart."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema

MAX_BATCH_IDS = 500
MAX_ID_LENGTH = 200


class Lifecycle(StrEnum):
    QUEUED = "queued"
    DOWNLOADING = "downloading"
    PARSING = "parsing"
    PARSED = "parsed"
    SUMMARIZING = "summarizing"
    SUMMARIZED = "summarized"
    ARCHIVED = "archived"
    FAILED = "failed"


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


def is_valid_session_id(value: str, max_length: int = MAX_ID_LENGTH) -> bool:
    # fullmatch: `$` alone would also accept a trailing newline.
    return 0 < len(value) <= max_length and _SESSION_ID_RE.fullmatch(value) is not None


def lookup_id_problem(value: str, max_length: int = MAX_ID_LENGTH) -> str | None:
    """Why an id asked about (batch-status, watch) cannot be looked up, or None if it can.
    Any other string is simply not found; NUL is refused because PostgreSQL text cannot
    hold it."""
    if len(value) > max_length:
        return f"is {len(value)} characters; ids are at most {max_length}"
    if "\x00" in value:
        return "contains a NUL character"
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# --- errors ------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    error: str
    detail: str


# --- batch status (the polling contract) --------------------------------------------------


class BatchStatusRequest(_Strict):
    session_ids: list[LookupId] = Field(min_length=1)


class SessionStatus(BaseModel):
    lifecycle: Lifecycle
    parse_status: ParseStatus
    version: int | None = None


class BatchStatusResponse(BaseModel):
    statuses: dict[str, SessionStatus]
    not_found: list[str]


# --- registration and upload ---------------------------------------------------------------


class SessionRegistration(_Strict):
    id: SessionId
    sha256: Sha256Hex
    size: int = Field(ge=0)
    metadata: dict[str, Any] | None = None


class RegisterRequest(_Strict):
    sessions: list[SessionRegistration] = Field(min_length=1)


class RegisterResponse(BaseModel):
    upload: list[str]


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
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    finished_at: datetime | None
    parse_result: dict[str, Any] | None
    summary: dict[str, Any] | None


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
