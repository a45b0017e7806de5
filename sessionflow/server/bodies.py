"""Reading request bodies within explicit limits.

JSON bodies are read by hand rather than by FastAPI's body parameters so that a too-large body
is refused before it is buffered, and every invalid body is a 400 in the API's error shape."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from sessionflow.server.errors import ApiError, bad_request, describe_validation_errors

M = TypeVar("M", bound=BaseModel)


def documented_body(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra that documents a hand-read JSON body, so the OpenAPI document stays true."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inlined(model.model_json_schema())}},
        }
    }


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its `#/$defs/...` references replaced by what they name: inside an
    OpenAPI document such a reference would point at the document's root, where nothing is."""
    defs: dict[str, Any] = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"the request body is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"the request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, model: type[M], limit: int) -> M:
    return (await read_json_as_sent(request, model, limit))[0]


async def read_json_as_sent(request: Request, model: type[M], limit: int) -> tuple[M, bytes]:
    """The body validated as model, and its bytes as they came (valid JSON then)."""
    # The body is parsed as JSON whatever Content-Type says: a wrong header on a valid body
    # is not worth refusing, and an invalid body is a 400 either way.
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise ApiError(415, "unsupported_media_type", "JSON bodies must not be compressed")
    raw = await read_limited(request, limit)
    if not raw:
        raise bad_request("the request body is empty; send a JSON object")
    try:
        return model.model_validate_json(raw), raw
    except ValidationError as exc:
        raise bad_request(describe_validation_errors(list(exc.errors()))) from None
