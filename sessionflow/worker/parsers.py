"""Where parsing runs: child processes by default, threads if asked (SESSIONFLOW_WORKER_PARSER).

Parsing is CPU-bound Python. In a thread it holds the GIL, and every database round trip of
the event loop (lease renewals, other jobs' stage writes, and in `serve` the API itself) waits
up to a switch interval for it; in a child process it holds nothing the loop needs. A child
that dies (out of memory on a huge transcript, say) costs one attempt of one job: a new one
takes its place and the job is retried, and the worker lives on.

Each parser process has a pipe of its own that the event loop watches directly. A
ProcessPoolExecutor would route every job through two threads of the worker and a queue (a
third of a millisecond of the worker's CPU per job, more than half a stage write)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, Literal, TypeVar

from sessionflow.backoff import backoff_seconds
from sessionflow.processes import alive

log = logging.getLogger(__name__)

T = TypeVar("T")

ParserKind = Literal["process", "thread"]

PARENT_CHECK_SECONDS = 1.0


class ParserCrashed(Exception):
    """A parser process died while it worked on a job."""


class _Died(Exception):
    """The parser process at the other end of a pipe is gone."""


def _context() -> Any:
    # forkserver forks children from a clean, single-threaded server process (forking this
    # one, which runs an event loop and threads, is unsafe); spawn where it is unavailable.
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # Imported once by the server, so that each child starts with the parser loaded.
    context.set_forkserver_preload(["sessionflow.worker.stages"])
    return context


def _end_with(worker_pid: int) -> None:
    """Run in each parser process as it starts: end it once its worker is gone. A worker that
    is SIGKILLed cannot shut its pool down, and the parsers would wait for work forever."""

    def watch() -> None:
        while alive(worker_pid):
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="sessionflow-parent-watch", daemon=True).start()


def _serve(conn: Connection, worker_pid: int) -> None:
    """A parser process: run each call the worker sends, answer (True, result) or (False,
    the exception it raised)."""
    # Ctrl-C reaches the whole process group: the worker decides what happens to its jobs (a
    # graceful stop lets them finish) and ends its parsers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _end_with(worker_pid)
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):  # the worker closed its end: nothing more to do
            return
        try:
            answer: tuple[bool, Any] = (True, fn(*args))
        except Exception as exc:
            answer = (False, exc)
        try:
            conn.send(answer)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            conn.send((False, RuntimeError(f"the parser's answer could not be sent back: {exc}")))


class _Parser:
    """One parser process and the worker's end of its pipe. Starting one blocks (the forkserver
    forks it): call from a thread."""

    def __init__(self, context: Any) -> None:
        self.conn, theirs = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(theirs, os.getpid()), name="sessionflow-parser", daemon=True
        )
        self.process.start()
        theirs.close()

    async def call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any]:
        loop = asyncio.get_running_loop()
        try:
            self.conn.send((fn, args))  # a function reference and a few small arguments
            fd = self.conn.fileno()
        except OSError as exc:
            raise _Died from exc
        answered = loop.create_future()
        loop.add_reader(fd, _resolve, answered)
        try:
            await answered
        finally:
            loop.remove_reader(fd)
        try:
            # Some loops (uvloop) make a watched fd non-blocking; an answer larger than the
            # pipe's buffer then arrives in parts, and recv() would fail with EAGAIN between
            # them. The parser is already writing it: wait for the rest.
            os.set_blocking(fd, True)
            answer: tuple[bool, Any] = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise _Died from exc
        return answer

    def end(self) -> None:
        with contextlib.suppress(Exception):
            self.process.terminate()
        self.conn.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ParserPool:
    def __init__(self, kind: ParserKind, size: int) -> None:
        self.kind = kind
        self.size = size
        self._threads = (
            ThreadPoolExecutor(max_workers=size, thread_name_prefix="sessionflow-parse")
            if kind == "thread"
            else None
        )
        self._context = _context() if kind == "process" else None
        self._idle: asyncio.Queue[_Parser] = asyncio.Queue()
        self._slots = asyncio.Semaphore(size)  # calls under way, a parser each
        self._alive: set[_Parser] = set()
        self._starting: set[asyncio.Task[None]] = set()
        self._closed = False

    async def run(
        self, fn: Callable[..., T], *args: Any, deadline: asyncio.Timeout | None = None
    ) -> T:
        """fn(*args) in a parser, once one is free (a worker holds more jobs than it has
        parsers). deadline: a timeout that stands still while the call waits for a parser."""
        await self._free_parser(deadline)
        try:
            return await self._run(fn, args)
        finally:
            self._slots.release()

    async def _free_parser(self, deadline: asyncio.Timeout | None) -> None:
        when = None if deadline is None else deadline.when()
        if deadline is None or when is None or not self._slots.locked():
            await self._slots.acquire()
            return
        loop = asyncio.get_running_loop()
        asked = loop.time()
        deadline.reschedule(None)
        try:
            await self._slots.acquire()
        finally:
            deadline.reschedule(when + loop.time() - asked)

    async def _run(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._threads is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._threads, functools.partial(fn, *args))
        self._top_up()
        parser = await self._idle.get()
        idle_again = False
        try:
            ok, value = await parser.call(fn, args)
            idle_again = True
        except _Died as exc:
            parser.process.join(1)
            log.error(
                "worker: a parser process died (exit code %s, %r); starting a new one",
                parser.process.exitcode,
                exc.__cause__,
            )
            raise ParserCrashed(
                "the parser process died while reading this transcript (out of memory?)"
            ) from None
        finally:
            if idle_again and not self._closed:
                self._idle.put_nowait(parser)
            else:  # dead, or still busy with a job given up (cancelled): replaced
                self._alive.discard(parser)
                parser.end()
                self._top_up()
        if ok:
            result: T = value
            return result
        raise value

    def _top_up(self) -> None:
        """Start parser processes until size of them are alive or starting."""
        while not self._closed and len(self._alive) + len(self._starting) < self.size:
            task = asyncio.create_task(self._start_one(), name="parser start")
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start_one(self) -> None:
        failures = 0
        while True:
            try:
                parser = await asyncio.to_thread(_Parser, self._context)
                break
            except Exception as exc:  # jobs wait for it: keep trying, loudly
                failures += 1
                log.error("worker: could not start a parser process (%r); trying again", exc)
                await asyncio.sleep(backoff_seconds(failures, base=1.0, cap=30.0))
        if self._closed:
            parser.end()
            return
        self._alive.add(parser)
        self._idle.put_nowait(parser)

    async def warm(self) -> None:
        """Start every parser process now rather than on the first jobs (start-up costs far
        more than a typical parse)."""
        if self.kind == "process":
            self._top_up()
            await asyncio.gather(*self._starting)

    def close(self) -> None:
        """Stop now: every parser process is ended, busy ones too (the jobs they worked for
        have been given back already)."""
        self._closed = True
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        for task in self._starting:
            task.cancel()
        for parser in self._alive:
            parser.end()
        self._alive.clear()
