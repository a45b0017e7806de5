"""GET /metrics: Prometheus text, without a token (like /healthz, for scrapers on the internal
network; SESSIONFLOW_METRICS_ENABLED=false removes the route). Figures held in the database
are read here, at scrape time: aggregate counts only, never anything of one owner."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sessionflow.metrics import Metrics
from sessionflow.server.deps import State

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, state: State) -> Response:
    figures: Metrics = request.app.state.metrics
    try:
        async with state.pool.connection() as conn:
            await figures.refresh_from_database(conn)
    except Exception as exc:
        # The process's own figures are still worth having; the database ones stay as last read.
        log.warning("metrics: cannot read the database figures (%s)", type(exc).__name__)
    return Response(generate_latest(figures.registry), media_type=CONTENT_TYPE_LATEST)
