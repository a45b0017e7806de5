"""Taking a transcript file's bytes in: check the headers, receive the body (gzip or plain)
within the limit, check its sha256, store it content-addressed and record that its owner sent
it. Shared by PUT /api/files/{sha256} and the one-file PUT /api/sessions/{id}/transcript."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import Request

from sessionflow.queries import Q
from sessionflow.server.deps import AppState
from sessionflow.server.errors import ApiError, bad_request
from sessionflow.server.ingest import receive_transcript
from sessionflow.storage import discard, transcript_key

TRANSCRIPT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/x-ndjson": {"schema": {"type": "string", "format": "binary"}}},
    }
}

_HEX = frozenset("0123456789abcdef")


def is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in _HEX for c in value)


async def store_upload(
    request: Request, state: AppState, owner: str, *, expected: str | None
) -> tuple[str, int]:
    """Receive, check and store the request's body; returns its (sha256, size). expected: the
    sha256 the URL names, else the X-Content-SHA256 header must."""
    settings = state.settings
    declared = request.headers.get("x-content-sha256", "").strip().lower()
    if expected is not None and declared and declared != expected:
        raise bad_request("X-Content-SHA256 differs from the sha256 in the URL")
    declared = expected or declared
    if not is_sha256(declared):
        raise bad_request("send X-Content-SHA256: the hex sha256 of the uncompressed transcript")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise ApiError(415, "unsupported_media_type", "Content-Encoding must be gzip or absent")
    length = request.headers.get("content-length")
    limit = settings.max_transcript_bytes
    if encoding == "identity" and length and length.isdigit() and int(length) > limit:
        raise ApiError(413, "too_large", f"the transcript is over the {limit}-byte limit")

    received = await receive_transcript(
        request.stream(), gzipped=encoding == "gzip", limit=limit, staging=state.store.staging_dir()
    )
    try:
        if received.sha256 != declared:
            raise bad_request(
                f"the transcript's sha256 is {received.sha256}, not the {declared} that was "
                "declared; the upload was damaged or the header is wrong"
            )
        # Stored before it is recorded: a crash in between leaves an orphan blob, never a
        # record of bytes that are not there.
        key = transcript_key(received.sha256)
        await anyio.to_thread.run_sync(state.store.put_file, key, received.path)
    finally:
        discard(received.path)
    async with state.pool.connection() as conn:
        await conn.execute(
            Q.file_record, {"owner": owner, "sha256": received.sha256, "size": received.size}
        )
    return received.sha256, received.size
