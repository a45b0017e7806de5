"""The backfilling phase: register local transcripts, then upload only what the server asks
for, with bounded concurrency and retries of transient failures."""

from __future__ import annotations

import asyncio
import random
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from sessionflow.client.discovery import LocalTranscript
from sessionflow.client.http import (
    ApiError,
    AuthError,
    ClientError,
    ServerUnreachable,
    SessionflowClient,
    chunked,
)
from sessionflow.protocol import MAX_BATCH_IDS, SessionRegistration

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


def _transient(exc: ClientError) -> bool:
    return isinstance(exc, ServerUnreachable) or (isinstance(exc, ApiError) and exc.transient)


async def backfill(
    client: SessionflowClient,
    transcripts: Sequence[LocalTranscript],
    options: UploadOptions,
    on_progress: Callable[[int], None] = lambda _: None,
) -> UploadResult:
    """Register every transcript, upload the ones the server needs. on_progress(n) is called
    with how many more transcripts are settled (skipped, uploaded or failed).

    Raises AuthError and ServerUnreachable (after retries) at once: nothing else can work."""
    result = UploadResult()
    by_id = {t.session_id: t for t in transcripts}
    needed: list[str] = []
    for batch in chunked([t.session_id for t in transcripts], MAX_BATCH_IDS):
        registrations = [by_id[sid].registration() for sid in batch]

        def register(regs: list[SessionRegistration] = registrations) -> Awaitable[list[str]]:
            return client.register(regs)

        wanted = await _retrying(register, options)
        wanted_set = set(wanted)
        for sid in batch:
            if options.force or sid in wanted_set:
                needed.append(sid)
            else:
                result.skipped.append(sid)
        on_progress(len(batch) - sum(1 for sid in batch if sid in needed))

    semaphore = asyncio.Semaphore(options.concurrency)

    async def upload_one(transcript: LocalTranscript) -> None:
        async with semaphore:
            try:
                await _retrying(
                    lambda: client.upload(
                        transcript.session_id,
                        gzip_stream(transcript.path),
                        transcript.sha256,
                        force=options.force,
                    ),
                    options,
                )
                result.uploaded.append(transcript.session_id)
            except (AuthError, ServerUnreachable):
                raise
            except ClientError as exc:
                result.failed.append((transcript.session_id, str(exc)))
            except OSError as exc:
                result.failed.append(
                    (transcript.session_id, f"cannot read {transcript.path}: {exc.strerror}")
                )
            finally:
                on_progress(1)

    async with asyncio.TaskGroup() as group:
        for sid in needed:
            group.create_task(upload_one(by_id[sid]))
    return result


async def _retrying(make: Callable[[], Awaitable[T]], options: UploadOptions) -> T:
    """make() again after a transient failure, with jittered exponential backoff."""
    delay = options.retry_initial
    attempt = 1
    while True:
        try:
            return await make()
        except ClientError as exc:
            if not _transient(exc) or attempt >= options.attempts:
                raise
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, options.retry_max)
        attempt += 1
