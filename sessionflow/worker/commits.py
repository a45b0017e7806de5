"""Group commit: the stage writes of several running jobs, committed in one transaction.

Each job still writes its own session one state at a time and waits for that state's commit
before it goes on, so every state a watcher can see is committed, notified and in order. What
is shared is the transaction and the statements: writes that arrive while one batch commits
wait and go together in the next, the writes of one kind (every job moving to parsing, say) as
one set-based statement (sql/queries.sql, "The stage writes"), the kinds sent in one pipeline:
one round trip, one commit, one WAL flush, and a statement per kind rather than per session.
Each write keeps its own fence: whether its session is among the rows the statement changed
says whether that job still held it.

A write the database refuses for its values (a DataError, say) must fail its own job only: a
batch that fails that way is sent again one write at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg

Conn = psycopg.AsyncConnection[Any]

# Refused for what a write holds, not for how the database is: the job's own failure.
_REFUSED = (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError)


@dataclass(frozen=True)
class Stage:
    """A kind of stage write: a set-based statement taking one array per parameter (owner, id,
    lease, then fields) and returning the owner and id of each session it changed."""

    query: LiteralString
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Write:
    stage: Stage
    params: dict[str, Any]  # owner, id, lease and the stage's fields
    done: asyncio.Future[bool]

    @property
    def session(self) -> tuple[str, str]:
        return (self.params["owner"], self.params["id"])


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

    async def write(self, stage: Stage, params: dict[str, Any]) -> bool:
        """Run one fenced write (params: owner, id, lease and the stage's fields), committed
        with whatever else is waiting; whether it changed its session (False: the job no
        longer holds it)."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(_Write(stage, params, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="group commit")
        return await done

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.batch], self._pending[self.batch :]
            try:
                outcomes = await self._commit(batch)
            except BaseException as exc:  # the connection, or the flusher cancelled
                for write in batch:
                    if not write.done.done():
                        write.done.set_exception(
                            exc if isinstance(exc, Exception) else asyncio.CancelledError()
                        )
                if not isinstance(exc, Exception):
                    raise
                continue
            for write, outcome in zip(batch, outcomes, strict=True):
                if write.done.done():  # its job was cancelled meanwhile
                    continue
                if isinstance(outcome, Exception):
                    write.done.set_exception(outcome)
                else:
                    write.done.set_result(outcome)

    async def _commit(self, batch: list[_Write]) -> list[bool | Exception]:
        by_stage: dict[Stage, list[_Write]] = {}
        for write in batch:
            by_stage.setdefault(write.stage, []).append(write)
        async with self.connection() as conn:
            self.commits += 1
            self.writes += len(batch)
            try:
                if len(by_stage) == 1:  # one statement: on its own, autocommit is a transaction
                    [(stage, writes)] = by_stage.items()
                    changed = await _fetch(await conn.execute(stage.query, _arrays(writes)))
                else:
                    async with conn.transaction(), conn.pipeline():
                        cursors = [
                            await conn.execute(stage.query, _arrays(writes))
                            for stage, writes in by_stage.items()
                        ]
                    changed = set()
                    for cursor in cursors:
                        changed |= await _fetch(cursor)
            except _REFUSED as exc:
                if len(batch) == 1:
                    return [exc]
                # One of them was refused for what it holds: each alone, so it alone fails.
                return [await _one(conn, write) for write in batch]
        return [write.session in changed for write in batch]


def _arrays(writes: list[_Write]) -> dict[str, list[Any]]:
    """The statement's parameters: an array of each, an element per write, in the order of
    the sessions (so that concurrent batches lock rows in one order)."""
    writes = sorted(writes, key=lambda write: write.session)
    names = ("owner", "id", "lease", *writes[0].stage.fields)
    return {name: [write.params[name] for write in writes] for name in names}


async def _fetch(cursor: psycopg.AsyncCursor[Any]) -> set[tuple[str, str]]:
    return {(owner, session_id) for owner, session_id in await cursor.fetchall()}


async def _one(conn: Conn, write: _Write) -> bool | Exception:
    try:
        # autocommit: its own transaction
        cursor = await conn.execute(write.stage.query, _arrays([write]))
        return write.session in await _fetch(cursor)
    except _REFUSED as exc:
        return exc
