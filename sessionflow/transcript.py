"""The Claude Code transcript format as both sides need it: reading lines within a cap, and
telling from a file's first lines whether it is a transcript and which session it records.

The CLI uses it to pick files to upload; the worker's parser builds on it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024

# The event types this parser aggregates. Claude Code writes others too (file-history-snapshot,
# queue-operation, ...); they are valid lines that carry nothing we report.
EVENT_TYPES = frozenset({"user", "assistant", "system", "summary"})

# Lines Claude Code writes beside the conversation: a file of nothing else is Claude Code's,
# but holds no session to process.
CLAUDE_RECORD_TYPES = frozenset({"file-history-snapshot", "queue-operation", "progress"})

_READ_BLOCK = 256 * 1024
# Enough for the first lines of a transcript, which is all discovery reads of each file.
_HEAD_BLOCK = 16 * 1024


@dataclass(frozen=True)
class TranscriptHead:
    """What the first lines of a file say: whether it is a Claude Code transcript, and the
    session id its events carry (None when none of the lines read has one: Claude Code names
    the file after the session, so a caller can fall back on the file's stem)."""

    is_transcript: bool
    session_id: str | None
    reason: str | None = None  # why it is not a transcript, as a sentence
    # A subagent run's id (Claude Code 2.x writes `agentId` on every line of a run's file).
    agent_id: str | None = None


def read_lines(
    stream: IO[bytes],
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    *,
    on_block: Callable[[bytes], object] | None = None,
    block_size: int = _READ_BLOCK,
) -> Iterator[bytes]:
    """The lines of a binary stream, like `for line in stream`, except that a line longer than
    max_line_bytes is never held whole: only its first max_line_bytes + 2 bytes are yielded,
    which parse_transcript then counts as skipped.

    The stream is read in blocks of block_size and cut at each newline here, a third of what
    asking the stream for each line costs; on_block, if given, sees every block read, every
    byte once (the worker hashes them as it parses)."""
    limit = max_line_bytes + 2  # room for the line's own \r\n
    parts: list[bytes] = []  # the start of a line that continues in the next block
    held = 0  # and its length
    dropping = False  # the rest of an over-long line is skipped up to its newline
    while block := stream.read(block_size):
        if on_block is not None:
            on_block(block)
        find = block.find
        start = 0
        if dropping:
            start = find(b"\n") + 1
            if not start:
                continue
            dropping = False
        if parts:
            end = find(b"\n", start) + 1
            if not end:
                parts.append(block[start:])
                held += len(block) - start
                if held >= limit:
                    yield b"".join(parts)[:limit]
                    parts, held, dropping = [], 0, True
                continue
            parts.append(block[start:end])
            line = b"".join(parts)
            parts, held = [], 0
            yield line[:limit]
            start = end
        while end := find(b"\n", start) + 1:
            yield block[start : min(end, start + limit)]
            start = end
        if start < len(block):
            rest = block[start:]
            if len(rest) >= limit:
                yield rest[:limit]
                dropping = True
            else:
                parts, held = [rest], len(rest)
    if parts:
        yield b"".join(parts)


def inspect_transcript_head(lines: Iterable[bytes], max_lines: int = 50) -> TranscriptHead:
    """Whether the first max_lines non-blank lines hold a Claude Code event, and the first
    sessionId and agentId among them. Reads no further than it must and raises nothing for
    any content (errors from the iterable itself, such as an OSError, do propagate)."""
    is_transcript = False
    session_id: str | None = None
    agent_id: str | None = None
    seen = 0
    own_records: set[str] = set()  # Claude Code's bookkeeping lines: snapshots, queue, ...
    for raw in lines:
        if not raw.strip():
            continue
        seen += 1
        event = load_object(raw)
        if event is not None:
            kind = event.get("type")
            if kind in EVENT_TYPES:
                is_transcript = True
            elif isinstance(kind, str) and kind in CLAUDE_RECORD_TYPES:
                own_records.add(kind)
            candidate = event.get("sessionId")
            if session_id is None and isinstance(candidate, str) and candidate:
                session_id = candidate
            agent = event.get("agentId")
            if agent_id is None and isinstance(agent, str) and agent:
                agent_id = agent
        # A subagent run's file carries agentId on every line, beside its sessionId: the first
        # line with a sessionId tells both.
        if (is_transcript and session_id is not None) or seen >= max_lines:
            break
    if is_transcript:
        return TranscriptHead(True, session_id, agent_id=agent_id)
    if seen == 0:
        reason = "The file is empty."
    elif own_records and seen < max_lines:
        kinds = ", ".join(sorted(own_records))
        lines_word = "line" if seen == 1 else "lines"
        reason = (
            f"It holds no conversation: its {seen} {lines_word} are Claude Code's own records "
            f"({kinds}), not messages."
        )
    else:
        reason = (
            f"The file is not a Claude Code transcript: none of its first {seen} lines is a "
            "JSON event with a 'type' of user, assistant, system or summary."
        )
    return TranscriptHead(False, None, reason)


def inspect_file(
    path: Path, max_lines: int = 50, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> TranscriptHead:
    """inspect_transcript_head on a file; an unreadable file raises its OSError."""
    with path.open("rb") as stream:
        return inspect_transcript_head(
            read_lines(stream, max_line_bytes, block_size=_HEAD_BLOCK), max_lines
        )


def load_object(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):  # ValueError covers bad JSON and bad UTF-8
        return None
    return value if isinstance(value, dict) else None
