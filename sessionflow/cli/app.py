"""The `sessionflow` command. Server-side commands import the server lazily, inside the
command, so that the client commands never load it."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from sessionflow.cli import backfill, demo, listing, localshare, options, sessions, tokens
from sessionflow.cli.helptext import App

app = App(
    name="sessionflow",
    help="Backfill coding-agent session transcripts into a server and watch its pipeline finish.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(tokens.app, name="token")
app.command("backfill")(backfill.command)
app.command("demo")(demo.command)
app.command("status")(sessions.status)
app.command("show")(sessions.show)
app.command("list")(listing.command)


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def serve(
    host: Annotated[
        str,
        typer.Option(envvar="SESSIONFLOW_HOST", metavar="ADDRESS", help="Address to listen on."),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            envvar="SESSIONFLOW_PORT", metavar="PORT", help="Port to listen on (0: any free one)."
        ),
    ] = 8000,
    data_dir: options.DataDir = None,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker",
            envvar="SESSIONFLOW_SERVE_WORKER",
            help="Also process sessions in this process (turn off when separate "
            "`sessionflow worker` processes do it).",
        ),
    ] = True,
    while_used: Annotated[
        bool,
        typer.Option(
            "--while-used",
            hidden=True,
            help="Stop once no CLI uses this server (how the CLI's local mode runs it).",
        ),
    ] = False,
) -> None:
    """Run the API server (and apply migrations). With no SESSIONFLOW_DATABASE_URL it starts an
    embedded PostgreSQL in the data dir and writes a token for owner 'local' there; CLI
    commands on the same data dir then use this server instead of starting their own."""
    from sessionflow.local import EmbeddedDatabaseError
    from sessionflow.logs import configure_logging
    from sessionflow.server.run import ServeError
    from sessionflow.server.run import serve as run_server

    settings = tokens.load_settings(data_dir).model_copy(update={"serve_worker": worker})
    configure_logging(settings.log_format)
    # A SIGTERM from here on leaves through the exit hooks, which stop the embedded
    # PostgreSQL (the default action would leave it running).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # The data dir's local server, for CLI commands to find: only with the embedded database,
    # whose token the data dir holds.
    shared = settings.data_dir if not settings.database_url else None
    if shared is not None and while_used:
        localshare.stop_when_unused(shared)

    def say(line: str) -> None:
        typer.echo(line)
        if shared is not None and "serving on " in line:
            localshare.serving(
                shared, line.rsplit("serving on ", 1)[1].strip(), while_used=while_used
            )

    try:
        run_server(settings, host, port, say=say)
    except (ServeError, EmbeddedDatabaseError) as exc:
        raise fail(str(exc)) from None
    finally:
        if shared is not None:
            localshare.forget(shared)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(0)


@app.command("worker")
def worker_command(
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            min=1,
            envvar="SESSIONFLOW_WORKER_CONCURRENCY",
            metavar="N",
            help=(
                "Sessions the worker holds at once, parsing or waiting for a parser; it parses "
                "SESSIONFLOW_WORKER_PARSERS of them (2) at a time (default: 8)."
            ),
            show_default=False,
        ),
    ] = None,
    data_dir: options.DataDir = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            envvar="SESSIONFLOW_WORKER_METRICS_PORT",
            metavar="PORT",
            help="Serve Prometheus metrics on this port (default: off).",
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            "--metrics-host",
            envvar="SESSIONFLOW_WORKER_METRICS_HOST",
            metavar="ADDRESS",
            help="Address the metrics port listens on.",
        ),
    ] = "127.0.0.1",
) -> None:
    """Process queued sessions (download, parse, summarize) until SIGTERM or Ctrl-C. Run as many
    as you like, on as many machines, against one database (SESSIONFLOW_DATABASE_URL); with
    none set it joins the embedded PostgreSQL of the data dir."""
    from sessionflow.logs import configure_logging
    from sessionflow.worker import main as worker_main

    settings = tokens.load_settings(data_dir).model_copy(
        update={"worker_metrics_port": metrics_port, "worker_metrics_host": metrics_host}
    )
    configure_logging(settings.log_format)
    try:
        worker_main.main(settings, concurrency=concurrency)
    except worker_main.WorkerStartError as exc:
        raise fail(str(exc)) from None


def main() -> None:
    app()
