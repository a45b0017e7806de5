"""Group commit: the stage writes of several running jobs, committed in one transaction.

Each job still writes its own session one state at a time and waits for that state's commit
before it goes on, so every state a watcher can see is committed, notified and in order. What
is shared is the transaction: writes that arrive while one batch commits wait and go together
in the next, sent in one pipeline (one round trip, one commit, one WAL flush, for as many
sessions as the batch holds). Each write keeps its own fence: its row count says whether that
job still held its session.

A write the database refuses for its values (a DataError, say) must fail its own job only: a
batch that fails that way is sent again one write at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, LiteralString

import psycopg

Conn = psycopg.AsyncConnection[Any]
_Write = tuple[LiteralString, dict[str, Any], "asyncio.Future[bool]"]


class GroupCommit:
    def __init__(
        self, connection: Callable[[], AbstractAsyncContextManager[Conn]], batch: int
    ) -> None:
        self.connection = connection
        self.batch = batch
        self._pending: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self.commits = 0  # transactions committed, and the writes they held: for benchmarks
        self.writes = 0

    async def write(self, query: LiteralString, params: dict[str, Any]) -> bool:
        """Run one fenced write, committed with whatever else is waiting; whether it changed a
        row (False: the job no longer holds its session)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((query, params, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="group commit")
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.batch], self._pending[self.batch :]
            try:
                outcomes = await self._commit(batch)
            except BaseException as exc:  # the connection, or the flusher cancelled
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(
                            exc if isinstance(exc, Exception) else asyncio.CancelledError()
                        )
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # its job was cancelled meanwhile
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    async def _commit(self, batch: list[_Write]) -> list[bool | Exception]:
        async with self.connection() as conn:
            self.commits += 1
            self.writes += len(batch)
            if len(batch) == 1:  # no transaction to open: on its own, autocommit is one
                return [await _one(conn, batch[0])]
            try:
                async with conn.transaction(), conn.pipeline():
                    cursors = [await conn.execute(query, params) for query, params, _ in batch]
                return [cursor.rowcount > 0 for cursor in cursors]
            except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError):
                # One of them was refused for what it holds: each alone, so it alone fails.
                return [await _one(conn, write) for write in batch]


async def _one(conn: Conn, write: _Write) -> bool | Exception:
    query, params, _ = write
    try:
        cursor = await conn.execute(query, params)  # autocommit: its own transaction
    except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
        return exc
    return cursor.rowcount > 0
