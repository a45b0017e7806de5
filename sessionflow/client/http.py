"""The HTTP side of the sessionflow API, as an async client usable as a library.

It speaks only the wire contract of sessionflow.protocol and never imports the server."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterable, Sequence
from types import TracebackType
from typing import Any, Self

import httpx

from sessionflow.protocol import (
    MAX_BATCH_IDS,
    BatchStatusResponse,
    FileUploadResponse,
    RegisterResponse,
    SessionDetail,
    SessionFile,
    SessionListPage,
    SessionRegistration,
    SessionStatus,
    UploadResponse,
    chunked,
)


class ClientError(Exception):
    """Base of everything the client raises."""


class ServerUnreachable(ClientError):
    """No HTTP answer at all: connection refused, DNS, timeout."""


class AuthError(ClientError):
    """The server refused the token (401/403)."""


class ApiError(ClientError):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail

    @property
    def transient(self) -> bool:
        """Worth retrying: the server or something in front of it had a bad moment."""
        return self.status in (408, 425, 429) or self.status >= 500


class SessionflowClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 16,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                f"cannot reach the sessionflow server at {self.base_url}: "
                f"{exc or type(exc).__name__}"
            ) from exc
        if response.status_code in (401, 403):
            raise AuthError(
                f"the server at {self.base_url} refused the API token ({_detail(response)})"
            )
        if response.status_code >= 400:
            raise ApiError(response.status_code, _error_code(response), _detail(response))
        return response

    async def healthz(self) -> bool:
        try:
            response = await self._http.get("/healthz")
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def register(self, sessions: Sequence[SessionRegistration]) -> RegisterResponse:
        """Register up to 500 sessions; the answer names the ones whose files the server
        needs, and which of their files it lacks."""
        body = {"sessions": [s.model_dump(exclude_none=True) for s in sessions]}
        response = await self._request("POST", "/api/sessions", json=body)
        return RegisterResponse.model_validate_json(response.content)

    async def upload(
        self,
        session_id: str,
        body: bytes | AsyncIterable[bytes],
        sha256: str,
        *,
        force: bool = False,
    ) -> UploadResponse:
        """Upload one transcript. body: the transcript's bytes (gzipped here), or an async
        stream of its gzip-compressed bytes. sha256 is that of the uncompressed transcript."""
        content = gzip.compress(body, compresslevel=5) if isinstance(body, bytes) else body
        response = await self._request(
            "PUT",
            f"/api/sessions/{session_id}/transcript",
            content=content,
            params={"force": "true"} if force else None,
            headers={
                "Content-Encoding": "gzip",
                "Content-Type": "application/x-ndjson",
                "X-Content-SHA256": sha256,
            },
        )
        return UploadResponse.model_validate_json(response.content)

    async def upload_file(
        self, sha256: str, body: bytes | AsyncIterable[bytes]
    ) -> FileUploadResponse:
        """Upload one file of a session, known by the sha256 of its uncompressed bytes. body:
        the bytes (gzipped here), or an async stream of their gzip-compressed form."""
        content = gzip.compress(body, compresslevel=5) if isinstance(body, bytes) else body
        response = await self._request(
            "PUT",
            f"/api/files/{sha256}",
            content=content,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/x-ndjson"},
        )
        return FileUploadResponse.model_validate_json(response.content)

    async def put_session_files(
        self, session_id: str, files: Sequence[SessionFile], *, force: bool = False
    ) -> UploadResponse:
        """Name the files a session is made of (each uploaded before); queues it if they
        changed, or with force."""
        response = await self._request(
            "PUT",
            f"/api/sessions/{session_id}/files",
            json={"files": [f.model_dump() for f in files]},
            params={"force": "true"} if force else None,
        )
        return UploadResponse.model_validate_json(response.content)

    async def batch_status(self, session_ids: Sequence[str]) -> BatchStatusResponse:
        """States of any number of sessions, asked MAX_BATCH_IDS at a time."""
        statuses: dict[str, SessionStatus] = {}
        not_found: list[str] = []
        unique = list(dict.fromkeys(session_ids))
        for chunk in chunked(unique, MAX_BATCH_IDS):
            response = await self._request(
                "POST", "/api/sessions/batch-status", json={"session_ids": list(chunk)}
            )
            part = BatchStatusResponse.model_validate_json(response.content)
            statuses.update(part.statuses)
            not_found.extend(part.not_found)
        return BatchStatusResponse(statuses=statuses, not_found=not_found)

    async def get_session(self, session_id: str) -> SessionDetail:
        response = await self._request("GET", f"/api/sessions/{session_id}")
        return SessionDetail.model_validate_json(response.content)

    async def list_sessions(self, params: dict[str, Any]) -> SessionListPage:
        """One page of GET /api/sessions (its query parameters as the route names them)."""
        response = await self._request("GET", "/api/sessions", params=params)
        return SessionListPage.model_validate_json(response.content)


def json_object(body: bytes | bytearray | None) -> dict[str, Any]:
    """An error answer's body as a JSON object, or {} when it is none (a proxy's HTML, say)."""
    try:
        data = json.loads(body or b"")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_code(response: httpx.Response) -> str:
    return str(json_object(response.content).get("error") or f"http_{response.status_code}")


def _detail(response: httpx.Response) -> str:
    detail = json_object(response.content).get("detail")
    if detail:
        return str(detail)
    text = response.text.strip().splitlines()
    return text[0][:200] if text else response.reason_phrase
