"""Claiming sessions and holding them: the lease that makes a crashed worker's job come back.

A session's job is its row in the narrow jobs table (sql/004_jobs.sql). Claiming, fairly
across owners, stamps it with a fresh lease token, an owner and an expiry, and gives the
session row the same token; every later write a worker makes is fenced by that token on the
session row, so a worker that lost its job (the lease expired and someone else claimed it, or
the transcript was re-ingested) writes nothing and abandons the job quietly. Heartbeats touch
the jobs row alone."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, LiteralString

from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from sessionflow.queries import Q
from sessionflow.storage import transcript_key
from sessionflow.worker.commits import Conn, GroupCommit


@dataclass(frozen=True)
class JobFile:
    """One file of a claimed session (protocol.SessionFile, as the claim returns it)."""

    name: str
    role: str
    agent_id: str | None
    sha256: str
    size: int

    @property
    def key(self) -> str:
        return transcript_key(self.sha256)


@dataclass(frozen=True)
class Job:
    owner: str
    id: str
    # Where the session stood when claimed (the claim itself moves queued to downloading): a
    # resumed job carries on from there.
    lifecycle: str
    lease: uuid.UUID
    attempt: int
    transcript_key: str
    transcript_sha256: str
    transcript_size: int
    files: tuple[JobFile, ...]  # the main transcript first, then the subagent runs
    # Seconds from when the session became runnable to this claim (the pickup latency).
    waited_seconds: float = field(default=0.0, compare=False)

    @property
    def fence(self) -> dict[str, Any]:
        return {"owner": self.owner, "id": self.id, "lease": self.lease}

    def __str__(self) -> str:
        return f"{self.owner}/{self.id} (attempt {self.attempt})"


def _job(row: tuple[Any, ...]) -> Job:
    owner, session_id, lifecycle, lease, attempt, key, sha256, size, files, waited = row
    parsed = [
        JobFile(f["name"], f["role"], f.get("agent_id"), f["sha256"], int(f["size"])) for f in files
    ]
    parsed.sort(key=lambda f: (f.role != "main", f.name))
    return Job(
        owner, session_id, lifecycle, lease, attempt, key, sha256, size, tuple(parsed), waited
    )


class Claims:
    """The statements a worker sends about its jobs, through the shared pool.

    While work keeps coming, the connections of claims and jobs are kept here between uses
    (up to `keep`) instead of going back to the pool: a pool checkout checks the connection
    with a round trip of its own, as costly as a stage write. The runner hands them back with
    return_kept() as soon as it finds no more work, or cannot claim, so an idle worker holds
    none and a database restart meets fresh, checked connections. Under load that never lets
    the queue drain, a connection still goes back to the pool once it has been out of it for
    `keep_seconds`, so that the pool checks it and retires it at its max lifetime."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        worker_id: str,
        lease_seconds: float,
        keep: int = 0,
        keep_seconds: float = 30.0,
        batch: int = 1,
        linger: float = 0.0,
        writers: Callable[[], int] = lambda: 1,
    ) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.keep = keep
        self.keep_seconds = keep_seconds
        self._kept: list[tuple[Conn, float]] = []  # and when it left the pool
        # Stage writes of running jobs, committed together (up to batch in one transaction,
        # waiting up to linger for the writers' writes to join).
        self.commits = GroupCommit(self.connection, batch, linger=linger, writers=writers)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A kept connection if there is one, else one from the pool."""
        if self._kept:
            conn, since = self._kept.pop()
        else:
            conn, since = await self.pool.getconn(), time.monotonic()
        try:
            yield conn
        finally:
            reusable = (
                not conn.closed
                and conn.info.transaction_status == TransactionStatus.IDLE
                and time.monotonic() - since < self.keep_seconds
            )
            if reusable and len(self._kept) < self.keep:
                self._kept.append((conn, since))
            else:  # the pool checks it again, and discards a broken or expired one
                await self.pool.putconn(conn)

    async def return_kept(self) -> None:
        while self._kept:
            await self.pool.putconn(self._kept.pop()[0])

    async def claim(self, limit: int) -> list[Job]:
        params = {"limit": limit, "worker": self.worker_id, "lease_seconds": self.lease_seconds}
        async with self.connection() as conn:
            cur = await conn.execute(Q.claim_jobs, params)
            rows = await cur.fetchall()
        return [_job(row) for row in rows]

    async def requeue_outdated(self, version: int, limit: int) -> int:
        """Queue again, as background work, up to limit sessions parsed by an older parser;
        returns how many."""
        async with self.connection() as conn:
            cur = await conn.execute(Q.requeue_outdated, {"version": version, "limit": limit})
            return len(await cur.fetchall())

    async def extend(self, jobs: list[Job]) -> set[uuid.UUID]:
        """Renew the leases of jobs; returns the leases still held."""
        if not jobs:
            return set()
        params = {
            "owners": [job.owner for job in jobs],
            "ids": [job.id for job in jobs],
            "leases": [job.lease for job in jobs],
            "lease_seconds": self.lease_seconds,
        }
        async with self.pool.connection() as conn:
            cur = await conn.execute(Q.extend_leases, params)
            return {row[0] for row in await cur.fetchall()}

    async def _fenced(
        self,
        query: LiteralString,
        job: Job,
        json_fields: dict[str, str] | None = None,
        **fields: Any,
    ) -> bool:
        row = {"owner": job.owner, "id": job.id, "lease": str(job.lease), **fields}
        return await self.commits.write(query, row, json_fields)

    # Stage writes go through the group commit: several jobs' writes in one transaction.

    async def advance(self, job: Job, lifecycle: str) -> bool:
        """Move a held session to a non-terminal lifecycle; False if the job was lost."""
        return await self._fenced(Q.jobs_advance, job, lifecycle=lifecycle)

    # Results arrive as JSON text, encoded off the event loop: they can be large.

    async def start_summarizing(
        self, job: Job, parse_status: str, parse_result: str, parser_version: int
    ) -> bool:
        return await self._fenced(
            Q.jobs_start_summarizing,
            job,
            {"parse_result": parse_result},
            parse_status=parse_status,
            parser_version=parser_version,
        )

    async def finish_parsed(
        self, job: Job, parse_status: str, parse_result: str, parser_version: int
    ) -> bool:
        return await self._fenced(
            Q.jobs_finish_parsed,
            job,
            {"parse_result": parse_result},
            parse_status=parse_status,
            parser_version=parser_version,
        )

    async def finish_summarized(self, job: Job, summary: str) -> bool:
        return await self._fenced(Q.jobs_finish_summarized, job, {"summary": summary})

    async def parse_result(self, job: Job) -> dict[str, Any] | None:
        """The parse result a previous attempt stored (a job resumed in summarizing)."""
        async with self.connection() as conn:
            cur = await conn.execute(Q.job_parse_result, job.fence)
            row = await cur.fetchone()
        return row[0] if row else None

    async def release(
        self, job: Job, *, delay_seconds: float, error: str | None, refund: bool = False
    ) -> bool:
        """Give the job back for a later attempt (refund: this attempt did not count)."""
        return await self._fenced(
            Q.jobs_release, job, delay_seconds=delay_seconds, error=error, refund=int(refund)
        )

    async def fail(self, job: Job, error: str) -> bool:
        return await self._fenced(Q.jobs_fail, job, error=error)

    async def wake_workers(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(Q.jobs_wake)
