"""What routes depend on, as Annotated aliases: the shared state, the pool, and the owner that
the request's bearer token belongs to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool

from sessionflow.logs import set_owner
from sessionflow.queries import Q
from sessionflow.server.errors import ApiError
from sessionflow.settings import Settings
from sessionflow.storage import ObjectStore
from sessionflow.tokens import hash_token


@dataclass
class AppState:
    settings: Settings
    pool: AsyncConnectionPool
    store: ObjectStore
    # Parts that run beside the API (the live hub, ...) say here whether they are ready.
    readiness: dict[str, Callable[[], bool]] = field(default_factory=dict)


# Dependencies are coroutines even where they never await: FastAPI runs a plain function in a
# worker thread, a hop that cost more than the rest of a batch-status request's Python.
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.sessionflow
    return state


State = Annotated[AppState, Depends(get_state)]


async def get_pool(state: State) -> AsyncConnectionPool:
    return state.pool


Pool = Annotated[AsyncConnectionPool, Depends(get_pool)]

_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def owner_of_token(pool: AsyncConnectionPool, token: str | None) -> str | None:
    if token is None:
        return None
    async with pool.connection() as conn:
        cur = await conn.execute(Q.token_owner, {"token_hash": hash_token(token)})
        row = await cur.fetchone()
    return str(row[0]) if row else None


def request_token(request: Request) -> str:
    """The request's bearer token; a 401 if it has none."""
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise ApiError(
            401,
            "unauthorized",
            "send an API token as 'Authorization: Bearer <token>'",
            _UNAUTHORIZED,
        )
    return token


def token_refused() -> ApiError:
    """The 401 for a token that is unknown or revoked."""
    return ApiError(401, "unauthorized", "the API token is unknown or revoked", _UNAUTHORIZED)


async def current_owner(request: Request, pool: Pool) -> str:
    owner = await owner_of_token(pool, request_token(request))
    if owner is None:
        raise token_refused()
    set_owner(owner)
    return owner


Owner = Annotated[str, Depends(current_owner)]
