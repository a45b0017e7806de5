"""`--help` of every command, from the real CLI at 80 columns, reads like gh's or uv's: what it
does and the default, no type tags; and the README's flag table is the commands' own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from sessionflow.cli.app import app
from sessionflow.cli.helptext import commands, flag_table, flags

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
ROOT = typer.main.get_command(app)
COMMANDS = [name for name, _ in commands(ROOT)]
# What typer and click print about types and ranges; none of it helps a person.
TAGS = re.compile(
    r"<(bool|int|float|str|path|list|text)|\brange\b|\[x[<>]=|[<>]=x\]|\[env var|"
    r"\b(TEXT|INTEGER|FLOAT|BOOLEAN|PATH)\b|\[default: |\[required\]"
)


def help_of(*command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "sessionflow", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "HOME": "/nonexistent"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_command_is_listed() -> None:
    assert {"backfill", "demo", "status", "show", "serve", "worker", "token create"} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_help_has_no_type_tags_and_names_every_flag(name: str) -> None:
    text = help_of(*name.split())
    assert not TAGS.search(text), TAGS.findall(text)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    if name:
        command = dict(commands(ROOT))[name]
        for option in flags(command):
            assert option.opts[0] in text, f"{option.opts[0]} missing from {name} --help"


@pytest.mark.parametrize("name", ["serve", "worker", "backfill"])
def test_data_dir_help_says_its_default(name: str) -> None:
    text = " ".join(help_of(name).split())
    assert "--data-dir DIR Where the embedded database" in text
    assert "(default: ~/.local/share/sessionflow)" in text


def test_defaults_are_said_the_way_they_are_typed() -> None:
    text = " ".join(help_of("backfill").split())
    assert "(default: 600)" in text and "600.0" not in text
    assert "(default: --wait)" in text
    assert "--json Print one JSON object" in text


def test_the_readme_flag_table_is_the_commands_own() -> None:
    table = flag_table(ROOT)
    assert table in README.read_text(), (
        "README.md's flag table differs from the commands; paste the output of "
        "`python -m sessionflow.cli.helptext` under 'Commands and flags'"
    )
    for name, command in commands(ROOT):
        for option in flags(command):
            assert any(
                row.startswith(f"| `{option.opts[0]}") and f"`{name}`" in row
                for row in table.splitlines()
            ), (name, option.opts[0])
