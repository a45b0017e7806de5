"""`sessionflow status ID ...` and `sessionflow show ID`: one look at sessions on the server."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sessionflow.cli import options
from sessionflow.cli.localstack import LocalStackError, endpoint
from sessionflow.cli.ui import text_console
from sessionflow.client.http import ApiError, AuthError, ClientError, SessionflowClient
from sessionflow.protocol import SessionDetail

Ids = Annotated[list[str], typer.Argument(help="Session ids.", show_default=False, metavar="IDS")]


def run_command(server: str | None, token: str | None, data_dir: Any, work: Any) -> int:
    """Run a client command's work against --server, or a local server for the command;
    the exit code, with every client error worded on stderr."""
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

    raise typer.Exit(run_command(server, token, data_dir, work))


def show(
    session_id: Annotated[
        str, typer.Argument(help="A session id.", show_default=False, metavar="ID")
    ],
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

    raise typer.Exit(run_command(server, token, data_dir, work))


def _print_detail(detail: SessionDetail) -> None:
    """One session for a person. Everything that comes from a transcript (prompts, titles,
    paths) is printed as text, never read as rich markup."""
    out = text_console()  # on a terminal long values wrap under their column
    head = Text(detail.id, style="bold")
    head.append(f"  {detail.lifecycle.value}  (parse: {detail.parse_status.value})", style="")
    out.print(head)
    if detail.error:
        out.print(Text(f"Error: {detail.error}"))
    if detail.summary_skipped:
        out.print(Text(f"Not summarized: {detail.summary_skipped}"))
    summary = detail.summary or {}
    if summary.get("title"):
        out.print(Text("\n" + str(summary["title"]), style="bold"))
    if summary.get("text"):
        out.print(Text(str(summary["text"])))
    result = detail.parse_result or {}
    mains = [f for f in detail.files if f.role == "main"]
    runs = [f for f in detail.files if f.role == "subagent"]
    files = f"{len(detail.files)}: " + ("the main transcript" if mains else "no main transcript")
    if runs:
        files += f" and {len(runs)} subagent run{'s' if len(runs) != 1 else ''}"
    rows: list[tuple[str, object]] = [("Files", files)]
    if not mains:
        rows.append(
            (
                "Main transcript",
                "missing: only subagent runs of this session were found (upload its "
                f"{detail.id}.jsonl to complete it)",
            )
        )
    if result:
        rows += _result_rows(result)
    out.print("")
    shown = [(label, value) for label, value in rows if value not in (None, "", 0)]
    if out.soft_wrap:
        for label, value in shown:
            out.print(Text(f"  {label + ':':<20} {value}"))
    else:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")  # a path has no spaces to wrap at
        for label, value in shown:
            grid.add_row(Text(f"  {label}:"), Text(str(value)))
        out.print(grid)
    subagents = result.get("subagents") or []
    if subagents:
        out.print("")
        out.print(_subagent_table(subagents, result.get("subagents_total") or len(subagents)))
    if detail.metadata:
        out.print(Text(f"\n  metadata: {json.dumps(detail.metadata)}"))


def _result_rows(result: dict[str, Any]) -> list[tuple[str, object]]:
    tokens = result.get("tokens") or {}
    cost = result.get("cost_usd")
    unpriced = result.get("unpriced_models") or []
    if cost is not None:
        cost_text = f"${cost:,.2f} (estimated from list prices)"
    elif unpriced:
        cost_text = f"unknown: no price for {', '.join(unpriced)}"
    else:
        cost_text = None
    tools = ", ".join(
        f"{k} {v}"
        for k, v in sorted((result.get("tool_calls_by_name") or {}).items(), key=lambda kv: -kv[1])
    )
    duration = result.get("duration_seconds")
    return [
        ("First prompt", _one_line(result.get("first_prompt"))),
        ("Prompts", result.get("user_prompts")),
        ("Assistant messages", result.get("assistant_messages")),
        ("Tool calls", result.get("tool_calls")),
        ("Tools", tools),
        ("Models", ", ".join(result.get("models") or [])),
        ("Tokens", ", ".join(f"{k} {v:,}" for k, v in tokens.items() if isinstance(v, int))),
        ("Cost", cost_text),
        ("Compactions", result.get("compactions")),
        ("API errors", result.get("api_errors")),
        ("Tool errors", result.get("tool_errors")),
        ("Started", result.get("first_timestamp")),
        ("Duration", _duration(duration) if duration is not None else None),
        ("Directory", result.get("cwd")),
        ("Branch", result.get("git_branch")),
        ("Files touched", ", ".join((result.get("files_touched") or [])[:10])),
        ("Lines skipped", result.get("lines_skipped") or None),
    ]


def _subagent_table(runs: list[dict[str, Any]], total: int) -> Table:
    title = (
        f"Subagent runs ({total})"
        if total == len(runs)
        else f"Subagent runs ({len(runs)} of {total})"
    )
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    table.add_column("agent", overflow="fold")
    table.add_column("asked", overflow="ellipsis", max_width=48)
    table.add_column("model")
    table.add_column("tokens", justify="right", no_wrap=True)
    table.add_column("cost", justify="right", no_wrap=True)
    table.add_column("tools", justify="right", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    for run in runs:
        tokens = run.get("tokens") or {}
        total_tokens = sum(v for v in tokens.values() if isinstance(v, int))
        kind = run.get("kind") or "task"
        if kind != "task":  # Claude Code's own runs: what they are says more than their prompt
            asked = _RUN_KINDS.get(kind, str(kind).replace("_", " "))
        else:
            asked = run.get("description") or _one_line(run.get("first_prompt"), 60) or ""
        if run.get("subagent_type"):
            asked = f"{asked} ({run['subagent_type']})" if asked else str(run["subagent_type"])
        cost = run.get("cost_usd")
        duration = run.get("duration_seconds")
        table.add_row(
            Text(str(run.get("agent_id") or "")),
            Text(asked),
            Text(", ".join(run.get("models") or [])),
            f"{total_tokens:,}",
            f"${cost:,.2f}" if cost is not None else "–",
            str(run.get("tool_calls") or 0),
            _duration(duration) if duration is not None else "–",
        )
    return table


# Runs Claude Code starts by itself, named for what they are.
_RUN_KINDS = {
    "warmup": "warmup",
    "compaction": "compaction",
    "prompt_suggestion": "suggestion",
    "side_question": "side question",
}


def _one_line(text: object, width: int = 100) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return None
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
