"""Every Prometheus figure sessionflow exposes, in one place.

A `Metrics` holds its own CollectorRegistry: each app and each worker gets one, so that two
apps in one process (tests, embedding) never share or clash over a counter. `serve` shows its
registry at GET /metrics (its hub's and in-process worker's figures included); a separate
`sessionflow worker` can serve its own with `--metrics-port`.

Figures that live in the database (sessions by lifecycle, the NOTIFY queue) are read at
scrape time by whoever serves the registry, with `refresh_from_database`; everything else is
counted where it happens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from psycopg import AsyncConnection

from sessionflow.protocol import Lifecycle
from sessionflow.queries import Q

# Seconds: from a few milliseconds (a woken worker, a local NOTIFY) up to minutes (a backlog).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
STAGES = ("download", "parse", "summarize")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge(
            "sessionflow_sessions",
            "Sessions in each lifecycle state, across owners (read at scrape time).",
            ["lifecycle"],
            registry=r,
        )
        self.notification_queue_usage = Gauge(
            "sessionflow_pg_notification_queue_usage",
            "Fraction of PostgreSQL's NOTIFY queue in use (pg_notification_queue_usage()).",
            registry=r,
        )
        self.jobs_claimed = Counter(
            "sessionflow_jobs_claimed", "Sessions claimed by this worker.", registry=r
        )
        self.jobs_succeeded = Counter(
            "sessionflow_jobs_succeeded",
            "Jobs that reached a final state other than failed (parsed or summarized).",
            ["outcome"],
            registry=r,
        )
        self.jobs_failed = Counter(
            "sessionflow_jobs_failed", "Jobs that left their session failed.", registry=r
        )
        self.jobs_retried = Counter(
            "sessionflow_jobs_retried",
            "Jobs given back after a transient error, for a later attempt.",
            registry=r,
        )
        self.pickup_latency = Histogram(
            "sessionflow_pickup_latency_seconds",
            "From when a session became runnable (queued, retry due, lease expired) to its claim.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "sessionflow_stage_duration_seconds",
            "Time spent in each pipeline stage.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ws_connections = Gauge(
            "sessionflow_websocket_connections",
            "Open WebSocket connections on /api/sessions/watch.",
            registry=r,
        )
        self.notify_send_latency = Histogram(
            "sessionflow_notify_send_latency_seconds",
            "From the live hub receiving a NOTIFY to the change being written to a client.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.listen_reconnects = Counter(
            "sessionflow_listen_reconnects",
            "LISTEN connections re-established after a loss.",
            ["listener"],
            registry=r,
        )
        # Show every series from the start, so that a rate() over a fresh process works.
        for lifecycle in Lifecycle:
            self.sessions.labels(lifecycle.value)
        for outcome in ("parsed", "summarized"):
            self.jobs_succeeded.labels(outcome)
        for stage in STAGES:
            self.stage_duration.labels(stage)
        for listener in ("hub", "worker"):
            self.listen_reconnects.labels(listener)

    def count_open_connections(self, count: Callable[[], int]) -> None:
        self.ws_connections.set_function(count)

    async def refresh_from_database(self, conn: AsyncConnection[Any]) -> None:
        """Read the figures the database holds: one GROUP BY over sessions, and the queue."""
        cur = await conn.execute(Q.metrics_sessions_by_lifecycle)
        counts = {str(lifecycle): int(n) for lifecycle, n in await cur.fetchall()}
        for lifecycle in Lifecycle:
            self.sessions.labels(lifecycle.value).set(counts.pop(lifecycle.value, 0))
        for unknown, n in counts.items():  # a state this build does not know yet
            self.sessions.labels(unknown).set(n)
        cur = await conn.execute(Q.metrics_notification_queue_usage)
        row = await cur.fetchone()
        self.notification_queue_usage.set(float(row[0]) if row else 0.0)
