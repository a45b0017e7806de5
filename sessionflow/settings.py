"""Every knob sessionflow has, in one pydantic-settings class (environment prefix SESSIONFLOW_)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sessionflow.limits import default, default_seconds

MiB = 1024 * 1024


def default_data_dir() -> Path:
    """Where the embedded database and local transcripts live when nothing is configured."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "sessionflow"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SESSIONFLOW_", extra="ignore")

    # Where things live. No database URL means: start an embedded PostgreSQL in data_dir.
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SESSIONFLOW_DATABASE_URL", "DATABASE_URL"),
    )
    data_dir: Path = Field(default_factory=default_data_dir)
    storage_url: str | None = None  # default: file://<data_dir>/transcripts
    s3_endpoint_url: str | None = None
    # What needs a PostgreSQL session of its own (LISTEN, the migrations) connects here: a
    # direct URL when database_url goes through a transaction pooler. Default: database_url.
    listen_database_url: str | None = None
    # "transaction": database_url goes through a pooler in transaction mode (PgBouncer
    # pool_mode=transaction). "none": it does not. "auto": look (see db.through_pooler).
    database_pooler: Literal["auto", "none", "transaction"] = "auto"

    # Database pool.
    pool_min_size: int = Field(default=2, ge=1)
    pool_max_size: int = Field(default=10, ge=1)
    connect_timeout_seconds: float = Field(default=10.0, gt=0)

    # API limits: defaults, and what each limits, in sessionflow/limits.py.
    max_batch_ids: int = Field(default=default("max_batch_ids"), ge=1)
    max_register_sessions: int = Field(default=default("max_register_sessions"), ge=1)
    max_list_page: int = Field(default=default("max_list_page"), ge=1)
    max_id_length: int = Field(default=default("max_id_length"), ge=1)
    max_metadata_bytes: int = Field(default=default("max_metadata_bytes"), ge=0)
    max_json_body_bytes: int = Field(default=default("max_json_body_bytes"), ge=1024)
    max_transcript_bytes: int = Field(default=default("max_transcript_bytes"), ge=1)
    max_session_files: int = Field(default=default("max_session_files"), ge=1)
    # Sessions registered but not uploaded yet, per owner, and how long such a registration
    # is kept (the upload usually follows within seconds).
    max_pending_registrations: int = Field(default=default("max_pending_registrations"), ge=1)
    registration_ttl_seconds: float = Field(
        default=default_seconds("registration_ttl_seconds"), gt=0
    )

    # Live stream (WebSocket) limits.
    ws_enabled: bool = True
    ws_max_watched: int = Field(default=default("ws_max_watched"), ge=1)
    ws_ping_interval_seconds: float = Field(
        default=default_seconds("ws_ping_interval_seconds"), gt=0
    )
    ws_coalesce_seconds: float = Field(default=0.02, ge=0)
    # The largest message (frame) a client may send; None: what the largest valid watch
    # message needs (see ws_message_limit).
    ws_max_message_bytes: int | None = Field(default=None, ge=64)
    listen_ping_interval_seconds: float = Field(default=5.0, gt=0)

    # Worker.
    # Sessions a worker holds at once: parsing, or claimed and waiting for a parser.
    worker_concurrency: int = Field(default=8, ge=1)
    # Parser processes (or threads) of a worker: the sessions it parses at once, at most its
    # concurrency. Parsing is CPU-bound: about one per core the worker may use.
    worker_parsers: int = Field(default=2, ge=1)
    worker_poll_seconds: float = Field(default=5.0, gt=0)
    worker_lease_seconds: float = Field(default=30.0, gt=0)
    worker_max_attempts: int = Field(default=default("worker_max_attempts"), ge=1)
    worker_batch_size: int = Field(default=default("worker_batch_size"), ge=1)
    # While other jobs run, how long a stage write waits for theirs to share its statement and
    # commit (worker/commits.py); a job running alone never waits.
    worker_commit_linger_seconds: float = Field(default=0.01, ge=0, le=1)
    worker_retry_base_seconds: float = Field(default=1.0, ge=0)
    worker_retry_max_seconds: float = Field(default=60.0, ge=0)
    worker_listen: bool = True  # False: rely on the safety poll alone
    worker_ping_seconds: float = Field(default=5.0, gt=0)  # liveness ping of the LISTEN link
    worker_reconnect_max_seconds: float = Field(default=10.0, gt=0)
    worker_job_timeout_seconds: float = Field(
        default=default_seconds("worker_job_timeout_seconds"), gt=0
    )
    worker_shutdown_grace_seconds: float = Field(default=20.0, ge=0)
    worker_parser: Literal["process", "thread"] = "process"  # where parsing runs
    # Parse again, as background work, sessions whose result an older parser version made.
    worker_reparse: bool = True
    serve_worker: bool = True  # `sessionflow serve` runs an in-process worker
    summarizer: str = "heuristic"
    summarize_min_user_prompts: int = Field(default=2, ge=0)
    parse_max_line_bytes: int = Field(default=default("parse_max_line_bytes"), ge=1024)

    # Observability.
    metrics_enabled: bool = True  # GET /metrics (Prometheus text, no token)
    # How often the figures the database holds are read for /metrics (never at scrape time).
    metrics_db_interval_seconds: float = Field(default=15.0, gt=0)
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535)  # `worker`: off
    worker_metrics_host: str = "127.0.0.1"
    log_format: Literal["text", "json"] = "text"
    access_log: bool = True  # one INFO line per request (sessionflow.access)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.data_dir / "transcripts").resolve().as_uri()

    @property
    def token_file(self) -> Path:
        return self.data_dir / "token"

    @property
    def ws_message_limit(self) -> int:
        """The largest WebSocket message a client may send: ws_max_message_bytes, or by default
        what the largest valid watch message needs: max_batch_ids ids of max_id_length
        characters, each character in JSON's longest spelling (a surrogate pair of \\u
        escapes, 12 bytes), with their quotes and commas, and 1 KiB for the rest."""
        if self.ws_max_message_bytes is not None:
            return self.ws_max_message_bytes
        return self.max_batch_ids * (self.max_id_length * 12 + 4) + 1024
