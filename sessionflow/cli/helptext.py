"""--help as gh's or uv's reads: each option with a word for its value (`--timeout SECONDS`),
what it does and its default, nothing else (no type tags, ranges or environment variables:
the README's flag table lists those)."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

import typer
from typer import _click as click  # the click that typer runs on (it carries its own)
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

F = TypeVar("F", bound=Callable[..., Any])


def _default(param: TyperOption) -> str | None:
    """The default as a person would type it, or None when there is nothing to say."""
    if not param.show_default or param.hidden:
        return None
    value: Any = param.default
    if callable(value) or value is None:
        return None
    if param.is_flag:
        if param.secondary_opts:  # --wait/--no-wait: name the one in force
            return param.opts[0] if value else param.secondary_opts[0]
        return None  # a plain flag is off unless given
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or None
    return str(getattr(value, "value", value))


def _value_word(param: TyperOption) -> str:
    if param.is_flag or param.count:
        return ""
    if param.metavar:
        return f" {param.metavar}"
    kind = param.type_descriptor.annotation
    if isinstance(kind, type) and issubclass(kind, Enum):
        return " " + "|".join(str(member.value) for member in kind)
    return " " + (param.name or "value").upper()


def option_row(param: click.Parameter) -> tuple[str, str] | None:
    """(the option as typed, what it does and its default), or None when it is hidden."""
    if isinstance(param, TyperArgument):
        word = (param.metavar or (param.name or "").upper()) + ("..." if param.nargs < 0 else "")
        return word, param.help or ""
    if not isinstance(param, TyperOption) or param.hidden:
        return None
    names = ", ".join(sorted(param.opts, key=len))
    if param.secondary_opts:
        names += " / " + ", ".join(param.secondary_opts)
    help_text = param.help or ""
    default = _default(param)
    if default is not None:
        help_text = f"{help_text} (default: {default})".strip()
    return names + _value_word(param), help_text


def _write(self: click.Command, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    params = self.get_params(ctx)
    arguments = [r for p in params if isinstance(p, TyperArgument) if (r := option_row(p))]
    options = [r for p in params if not isinstance(p, TyperArgument) if (r := option_row(p))]
    if arguments:
        with formatter.section("Arguments"):
            formatter.write_dl(arguments)
    if options:
        with formatter.section("Options"):
            formatter.write_dl(options)


class PlainCommand(TyperCommand):
    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _write(self, ctx, formatter)


class PlainGroup(TyperGroup):
    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _write(self, ctx, formatter)
        self.format_commands(ctx, formatter)


class App(typer.Typer):
    """A Typer whose commands and groups print plain help (see PlainCommand)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=PlainGroup, rich_markup_mode=None, **kwargs)

    def command(
        self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Callable[[F], F]:
        decorate: Callable[[F], F] = super().command(*args, cls=cls or PlainCommand, **kwargs)
        return decorate


def commands(group: click.Command, prefix: str = "") -> list[tuple[str, click.Command]]:
    """Every command under group, as (its name as typed, it), in the order they were added."""
    found: list[tuple[str, click.Command]] = []
    for name, command in getattr(group, "commands", {}).items():
        if getattr(command, "hidden", False):
            continue
        if getattr(command, "commands", None):
            found += commands(command, f"{prefix}{name} ")
        else:
            found.append((f"{prefix}{name}", command))
    return found


def flags(command: click.Command) -> list[TyperOption]:
    """The options a person can give command (--help aside)."""
    return [
        p
        for p in command.params
        if isinstance(p, TyperOption) and not p.hidden and p.name != "help"
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def flag_table(group: click.Command) -> str:
    """The README's table of every flag of every command, made from the commands themselves:
    one row a flag, naming the commands that take it."""
    rows: dict[tuple[str, str, str, str], list[str]] = {}
    for name, command in commands(group):
        for option in flags(command):
            typed, _ = option_row(option) or ("", "")
            envvar = option.envvar if isinstance(option.envvar, str) else ""
            key = (typed, envvar, _default(option) or "", option.help or "")
            rows.setdefault(key, []).append(name)
    lines = [
        "| flag | commands | environment variable | default | what it does |",
        "|---|---|---|---|---|",
    ]
    for (typed, envvar, default, help_text), names in rows.items():
        cells = [
            f"`{typed}`",
            ", ".join(f"`{n}`" for n in names),
            f"`{envvar}`" if envvar else "",
            f"`{default}`" if default else "",
            help_text,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m sessionflow.cli.helptext: the README's flag table
    import importlib

    app = importlib.import_module("sessionflow.cli.app").app
    print(flag_table(typer.main.get_command(app)), end="")
