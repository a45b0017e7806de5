"""POST /api/sessions/batch-status: the polling contract, and the hot path of every client that
cannot hold a WebSocket open (each asks for up to 500 ids every 3 s).

The request is answered by `answer()` whichever way it arrives. `sessionflow serve` dispatches
it ahead of FastAPI (`batch_status_app`, from server/app.py's App, as the live stream is):
FastAPI's routing over every route, its middleware stack (error, telemetry, body limit,
exception and exit-stack layers) and its dependency solving cost more CPU per request than
everything this route does in Python besides its query. What a request sees is the same either
way: the request id and the access line (RequestContextMiddleware wraps both), the refusals
and error bodies (errors.error_response, which FastAPI's exception handlers answer with too).
The route stays declared on the sessions router, so the OpenAPI document describes it, and it
answers there for an App whose `batch_status` dispatch is off."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sessionflow.logs import set_owner
from sessionflow.protocol import BatchStatusRequest, lookup_id_problem
from sessionflow.queries import Q
from sessionflow.server.bodies import read_json_as_sent
from sessionflow.server.deps import AppState, owner_of_token, request_token, token_refused
from sessionflow.server.errors import ApiError, bad_request, error_response, is_unexpected
from sessionflow.tokens import hash_token

BATCH_STATUS_PATH = "/api/sessions/batch-status"


async def answer(request: Request, state: AppState) -> Response:
    """The state of up to max_batch_ids of the caller's sessions in one query, which checks the
    caller's token too (one round trip, not two)."""
    settings = state.settings
    token = request_token(request)
    try:
        body, raw = await read_json_as_sent(
            request, BatchStatusRequest, settings.max_json_body_bytes
        )
        ids = list(dict.fromkeys(body.session_ids))  # duplicates are answered once, in order
        if len(body.session_ids) > settings.max_batch_ids:
            raise bad_request(
                f"{len(body.session_ids)} session ids in one request; send 1 to "
                f"{settings.max_batch_ids}"
            )
        # Checked all at once (in C); one by one only to say which id is wrong.
        if max(map(len, ids)) > settings.max_id_length or "\x00" in "".join(ids):
            for session_id in ids:
                problem = lookup_id_problem(session_id, settings.max_id_length)
                if problem is not None:
                    raise bad_request(f"session id {session_id[:40]!r}... {problem}")
    except ApiError:
        # As on every route, a refused token is refused whatever the body.
        if await owner_of_token(state.pool, token) is None:
            raise token_refused() from None
        raise
    # The query reads the ids from a body such as the client sends. When no id is repeated,
    # that is the client's own, valid JSON and read alike by PostgreSQL (the last of repeated
    # keys counts, as for pydantic): encoding 500 ids again cost a tenth of the request's CPU.
    asked = raw.decode() if len(ids) == len(body.session_ids) else json.dumps({"session_ids": ids})
    async with state.pool.connection() as conn:
        cur = await conn.execute(
            Q.batch_status, {"token_hash": hash_token(token), "body": asked}, prepare=True
        )
        row = await cur.fetchone()
    assert row is not None  # an aggregate always answers one row
    owner, statuses_json, not_found_json = row
    if owner is None:
        raise token_refused()
    set_owner(owner)
    # Both parts arrive as JSON text: the ids not found never become Python strings.
    payload = f'{{"statuses":{statuses_json},"not_found":{not_found_json}}}'
    return Response(payload, media_type="application/json")


async def batch_status_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The route as a bare ASGI app, for POSTs to BATCH_STATUS_PATH only (App.__call__ sends
    nothing else here). As FastAPI's stack would: an error is answered in the API's shape, and
    one nobody foresaw is re-raised after its 500, for the server to log with its traceback."""
    request = Request(scope, receive)
    try:
        response = await answer(request, scope["app"].state.sessionflow)
    except Exception as exc:
        await error_response(exc)(scope, receive, send)
        if is_unexpected(exc):
            raise
        return
    await response(scope, receive, send)
