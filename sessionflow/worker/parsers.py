"""Where parsing runs: child processes by default, threads if asked (SESSIONFLOW_WORKER_PARSER).

Parsing is CPU-bound Python. In a thread it holds the GIL, and every database round trip of
the event loop (lease renewals, other jobs' stage writes, and in `serve` the API itself) waits
up to a switch interval for it; in a child process it holds nothing the loop needs. A child
that dies (out of memory on a huge transcript, say) costs one attempt of one job: the pool is
rebuilt and the job retried, and the worker lives on."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Literal, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

ParserKind = Literal["process", "thread"]

PARENT_CHECK_SECONDS = 1.0


class ParserCrashed(Exception):
    """A parser process died while it worked on a job."""


def _context() -> Any:
    # forkserver forks children from a clean, single-threaded server process (forking this
    # one, which runs an event loop and threads, is unsafe); spawn where it is unavailable.
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # Imported once by the server, so that each child starts with the parser loaded.
    context.set_forkserver_preload(["sessionflow.worker.stages"])
    return context


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # dead but not yet reaped still answers the signal check
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _end_with(worker_pid: int) -> None:
    """Run in each parser process as it starts: end it once its worker is gone. A worker that
    is SIGKILLed cannot shut its pool down, and the parsers would wait for work forever."""

    def watch() -> None:
        while _alive(worker_pid):
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="sessionflow-parent-watch", daemon=True).start()


class ParserPool:
    def __init__(self, kind: ParserKind, size: int) -> None:
        self.kind = kind
        self.size = size
        self._executor = self._make()

    def _make(self) -> Executor:
        if self.kind == "thread":
            return ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="sessionflow-parse")
        return ProcessPoolExecutor(
            max_workers=self.size,
            mp_context=_context(),
            initializer=_end_with,
            initargs=(os.getpid(),),
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        executor = self._executor
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, functools.partial(fn, *args))
        except BrokenProcessPool as exc:
            if self._executor is executor:  # the first job to notice rebuilds the pool
                log.error("worker: a parser process died; starting new ones")
                executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._make()
            raise ParserCrashed(
                "the parser process died while reading this transcript (out of memory?)"
            ) from exc

    async def warm(self) -> None:
        """Start every parser process now rather than on the first jobs (in a process pool,
        start-up costs far more than a typical parse)."""
        if self.kind == "process":
            await asyncio.gather(*(self.run(time.sleep, 0.05) for _ in range(self.size)))

    def close(self) -> None:
        """Stop now: queued work is dropped and parser processes still busy are ended (the
        jobs they worked for have been given back already)."""
        executor = self._executor
        # No public way to end busy workers before Python 3.14's terminate_workers(); taken
        # before shutdown(), which forgets them.
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            with contextlib.suppress(Exception):
                process.terminate()
