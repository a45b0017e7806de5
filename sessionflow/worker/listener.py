"""The jobs channel: one dedicated autocommit connection, outside the pool, that LISTENs and
wakes the claim loop.

A notification only wakes; the table is the truth (the claim loop also polls). The link is
pinged whenever it has been quiet for a ping interval, so a dead or half-open connection is
noticed; it is then re-opened with backoff and LISTEN is sent again, which is what survives a
PostgreSQL restart with no one restarting the worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

from sessionflow.metrics import Metrics
from sessionflow.queries import Q
from sessionflow.worker.backoff import backoff_seconds

log = logging.getLogger(__name__)
# How the worker's LISTEN connection shows in pg_stat_activity.
APPLICATION_NAME = "sessionflow-worker-listen"


class JobListener:
    def __init__(
        self,
        dsn: str,
        *,
        wake: Callable[[], None],
        ping_seconds: float,
        reconnect_max_seconds: float,
        connect_timeout: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.dsn = dsn
        self.metrics = metrics
        self.wake = wake
        self.ping_seconds = ping_seconds
        self.reconnect_max_seconds = reconnect_max_seconds
        self.connect_timeout = connect_timeout
        self.listening = False
        self.connections = 0  # how many times LISTEN was (re-)established
        self.notifications = 0

    async def run(self) -> None:
        """LISTEN until cancelled, reconnecting as often as it takes."""
        failures = 0
        while True:
            established = self.connections
            try:
                await self._session()
            except (psycopg.Error, OSError, TimeoutError) as exc:
                # A link that was up counts as a fresh start: the first retry comes quickly.
                failures = 1 if self.connections > established else failures + 1
                delay = backoff_seconds(failures, base=0.1, cap=self.reconnect_max_seconds)
                log.warning(
                    "worker: the LISTEN connection failed (%s); reconnecting in %.1f s",
                    _first_line(exc),
                    delay,
                )
                await asyncio.sleep(delay)

    async def _session(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self.dsn,
            autocommit=True,
            application_name=APPLICATION_NAME,
            connect_timeout=max(1, round(self.connect_timeout)),
            # Keepalives catch a peer that vanished while the link idles between pings
            # (unix sockets need none: the kernel reports a dead peer at once).
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        try:
            await conn.execute(Q.jobs_listen)
            self.listening = True
            self.connections += 1
            if self.connections > 1:
                if self.metrics is not None:
                    self.metrics.listen_reconnects.labels("worker").inc()
                log.info("worker: listening on the jobs channel again")
            # Whatever was enqueued while no one listened is found by claiming now.
            self.wake()
            while True:
                async for _ in conn.notifies(timeout=self.ping_seconds):
                    self.notifications += 1
                    self.wake()
                await asyncio.wait_for(conn.execute(Q.listener_ping), timeout=self.ping_seconds)
        finally:
            self.listening = False
            await conn.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
