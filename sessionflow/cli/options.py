"""Options the client commands share, each with its environment variable."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from sessionflow.client.tracking import Transport
from sessionflow.settings import default_data_dir

Server = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="SESSIONFLOW_URL",
        metavar="URL",
        help="The sessionflow server's URL. Without it, a local server runs for the command.",
        show_default=False,
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="SESSIONFLOW_TOKEN",
        metavar="TOKEN",
        help="API token for --server (prefer the environment variable: argv is visible to "
        "other users of the machine).",
        show_default=False,
    ),
]


def _usable_data_dir(value: Path | None) -> Path | None:
    """A --data-dir that cannot be a folder is a usage error, not a traceback later."""
    if value is not None:
        folder = value.expanduser()
        if folder.exists() and not folder.is_dir():
            raise typer.BadParameter(
                f"{value} is a file, not a folder: give a folder (it is made if it is missing)"
            )
        for parent in folder.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise typer.BadParameter(f"{value} cannot be made: {parent} is a file")
                break
    return value


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="SESSIONFLOW_DATA_DIR",
        metavar="DIR",
        callback=_usable_data_dir,
        help="Where the embedded database and local transcripts live "
        "(default: ~/.local/share/sessionflow).",
        show_default=False,
    ),
]


def data_dir_or_default(value: Path | None) -> Path:
    return (value or default_data_dir()).expanduser()


class TransportName(StrEnum):
    AUTO = "auto"
    WEBSOCKET = "websocket"
    POLL = "poll"


TransportChoice = Annotated[
    TransportName,
    typer.Option(
        "--transport",
        envvar="SESSIONFLOW_TRANSPORT",
        help="How to follow processing: auto (the WebSocket; polling where it is blocked), "
        "websocket, or poll.",
    ),
]


def transport(value: TransportName) -> Transport:
    """The tracker's name for a --transport value."""
    return "websocket" if value == "websocket" else "poll" if value == "poll" else "auto"
