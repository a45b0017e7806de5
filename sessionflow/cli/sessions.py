"""`sessionflow status ID ...` and `sessionflow show ID`: one look at sessions on the server."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.console import Console

from sessionflow.cli import options
from sessionflow.cli.localstack import LocalStackError, endpoint
from sessionflow.client.http import ApiError, AuthError, ClientError, SessionflowClient
from sessionflow.protocol import SessionDetail

Ids = Annotated[list[str], typer.Argument(help="Session ids.", show_default=False)]


def _run(server: str | None, token: str | None, data_dir: Any, work: Any) -> int:
    err = Console(stderr=True)
    try:
        with endpoint(
            server,
            token,
            options.data_dir_or_default(data_dir),
            lambda m: err.print(m, highlight=False),
        ) as (url, tok, _):
            return int(asyncio.run(work(SessionflowClient(url, tok))))
    except AuthError as exc:
        err.print(f"Error: {exc}. Check --token / SESSIONFLOW_TOKEN.", highlight=False)
    except (ClientError, LocalStackError) as exc:
        err.print(f"Error: {exc}", highlight=False)
    return 1


def status(
    session_ids: Ids,
    server: options.Server = None,
    token: options.Token = None,
    data_dir: options.DataDir = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the batch-status answer.")
    ] = False,
) -> None:
    """Print where each session is in the pipeline (one batch-status round)."""

    async def work(client: SessionflowClient) -> int:
        async with client:
            answer = await client.batch_status(session_ids)
        if json_output:
            typer.echo(answer.model_dump_json())
            return 0 if not answer.not_found else 1
        width = max(len(sid) for sid in session_ids)
        for sid in dict.fromkeys(session_ids):
            state = answer.statuses.get(sid)
            if state is None:
                typer.echo(f"{sid.ljust(width)}  not found")
            else:
                lifecycle, parsed = state.lifecycle.value, state.parse_status.value
                typer.echo(f"{sid.ljust(width)}  {lifecycle:<12} parse: {parsed}")
        return 0 if not answer.not_found else 1

    raise typer.Exit(_run(server, token, data_dir, work))


def show(
    session_id: Annotated[str, typer.Argument(help="A session id.", show_default=False)],
    server: options.Server = None,
    token: options.Token = None,
    data_dir: options.DataDir = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the session as JSON.")] = False,
) -> None:
    """Print one session: its state, error, parse results and summary."""

    async def work(client: SessionflowClient) -> int:
        async with client:
            try:
                detail = await client.get_session(session_id)
            except ApiError as exc:
                if exc.status == 404:
                    typer.echo(f"Error: no session {session_id!r} on this server", err=True)
                    return 1
                raise
        if json_output:
            typer.echo(detail.model_dump_json())
        else:
            _print_detail(detail)
        return 0

    raise typer.Exit(_run(server, token, data_dir, work))


def _print_detail(detail: SessionDetail) -> None:
    out = Console(soft_wrap=True)
    out.print(
        f"[bold]{detail.id}[/]  {detail.lifecycle.value}  (parse: {detail.parse_status.value})"
    )
    if detail.error:
        out.print(f"Error: {detail.error}", highlight=False)
    summary = detail.summary or {}
    if summary.get("title"):
        out.print(f"\n[bold]{summary['title']}[/]", highlight=False)
    if summary.get("text"):
        out.print(summary["text"], highlight=False)
    result = detail.parse_result or {}
    if result:
        tokens = result.get("tokens") or {}
        rows = [
            ("Prompts", result.get("user_prompts")),
            ("Assistant messages", result.get("assistant_messages")),
            ("Tool calls", result.get("tool_calls")),
            (
                "Tools",
                ", ".join(
                    f"{k} {v}"
                    for k, v in sorted(
                        (result.get("tool_calls_by_name") or {}).items(), key=lambda kv: -kv[1]
                    )
                ),
            ),
            ("Models", ", ".join(result.get("models") or [])),
            ("Tokens", ", ".join(f"{k} {v}" for k, v in tokens.items())),
            ("Started", result.get("first_timestamp")),
            (
                "Duration",
                f"{result['duration_seconds']:.0f} s"
                if result.get("duration_seconds") is not None
                else None,
            ),
            ("Directory", result.get("cwd")),
            ("Branch", result.get("git_branch")),
            ("Files touched", ", ".join((result.get("files_touched") or [])[:10])),
            ("Lines skipped", result.get("lines_skipped") or None),
        ]
        out.print("")
        for label, value in rows:
            if value not in (None, "", 0):
                out.print(f"  {label + ':':<20} {value}", highlight=False)
    if detail.metadata:
        out.print(f"\n  metadata: {json.dumps(detail.metadata)}", highlight=False)
