"""The backfilling phase: register local sessions, then upload only what the server asks for
(the files it lacks, then the list of a session's files), with bounded concurrency and retries
of transient failures."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from sessionflow.backoff import backoff_seconds
from sessionflow.client.discovery import LocalFile, LocalSession
from sessionflow.client.http import (
    ApiError,
    AuthError,
    ClientError,
    ServerUnreachable,
    SessionflowClient,
)
from sessionflow.protocol import (
    MAX_BATCH_IDS,
    FileUploadResponse,
    RegisterResponse,
    chunked,
)

_READ_CHUNK = 256 * 1024
T = TypeVar("T")


@dataclass
class UploadOptions:
    concurrency: int = 8
    force: bool = False
    attempts: int = 5  # per transcript, for transient failures
    retry_initial: float = 0.5
    retry_max: float = 8.0


@dataclass
class UploadEvents:
    """What the uploads tell as they go. on_progress(n): n more sessions settled (skipped,
    uploaded or failed); on_ready(ids): the server has these sessions (already had them, or
    they were just uploaded), so their processing can be followed; on_failed(id, why);
    on_retry(why, attempt, attempts): a request failed for a moment and is tried again."""

    on_progress: Callable[[int], None] = lambda _: None
    on_ready: Callable[[Sequence[str]], None] = lambda _: None
    on_failed: Callable[[str, str], None] = lambda _id, _why: None
    on_retry: Callable[[str, int, int], None] = lambda _why, _attempt, _attempts: None


@dataclass
class UploadResult:
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # the server already had these bytes
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, why)

    @property
    def tracked(self) -> list[str]:
        """The sessions the server has: what the processing phase watches."""
        return self.uploaded + self.skipped


async def gzip_stream(path: Path) -> AsyncIterator[bytes]:
    """The file gzip-compressed, a chunk at a time: memory stays flat for any file size."""
    compressor = zlib.compressobj(5, zlib.DEFLATED, 31)
    with path.open("rb") as f:
        while True:
            chunk = await asyncio.to_thread(f.read, _READ_CHUNK)
            if not chunk:
                break
            out = compressor.compress(chunk)
            if out:
                yield out
    yield compressor.flush()


def _why(exc: Exception) -> str:
    """Why an upload failed, as a sentence: the server's own words, without its codes."""
    return exc.detail if isinstance(exc, ApiError) and exc.detail else str(exc)


def _short_reason(exc: ClientError) -> str:
    """A few words on a transient failure, for a progress note."""
    if isinstance(exc, ServerUnreachable):
        return "the server is not answering"
    if isinstance(exc, ApiError):
        return f"the server answered {exc.status}"
    return type(exc).__name__


def _transient(exc: ClientError) -> bool:
    return isinstance(exc, ServerUnreachable) or (isinstance(exc, ApiError) and exc.transient)


