"""Group commit: the stage writes of several running jobs, committed in one transaction.

Each job still writes its own session one state at a time and waits for that state's commit
before it goes on, so every state a watcher can see is committed, notified and in order. What
is shared is the transaction, and within it the statement: writes of the same kind that wait
together are one set-based statement (sql/queries.sql, `jobs_*`) holding the whole batch as
one JSON parameter, and writes of different kinds go in one pipeline (one round trip, one
commit, one WAL flush, for as many sessions as the batch holds). A write that arrives while
other jobs run waits up to `linger` seconds for theirs to join it, so batches fill under load
and a lone job never waits. Each write keeps its own fence: the leases a statement returns
say which jobs still held their session.

A write the database refuses for its values (a DataError, say) must fail its own job only: a
batch that fails that way is sent again one write at a time."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, LiteralString

import psycopg

Conn = psycopg.AsyncConnection[Any]

_REFUSED = (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError)


@dataclass
class _Write:
    query: LiteralString
    lease: str
    row: str  # the write's JSON object, one element of the statement's batch
    future: asyncio.Future[bool] = field(repr=False)


def encode_row(fields: dict[str, Any], json_fields: dict[str, str]) -> str:
    """One element of a batch: fields encoded here, json_fields already JSON text (a parse
    result or a summary, encoded off the event loop) placed as they are."""
    parts = [json.dumps(fields)[:-1]]
    for name, text in json_fields.items():
        parts.append(f', "{name}": {text}')
    parts.append("}")
    return "".join(parts)


class GroupCommit:
    def __init__(
        self,
        connection: Callable[[], AbstractAsyncContextManager[Conn]],
        batch: int,
        *,
        linger: float = 0.0,
        writers: Callable[[], int] = lambda: 1,
    ) -> None:
        self.connection = connection
        self.batch = batch
        self.linger = linger
        self.writers = writers  # how many jobs may write soon: the running ones
        self._pending: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self._filled = asyncio.Event()
        self._enough = 1
        self.commits = 0  # transactions committed, and the writes they held: for benchmarks
        self.writes = 0

    async def write(
        self,
        query: LiteralString,
        fields: dict[str, Any],
        json_fields: dict[str, str] | None = None,
    ) -> bool:
        """Run one fenced write (query: a `jobs_*` statement; fields: its row: owner, id, the
        job's lease as text, what it sets), committed with whatever else is waiting; whether it
        changed its session (False: the job no longer holds it)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        row = encode_row(fields, json_fields or {})
        self._pending.append(_Write(query, fields["lease"], row, future))
        if len(self._pending) >= self._enough:
            self._filled.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="group commit")
        return await future

    async def _flush(self) -> None:
        while self._pending:
            await self._gather()
            batch, self._pending = self._pending[: self.batch], self._pending[self.batch :]
            try:
                outcomes = await self._commit(batch)
            except BaseException as exc:  # the connection, or the flusher cancelled
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(
                            exc if isinstance(exc, Exception) else asyncio.CancelledError()
                        )
                if not isinstance(exc, Exception):
                    raise
                continue
            for write, outcome in zip(batch, outcomes, strict=True):
                if write.future.done():  # its job was cancelled meanwhile
                    continue
                if isinstance(outcome, Exception):
                    write.future.set_exception(outcome)
                else:
                    write.future.set_result(outcome)

    async def _gather(self) -> None:
        """While other jobs run, wait up to linger for their writes to join the batch."""
        self._enough = min(self.batch, self.writers())
        if self.linger <= 0 or len(self._pending) >= self._enough:
            return
        self._filled.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.linger):
                await self._filled.wait()

    async def _commit(self, batch: list[_Write]) -> list[bool | Exception]:
        kinds: dict[LiteralString, list[_Write]] = {}
        for write in batch:
            kinds.setdefault(write.query, []).append(write)
        async with self.connection() as conn:
            self.commits += 1
            self.writes += len(batch)
            try:
                if len(kinds) == 1:  # one statement: on its own, autocommit is a transaction
                    held = await _held(await conn.execute(batch[0].query, self._params(batch)))
                else:
                    async with conn.transaction(), conn.pipeline():
                        cursors = [
                            await conn.execute(query, self._params(writes))
                            for query, writes in kinds.items()
                        ]
                    held = set().union(*[await _held(cursor) for cursor in cursors])
            except _REFUSED as exc:
                if len(batch) == 1:
                    return [exc]
                # One of them was refused for what it holds: each alone, so it alone fails.
                return [await self._alone(conn, write) for write in batch]
        return [write.lease in held for write in batch]

    async def _alone(self, conn: Conn, write: _Write) -> bool | Exception:
        try:
            cursor = await conn.execute(write.query, self._params([write]))
            return write.lease in await _held(cursor)
        except _REFUSED as exc:
            return exc

    def _params(self, writes: list[_Write]) -> dict[str, Any]:
        return {"batch": "[" + ",".join(write.row for write in writes) + "]", "most": self.batch}


async def _held(cursor: psycopg.AsyncCursor[Any]) -> set[str]:
    """The leases a stage write returned: the jobs that still held their session."""
    return {str(row[0]) for row in await cursor.fetchall()}
