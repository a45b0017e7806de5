"""When the API cannot get a database connection in time, it answers the one error shape,
{"error": ..., "detail": ...}, as a 503 a client may retry: never a plain-text 500."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx

from sessionflow.server.app import create_app
from sessionflow.settings import Settings
from tests.helpers import auth


async def test_an_api_request_that_gets_no_connection_in_time_is_a_json_503(
    db_dsn: str, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    token = make_token("alice")
    settings = Settings(
        database_url=db_dsn,
        data_dir=tmp_path / "data",
        pool_min_size=1,
        pool_max_size=2,
        connect_timeout_seconds=0.5,
        ws_enabled=False,
        metrics_enabled=False,
    )
    app = create_app(settings, db_dsn)
    async with app.router.lifespan_context(app):
        pool = app.state.sessionflow.pool
        held = [await pool.getconn(), await pool.getconn()]  # every connection the API has
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://sf.test") as api:
                response = await api.post(
                    "/api/sessions/batch-status", json={"session_ids": ["a"]}, headers=auth(token)
                )
        finally:
            for conn in held:
                await pool.putconn(conn)
    assert response.status_code == 503, response.text
    body = json.loads(response.text)
    assert set(body) == {"error", "detail"}
    assert body["error"] == "unavailable"
    assert "database" in body["detail"]
    assert response.headers["retry-after"]
    assert response.headers["x-request-id"]
