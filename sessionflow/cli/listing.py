"""`sessionflow list`: the most recent sessions on the server, as a table that fits the
terminal (or JSON), a page of GET /api/sessions at a time."""

from __future__ import annotations

import re
import textwrap
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.cells import cell_len, set_cell_size
from rich.console import Console

from sessionflow.cli import options
from sessionflow.cli.sessions import run_command
from sessionflow.client.http import ApiError, SessionflowClient
from sessionflow.limits import default
from sessionflow.protocol import (
    LIFECYCLE_STATES,
    SessionListItem,
    SessionListPage,
    lifecycle_states,
)

# Asked a page at a time, at most what a server allows by default.
PAGE = default("max_list_page")

_AGE = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str | None) -> datetime | None:
    """--since: an age (30m, 12h, 7d, 2w), a date (local midnight) or an ISO time (local
    unless it gives an offset)."""
    if value is None:
        return None
    text = value.strip()
    age = _AGE.match(text.lower())
    if age:
        seconds = int(age.group(1)) * _AGE_UNITS[age.group(2)]
        try:
            return datetime.now(UTC) - timedelta(seconds=seconds)
        except OverflowError:
            raise typer.BadParameter(f"{value!r} reaches back before year 1") from None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            when = datetime.combine(date.fromisoformat(text), time())
        else:
            when = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a time: give an age (30m, 12h, 7d, 2w), a date (2026-03-01) or "
            "an ISO time (2026-03-01T14:30, local unless it has an offset)"
        ) from None
    return when.astimezone() if when.tzinfo is None else when


def _states(values: list[str] | None) -> list[str]:
    try:
        return lifecycle_states(values or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _since_option(value: str | None) -> str | None:
    parse_since(value)  # a bad value is a usage error now, before any server starts
    return value


def _states_option(values: list[str] | None) -> list[str] | None:
    _states(values)
    return values


def command(
    project: Annotated[
        str | None,
        typer.Option(
            "--project",
            metavar="NAME",
            help="Only this project: its name as listed (any case), or its directory (. for "
            "the current one).",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="WHEN",
            callback=_since_option,
            help="Only sessions active since then: an age (30m, 12h, 7d, 2w), a date "
            "(2026-03-01) or an ISO time (2026-03-01T14:30; local unless it has an offset).",
            show_default=False,
        ),
    ] = None,
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            callback=_states_option,
            help=f"Only sessions in this state (repeat it, or separate by commas): "
            f"{', '.join(LIFECYCLE_STATES)}.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            min=0,
            metavar="N",
            envvar="SESSIONFLOW_LIST_LIMIT",
            help="Show at most this many sessions (0: all).",
        ),
    ] = 20,
    server: options.Server = None,
    token: options.Token = None,
    data_dir: options.DataDir = None,
    json_output: Annotated[
        bool,
        typer.Option("--json", help="Print {sessions: [...], next_cursor} as JSON, nothing else."),
    ] = False,
) -> None:
    """List the most recent sessions: title, project, state, when, duration, tokens, cost."""
    states = _states(state)
    after = parse_since(since)
    if project is not None and Path(project).expanduser().is_dir():
        # A directory (`.` included) names its project by its own name, as the list shows it.
        project = Path(project).expanduser().resolve().name or project

    async def work(client: SessionflowClient) -> int:
        async with client:
            try:
                page = await fetch(client, project=project, since=after, states=states, limit=limit)
            except ApiError as exc:
                if exc.status in (404, 405):
                    typer.echo(
                        f"Error: the server at {client.base_url} cannot list sessions (it is "
                        "older than this command); upgrade it",
                        err=True,
                    )
                    return 1
                if exc.transient:
                    raise
                typer.echo(f"Error: the server refused the listing: {exc.detail}", err=True)
                return 1
        if json_output:
            typer.echo(page.model_dump_json())
        else:
            print_table(page, Console(highlight=False).width, limit)
        return 0

    raise typer.Exit(run_command(server, token, data_dir, work))


async def fetch(
    client: SessionflowClient,
    *,
    project: str | None = None,
    since: datetime | None = None,
    states: list[str] | None = None,
    limit: int = 0,
) -> SessionListPage:
    """Up to limit sessions (0: all), newest first, following the server's cursor; next_cursor
    is where more would start."""
    params: dict[str, Any] = {"state": states or []}
    if project is not None:
        params["project"] = project
    if since is not None:
        params["since"] = since.isoformat()
    sessions: list[SessionListItem] = []
    cursor: str | None = None
    while True:
        size = PAGE if limit == 0 else min(PAGE, limit - len(sessions))
        page = await client.list_sessions(
            {**params, "limit": size, **({"cursor": cursor} if cursor else {})}
        )
        sessions += page.sessions
        cursor = page.next_cursor
        if cursor is None or (limit and len(sessions) >= limit):
            return SessionListPage(sessions=sessions, next_cursor=cursor)


# --- the table ---------------------------------------------------------------------------

GAP = "  "
# The title keeps at least this many cells (fewer on a narrow terminal); columns go, in DROP
# order, until it does.
MIN_TITLE = 24
MIN_TITLE_NARROW = 16
NARROW = 80
# The id is long (a uuid) and wanted only to `show` one: it takes room only when the title
# still gets this much.
MIN_TITLE_WITH_ID = 36
WIDE = 100  # from here, dates with their year and longer project names


