"""/api/sessions: register, upload transcripts, name a session's files, read one session, and
the batch-status poll."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from psycopg.types.json import Jsonb
from pydantic import BeforeValidator

from sessionflow.protocol import (
    DEFAULT_LIST_PAGE,
    MAX_FILE_NAME_LENGTH,
    BatchStatusRequest,
    BatchStatusResponse,
    ErrorBody,
    Lifecycle,
    RegisterRequest,
    RegisterResponse,
    SessionDetail,
    SessionFile,
    SessionFilesRequest,
    SessionListItem,
    SessionListPage,
    UploadResponse,
    is_valid_session_id,
    nul_path,
    session_digest,
)
from sessionflow.queries import Q
from sessionflow.server.batch_status import answer as batch_status_answer
from sessionflow.server.bodies import documented_body, read_json
from sessionflow.server.deps import Owner, State
from sessionflow.server.errors import ApiError, bad_request, not_found
from sessionflow.server.listing import decode_cursor, encode_cursor, iso_time_only, listing
from sessionflow.server.uploads import TRANSCRIPT_BODY, store_upload
from sessionflow.settings import Settings
from sessionflow.storage import transcript_key

router = APIRouter(prefix="/api/sessions", tags=["sessions"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 415, 429)
}


def _check_session_id(session_id: str, max_length: int) -> None:
    if not is_valid_session_id(session_id, max_length):
        raise bad_request(
            f"invalid session id {session_id[:60]!r}: use 1 to {max_length} characters of "
            "letters, digits and . _ : @ + - (starting with a letter or digit)"
        )


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
        if item.files is None:
            _check_file_size(item.id, item.size, settings)
        else:
            _check_files(item.id, item.files, settings)
            if item.sha256 != session_digest(item.files):
                raise bad_request(
                    f"session {item.id!r}: sha256 must be the digest of its files "
                    "(sessionflow.protocol.session_digest)"
                )
        if item.metadata is not None:
            where = nul_path(item.metadata)
            if where is not None:
                raise bad_request(
                    f"metadata of session {item.id!r} holds a NUL character at {where}, "
                    "which cannot be stored"
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
        await conn.execute(
            Q.registrations_expire,
            {"owner": owner, "ttl_seconds": settings.registration_ttl_seconds},
        )
        cur = await conn.execute(Q.session_hashes, {"owner": owner, "ids": ids})
        stored: dict[str, str] = dict(await cur.fetchall())
        # Only what the server needs is remembered: a session already stored as it is has
        # nothing to wait for.
        wanted = [
            (item, meta)
            for item, meta in zip(body.sessions, metadatas, strict=True)
            if stored.get(item.id) != item.sha256
        ]
        cur = await conn.execute(Q.registrations_pending, {"owner": owner})
        pending = (await cur.fetchone() or (0,))[0]
        if wanted and pending + len(wanted) > settings.max_pending_registrations:
            raise ApiError(
                429,
                "too_many_registrations",
                f"{pending} sessions of this owner are registered and not uploaded; at most "
                f"{settings.max_pending_registrations} may wait "
                "(SESSIONFLOW_MAX_PENDING_REGISTRATIONS). Upload them, or wait "
                f"{settings.registration_ttl_seconds:g} s for them to expire",
            )
        await conn.execute(
            Q.registration_upsert,
            {
                "owner": owner,
                "ids": [item.id for item, _ in wanted],
                "sha256s": [item.sha256 for item, _ in wanted],
                "sizes": [item.size for item, _ in wanted],
                "metadatas": [meta for _, meta in wanted],
            },
        )
        listed = {f.sha256 for item, _ in wanted for f in item.files or ()}
        owned: set[str] = set()
        if listed:
            cur = await conn.execute(Q.files_owned, {"owner": owner, "sha256s": list(listed)})
            owned = {row[0] for row in await cur.fetchall()}
    missing = {
        item.id: list(dict.fromkeys(f.sha256 for f in item.files if f.sha256 not in owned))
        for item, _ in wanted
        if item.files is not None
    }
    return RegisterResponse(upload=[item.id for item, _ in wanted], missing_files=missing)


def _check_file_size(session_id: str, size: int, settings: Settings) -> None:
    if size > settings.max_transcript_bytes:
        raise ApiError(
            413,
            "too_large",
            f"a file of session {session_id!r} is {size} bytes; the limit is "
            f"{settings.max_transcript_bytes} (SESSIONFLOW_MAX_TRANSCRIPT_BYTES)",
        )


def _check_files(session_id: str, files: list[SessionFile], settings: Settings) -> None:
    """What a session's list of files must be: within the limits, at most one main transcript,
    and each subagent run named once."""
    if len(files) > settings.max_session_files:
        raise bad_request(
            f"session {session_id!r} lists {len(files)} files; the limit is "
            f"{settings.max_session_files} (SESSIONFLOW_MAX_SESSION_FILES)"
        )
    mains = 0
    agents: set[str] = set()
    for f in files:
        _check_file_size(session_id, f.size, settings)
        if len(f.name) > MAX_FILE_NAME_LENGTH or "\x00" in f.name:
            raise bad_request(
                f"session {session_id!r}: a file name is over {MAX_FILE_NAME_LENGTH} "
                "characters or holds a NUL character"
            )
        if f.role == "main":
            mains += 1
            if f.agent_id is not None:
                raise bad_request(f"session {session_id!r}: the main transcript has an agent_id")
        elif f.agent_id is None:
            raise bad_request(
                f"session {session_id!r}: subagent file {f.name[:100]!r} needs its agent_id"
            )
        elif not is_valid_session_id(f.agent_id, settings.max_id_length):
            raise bad_request(f"session {session_id!r}: invalid agent_id {f.agent_id[:60]!r}")
        elif f.agent_id in agents:
            raise bad_request(
                f"session {session_id!r}: subagent run {f.agent_id!r} is listed twice"
            )
        else:
            agents.add(f.agent_id)
    if mains > 1:
        raise bad_request(f"session {session_id!r} lists {mains} main transcripts; at most 1")


@router.put(
    "/{session_id}/transcript",
    response_model=UploadResponse,
    responses=_ERRORS,
    openapi_extra=TRANSCRIPT_BODY,
)
async def upload_transcript(
    session_id: str,
    request: Request,
    state: State,
    owner: Owner,
    force: bool = Query(default=False, description="re-queue even if the bytes are unchanged"),
) -> UploadResponse:
    """Store a session of one file, its main transcript (plain or gzip), and queue it, in one
    transaction."""
    _check_session_id(session_id, state.settings.max_id_length)
    sha256, size = await store_upload(request, state, owner, expected=None)
    return await _ingest(
        state,
        owner,
        session_id,
        key=transcript_key(sha256),
        size=size,
        sha256=sha256,
        files=None,
        force=force,
    )


@router.put(
    "/{session_id}/files",
    response_model=UploadResponse,
    responses=_ERRORS,
    openapi_extra=documented_body(SessionFilesRequest),
)
async def put_session_files(
    session_id: str,
    request: Request,
    state: State,
    owner: Owner,
    force: bool = Query(default=False, description="re-queue even if the files are unchanged"),
) -> UploadResponse:
    """Say which files a session is made of (each uploaded before with PUT /api/files/{sha256});
    a changed set of files queues the session again."""
    settings = state.settings
    _check_session_id(session_id, settings.max_id_length)
    body = await read_json(request, SessionFilesRequest, settings.max_json_body_bytes)
    _check_files(session_id, body.files, settings)
    shas = list({f.sha256 for f in body.files})
    async with state.pool.connection() as conn:
        cur = await conn.execute(Q.files_owned, {"owner": owner, "sha256s": shas})
        owned: dict[str, int] = dict(await cur.fetchall())
    missing = [sha for sha in shas if sha not in owned]
    if missing:
        raise ApiError(
            409,
            "files_missing",
            f"{len(missing)} of the session's files are not uploaded yet (first: {missing[0]}); "
            "send each with PUT /api/files/{sha256}, then name them again",
        )
    # The sizes the server measured, not the ones the client claims.
    files = [f.model_copy(update={"size": owned[f.sha256]}) for f in body.files]
    main = next((f for f in files if f.role == "main"), files[0])
    return await _ingest(
        state,
        owner,
        session_id,
        key=transcript_key(main.sha256),
        size=sum(f.size for f in files),
        sha256=session_digest(files),
        files=None if len(files) == 1 and main.role == "main" else files,
        force=force,
    )


async def _ingest(
    state: State,
    owner: str,
    session_id: str,
    *,
    key: str,
    size: int,
    sha256: str,
    files: list[SessionFile] | None,
    force: bool,
) -> UploadResponse:
    """Record a session's stored files and queue it (unless nothing changed and not force)."""
    params = {
        "owner": owner,
        "id": session_id,
        "key": key,
        "size": size,
        "sha256": sha256,
        "files": None if files is None else json.dumps([f.model_dump() for f in files]),
        "force": force,
    }
    async with state.pool.connection() as conn, conn.transaction():
        cur = await conn.execute(Q.session_ingest, params)
        row = await cur.fetchone()
        await conn.execute(Q.registration_forget, {"owner": owner, "id": session_id})
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
    detail = SessionDetail.model_validate(dict(zip(names, row, strict=True)))
    detail.summary_skipped = summary_skipped(detail, state.settings.summarize_min_user_prompts)
    return detail


