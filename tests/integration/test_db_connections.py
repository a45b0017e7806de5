"""Where each kind of connection goes (sessionflow.db.connections), and a pool that must not
prepare statements (behind a transaction pooler) preparing none, even where a query asks."""

from __future__ import annotations

import logging

import pytest

from sessionflow.db import LISTEN_OFF, connections, make_pool, migration_dsn
from sessionflow.settings import Settings


@pytest.mark.parametrize(("prepare", "prepared"), [(False, 0), (True, 2)])
async def test_a_pool_told_not_to_prepare_prepares_nothing_even_when_a_query_asks(
    db_dsn: str, prepare: bool, prepared: int
) -> None:
    pool = make_pool(db_dsn, min_size=1, max_size=1, timeout=5, prepare=prepare)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            for _ in range(7):  # past psycopg's threshold for preparing by itself (5)
                await conn.execute("SELECT %s::int", (1,), prepare=True)
                await conn.execute("SELECT %s::text", ("x",))
            cur = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
            assert await cur.fetchone() == (prepared,)
    finally:
        await pool.close()


def test_a_direct_database_is_prepared_on_and_listens_on_its_own_url(
    settings: Settings, db_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="sessionflow.db"):
        links = connections(settings, db_dsn)
    assert (links.dsn, links.listen_dsn, links.prepare) == (db_dsn, db_dsn, True)
    assert links.migrate_dsn == migration_dsn(settings, db_dsn) == db_dsn
    assert caplog.records == []


def test_behind_a_transaction_pooler_nothing_is_prepared_and_listen_uses_the_direct_url(
    settings: Settings, db_dsn: str
) -> None:
    direct = db_dsn + " application_name=direct"
    behind = settings.model_copy(
        update={"database_pooler": "transaction", "listen_database_url": direct}
    )
    links = connections(behind, db_dsn)
    assert (links.dsn, links.listen_dsn, links.prepare) == (db_dsn, direct, False)
    assert links.migrate_dsn == migration_dsn(behind, db_dsn) == direct


def test_a_transaction_pooler_without_a_listen_url_says_listen_cannot_work(
    settings: Settings, db_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    behind = settings.model_copy(update={"database_pooler": "transaction"})
    with caplog.at_level(logging.WARNING, logger="sessionflow.db"):
        links = connections(behind, db_dsn)
    assert (links.listen_dsn, links.prepare) == (None, False)
    assert links.migrate_dsn == db_dsn
    assert [r.getMessage() for r in caplog.records] == [LISTEN_OFF]
    assert "LISTEN cannot work through a transaction pooler" in LISTEN_OFF
