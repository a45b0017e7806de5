"""Finding the sessions to backfill: `*.jsonl` files under the given paths, each checked to be
a Claude Code transcript, hashed and sized, and gathered into sessions.

A session is its files. Claude Code writes a session's main transcript to
`<project>/<sessionId>.jsonl` and, from 2.0, each subagent run it starts to a file of its own:
`<project>/agent-<id>.jsonl` (2.0.x) or `<project>/<sessionId>/subagents/agent-<id>.jsonl`
(2.1.x), whose lines carry the parent's sessionId. So a subagent file is never a session of
its own, whatever order the files are found in: it joins the session its lines name, with or
without that session's main file. No file is dropped without a reason in `skipped`."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sessionflow.protocol import (
    MAX_ID_LENGTH,
    MAX_SESSION_FILES,
    SessionFile,
    SessionRegistration,
    is_valid_session_id,
    session_digest,
)
from sessionflow.transcript import inspect_file

_HASH_CHUNK = 1024 * 1024
_AGENT_FILE = re.compile(r"^agent-(.+)\.jsonl$")

Role = Literal["main", "subagent"]


class DiscoveryError(Exception):
    """A path given on the command line cannot be searched."""


@dataclass(frozen=True)
class LocalFile:
    path: Path
    name: str  # relative to its project folder: what a person recognises
    role: Role
    agent_id: str | None
    sha256: str
    size: int
    mtime: float

    def wire(self) -> SessionFile:
        return SessionFile(
            name=self.name,
            role=self.role,
            agent_id=self.agent_id,
            sha256=self.sha256,
            size=self.size,
        )


@dataclass(frozen=True)
class LocalSession:
    session_id: str
    files: tuple[LocalFile, ...]  # the main transcript first (if found), then subagent runs
    project: str

    @property
    def main(self) -> LocalFile | None:
        return self.files[0] if self.files and self.files[0].role == "main" else None

    @property
    def single_file(self) -> bool:
        """One main transcript and nothing else: uploaded in one request, as before 2.x."""
        return len(self.files) == 1 and self.main is not None

    @property
    def sha256(self) -> str:
        return session_digest([f.wire() for f in self.files])

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def path(self) -> Path:
        """The file that names the session for people: its main transcript, else a run."""
        return self.files[0].path

    def metadata(self) -> dict[str, Any]:
        modified = max(f.mtime for f in self.files)
        meta: dict[str, Any] = {
            "project": self.project,
            "file": self.files[0].name,
            "modified": datetime.fromtimestamp(modified, UTC).isoformat(),
        }
        if self.main is None:
            meta["main_transcript_missing"] = True
        return meta

    def registration(self) -> SessionRegistration:
        return SessionRegistration(
            id=self.session_id,
            sha256=self.sha256,
            size=self.size,
            metadata=self.metadata(),
            files=None if self.single_file else [f.wire() for f in self.files],
        )


@dataclass
class Discovery:
    sessions: list[LocalSession] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why), for people
    files_found: int = 0  # every *.jsonl looked at
    unusable_paths: list[tuple[Path, str]] = field(default_factory=list)  # given, not searched
    # Of the skipped, the transcripts that cannot go to the server (unreadable, over a limit,
    # no usable id); the others are not transcripts, or copies of what is uploaded.
    withheld: list[Path] = field(default_factory=list)

    @property
    def files_in_sessions(self) -> int:
        return sum(len(s.files) for s in self.sessions)


def find_jsonl(paths: Sequence[Path], unusable: list[tuple[Path, str]] | None = None) -> list[Path]:
    """The *.jsonl files under paths. A path that cannot be searched goes into unusable with
    the reason; DiscoveryError only when none of the paths can be."""
    found: list[Path] = []
    problems: list[tuple[Path, str]] = []
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
            problems.append((root, "does not exist"))
        else:
            problems.append((root, "is neither a file nor a folder"))
    if problems and len(problems) == len(paths):
        path, why = problems[0]
        more = f" (nor do {len(problems) - 1} other paths)" if len(problems) > 1 else ""
        raise DiscoveryError(f"{path} {why}{more}")
    if unusable is not None:
        unusable.extend(problems)
    return list(dict.fromkeys(found))


def hash_file(path: Path, limit: int | None = None) -> tuple[str, int]:
    """sha256 and size of the file, or of its first limit bytes."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while True:
            want = _HASH_CHUNK if limit is None else min(_HASH_CHUNK, limit - size)
            if want <= 0:
                break
            chunk = f.read(want)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@dataclass(frozen=True)
class _Found:
    """One transcript file, classified: which session, which part of it."""

    file: LocalFile
    session_id: str
    project: str


def _project_and_name(path: Path, role: Role) -> tuple[str, str]:
    """The project folder a file belongs to and its name relative to it: a 2.1.x subagent file
    sits two folders below its project, in <sessionId>/subagents/."""
    if role == "subagent" and path.parent.name == "subagents":
        project_dir = path.parent.parent.parent
        return project_dir.name, path.relative_to(project_dir).as_posix()
    return path.parent.name, path.name


class _Withheld(str):
    """Why a transcript cannot be uploaded (where a plain str says why a file is none)."""


