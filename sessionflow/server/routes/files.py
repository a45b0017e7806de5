"""/api/files: a transcript file's bytes, sent once and known by their sha256. A session names
the files it is made of with PUT /api/sessions/{id}/files."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from sessionflow.protocol import ErrorBody, FileUploadResponse
from sessionflow.server.deps import Owner, State
from sessionflow.server.errors import bad_request
from sessionflow.server.uploads import TRANSCRIPT_BODY, is_sha256, store_upload

router = APIRouter(prefix="/api/files", tags=["files"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 413, 415)
}


@router.put(
    "/{sha256}",
    response_model=FileUploadResponse,
    responses=_ERRORS,
    openapi_extra=TRANSCRIPT_BODY,
)
async def upload_file(
    sha256: str, request: Request, state: State, owner: Owner
) -> FileUploadResponse:
    """Store one transcript file (plain or gzip) whose uncompressed bytes have this sha256.
    Sending the same bytes again stores them again (which repairs a damaged copy)."""
    if not is_sha256(sha256):
        raise bad_request("the URL must end in the lowercase hex sha256 of the file")
    digest, size = await store_upload(request, state, owner, expected=sha256)
    return FileUploadResponse(sha256=digest, size=size)
