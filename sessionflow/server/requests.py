"""The request id and the access log: a plain ASGI middleware around every request.

It takes the client's `X-Request-ID` when it is sane (1 to 64 of [A-Za-z0-9._-]) or makes one,
answers it in the response's `X-Request-ID`, and holds it in the logging context (see
sessionflow/logs.py) so that every record emitted while handling the request carries it. When
the request ends it writes one access line (unless SESSIONFLOW_ACCESS_LOG=false): method, path
(never the query string), status, duration, request id, and owner if the token was checked.
Never a header's value."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessionflow.logs import current_request, enter_request, leave_request

access_log = logging.getLogger("sessionflow.access")

HEADER = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == HEADER.encode():
            candidate: str = value.decode("latin-1")
            if _SANE.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        token = enter_request(request_id)
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception escaped the app
        header = (HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            elif kind == "websocket.accept":
                status = 101
                message["headers"] = [*message.get("headers", ()), header]
            elif kind == "websocket.close" and status == 500:
                status = 403  # closed before the handshake: a refusal
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                log_access(scope, status, started, request_id)
            leave_request(token)


def log_access(scope: Scope, status: int, started: float, request_id: str) -> None:
    context = current_request()
    owner = context.owner if context else None
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    method = scope.get("method", "WS") if scope["type"] == "http" else "WS"
    path = scope.get("path", "")
    access_log.info(
        "%s %s %s %.2fms",
        method,
        path,
        status,
        duration_ms,
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "request_id": request_id,
            "owner": owner,
        },
    )
