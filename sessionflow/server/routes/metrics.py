"""GET /metrics: Prometheus text, without a token (like /healthz, for scrapers on the internal
network; SESSIONFLOW_METRICS_ENABLED=false removes the route).

A scrape costs no query: the figures the database holds (sessions per lifecycle, the NOTIFY
queue) are read in the background every SESSIONFLOW_METRICS_DB_INTERVAL_SECONDS by
DatabaseFigures, aggregate counts only, never anything of one owner. However often /metrics
is scraped, the pool sees one such read per interval."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import AsyncConnectionPool

from sessionflow.logs import first_line
from sessionflow.metrics import Metrics

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    figures: Metrics = request.app.state.metrics
    return Response(generate_latest(figures.registry), media_type=CONTENT_TYPE_LATEST)


class DatabaseFigures:
    """Refreshes the metrics the database holds at a fixed interval, in the background."""

    def __init__(self, pool: AsyncConnectionPool, metrics: Metrics, interval: float) -> None:
        self.pool = pool
        self.metrics = metrics
        self.interval = interval
        self.reads = 0  # successful reads (observability, tests)
        self.read_once = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="metrics database figures")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                async with self.pool.connection() as conn:
                    await self.metrics.refresh_from_database(conn)
                self.reads += 1
                self.read_once.set()
            except Exception as exc:
                # The process's own figures are still worth having; these stay as last read.
                log.warning("metrics: cannot read the database figures (%s)", first_line(exc))
            await asyncio.sleep(self.interval)