@dataclass
class Column:
    key: str
    header: str
    cell: Callable[[SessionListItem], str]
    right: bool = False
    cap: int | None = None  # widest it may be; longer values are cut with an ellipsis
    keep_end: bool = False  # cut at the start: a project folder's name ends in what tells


def _when(item: SessionListItem, wide: bool) -> str:
    local = item.active_at.astimezone()
    if wide:
        return local.strftime("%Y-%m-%d %H:%M")
    if local.year == datetime.now().astimezone().year:
        return local.strftime("%m-%d %H:%M")
    return local.strftime("%Y-%m-%d")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _tokens(n: int | None) -> str:
    if n is None:
        return "–"
    for size, unit in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= size:
            value = n / size
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(n)


def _cost(usd: float | None) -> str:
    if usd is None:
        return "–"
    return f"${usd:,.2f}" if usd < 1000 else f"${usd:,.0f}"


def plain(text: str | None) -> str:
    """A transcript's text as one line a terminal shows as it is: whitespace runs become one
    space, and control characters (escape sequences included) are dropped."""
    if not text:
        return ""
    kept = (
        " " if ch.isspace() else ch
        for ch in text
        if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf")
    )
    return " ".join("".join(kept).split())


def fit(text: str, width: int, *, keep_end: bool = False) -> str:
    """text cut to width cells (an ellipsis marks the cut, at the end or the start), padded
    to width."""
    if cell_len(text) > width:
        if keep_end:
            tail = set_cell_size(text[::-1], max(0, width - 1))[::-1].lstrip()
            text = "…" + tail
        else:
            text = set_cell_size(text, max(0, width - 1)) + "…"
    return set_cell_size(text, width)


def columns(width: int) -> list[Column]:
    wide = width >= WIDE
    project_cap = 20 if wide else 14
    return [
        Column("when", "when", lambda i: _when(i, wide)),
        Column("title", "title", lambda i: plain(i.title) or "–"),
        Column(
            "project",
            "project",
            lambda i: plain(i.project) or "–",
            cap=project_cap,
            keep_end=True,
        ),
        Column("state", "state", lambda i: i.lifecycle.value),
        Column("duration", "duration", lambda i: _duration(i.duration_seconds), right=True),
        Column("tokens", "tokens", lambda i: _tokens(i.tokens), right=True),
        Column("cost", "cost", lambda i: _cost(i.cost_usd), right=True),
        Column("id", "id", lambda i: i.id),
    ]


# What goes first when the terminal is narrow: the id (long, and in --json), then the figures,
# then the project; when, title and state always stay.
DROP = ["id", "cost", "tokens", "duration", "project"]


def layout(items: list[SessionListItem], width: int) -> list[tuple[Column, int]]:
    """The columns that fit width, each with its width; the title takes what is left."""
    cols = columns(width)
    widths: dict[str, int] = {}
    for col in cols:
        if col.key == "title":
            continue
        cells = [cell_len(col.cell(item)) for item in items]
        natural = max([cell_len(col.header), *cells])
        widths[col.key] = min(natural, max(col.cap, cell_len(col.header))) if col.cap else natural
    title_natural = max([cell_len("title"), *(cell_len(plain(i.title) or "–") for i in items)])
    kept = [c.key for c in cols]

    def title_room() -> int:
        others = sum(widths[k] for k in kept if k != "title")
        return width - others - len(GAP) * (len(kept) - 1)

    least = MIN_TITLE if width >= NARROW else MIN_TITLE_NARROW
    for key in DROP:
        need = MIN_TITLE_WITH_ID if key == "id" else least
        if title_room() >= min(need, title_natural):
            break
        kept.remove(key)
    widths["title"] = max(cell_len("title"), min(title_natural, title_room()))
    return [(c, widths[c.key]) for c in cols if c.key in kept]


def render(items: list[SessionListItem], width: int) -> list[str]:
    plan = layout(items, width)
    lines = []
    for row in [None, *items]:
        cells = []
        for col, w in plan:
            text = col.header if row is None else col.cell(row)
            if col.right and cell_len(text) <= w:
                cut = " " * (w - cell_len(text)) + text
            else:
                cut = fit(text, w, keep_end=col.keep_end)
            cells.append(cut)
        lines.append(GAP.join(cells).rstrip())
    return lines


def print_table(page: SessionListPage, width: int, limit: int) -> None:
    if not page.sessions:
        typer.echo("No sessions found.")
        return
    for line in render(page.sessions, width):
        typer.echo(line)
    shown = {c.key for c, _ in layout(page.sessions, width)}
    notes = []
    if page.next_cursor is not None:
        notes.append(
            f"The {len(page.sessions)} most recent; --limit {max(limit * 5, 100)} shows more "
            "(0: all)."
        )
    if "id" not in shown:
        notes.append("Ids for `sessionflow show ID`: --json, or a wider terminal.")
    if notes:
        typer.echo("")
        for note in notes:
            typer.echo(textwrap.fill(note, width=max(20, width), break_on_hyphens=False))
