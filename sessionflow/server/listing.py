"""The listing's filters and its opaque cursor (GET /api/sessions).

A cursor is the (active_at, id) of the last session of a page, the keyset the next page starts
after, plus a fingerprint of the owner and the filters it was made for. A cursor used by
another owner, or with other filters, is refused with the same sentence as a damaged one: it
cannot move anyone's listing, and its refusal says nothing of whose it was."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sessionflow.protocol import (
    LIFECYCLE_STATES,
    MAX_FILE_NAME_LENGTH,
    lifecycle_states,
    lookup_id_problem,
)
from sessionflow.server.errors import ApiError, bad_request

# The longest cursor this server makes: an id of max_id_length characters, each escaped in
# JSON's longest spelling (6 bytes), in base64, and room for the rest. Anything longer is refused
# before it is decoded.
_CURSOR_OVERHEAD = 256

# The first page starts after ('infinity', ''), before every session in the keyset order, and
# no --since is '-infinity': the statement keeps one shape (sql/queries.sql list_sessions).
_INFINITY = "infinity"
_MINUS_INFINITY = "-infinity"

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def iso_time_only(value: object) -> object:
    """A query's `since` as the API documents it, an ISO 8601 time: pydantic alone would also
    read a number as seconds since 1970."""
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError(f"{value!r} is not an ISO 8601 time; give one like 2026-03-01T14:30Z")
    return value


@dataclass(frozen=True)
class Listing:
    """A listing request's filters, checked: what the query is given."""

    owner: str
    project: str | None
    since: datetime | None
    states: list[str]

    def fingerprint(self) -> str:
        key = json.dumps(
            [self.owner, self.project, self.since and self.since.isoformat(), self.states]
        )
        return hashlib.sha256(key.encode()).hexdigest()[:24]

    def params(self, after: tuple[datetime, str] | None, limit: int) -> dict[str, object]:
        return {
            "owner": self.owner,
            "project": self.project,
            "after_at": _INFINITY if after is None else after[0],
            "after_id": "" if after is None else after[1],
            "since": _MINUS_INFINITY if self.since is None else self.since,
            "states": self.states,
            "limit": limit,
        }


def listing(
    owner: str, project: str | None, since: datetime | None, states: Sequence[str]
) -> Listing:
    """The filters as the query takes them; a bad one is a 400 that says what is wrong."""
    if project is not None:
        if len(project) > MAX_FILE_NAME_LENGTH or "\x00" in project:
            raise bad_request(
                f"project: at most {MAX_FILE_NAME_LENGTH} characters, and no NUL character"
            )
        # A path names its last folder, as the listing shows projects.
        project = project.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or None
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)  # a time without an offset is UTC
    try:
        chosen = lifecycle_states(states)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    return Listing(owner, project, since, sorted(chosen) or list(LIFECYCLE_STATES))


def encode_cursor(listing: Listing, active_at: datetime, session_id: str) -> str:
    payload = json.dumps(
        {"a": active_at.isoformat(), "i": session_id, "k": listing.fingerprint()},
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(listing: Listing, cursor: str, max_id_length: int) -> tuple[datetime, str]:
    """Where the page after cursor starts; a 400 for a cursor this listing did not give."""
    refused = ApiError(
        400,
        "invalid_cursor",
        "the cursor is not one this server gave for this listing (same token, same filters); "
        "start again without it",
    )
    if len(cursor) > max_id_length * 8 + _CURSOR_OVERHEAD:
        raise refused
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        active_at = datetime.fromisoformat(data["a"])
        session_id = data["i"]
        fingerprint = data["k"]
    except (binascii.Error, ValueError, TypeError, KeyError, RecursionError):
        raise refused from None
    if (
        not isinstance(session_id, str)
        or not isinstance(fingerprint, str)
        or active_at.tzinfo is None
        or lookup_id_problem(session_id, max_id_length) is not None
        or fingerprint != listing.fingerprint()
    ):
        raise refused
    return active_at, session_id