def _classify(path: Path, max_bytes: int) -> _Found | str:
    """What one file is, or why it cannot be uploaded (a sentence)."""
    head = inspect_file(path)
    if not head.is_transcript:
        return head.reason or "not a Claude Code transcript"
    agent_match = _AGENT_FILE.match(path.name)
    in_subagents = path.parent.name == "subagents"
    role: Role = "subagent" if agent_match or in_subagents or head.agent_id else "main"
    session_id: str | None
    agent_id: str | None = None
    if role == "subagent":
        agent_id = head.agent_id or (agent_match.group(1) if agent_match else path.stem)
        # The parent's id: what its lines say, else (2.1.x) the folder it is kept in.
        session_id = head.session_id or (path.parent.parent.name if in_subagents else None)
        if session_id is None:
            return _Withheld("it is a subagent run, but none of its first lines names its session")
        if not is_valid_session_id(agent_id):
            return _Withheld(f"its agent id {agent_id[:60]!r} is not usable")
    else:
        session_id = head.session_id or path.stem
        if not is_valid_session_id(session_id) and is_valid_session_id(path.stem):
            session_id = path.stem
    if not is_valid_session_id(session_id):
        return _Withheld(
            f"its session id {session_id[:60]!r} is not usable (1 to {MAX_ID_LENGTH} letters, "
            "digits or . _ : @ + -)"
        )
    stat = path.stat()
    if stat.st_size > max_bytes:
        return _Withheld(
            f"it is {stat.st_size:,} bytes, over the {max_bytes:,}-byte limit per file"
        )
    sha256, size = hash_file(path)
    project, name = _project_and_name(path, role)
    local = LocalFile(path, name, role, agent_id, sha256, size, stat.st_mtime)
    return _Found(local, session_id, project)


def _is_prefix(short: LocalFile, long: LocalFile) -> bool:
    """Whether short's bytes begin long's: an older copy of a file Claude Code appended to."""
    if short.size > long.size:
        return False
    try:
        return hash_file(long.path, short.size)[0] == short.sha256
    except OSError:
        return False


def _one_per_part(
    session_id: str, candidates: list[LocalFile], skipped: list[tuple[Path, str]]
) -> LocalFile:
    """One of several files that claim the same part of a session (its main transcript, or
    one subagent run). Copies and older copies go quietly into skipped with the reason; files
    that truly differ are all named there, and the newest one is kept."""
    # Longest first: an older copy of a transcript is a prefix of the newer one.
    ordered = sorted(candidates, key=lambda f: (-f.size, -f.mtime, str(f.path)))
    kept = ordered[0]
    part = "main transcript" if kept.role == "main" else f"subagent run {kept.agent_id}"
    conflicting = []
    for other in ordered[1:]:
        if other.sha256 == kept.sha256:
            skipped.append((other.path, f"a copy of {kept.path} (same bytes)"))
        elif _is_prefix(other, kept):
            skipped.append((other.path, f"an older copy of {kept.path}, which holds all of it"))
        else:
            conflicting.append(other)
    if conflicting:
        newest = max([kept, *conflicting], key=lambda f: (f.mtime, f.size))
        for other in [kept, *conflicting]:
            if other is not newest:
                skipped.append(
                    (
                        other.path,
                        f"another file, {newest.path}, is also the {part} of session "
                        f"{session_id} with different content; uploaded that one (the newer)",
                    )
                )
        kept = newest
    return kept


def discover(
    paths: Sequence[Path],
    *,
    max_bytes: int,
    max_files_per_session: int = MAX_SESSION_FILES,
    on_file: Callable[[Path], None] = lambda _: None,
) -> Discovery:
    """Every session under paths, each with all its files found; files that are not
    transcripts, cannot be read or lose to another file are listed in skipped."""
    result = Discovery()
    parts: dict[str, dict[str | None, list[LocalFile]]] = {}  # session -> agent (None: main)
    projects: dict[str, str] = {}
    for path in find_jsonl(paths, result.unusable_paths):
        result.files_found += 1
        on_file(path)
        try:
            found = _classify(path, max_bytes)
        except OSError as exc:
            result.skipped.append((path, f"cannot read it: {exc.strerror or exc}"))
            result.withheld.append(path)
            continue
        if isinstance(found, str):
            result.skipped.append((path, found))
            if isinstance(found, _Withheld):
                result.withheld.append(path)
            continue
        key = found.file.agent_id if found.file.role == "subagent" else None
        parts.setdefault(found.session_id, {}).setdefault(key, []).append(found.file)
        if found.file.role == "main" or found.session_id not in projects:
            projects[found.session_id] = found.project
    for session_id, by_part in parts.items():
        main = by_part.pop(None, None)
        files = [_one_per_part(session_id, main, result.skipped)] if main else []
        runs = sorted(
            (_one_per_part(session_id, c, result.skipped) for c in by_part.values()),
            key=lambda f: f.name,
        )
        room = max_files_per_session - len(files)
        for extra in runs[room:]:
            result.skipped.append(
                (
                    extra.path,
                    f"session {session_id} has more than {max_files_per_session} files; "
                    "this subagent run was left out",
                )
            )
            result.withheld.append(extra.path)
        files.extend(runs[:room])
        result.sessions.append(LocalSession(session_id, tuple(files), projects[session_id]))
    return result
