"""The `sessionflow worker` process: find the database, then run a Worker until SIGTERM or
Ctrl-C (a second signal gives the running jobs back at once instead of letting them finish)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

import psycopg
from prometheus_client import start_http_server

from sessionflow.db import Connections, connections, make_pool, migrate, worker_pool_size
from sessionflow.local import EmbeddedDatabaseError, resolve_database
from sessionflow.logs import first_line
from sessionflow.metrics import Metrics
from sessionflow.settings import Settings
from sessionflow.storage import open_store
from sessionflow.worker.runner import Worker, WorkerConfigError, check_settings

log = logging.getLogger(__name__)


class WorkerStartError(RuntimeError):
    """Why the worker cannot start, worded for the person who started it."""


def main(settings: Settings, *, concurrency: int | None = None) -> None:
    try:
        check_settings(settings)
        dsn, _embedded = resolve_database(settings)  # the handle keeps an embedded server up
        links = connections(settings, dsn)
        migrate(links.migrate_dsn)
    except (WorkerConfigError, EmbeddedDatabaseError) as exc:
        raise WorkerStartError(str(exc)) from None
    except psycopg.OperationalError as exc:
        raise WorkerStartError(
            f"cannot reach the database: {first_line(exc)} (SESSIONFLOW_DATABASE_URL)"
        ) from None
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(run(settings, links, concurrency=concurrency or settings.worker_concurrency))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (uvicorn's standard extras bring it on Linux and macOS), as
    `serve` runs its worker: its loop costs a fraction of asyncio's own for every database
    round trip and parser answer a job waits on. asyncio's loop elsewhere."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def run(settings: Settings, links: Connections, *, concurrency: int) -> None:
    store = open_store(
        settings.resolved_storage_url,
        s3_endpoint_url=settings.s3_endpoint_url,
        data_dir=settings.data_dir,
    )
    pool = make_pool(
        links.dsn,
        min_size=1,
        max_size=max(settings.pool_max_size, worker_pool_size(concurrency)),
        timeout=settings.connect_timeout_seconds,
        prepare=links.prepare,
    )
    await pool.open(wait=True, timeout=settings.connect_timeout_seconds)
    try:
        if links.listen_dsn is None:  # LISTEN cannot work here: connections() said why
            settings = settings.model_copy(update={"worker_listen": False})
        worker = Worker(
            settings,
            dsn=links.listen_dsn or links.dsn,  # the LISTEN link's
            pool=pool,
            store=store,
            concurrency=concurrency,
        )
        exporter = serve_metrics(worker.metrics, settings)
        stop = asyncio.Event()

        def on_signal() -> None:
            if stop.is_set():
                worker.hurry()
            stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        try:
            await worker.start()
            await worker.warmed()
            print(f"sessionflow worker {worker.worker_id} processing sessions", flush=True)
            await stop.wait()
            log.info("worker: stopping (finishing or giving back running jobs)")
            await worker.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if exporter is not None:
                exporter.shutdown()
                exporter.server_close()
    finally:
        await pool.close()


def serve_metrics(metrics: Metrics, settings: Settings) -> WSGIServer | None:
    """prometheus_client's exporter for this worker's figures, if a port is set."""
    port = settings.worker_metrics_port
    if port is None:
        return None
    host = settings.worker_metrics_host
    try:
        server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise WorkerStartError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} "
            "(SESSIONFLOW_WORKER_METRICS_PORT)"
        ) from None
    bound_port = server.server_address[1]
    print(f"sessionflow worker metrics on http://{host}:{bound_port}/metrics", flush=True)
    return server
