"""/api/sessions: register, upload transcripts, read one session, and the batch-status poll."""

from __future__ import annotations

import json
from typing import Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from psycopg.types.json import Jsonb

from sessionflow.protocol import (
    BatchStatusRequest,
    BatchStatusResponse,
    ErrorBody,
    RegisterRequest,
    RegisterResponse,
    SessionDetail,
    UploadResponse,
    is_valid_session_id,
    lookup_id_problem,
)
from sessionflow.queries import Q
from sessionflow.server.bodies import documented_body, read_json
from sessionflow.server.deps import Owner, State
from sessionflow.server.errors import ApiError, bad_request, not_found
from sessionflow.server.ingest import discard, receive_transcript
from sessionflow.storage import transcript_key

router = APIRouter(prefix="/api/sessions", tags=["sessions"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415)
}


def _check_session_id(session_id: str, max_length: int) -> None:
    if not is_valid_session_id(session_id, max_length):
        raise bad_request(
            f"invalid session id {session_id[:60]!r}: use 1 to {max_length} characters of "
            "letters, digits and . _ : @ + - (starting with a letter or digit)"
        )


def _holds_nul(value: Any) -> bool:
    """Whether any key or string in a JSON value holds NUL, which PostgreSQL's jsonb refuses.
    Iterative, so a deeply nested value cannot exhaust the stack."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


@router.post(
    "",
    response_model=RegisterResponse,
    responses=_ERRORS,
    openapi_extra=documented_body(RegisterRequest),
)
async def register_sessions(request: Request, state: State, owner: Owner) -> RegisterResponse:
    """Register sessions; answers which of them need their transcript uploaded."""
    settings = state.settings
    body = await read_json(request, RegisterRequest, settings.max_json_body_bytes)
    if len(body.sessions) > settings.max_register_sessions:
        raise bad_request(
            f"{len(body.sessions)} sessions in one request; send at most "
            f"{settings.max_register_sessions}"
        )
    seen: set[str] = set()
    metadatas: list[Jsonb | None] = []
    for item in body.sessions:
        _check_session_id(item.id, settings.max_id_length)
        if item.id in seen:
            raise bad_request(f"session {item.id!r} appears twice in one request")
        seen.add(item.id)
        if item.size > settings.max_transcript_bytes:
            raise ApiError(
                413,
                "too_large",
                f"session {item.id!r} is {item.size} bytes; the limit is "
                f"{settings.max_transcript_bytes}",
            )
        if item.metadata is not None:
            if _holds_nul(item.metadata):
                raise bad_request(
                    f"metadata of session {item.id!r} contains a NUL character, which "
                    "cannot be stored"
                )
            encoded = json.dumps(item.metadata)
            if len(encoded) > settings.max_metadata_bytes:
                raise bad_request(
                    f"metadata of session {item.id!r} is over the "
                    f"{settings.max_metadata_bytes}-byte limit"
                )
        metadatas.append(Jsonb(item.metadata) if item.metadata is not None else None)

    ids = [item.id for item in body.sessions]
    async with state.pool.connection() as conn, conn.transaction():
        cur = await conn.execute(Q.session_hashes, {"owner": owner, "ids": ids})
        stored: dict[str, str] = dict(await cur.fetchall())
        await conn.execute(
            Q.registration_upsert,
            {
                "owner": owner,
                "ids": ids,
                "sha256s": [item.sha256 for item in body.sessions],
                "sizes": [item.size for item in body.sessions],
                "metadatas": metadatas,
            },
        )
    return RegisterResponse(
        upload=[item.id for item in body.sessions if stored.get(item.id) != item.sha256]
    )


@router.put(
    "/{session_id}/transcript",
    response_model=UploadResponse,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-ndjson": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload_transcript(
    session_id: str,
    request: Request,
    state: State,
    owner: Owner,
    force: bool = Query(default=False, description="re-queue even if the bytes are unchanged"),
) -> UploadResponse:
    """Store a transcript (plain or gzip) and queue its session, in one transaction."""
    settings = state.settings
    _check_session_id(session_id, settings.max_id_length)
    declared = request.headers.get("x-content-sha256", "").strip().lower()
    if len(declared) != 64 or any(c not in "0123456789abcdef" for c in declared):
        raise bad_request("send X-Content-SHA256: the hex sha256 of the uncompressed transcript")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise ApiError(415, "unsupported_media_type", "Content-Encoding must be gzip or absent")
    length = request.headers.get("content-length")
    if (
        encoding == "identity"
        and length
        and length.isdigit()
        and int(length) > settings.max_transcript_bytes
    ):
        raise ApiError(
            413,
            "too_large",
            f"the transcript is over the {settings.max_transcript_bytes}-byte limit",
        )

    received = await receive_transcript(
        request.stream(),
        gzipped=encoding == "gzip",
        limit=settings.max_transcript_bytes,
        staging=state.store.staging_dir(),
    )
    try:
        if received.sha256 != declared:
            raise bad_request(
                f"the transcript's sha256 is {received.sha256}, not the {declared} that "
                "X-Content-SHA256 declared; the upload was damaged or the header is wrong"
            )
        key = transcript_key(received.sha256)
        # Stored before it is recorded: a crash in between leaves an orphan blob, never a
        # session that points at nothing.
        await anyio.to_thread.run_sync(state.store.put_file, key, received.path)
    finally:
        discard(received.path)

    params = {
        "owner": owner,
        "id": session_id,
        "key": key,
        "size": received.size,
        "sha256": received.sha256,
        "force": force,
    }
    async with state.pool.connection() as conn, conn.transaction():
        cur = await conn.execute(Q.session_ingest, params)
        row = await cur.fetchone()
        queued = row is not None
        if row is None:
            cur = await conn.execute(Q.session_state, {"owner": owner, "id": session_id})
            row = await cur.fetchone()
    assert row is not None
    return UploadResponse(id=session_id, queued=queued, lifecycle=row[0], version=row[1])


@router.get("/{session_id}", response_model=SessionDetail, responses=_ERRORS)
async def get_session(session_id: str, state: State, owner: Owner) -> SessionDetail:
    """One session: its state, and its parse results and summary once they exist."""
    _check_session_id(session_id, state.settings.max_id_length)
    async with state.pool.connection() as conn:
        cur = await conn.execute(Q.session_detail, {"owner": owner, "id": session_id})
        row = await cur.fetchone()
        names = [d.name for d in cur.description or ()]
    if row is None:
        raise not_found(session_id)
    return SessionDetail.model_validate(dict(zip(names, row, strict=True)))


@router.post(
    "/batch-status",
    response_model=BatchStatusResponse,
    responses=_ERRORS,
    openapi_extra=documented_body(BatchStatusRequest),
)
async def batch_status(request: Request, state: State, owner: Owner) -> Response:
    """The polling contract: the state of up to 500 of the caller's sessions in one query."""
    settings = state.settings
    body = await read_json(request, BatchStatusRequest, settings.max_json_body_bytes)
    ids = list(dict.fromkeys(body.session_ids))  # duplicates are answered once, in order
    if len(body.session_ids) > settings.max_batch_ids:
        raise bad_request(
            f"{len(body.session_ids)} session ids in one request; send 1 to "
            f"{settings.max_batch_ids}"
        )
    for session_id in ids:
        problem = lookup_id_problem(session_id, settings.max_id_length)
        if problem is not None:
            raise bad_request(f"session id {session_id[:40]!r}... {problem}")
    async with state.pool.connection() as conn:
        cur = await conn.execute(
            Q.batch_status, {"owner": owner, "ids": json.dumps(ids)}, prepare=True
        )
        row = await cur.fetchone()
    assert row is not None  # an aggregate always answers one row
    statuses_json, found_ids = row
    found = set(found_ids)
    not_found_ids = [sid for sid in ids if sid not in found]
    payload = f'{{"statuses":{statuses_json},"not_found":{json.dumps(not_found_ids)}}}'
    return Response(payload, media_type="application/json")
