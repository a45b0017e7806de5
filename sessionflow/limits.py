"""Every limit sessionflow enforces, with its default, in one table.

The server's settings (sessionflow.settings) take their defaults from here and may be set
with SESSIONFLOW_<NAME>; the wire contract (sessionflow.protocol) and the client read the
defaults they need from here too; the README's limits table is checked against this one
(tests/unit/test_limits.py). Each limit is enforced at the edge: before a body is parsed,
before a query is sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

KiB = 1024
MiB = 1024 * KiB

Unit = Literal["count", "bytes", "seconds", "characters"]


@dataclass(frozen=True)
class Limit:
    name: str  # the setting's name; its variable is SESSIONFLOW_ + NAME
    default: int | float
    unit: Unit
    what: str  # what it limits, and what exceeding it gives

    @property
    def variable(self) -> str:
        return self.name.upper()

    def shown(self) -> str:
        """The default as the README writes it: 256 MiB, 10,000, 20 s."""
        value = self.default
        if self.unit == "bytes":
            for unit, size in (("MiB", MiB), ("KiB", KiB)):
                if value >= size and value % size == 0:
                    return f"{int(value // size):,} {unit}"
            return f"{int(value):,} bytes"
        if self.unit == "seconds":
            return f"{value:,g} s"
        return f"{int(value):,}"


LIMITS: tuple[Limit, ...] = (
    Limit(
        "max_batch_ids", 500, "count", "ids per batch-status request and per watch message (400)"
    ),
    Limit("max_register_sessions", 500, "count", "sessions per registration request (400)"),
    Limit(
        "max_list_page",
        500,
        "count",
        "sessions per page of GET /api/sessions, the listing (400); more come by its cursor",
    ),
    Limit("max_id_length", 200, "characters", "a session or agent id (400)"),
    Limit(
        "max_transcript_bytes",
        256 * MiB,
        "bytes",
        "each file of a session, after decompression (413); the body as sent may be 1% + "
        "64 KiB more, and nothing may follow its gzip stream (400)",
    ),
    Limit(
        "max_session_files",
        1000,
        "count",
        "files of one session: its main transcript and subagent runs (400)",
    ),
    Limit("max_json_body_bytes", 2 * MiB, "bytes", "a JSON request body (413)"),
    Limit("max_metadata_bytes", 16 * KiB, "bytes", "the metadata of one session (400)"),
    Limit(
        "max_pending_registrations",
        100_000,
        "count",
        "sessions of one owner registered and not uploaded yet (429)",
    ),
    Limit("registration_ttl_seconds", 86_400, "seconds", "how long such a registration is kept"),
    Limit(
        "ws_max_watched",
        10_000,
        "count",
        "sessions watched on one WebSocket (error, then close 1008)",
    ),
    Limit(
        "ws_max_message_bytes",
        # What the largest valid watch message needs: MAX_BATCH_IDS ids of MAX_ID_LENGTH
        # characters, each in JSON's longest spelling (12 bytes), quoted and separated, and
        # 1 KiB for the rest. Left unset it follows those two limits.
        500 * (200 * 12 + 4) + 1024,
        "bytes",
        "a message a client sends on the WebSocket (close 1009); unset, it follows "
        "MAX_BATCH_IDS and MAX_ID_LENGTH",
    ),
    Limit(
        "ws_ping_interval_seconds",
        20,
        "seconds",
        "WebSocket keepalive; a client that answers no ping, or reads nothing, is dropped "
        "after as long again",
    ),
    Limit(
        "parse_max_line_bytes",
        64 * MiB,
        "bytes",
        "one line of a transcript; a longer one is skipped and the parse is partial",
    ),
    Limit("worker_job_timeout_seconds", 900, "seconds", "one attempt at a session (then retried)"),
    Limit(
        "worker_max_attempts", 3, "count", "tries on transient errors before a session is failed"
    ),
    Limit(
        "worker_batch_size",
        16,
        "count",
        "jobs a worker claims at once, and sessions whose stage writes it commits in one "
        "transaction",
    ),
)

DEFAULTS: dict[str, int | float] = {limit.name: limit.default for limit in LIMITS}


def markdown_table() -> str:
    """The README's limits table, as this table says it must read."""
    rows = ["| variable | default | what it limits |", "|---|---|---|"]
    rows += [f"| `{limit.variable}` | {limit.shown()} | {limit.what} |" for limit in LIMITS]
    return "\n".join(rows)


def default(name: str) -> int:
    """The default of an integer limit (KeyError for a name not in the table)."""
    return int(DEFAULTS[name])


def default_seconds(name: str) -> float:
    return float(DEFAULTS[name])
