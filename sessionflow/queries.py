"""The named statements of sql/queries.sql, loaded once.

`Q.batch_status` is the text of the block headed `-- name: batch_status`; a reader finds every
statement sessionflow sends in that one file."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import LiteralString

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    """The sql/ folder: inside the installed package, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "queries.sql").is_file():
            return candidate
    raise FileNotFoundError(f"sessionflow's sql/ folder is missing (looked beside {here})")


def parse_queries(text: str) -> dict[str, str]:
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in queries.sql")
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


@cache
def _load() -> dict[str, str]:
    return parse_queries((sql_dir() / "queries.sql").read_text())


class _Queries:
    def __getattr__(self, name: str) -> LiteralString:
        try:
            # The text comes from our own file, never from input: it is as literal as SQL gets.
            query: LiteralString = _load()[name]
            return query
        except KeyError:
            raise AttributeError(f"no query named {name!r} in sql/queries.sql") from None


Q = _Queries()
