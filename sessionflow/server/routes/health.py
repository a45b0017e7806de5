"""Liveness and readiness, without auth: for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from sessionflow.db import pending_migrations
from sessionflow.server.deps import State

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """The database answers, every migration is applied, and the live hub is listening."""
    problems: list[str] = []
    try:
        pending = await pending_migrations(state.pool)
        if pending:
            problems.append(f"migrations not applied: {', '.join(pending)}")
    except Exception as exc:
        problems.append(f"database unreachable: {type(exc).__name__}")
    for name, check in state.readiness.items():
        if not check():
            problems.append(f"{name} is not ready")
    if problems:
        return JSONResponse({"status": "not_ready", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})
