"""The request-id middleware and the log formats, on a tiny app in-process."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sessionflow.logs import TEXT_FORMAT, TextFormatter, make_handler, set_owner
from sessionflow.server.requests import RequestContextMiddleware

app_log = logging.getLogger("tests.request_logging")


async def endpoint(request: Request) -> PlainTextResponse:
    set_owner("alice")
    app_log.info("handling %s", request.url.path)
    return PlainTextResponse("ok")


async def broken(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom")


def make_app(*, access_log: bool = True) -> Any:
    app = Starlette(routes=[Route("/work", endpoint), Route("/broken", broken)])
    return RequestContextMiddleware(app, access_log=access_log)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = make_handler("json", stream)
    loggers = [logging.getLogger("sessionflow.access"), app_log]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield stream
    for logger in loggers:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_a_sane_request_id_is_kept_and_put_on_every_record(
    client: httpx.AsyncClient, captured: io.StringIO
) -> None:
    rid = "A" * 60 + ".-_9"
    response = await client.get("/work?token=sf_secret", headers={"X-Request-ID": rid})
    assert response.headers["x-request-id"] == rid
    inside, access = records(captured)
    assert inside["message"] == "handling /work"
    assert inside["request_id"] == rid
    assert inside["owner"] == "alice"
    assert access["logger"] == "sessionflow.access"
    assert access["request_id"] == rid
    assert access["owner"] == "alice"
    assert (access["method"], access["path"], access["status"]) == ("GET", "/work", 200)
    assert "sf_secret" not in captured.getvalue()


@pytest.mark.parametrize(
    "given", ["A" * 65, "has space", "semi;colon", "caf\xe9".encode("latin-1"), ""]
)
async def test_an_insane_request_id_is_replaced(
    client: httpx.AsyncClient, captured: io.StringIO, given: str | bytes
) -> None:
    response = await client.get("/work", headers={"X-Request-ID": given})
    made = response.headers["x-request-id"]
    assert made != given
    assert len(made) == 32
    assert {r["request_id"] for r in records(captured)} == {made}


async def test_each_request_gets_its_own_id(client: httpx.AsyncClient) -> None:
    first = await client.get("/work")
    second = await client.get("/work")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_an_escaped_exception_is_logged_as_a_500(
    client: httpx.AsyncClient, captured: io.StringIO
) -> None:
    response = await client.get("/broken", headers={"X-Request-ID": "r-500"})
    assert response.status_code == 500
    (access,) = records(captured)
    assert (access["path"], access["status"], access["request_id"]) == ("/broken", 500, "r-500")
    assert "owner" not in access


def test_records_outside_a_request_carry_no_request_fields() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.outside")
    logger.addHandler(make_handler("json", stream))
    logger.setLevel(logging.INFO)
    try:
        logger.info("idle")
    finally:
        logger.handlers.clear()
    (record,) = records(stream)
    assert record["message"] == "idle"
    assert "request_id" not in record


def test_the_text_format_appends_the_request_fields() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.text")
    logger.addHandler(make_handler("text", stream))
    logger.setLevel(logging.INFO)
    try:
        logger.info("done", extra={"request_id": "abc", "owner": "bob"})
    finally:
        logger.handlers.clear()
    line = stream.getvalue().strip()
    assert line.endswith("INFO tests.text: done request_id=abc owner=bob")


async def test_with_the_access_log_off_requests_keep_their_id_but_write_no_access_line(
    captured: io.StringIO,
) -> None:
    transport = httpx.ASGITransport(app=make_app(access_log=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as quiet:
        response = await quiet.get("/work", headers={"X-Request-ID": "r-1"})
    assert response.headers["x-request-id"] == "r-1"
    (inside,) = records(captured)
    assert inside["message"] == "handling /work"
    assert inside["request_id"] == "r-1"


def test_text_lines_carry_the_time_exactly_as_logging_writes_it() -> None:
    # TextFormatter makes the time's text once a second; each line must still read as
    # logging's own formatter writes it, across second boundaries and back in time.
    ours, theirs = TextFormatter(), logging.Formatter(TEXT_FORMAT)
    for created in (1.0, 1.9996, 2.0, 2.5, 1_796_037_534.123, 1_796_037_534.999, 1.5, 59.001):
        record = logging.LogRecord("sessionflow.access", logging.INFO, "", 0, "x", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == theirs.format(record), created
