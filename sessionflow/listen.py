"""A dedicated LISTEN connection: one autocommit connection outside the pool that LISTENs on
one channel, hands every notification's payload to a callback, and outlives whatever the
network or PostgreSQL does to it.

Both users, the server's live hub (session_lifecycle) and the worker (session_jobs), treat a
notification as a wake-up, never as the truth. So the link only has to be up as much as it
can, and to say each time it starts listening (again): `on_listening` then reads from the
table whatever changed while nobody listened.

- When the link has been quiet for `ping_seconds` it is pinged: a half-open connection only
  shows itself when asked something; TCP keepalives catch a peer that vanished meanwhile.
- A lost link is re-opened after a capped, jittered backoff. One that had stayed up a while
  starts the backoff afresh, so the first retry after a PostgreSQL restart comes quickly,
  while a link that fails as soon as it is up does not spin.
- `sessions` counts the LISTENs established: every one after the first is a reconnect
  (sessionflow_listen_reconnects_total{listener=<name>})."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg

from sessionflow.backoff import backoff_seconds
from sessionflow.logs import first_line
from sessionflow.metrics import Metrics
from sessionflow.queries import Q

log = logging.getLogger(__name__)

# A link that stayed up this long was healthy: its loss starts the backoff afresh.
HEALTHY_SECONDS = 30.0
FIRST_RETRY_SECONDS = 0.1


class ListenLink:
    def __init__(
        self,
        dsn: str,
        *,
        name: str,
        application_name: str,
        listen_sql: str,
        on_notify: Callable[[str], None],
        on_listening: Callable[[], Coroutine[Any, Any, None]],
        ping_seconds: float,
        connect_timeout: float,
        reconnect_max_seconds: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.dsn = dsn
        self.name = name  # in logs, and the `listener` label of the reconnect metric
        self.application_name = application_name  # how it shows in pg_stat_activity
        self.listen_sql = listen_sql
        self.on_notify = on_notify
        self.on_listening = on_listening
        self.ping_seconds = ping_seconds
        self.connect_timeout = connect_timeout
        self.reconnect_max_seconds = reconnect_max_seconds
        self.metrics = metrics
        self.listening = False
        self.up = asyncio.Event()  # set the first time LISTEN is established
        self.sessions = 0  # how many times LISTEN was established
        self.notifications = 0

    async def run(self) -> None:
        """Listen until cancelled, reconnecting as often as it takes."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            started = loop.time()
            try:
                await self._session()
                problem = "the connection ended"
            except (psycopg.Error, OSError, TimeoutError) as exc:
                problem = first_line(exc)
            except Exception as exc:
                # A bug, not the network: say so loudly, then carry on listening.
                log.exception("%s listener: the LISTEN task failed", self.name)
                problem = first_line(exc)
            failures = 1 if loop.time() - started >= HEALTHY_SECONDS else failures + 1
            delay = backoff_seconds(
                failures, base=FIRST_RETRY_SECONDS, cap=self.reconnect_max_seconds
            )
            log.warning(
                "%s listener: the LISTEN connection failed (%s); reconnecting in %.1f s",
                self.name,
                problem,
                delay,
            )
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        """Hold one LISTEN session until the connection fails (raises) or is cancelled."""
        async with asyncio.timeout(self.connect_timeout):
            conn = await psycopg.AsyncConnection.connect(
                self.dsn,
                autocommit=True,
                application_name=self.application_name,
                # A peer that vanished while the link idles between pings (unix sockets need
                # none: the kernel reports a dead peer at once).
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
        catch_up: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                await conn.execute(self.listen_sql)
            self.listening = True
            self.sessions += 1
            if self.sessions > 1 and self.metrics is not None:
                self.metrics.listen_reconnects.labels(self.name).inc()
            self.up.set()
            log.info("%s listener: listening%s", self.name, " again" if self.sessions > 1 else "")
            # Whatever changed while nobody listened is read from the table now, after LISTEN:
            # a change committed later arrives as a notification.
            catch_up = asyncio.create_task(self.on_listening(), name=f"{self.name} catch-up")
            catch_up.add_done_callback(self._caught_up)
            while True:
                async for notify in conn.notifies(timeout=self.ping_seconds):
                    self.notifications += 1
                    self.on_notify(notify.payload)
                async with asyncio.timeout(self.ping_seconds):
                    await conn.execute(Q.listen_ping)
        finally:
            self.listening = False
            if catch_up is not None:
                catch_up.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await catch_up
            with contextlib.suppress(Exception):
                await conn.close()

    def _caught_up(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("%s listener: catching up after LISTEN failed", self.name, exc_info=error)
