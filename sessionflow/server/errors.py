"""One error shape for every failure the API reports: {"error": code, "detail": sentence}."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sessionflow.logs import first_line

log = logging.getLogger(__name__)

# A client that gets a 503 may try again this many seconds later (and sessionflow's does).
RETRY_AFTER_SECONDS = 1


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


def bad_request(detail: str, error: str = "invalid_request") -> ApiError:
    return ApiError(400, error, detail)


def not_found(session_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no session {session_id!r}")


def describe_validation_errors(errors: list[Any], *, limit: int = 5) -> str:
    """Pydantic's errors as one readable sentence: where, and what was wrong."""
    parts = []
    for err in errors[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
            loc = ""
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = len(errors) - limit
    if more > 0:
        parts.append(f"and {more} more problems")
    return "; ".join(parts)


def _json(
    status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


_HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


# The errors error_response answers in words of their own; anything else is a 500.
_FORESEEN = (
    ApiError,
    RequestValidationError,
    ValidationError,
    StarletteHTTPException,
    PoolTimeout,
    psycopg.OperationalError,
)


def error_response(exc: Exception) -> JSONResponse:
    """The answer to an exception a request raised, in the one error shape. Both FastAPI's
    exception handlers (install_error_handlers) and the routes dispatched ahead of FastAPI
    (sessionflow.server.batch_status) answer with it, so that each error reads the same
    whichever way a request went. Anything not named here is a 500."""
    if isinstance(exc, ApiError):
        return _json(exc.status, exc.error, exc.detail, exc.headers)
    if isinstance(exc, RequestValidationError | ValidationError):
        return _json(400, "invalid_request", describe_validation_errors(list(exc.errors())))
    if isinstance(exc, StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "error")
        return _json(exc.status_code, code, str(exc.detail), exc.headers)
    if isinstance(exc, PoolTimeout):
        log.warning("no database connection came free in time: %s", first_line(exc))
        return _json(
            503,
            "unavailable",
            "the server is busy: no database connection came free in time; try again shortly",
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, psycopg.OperationalError):
        log.warning("the database did not answer: %s", first_line(exc))
        return _json(
            503,
            "unavailable",
            "the database is not answering; try again shortly",
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return _json(500, "internal", "the server hit an unexpected error; its log says more")


def is_unexpected(exc: Exception) -> bool:
    """Whether error_response(exc) is the 500 of an error nobody foresaw: it is logged with
    its traceback, after the answer is sent."""
    return not isinstance(exc, _FORESEEN)


def install_error_handlers(app: FastAPI) -> None:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        # For Exception itself, Starlette logs the exception with its traceback after this
        # answer is sent.
        return error_response(exc)

    for kind in (*_FORESEEN, Exception):
        app.add_exception_handler(kind, handle)