@router.post(
    "/batch-status",
    response_model=BatchStatusResponse,
    responses=_ERRORS,
    openapi_extra=documented_body(BatchStatusRequest),
)
async def batch_status(request: Request, state: State) -> Response:
    """The polling contract: the state of up to 500 of the caller's sessions in one query,
    which checks the caller's token too. `sessionflow serve` answers it ahead of FastAPI
    (sessionflow.server.batch_status); this declaration documents it, and answers alike."""
    return await batch_status_answer(request, state)


def summary_skipped(detail: SessionDetail, min_user_prompts: int) -> str | None:
    """Why a parsed session has no summary, for a person: the worker summarizes only sessions
    with at least this server's minimum of typed prompts (worker.summarize.should_summarize)."""
    if detail.lifecycle != Lifecycle.PARSED or detail.parse_result is None:
        return None
    prompts = detail.parse_result.get("user_prompts")
    if not isinstance(prompts, int) or prompts >= min_user_prompts:
        return None
    typed = f"{prompts} typed prompt{'' if prompts == 1 else 's'}"
    if min_user_prompts == 1:
        return f"{typed}; sessions without a typed prompt are not summarized"
    return f"{typed}; sessions with fewer than {min_user_prompts} are not summarized"


@router.get("", response_model=SessionListPage, responses=_ERRORS)
async def list_sessions(
    state: State,
    owner: Owner,
    limit: Annotated[
        int,
        Query(
            ge=1,
            description="sessions per page (at most the server's SESSIONFLOW_MAX_LIST_PAGE, "
            "500 unless set)",
        ),
    ] = DEFAULT_LIST_PAGE,
    cursor: Annotated[
        str | None,
        Query(description="next_cursor of the previous page, asked with the same filters"),
    ] = None,
    project: Annotated[
        str | None,
        Query(
            description="only this project: the name the listing shows (or a path ending in "
            "it), in any case"
        ),
    ] = None,
    since: Annotated[
        datetime | None,
        BeforeValidator(iso_time_only),
        Query(description="only sessions active at or after this time (ISO 8601; no offset: UTC)"),
    ] = None,
    lifecycle_states: Annotated[
        list[str] | None,
        Query(
            alias="state",
            description="only sessions in these lifecycle states (repeat it, or separate them "
            "by commas)",
        ),
    ] = None,
) -> Response:
    """The caller's sessions, most recently active first, a page at a time: follow next_cursor
    until it is null. Sessions added meanwhile never make a page repeat or skip one."""
    settings = state.settings
    if limit > settings.max_list_page:
        raise bad_request(
            f"limit {limit} is over the page limit; ask for 1 to {settings.max_list_page} "
            "sessions a page and follow next_cursor"
        )
    wanted = listing(owner, project, since, lifecycle_states or [])
    after = None if cursor is None else decode_cursor(wanted, cursor, settings.max_id_length)
    query = Q.list_sessions if wanted.project is None else Q.list_sessions_in_project
    async with state.pool.connection() as conn:
        cur = await conn.execute(query, wanted.params(after, limit + 1))
        rows = await cur.fetchall()
        names = [d.name for d in cur.description or ()]
    items = [SessionListItem.model_validate(dict(zip(names, r, strict=True))) for r in rows]
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        next_cursor = encode_cursor(wanted, items[-1].active_at, items[-1].id)
    # Serialized here, once: FastAPI would validate the page again against response_model.
    page = SessionListPage(sessions=items, next_cursor=next_cursor)
    return Response(page.model_dump_json(), media_type="application/json")
