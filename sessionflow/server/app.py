"""The FastAPI application factory. Nothing here runs on import: create_app() builds an app
from explicit settings, and its lifespan opens the pool and starts what runs beside the API."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from sessionflow.db import connections, listen_impossible, make_pool, migrate, worker_pool_size
from sessionflow.metrics import Metrics
from sessionflow.server.batch_status import BATCH_STATUS_PATH, batch_status_app
from sessionflow.server.deps import AppState
from sessionflow.server.errors import install_error_handlers
from sessionflow.server.live import LiveHub
from sessionflow.server.requests import RequestContextMiddleware
from sessionflow.server.routes import files, health, sessions, watch
from sessionflow.server.routes import metrics as metrics_route
from sessionflow.server.routes.watch import WATCH_PATH
from sessionflow.settings import Settings
from sessionflow.storage import open_store

log = logging.getLogger(__name__)


class App(FastAPI):
    """The API. Two routes are dispatched here, ahead of FastAPI's routing and middleware, each
    keeping the request id and the access line (RequestContextMiddleware) and needing nothing
    else of them, as they answer their own refusals and errors:
    - the live stream's WebSocket (when served): each of FastAPI's frames, exit stacks and
      wrappers would live as long as the connection, which is what 10,000 watchers multiply;
    - POST batch-status, the polling hot path: FastAPI's layers cost it more CPU per request
      than the rest of its Python (sessionflow.server.batch_status)."""

    live_stream: ASGIApp | None = None
    batch_status: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind, path = scope["type"], scope.get("path")
        if path == BATCH_STATUS_PATH and kind == "http" and scope["method"] == "POST":
            lean = self.batch_status
        elif path == WATCH_PATH and kind == "websocket":
            lean = self.live_stream
        else:
            lean = None
        if lean is not None:
            scope["app"] = self
            await lean(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings, dsn: str, *, migrate_on_start: bool = True, run_worker: bool = False
) -> FastAPI:
    """run_worker: process sessions in this process too (what `sessionflow serve` does unless
    told --no-worker); off by default so that an app built for tests or embedding does not
    move sessions behind its caller's back. The worker gets a pool of its own, sized from its
    concurrency, so that however many jobs it runs the API's connections stay the API's."""
    # Without LISTEN the hub would never hear a change: no live route, and clients poll.
    live = settings.ws_enabled and not listen_impossible(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        links = await anyio.to_thread.run_sync(connections, settings, dsn)
        if migrate_on_start:
            await anyio.to_thread.run_sync(migrate, links.migrate_dsn)
        pool = make_pool(
            dsn,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            timeout=settings.connect_timeout_seconds,
            prepare=links.prepare,
        )
        store = open_store(
            settings.resolved_storage_url,
            s3_endpoint_url=settings.s3_endpoint_url,
            data_dir=settings.data_dir,
        )
        async with AsyncExitStack() as stack:
            await pool.open(wait=True, timeout=settings.connect_timeout_seconds)
            stack.push_async_callback(pool.close)
            state = AppState(settings=settings, pool=pool, store=store)
            app.state.sessionflow = state
            if settings.metrics_enabled:
                figures = metrics_route.DatabaseFigures(
                    pool, metrics, settings.metrics_db_interval_seconds
                )
                figures.start()
                stack.push_async_callback(figures.stop)
                app.state.database_figures = figures
            if live and links.listen_dsn is not None:
                hub = LiveHub(
                    links.listen_dsn,
                    pool,
                    ping_interval=settings.listen_ping_interval_seconds,
                    connect_timeout=settings.connect_timeout_seconds,
                    metrics=metrics,
                )
                await hub.start(wait=settings.connect_timeout_seconds)
                stack.push_async_callback(hub.stop)
                app.state.live_hub = hub
                state.readiness["live hub"] = hub.is_ready
            if run_worker:
                from sessionflow.worker.runner import Worker

                worker_pool = make_pool(
                    dsn,
                    min_size=1,
                    max_size=worker_pool_size(settings.worker_concurrency),
                    timeout=settings.connect_timeout_seconds,
                    prepare=links.prepare,
                    name="sessionflow-worker",
                )
                await worker_pool.open(wait=True, timeout=settings.connect_timeout_seconds)
                stack.push_async_callback(worker_pool.close)
                worker_settings = settings
                if links.listen_dsn is None:
                    worker_settings = settings.model_copy(update={"worker_listen": False})
                worker = Worker(
                    worker_settings,
                    dsn=links.listen_dsn or dsn,  # the worker's LISTEN link
                    pool=worker_pool,
                    store=store,
                    metrics=metrics,
                )
                await worker.start()
                stack.push_async_callback(worker.stop)  # before the pools close
                app.state.worker = worker
            yield

    metrics = Metrics()
    app = App(
        title="sessionflow",
        version="0.1.0",
        summary="Ingest coding-agent session transcripts and watch their pipeline finish.",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, access_log=settings.access_log)
    app.include_router(health.router)
    if settings.metrics_enabled:
        app.include_router(metrics_route.router)
    app.include_router(sessions.router)
    app.include_router(files.router)
    app.batch_status = RequestContextMiddleware(batch_status_app, access_log=settings.access_log)
    if live:
        app.live_stream = RequestContextMiddleware(
            watch.watch_endpoint, access_log=settings.access_log
        )
    return app
