"""The pipeline a claimed session goes through: download → parse → summarize, moving its
lifecycle at each step with writes fenced by the job's lease.

What fails is sorted here: a PermanentError (the file is not a transcript, the stored object
is gone or damaged) fails the session at once; a TransientError (storage or database
unreachable) is retried by the runner. Both carry a sentence the person who uploaded the
session can act on. Blocking work (download, parse, summarize, JSON encoding) runs in
threads, so the event loop keeps renewing leases meanwhile."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Literal, TypeVar

import psycopg
import psycopg_pool
from pydantic import ValidationError

from sessionflow.logs import first_line
from sessionflow.metrics import Metrics
from sessionflow.protocol import nul_path
from sessionflow.storage import LocalStore, ObjectNotFound, ObjectStore, StorageError, discard
from sessionflow.transcript import read_lines
from sessionflow.worker.claims import Claims, Job, JobFile
from sessionflow.worker.parse import ParseResult, SessionParser, TranscriptError
from sessionflow.worker.parsers import ParserCrashed, ParserPool
from sessionflow.worker.summarize import HeuristicSummarizer, Summarizer, should_summarize

log = logging.getLogger(__name__)

T = TypeVar("T")

_COPY_CHUNK = 1024 * 1024


class PermanentError(Exception):
    """Retrying cannot help: the session fails now, with this message as its error."""


class TransientError(Exception):
    """Worth another attempt later; the message says what went wrong."""


class JobLost(Exception):
    """The lease was taken away (expired and re-claimed, or the session was re-ingested)."""


class Cancelled(Exception):
    """The job was given up (stop, lost lease, timeout) while a thread still worked on it."""


def _checked(chunks: Iterable[bytes], cancel: threading.Event) -> Iterator[bytes]:
    for chunk in chunks:
        if cancel.is_set():
            raise Cancelled
        yield chunk


def download(store: ObjectStore, key: str, target: Path, cancel: threading.Event) -> None:
    """Copy one stored file from a remote store to a local file."""
    with store.open(key) as src, target.open("wb") as out:
        for chunk in _checked(iter(functools.partial(src.read, _COPY_CHUNK), b""), cancel):
            out.write(chunk)


def scratch_file(scratch_dir: Path) -> Path:
    """A new empty file for one transcript, named for this process so that a later worker on
    this machine can sweep what a killed one left behind."""
    scratch_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=scratch_dir, prefix=f"{os.getpid()}-", suffix=".jsonl")
    os.close(fd)
    return Path(name)


def _discard_all(paths: list[Path]) -> None:
    for path in paths:
        discard(path)


def parse_files(
    files: Sequence[tuple[JobFile, Path]],
    max_line_bytes: int,
    cancel: threading.Event | None = None,
) -> tuple[ParseResult, str]:
    """Parse a session's files line by line (memory follows the result and the longest line,
    not the files), checking on the way that the bytes are the ones uploaded; returns the
    result and its JSON. Runs in a parser process or thread (cancel: only a thread can be told
    to give up)."""
    parser = SessionParser(max_line_bytes=max_line_bytes)
    for file, path in files:
        try:
            stream = path.open("rb")
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"the stored file {file.key} ({file.name}) is missing") from exc
        except OSError as exc:
            raise StorageError(f"could not read {path}: {exc.strerror}") from exc
        hasher = hashlib.sha256()
        with stream:
            lines: Iterable[bytes] = read_lines(stream, max_line_bytes, on_block=hasher.update)
            if cancel is not None:
                lines = _checked(lines, cancel)
            parser.feed(lines, name=file.name, role=_role(file.role), agent_id=file.agent_id)
        actual = hasher.hexdigest()
        if actual != file.sha256:
            raise PermanentError(
                f"the stored file {file.key} ({file.name}) is damaged (its sha256 is {actual}, "
                f"not {file.sha256}); upload the session again with --force to replace it"
            )
    result = parser.result()
    encoded = result.model_dump_json()
    # The parser cleans every string it keeps; should one still hold NUL, the session fails
    # here saying where, instead of the jsonb write failing as if the database were away.
    # (A search of the encoded text costs microseconds; the walk runs only on a find.)
    if "\\u0000" in encoded:
        where = nul_path(result.model_dump()) or "unknown"
        raise PermanentError(
            f"the parse result cannot be stored: its field {where} holds a NUL character"
        )
    return result, encoded


def _role(role: str) -> Literal["main", "subagent"]:
    return "main" if role == "main" else "subagent"


class Pipeline:
    def __init__(
        self,
        *,
        claims: Claims,
        store: ObjectStore,
        summarizer: Summarizer,
        min_user_prompts: int,
        max_line_bytes: int,
        executor: Executor,
        parsers: ParserPool,
        scratch_dir: Path,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.claims = claims
        self.store = store
        self.summarizer = summarizer
        self.min_user_prompts = min_user_prompts
        self.max_line_bytes = max_line_bytes
        self.executor = executor
        self.parsers = parsers
        self.scratch_dir = scratch_dir

    def _observe(self, stage: str, started: float) -> None:
        """Record how long a stage took, from `started` (time.perf_counter())."""
        if self.metrics is not None:
            self.metrics.stage_duration.labels(stage).observe(time.perf_counter() - started)

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))

    async def run(
        self, job: Job, cancel: threading.Event, deadline: asyncio.Timeout | None = None
    ) -> str:
        """Take the job to a terminal state and return it. Raises PermanentError,
        TransientError or JobLost. deadline: the attempt's timeout, which the time spent
        waiting for a free parser does not count against."""
        try:
            # The job holds no connection: its writes go through the group commit.
            return await self._run(job, cancel, deadline)
        except ObjectNotFound as exc:
            raise PermanentError(
                f"the transcript is missing from the object store ({exc}); "
                "upload the session again with force"
            ) from exc
        except StorageError as exc:
            raise TransientError(f"the object store failed: {exc}") from exc
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise TransientError(f"the database was unreachable: {first_line(exc)}") from exc
        except psycopg.DataError as exc:
            # The values, not the database: another attempt would fail the same way.
            raise PermanentError(
                f"the parse result could not be stored: {first_line(exc)}"
            ) from exc
        except OSError as exc:
            raise TransientError(
                f"the worker could not use its scratch folder {self.scratch_dir}: "
                f"{exc.strerror or exc}"
            ) from exc

    async def _run(
        self, job: Job, cancel: threading.Event, deadline: asyncio.Timeout | None
    ) -> str:
        if job.lifecycle == "summarizing":
            stored = await self._stored_result(job)
            if stored is not None:
                return await self._summarize(job, stored)

        scratch: list[Path] = []
        try:
            started = time.perf_counter()
            files = await self._local_files(job, scratch, cancel)
            self._observe("download", started)
            if job.lifecycle in ("queued", "downloading"):
                await _fenced(self.claims.advance(job, "parsing"))
            in_thread = self.parsers.kind == "thread"
            started = time.perf_counter()
            try:
                result, encoded = await self.parsers.run(
                    parse_files,
                    files,
                    self.max_line_bytes,
                    cancel if in_thread else None,
                    deadline=deadline,
                )
                self._observe("parse", started)
            except TranscriptError as exc:
                raise PermanentError(str(exc)) from exc
            except ParserCrashed as exc:
                raise TransientError(str(exc)) from exc
        finally:
            if scratch:
                # In the executor even when cancelled: the files go whatever happens here.
                await asyncio.shield(self._blocking(_discard_all, scratch))

        if job.lifecycle == "summarizing":  # resumed, with no usable stored result
            return await self._summarize(job, result)
        status, version = result.parse_status, result.parser_version
        if not should_summarize(result, self.min_user_prompts):
            await _fenced(self.claims.finish_parsed(job, status, encoded, version))
            return "parsed"
        await _fenced(self.claims.start_summarizing(job, status, encoded, version))
        return await self._summarize(job, result)

    async def _local_files(
        self, job: Job, scratch: list[Path], cancel: threading.Event
    ) -> list[tuple[JobFile, Path]]:
        """Each of the job's files as a local path: in place in a local store (stored files
        never change), else downloaded to scratch files (listed in scratch for the caller to
        remove)."""
        if isinstance(self.store, LocalStore):
            local: list[tuple[JobFile, Path]] = []
            for file in job.files:
                # A stat of a local file: cheaper inline than a hop to a thread and back.
                if not self.store.exists(file.key):
                    raise ObjectNotFound(
                        f"the stored file {file.key} ({file.name}) is missing from {self.store.url}"
                    )
                local.append((file, self.store.root / file.key))
            return local
        downloaded = []
        for file in job.files:
            path = await self._blocking(scratch_file, self.scratch_dir)
            scratch.append(path)
            await self._blocking(download, self.store, file.key, path, cancel)
            downloaded.append((file, path))
        return downloaded

    async def _stored_result(self, job: Job) -> ParseResult | None:
        """The parse result an earlier attempt stored before it died in summarizing."""
        stored = await self.claims.parse_result(job)
        if stored is None:
            return None
        try:
            return await self._blocking(ParseResult.model_validate, stored)
        except ValidationError:
            log.info("worker: parsing %s again: its stored parse result is outdated", job)
            return None

    async def _summarize(self, job: Job, result: ParseResult) -> str:
        started = time.perf_counter()
        if type(self.summarizer) is HeuristicSummarizer:  # not a subclass: it may be slow
            # Bounded work on the bounded parse result, well under a millisecond: inline.
            encoded = self._summary_json(result)
        else:  # anyone's summarizer, which may call out to a model: off the loop
            encoded = await self._blocking(self._summary_json, result)
        self._observe("summarize", started)
        await _fenced(self.claims.finish_summarized(job, encoded))
        return "summarized"

    def _summary_json(self, result: ParseResult) -> str:
        summary = self.summarizer.summarize(result)
        text: str = summary.model_dump_json()
        return text


async def _fenced(update: Awaitable[bool]) -> None:
    if not await update:
        raise JobLost