async def backfill(
    client: SessionflowClient,
    sessions: Sequence[LocalSession],
    options: UploadOptions,
    on_progress: Callable[[int], None] = lambda _: None,
    events: UploadEvents | None = None,
) -> UploadResult:
    """Register every session, upload the ones the server needs, telling events (and
    on_progress, as events.on_progress) as it goes.

    Raises AuthError and ServerUnreachable (after retries) at once: nothing else can work."""
    events = events or UploadEvents(on_progress=on_progress)
    result = UploadResult()

    def _retrying(make: Callable[[], Awaitable[T]], options: UploadOptions) -> Awaitable[T]:
        return _retry(make, options, events.on_retry)

    by_id = {s.session_id: s for s in sessions}
    needed: list[tuple[str, list[str] | None]] = []  # (id, the files the server lacks)

    async def register(batch: Sequence[str]) -> RegisterResponse | None:
        """The server's answer for a batch; a batch it refuses (one session over a limit, say)
        is registered one session at a time, so that only the refused ones fail."""
        registrations = [by_id[sid].registration() for sid in batch]
        try:
            return await _retrying(lambda: client.register(registrations), options)
        except ApiError as exc:
            if exc.transient or exc.status in (401, 403):
                raise
            if len(batch) == 1:
                result.failed.append((batch[0], _why(exc)))
                events.on_failed(batch[0], _why(exc))
                events.on_progress(1)
                return None
        upload: list[str] = []
        missing: dict[str, list[str]] = {}
        for sid in batch:
            answer = await register([sid])
            if answer is not None:
                upload += answer.upload
                missing.update(answer.missing_files)
        return RegisterResponse(upload=upload, missing_files=missing)

    for batch in chunked([s.session_id for s in sessions], MAX_BATCH_IDS):
        answer = await register(batch)
        refused = {sid for sid, _ in result.failed}
        wanted = set(answer.upload) if answer is not None else set()
        ready = []
        for sid in batch:
            if sid in refused:
                continue
            if options.force or sid in wanted:
                needed.append((sid, answer.missing_files.get(sid) if answer else None))
            else:
                result.skipped.append(sid)
                ready.append(sid)
        events.on_ready(ready)
        events.on_progress(len(ready))

    semaphore = asyncio.Semaphore(options.concurrency)

    async def upload_one(session: LocalSession, missing: list[str] | None) -> None:
        async with semaphore:
            try:
                await _upload_session(client, session, missing, options, _retrying)
            except (AuthError, ServerUnreachable):
                raise
            except (ClientError, _Unreadable) as exc:
                result.failed.append((session.session_id, _why(exc)))
                events.on_failed(session.session_id, _why(exc))
            else:
                result.uploaded.append(session.session_id)
                events.on_ready([session.session_id])
            events.on_progress(1)

    try:
        async with asyncio.TaskGroup() as group:
            for sid, missing in needed:
                group.create_task(upload_one(by_id[sid], missing))
    except* (AuthError, ServerUnreachable) as fatal:
        # Nothing else can work: the first such error, as itself (not a group of them).
        raise _first_leaf(fatal) from None
    return result


def _first_leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    assert isinstance(first, Exception)
    return first


class _Unreadable(Exception):
    """A local file could not be read while uploading it."""


class _Retrying(Protocol):
    def __call__(
        self, make: Callable[[], Awaitable[T]], options: UploadOptions
    ) -> Awaitable[T]: ...


async def _upload_session(
    client: SessionflowClient,
    session: LocalSession,
    missing: list[str] | None,
    options: UploadOptions,
    _retrying: _Retrying,
) -> None:
    """Upload what the server lacks of one session and queue it. A session of one main
    transcript goes in one request; one with subagent runs sends each missing file, then the
    list of its files."""
    if session.single_file:
        main = session.files[0]
        await _retrying(
            lambda: client.upload(
                session.session_id, _read(main), main.sha256, force=options.force
            ),
            options,
        )
        return
    wire = [f.wire() for f in session.files]

    async def send(files: Sequence[LocalFile]) -> None:
        for file in {f.sha256: f for f in files}.values():

            def put(f: LocalFile = file) -> Awaitable[FileUploadResponse]:
                return client.upload_file(f.sha256, _read(f))

            await _retrying(put, options)

    # --force sends every file again (which also repairs a damaged stored copy).
    lacking = None if options.force else missing
    await send([f for f in session.files if lacking is None or f.sha256 in lacking])
    try:
        await _retrying(
            lambda: client.put_session_files(session.session_id, wire, force=options.force),
            options,
        )
    except ApiError as exc:
        if exc.status != 409:
            raise
        # The server lacks a file it did not ask for (a store restored from backup, say):
        # send them all, once, and name them again.
        await send(session.files)
        await _retrying(
            lambda: client.put_session_files(session.session_id, wire, force=options.force),
            options,
        )


async def _read(file: LocalFile) -> AsyncIterator[bytes]:
    try:
        async for chunk in gzip_stream(file.path):
            yield chunk
    except OSError as exc:
        raise _Unreadable(f"cannot read {file.path}: {exc.strerror or exc}") from exc


async def _retry(
    make: Callable[[], Awaitable[T]],
    options: UploadOptions,
    on_retry: Callable[[str, int, int], None],
) -> T:
    """make() again after a transient failure, with jittered exponential backoff; on_retry
    hears of each failure that is tried again."""
    attempt = 1
    while True:
        try:
            return await make()
        except ClientError as exc:
            if not _transient(exc) or attempt >= options.attempts:
                raise
            on_retry(_short_reason(exc), attempt + 1, options.attempts)
        await asyncio.sleep(
            backoff_seconds(attempt, base=options.retry_initial, cap=options.retry_max)
        )
        attempt += 1
