"""`sessionflow token create|revoke`: manage API tokens directly in the database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from sessionflow.cli import options
from sessionflow.cli.helptext import App
from sessionflow.logs import first_line
from sessionflow.settings import Settings

app = App(help="Create and revoke API tokens.", no_args_is_help=True)


def load_settings(data_dir: Path | None) -> Settings:
    try:
        return Settings(data_dir=data_dir) if data_dir else Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.echo(f"Error: invalid SESSIONFLOW_ setting: {problems}", err=True)
        raise typer.Exit(2) from None


def _connect(data_dir: Path | None):  # type: ignore[no-untyped-def]
    import psycopg

    from sessionflow.db import migrate
    from sessionflow.local import EmbeddedDatabaseError, resolve_database

    settings = load_settings(data_dir)
    try:
        dsn, handle = resolve_database(settings)
        migrate(dsn)
        return psycopg.connect(dsn, autocommit=True), handle
    except EmbeddedDatabaseError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    except psycopg.OperationalError as exc:
        typer.echo(f"Error: cannot reach the database: {first_line(exc)}", err=True)
        raise typer.Exit(1) from None


@app.command()
def create(
    owner: Annotated[str, typer.Option(metavar="NAME", help="Whose sessions the token sees.")],
    data_dir: options.DataDir = None,
) -> None:
    """Create a token for OWNER and print it (only it) on stdout."""
    from sessionflow.tokens import create_token

    if not 1 <= len(owner) <= 200 or not owner.isprintable():
        typer.echo("Error: --owner must be 1 to 200 printable characters", err=True)
        raise typer.Exit(2)
    conn, _handle = _connect(data_dir)
    with conn:
        _, token = create_token(conn, owner)
    typer.echo(token)


@app.command()
def revoke(
    token_id: Annotated[
        str,
        typer.Argument(
            metavar="TOKEN_ID", help="The token's id (the hex after 'sf_'), or the token."
        ),
    ],
    data_dir: options.DataDir = None,
) -> None:
    """Revoke a token: requests that carry it are refused from then on."""
    from sessionflow.tokens import revoke_token, token_id_of

    resolved = token_id_of(token_id)
    if resolved is None:
        typer.echo("Error: that is neither a token nor a token id (12 hex digits)", err=True)
        raise typer.Exit(2)
    conn, _handle = _connect(data_dir)
    with conn:
        if not revoke_token(conn, resolved):
            typer.echo(f"Error: no active token with id {resolved}", err=True)
            raise typer.Exit(1)
    typer.echo(f"Revoked token {resolved}", err=True)
