"""Finding the transcripts to backfill: `*.jsonl` files under the given paths, each checked to
be a Claude Code transcript, named by its session id, hashed and sized."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sessionflow.protocol import MAX_ID_LENGTH, SessionRegistration, is_valid_session_id
from sessionflow.transcript import inspect_file

_HASH_CHUNK = 1024 * 1024


class DiscoveryError(Exception):
    """A path given on the command line cannot be searched."""


@dataclass(frozen=True)
class LocalTranscript:
    path: Path
    session_id: str
    sha256: str
    size: int
    metadata: dict[str, Any]

    def registration(self) -> SessionRegistration:
        return SessionRegistration(
            id=self.session_id, sha256=self.sha256, size=self.size, metadata=self.metadata
        )


@dataclass
class Discovery:
    transcripts: list[LocalTranscript] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)


def find_jsonl(paths: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for root in paths:
        if root.is_file():
            found.append(root)
        elif root.is_dir():
            for folder, dirs, files in os.walk(root):
                dirs.sort()
                found.extend(
                    Path(folder) / name for name in sorted(files) if name.endswith(".jsonl")
                )
        elif not root.exists():
            raise DiscoveryError(f"{root} does not exist")
        else:
            raise DiscoveryError(f"{root} is neither a file nor a folder")
    return list(dict.fromkeys(found))


def hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def discover(
    paths: Sequence[Path],
    *,
    max_bytes: int,
    on_file: Callable[[Path], None] = lambda _: None,
) -> Discovery:
    """Every transcript under paths; files that are not transcripts are listed as skipped."""
    result = Discovery()
    owners: dict[str, Path] = {}
    for path in find_jsonl(paths):
        on_file(path)
        try:
            head = inspect_file(path)
            if not head.is_transcript:
                result.skipped.append((path, head.reason or "not a Claude Code transcript"))
                continue
            session_id = head.session_id or path.stem
            if not is_valid_session_id(session_id):
                fallback = path.stem
                if session_id != fallback and is_valid_session_id(fallback):
                    session_id = fallback
                else:
                    result.skipped.append(
                        (
                            path,
                            f"its session id {session_id[:60]!r} is not usable (1 to "
                            f"{MAX_ID_LENGTH} letters, digits or . _ : @ + -)",
                        )
                    )
                    continue
            if session_id in owners:
                result.skipped.append(
                    (path, f"same session id {session_id} as {owners[session_id]}")
                )
                continue
            sha256, size = hash_file(path)
            stat = path.stat()
        except OSError as exc:
            result.skipped.append((path, f"cannot read it: {exc.strerror}"))
            continue
        if size > max_bytes:
            result.skipped.append((path, f"it is {size} bytes, over the {max_bytes}-byte limit"))
            continue
        owners[session_id] = path
        metadata = {
            "project": path.parent.name,
            "file": path.name,
            "modified": datetime.fromtimestamp(stat.st_mtime, UTC).isoformat(),
        }
        result.transcripts.append(LocalTranscript(path, session_id, sha256, size, metadata))
    return result
