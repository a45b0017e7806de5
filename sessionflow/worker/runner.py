"""The Worker: claims sessions and runs up to N of them at once, keeps their leases alive,
retries what failed for a passing reason, and stops gracefully.

Three background loops run under a supervisor that restarts any of them that dies: the
claim loop (woken by the listener, and by a safety poll), the heartbeat (renews the leases
of running jobs, and abandons those whose lease was taken away) and the listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
from psycopg_pool import AsyncConnectionPool

from sessionflow.backoff import backoff_seconds
from sessionflow.listen import ListenLink
from sessionflow.logs import first_line
from sessionflow.metrics import Metrics
from sessionflow.processes import alive
from sessionflow.queries import Q
from sessionflow.settings import Settings
from sessionflow.storage import ObjectStore
from sessionflow.worker.claims import Claims, Job
from sessionflow.worker.parse import PARSER_VERSION
from sessionflow.worker.parsers import ParserPool
from sessionflow.worker.stages import (
    JobLost,
    PermanentError,
    Pipeline,
    TransientError,
)
from sessionflow.worker.summarize import Summarizer, get_summarizer

log = logging.getLogger(__name__)
# How the worker's LISTEN connection shows in pg_stat_activity.
LISTEN_APPLICATION_NAME = "sessionflow-worker-listen"

_DB_ERRORS = (psycopg.OperationalError, psycopg_pool.PoolTimeout)


class WorkerConfigError(ValueError):
    """A setting the worker cannot run with, worded for whoever set it."""


@dataclass
class _Running:
    job: Job
    task: asyncio.Task[None]
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: bool = False


def check_settings(settings: Settings) -> Summarizer:
    """The summarizer the settings name; WorkerConfigError if the worker cannot run with them."""
    try:
        return get_summarizer(settings.summarizer)
    except ValueError as exc:
        raise WorkerConfigError(f"{exc} (set by SESSIONFLOW_SUMMARIZER)") from None


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        dsn: str,
        pool: AsyncConnectionPool,
        store: ObjectStore,
        concurrency: int | None = None,
        worker_id: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.dsn = dsn
        self.concurrency = concurrency or settings.worker_concurrency
        self.worker_id = worker_id or make_worker_id()
        summarizer = check_settings(settings)
        self.claims = Claims(
            pool,
            worker_id=self.worker_id,
            lease_seconds=settings.worker_lease_seconds,
            keep=self.concurrency + 1,  # one per running job, and the claim loop's
            batch=settings.worker_batch_size,
            linger=settings.worker_commit_linger_seconds,
            writers=lambda: len(self._running),
        )
        self._executor = ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="sessionflow-worker"
        )
        # Parsing is the CPU-bound part: as many at once as the parsers setting allows, and
        # the other jobs held wait for a free parser (see _refill_at).
        self.parsers = ParserPool(
            settings.worker_parser, min(settings.worker_parsers, self.concurrency)
        )
        self.scratch_dir = settings.data_dir / "work"
        self.pipeline = Pipeline(
            claims=self.claims,
            store=store,
            summarizer=summarizer,
            min_user_prompts=settings.summarize_min_user_prompts,
            max_line_bytes=settings.parse_max_line_bytes,
            executor=self._executor,
            parsers=self.parsers,
            scratch_dir=self.scratch_dir,
            metrics=self.metrics,
        )
        # The jobs channel only wakes the claim loop (which also polls); on every (re)connect
        # it wakes it too, to claim whatever was enqueued while no one listened.
        self.listener = ListenLink(
            dsn,
            name="worker",
            application_name=LISTEN_APPLICATION_NAME,
            listen_sql=Q.jobs_listen,
            on_notify=lambda _payload: self.wake(),
            on_listening=self._woken_by_listen,
            ping_seconds=settings.worker_ping_seconds,
            connect_timeout=settings.connect_timeout_seconds,
            reconnect_max_seconds=settings.worker_reconnect_max_seconds,
            metrics=self.metrics,
        )
        self.outcomes: Counter[str] = Counter()  # parsed, summarized, failed, retried, lost
        self._running: dict[uuid.UUID, _Running] = {}
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._slot_free.set()
        # While the queue is deep (the last claim got all it asked for), the claim loop waits
        # until the jobs held fall to this many before it claims again: one claim then takes
        # several jobs, and their stage writes share commits (worker/commits.py), instead of
        # a claim and a commit per session. Enough stay held to keep the parsers busy
        # meanwhile. With concurrency 1 or 2 it claims as soon as a slot frees.
        self._refill_at = min(self.concurrency - 1, max(self.parsers.size, self.concurrency // 2))
        self._deep = False
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._warming: asyncio.Task[None] | None = None
        self._loops: dict[str, asyncio.Task[None]] = {}
        self.restarts: Counter[str] = Counter()

    # -- lifecycle of the worker itself ---------------------------------------------------

    async def start(self) -> None:
        _sweep_scratch(self.scratch_dir)
        self._warming = asyncio.create_task(self.parsers.warm(), name="parser warm-up")
        self._supervisor = asyncio.create_task(self._supervise(), name="worker supervisor")
        log.info(
            "worker %s started: concurrency %d, %s",
            self.worker_id,
            self.concurrency,
            "woken by LISTEN/NOTIFY" if self.settings.worker_listen else "safety poll only",
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; let running jobs finish for up to grace seconds; give back (with the
        attempt refunded) whatever is still running; then stop the loops."""
        if self._supervisor is None:
            return
        self._stopping = True
        self._wake.set()
        self._slot_free.set()
        # The claim loop is let finish rather than cancelled: a claim cut off mid-query could
        # leave sessions leased by no one until their lease expires.
        claim_loop = self._loops.get("claim loop")
        if claim_loop is not None:
            await asyncio.wait([claim_loop], timeout=self.settings.connect_timeout_seconds)
        for name in ("claim loop", "listener"):
            task = self._loops.get(name)
            if task is not None:
                task.cancel()
        grace = self.settings.worker_shutdown_grace_seconds if grace is None else grace
        tasks = [running.task for running in self._running.values()]
        if tasks:
            log.info("worker: waiting up to %.0f s for %d running job(s)", grace, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                with contextlib.suppress(*_DB_ERRORS):
                    await self.claims.wake_workers()
        self._supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._supervisor
        self._supervisor = None
        await self.claims.return_kept()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.parsers.close()
        log.info("worker %s stopped", self.worker_id)

    async def warmed(self) -> None:
        """Wait until the parser processes are up (start() does not wait for them)."""
        if self._warming is not None:
            await self._warming

    def hurry(self) -> None:
        """Give up the running jobs now (a second Ctrl-C during a graceful stop)."""
        for running in list(self._running.values()):
            running.task.cancel()

    @property
    def running_jobs(self) -> int:
        return len(self._running)

    def wake(self) -> None:
        self._wake.set()

    async def _woken_by_listen(self) -> None:
        self.wake()

    # -- supervision ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "claim loop": self._claim_loop,
            "heartbeat": self._heartbeat,
        }
        if self.settings.worker_listen:
            loops["listener"] = self.listener.run
        self._loops = {name: asyncio.create_task(fn(), name=name) for name, fn in loops.items()}
        try:
            while self._loops:
                done, _ = await asyncio.wait(
                    self._loops.values(), return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    name = task.get_name()
                    del self._loops[name]
                    if self._stopping:
                        continue
                    error = None if task.cancelled() else task.exception()
                    self.restarts[name] += 1
                    delay = backoff_seconds(self.restarts[name], base=0.5, cap=30.0)
                    log.error(
                        "worker: the %s stopped unexpectedly (%r); restarting it in %.1f s",
                        name,
                        error,
                        delay,
                        exc_info=error,
                    )
                    self._loops[name] = asyncio.create_task(_after(delay, loops[name]), name=name)
        finally:
            for task in self._loops.values():
                task.cancel()
            await asyncio.gather(*self._loops.values(), return_exceptions=True)
            self._loops = {}

    # -- claiming -------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        failures = 0
        while True:
            await self._slot_free.wait()
            if self._stopping:
                return
            self._wake.clear()
            free = min(self.concurrency - len(self._running), self.settings.worker_batch_size)
            try:
                jobs = await self.claims.claim(free)
            except _DB_ERRORS as exc:
                await self.claims.return_kept()  # likely as broken: let the pool check them
                failures += 1
                delay = backoff_seconds(
                    failures, base=0.2, cap=self.settings.worker_reconnect_max_seconds
                )
                log.warning(
                    "worker: could not claim jobs (%s); trying again in %.1f s",
                    first_line(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            self.metrics.jobs_claimed.inc(len(jobs))
            for job in jobs:
                self.metrics.pickup_latency.observe(job.waited_seconds)
                self._launch(job)
            self._deep = len(jobs) == free
            self._gate_claims()
            if self._deep:
                continue  # there may be more: claim again once enough slots are free
            if await self._requeue_outdated(free - len(jobs)):
                continue  # background work for the free slots: claim it now
            await self.claims.return_kept()  # the queue is drained: hold no connections idle
            with contextlib.suppress(TimeoutError):
                # The safety poll: NOTIFY only wakes, and expired leases notify no one.
                await asyncio.wait_for(self._wake.wait(), self.settings.worker_poll_seconds)

    async def _requeue_outdated(self, free: int) -> int:
        """With no new work waiting, queue again up to free sessions whose parse result an
        older parser made (see PARSER_VERSION); returns how many."""
        if not self.settings.worker_reparse or self._stopping:
            return 0
        try:
            count = await self.claims.requeue_outdated(PARSER_VERSION, free)
        except _DB_ERRORS as exc:
            log.warning("worker: could not look for outdated results: %s", first_line(exc))
            return 0
        if count:
            log.info(
                "worker: parsing %d session(s) again with parser version %d", count, PARSER_VERSION
            )
        return count

    def _launch(self, job: Job) -> None:
        task = asyncio.create_task(self._handle(job), name=f"job {job}")
        self._running[job.lease] = _Running(job, task)
        self._gate_claims()

    def _gate_claims(self) -> None:
        """Let the claim loop claim (the _slot_free event) while a slot is free, or, while the
        queue is deep, once the jobs held have fallen to _refill_at; always when stopping, so
        that it sees it."""
        most = self._refill_at if self._deep else self.concurrency - 1
        if self._stopping or len(self._running) <= most:
            self._slot_free.set()
        else:
            self._slot_free.clear()

    # -- one job --------------------------------------------------------------------------

    async def _handle(self, job: Job) -> None:
        running = self._running[job.lease]
        settings = self.settings
        try:
            if job.attempt > settings.worker_max_attempts:
                # The previous attempt never reported back: its worker died or was cut off.
                await self._fail(
                    job,
                    f"gave up after {settings.worker_max_attempts} attempts: the last one "
                    "stopped without finishing (its worker died or lost the database). "
                    "If this repeats, the transcript may be too large for the worker's "
                    "memory; upload the session again with force to retry",
                )
                return
            async with asyncio.timeout(settings.worker_job_timeout_seconds) as deadline:
                outcome = await self.pipeline.run(job, running.cancel, deadline)
            self.outcomes[outcome] += 1
            self.metrics.jobs_succeeded.labels(outcome).inc()
            log.info("worker: %s is %s", job, outcome)
        except JobLost:
            self.outcomes["lost"] += 1
            log.info("worker: %s was taken away (re-ingested or lease expired); dropped", job)
        except PermanentError as exc:
            await self._fail(job, str(exc))
        except TransientError as exc:
            await self._retry(job, str(exc))
        except TimeoutError:
            await self._retry(
                job,
                f"processing took longer than {settings.worker_job_timeout_seconds:g} s "
                "(SESSIONFLOW_WORKER_JOB_TIMEOUT_SECONDS)",
            )
        except asyncio.CancelledError:
            running.cancel.set()
            if running.lost:
                self.outcomes["lost"] += 1
                log.info("worker: %s lost its lease (re-ingested or expired); dropped", job)
            else:
                # Stopping: give the job back at once, this attempt not counted.
                with contextlib.suppress(*_DB_ERRORS):
                    await self.claims.release(job, delay_seconds=0, error=None, refund=True)
                log.info("worker: %s given back for another worker", job)
            raise
        except Exception as exc:
            log.exception("worker: %s failed unexpectedly", job)
            await self._retry(
                job, f"the worker hit an internal error ({type(exc).__name__}: {exc})"
            )
        finally:
            running.cancel.set()  # stops a thread still working for a job given up
            del self._running[job.lease]
            self._gate_claims()

    async def _fail(self, job: Job, error: str) -> None:
        self.outcomes["failed"] += 1
        self.metrics.jobs_failed.inc()
        log.info("worker: %s failed: %s", job, error)
        try:
            await self.claims.fail(job, error)
        except _DB_ERRORS as exc:
            # The lease will expire and a later claim will settle the session.
            log.warning("worker: could not record the failure of %s: %s", job, first_line(exc))

    async def _retry(self, job: Job, reason: str) -> None:
        limit = self.settings.worker_max_attempts
        if job.attempt >= limit:
            await self._fail(job, f"gave up after {limit} attempts: {reason}")
            return
        delay = backoff_seconds(
            job.attempt,
            base=self.settings.worker_retry_base_seconds,
            cap=self.settings.worker_retry_max_seconds,
        )
        self.outcomes["retried"] += 1
        self.metrics.jobs_retried.inc()
        log.warning("worker: %s failed (%s); retrying in %.1f s", job, reason, delay)
        try:
            await self.claims.release(
                job,
                delay_seconds=delay,
                error=f"attempt {job.attempt} of {limit} failed, will retry: {reason}",
            )
        except _DB_ERRORS as exc:
            log.warning("worker: could not give back %s: %s", job, first_line(exc))
            return
        asyncio.get_running_loop().call_later(delay, self._wake.set)

    # -- leases ---------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.settings.worker_lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            jobs = [running.job for running in self._running.values()]
            if not jobs:
                continue
            try:
                held = await self.claims.extend(jobs)
            except _DB_ERRORS as exc:
                log.warning("worker: could not renew leases: %s", first_line(exc))
                continue
            for job in jobs:
                running = self._running.get(job.lease)
                if job.lease not in held and running is not None:
                    running.lost = True
                    running.cancel.set()
                    running.task.cancel()


async def _after(delay: float, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    await asyncio.sleep(delay)
    await fn()


def _sweep_scratch(scratch_dir: Path) -> None:
    """Remove scratch files left by worker processes of this machine that no longer run."""
    if not scratch_dir.is_dir():
        return
    for path in scratch_dir.glob("*-*.jsonl"):
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
