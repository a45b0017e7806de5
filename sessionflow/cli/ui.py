"""What the backfill shows: two live bars on a terminal, plain lines elsewhere, and nothing
on stdout but the final JSON object with --json."""

from __future__ import annotations

import sys
import time
from typing import Protocol

from rich.console import Console
from rich.progress import Progress as RichProgress
from rich.progress import ProgressColumn, Task, TaskID
from rich.text import Text

from sessionflow.client.tracking import Progress

LABEL_WIDTH = 13  # "Backfilling: " and "Processing:  " line up


def describe_pending(progress: Progress) -> str:
    """`24 parsing, 15 queued, 40 uploading`: the pipeline's states first, largest first."""
    counts = sorted(progress.pending_counts, key=lambda item: item[0] == "uploading")
    return ", ".join(f"{n} {name}" for name, n in counts)


class UI(Protocol):
    def say(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def error(self, message: str) -> None: ...
    def start_upload(self, total: int) -> None: ...
    def advance_upload(self, n: int) -> None: ...
    def upload_retrying(self, why: str, attempt: int, attempts: int) -> None: ...
    def finish_upload(self) -> None: ...
    def start_processing(self, total: int) -> None: ...
    def update_processing(self, progress: Progress) -> None: ...
    def finish_processing(self) -> None: ...
    def close(self) -> None: ...


def row_layout(width: int, digits: int) -> tuple[int, int]:
    """(bar, note) widths of a bar's row on a terminal `width` columns wide. The label and the
    counts are never cut; the bar takes half of what is left (10 to 40 columns) whatever the
    note says, so it keeps its width as the note changes; the note gets the rest and is what
    is shortened."""
    fixed = LABEL_WIDTH + 2 + 1 + (2 * digits + 1) + 2  # label [bar] counts, two spaces
    left = max(0, width - fixed - 1)  # one spare column: a full row would wrap on some terminals
    bar = min(40, max(min(10, left), left // 2))  # on a very narrow one, what there is
    return bar, max(0, left - bar)


def fit(note: str, width: int) -> str:
    """The note cut to width columns, with … where it was cut."""
    if len(note) <= width:
        return note
    return note[: max(0, width - 1)] + "…" if width > 0 else ""


class _Row(ProgressColumn):
    """One bar's row, laid out by row_layout: `Processing:  [████░░░░] 61/99  24 parsing`."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def render(self, task: Task) -> Text:
        digits = int(task.fields["digits"])
        bar_width, note_width = row_layout(self.console.width, digits)
        total = int(task.total or 0)
        done = min(int(task.completed), total)
        filled = bar_width if total == 0 else bar_width * done // total
        counts = f"{done:>{digits}}/{total:<{digits}}"
        note = fit(str(task.fields["note"]), note_width)
        line = f"{task.description}[{'█' * filled}{'░' * (bar_width - filled)}] {counts}  {note}"
        return Text(line.rstrip(), no_wrap=True, overflow="crop")


class TerminalUI:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = RichProgress(
            _Row(console),
            console=console,
            transient=False,
            refresh_per_second=8,
        )
        self.upload_task: TaskID | None = None
        self.process_task: TaskID | None = None
        self.digits = 1

    def _ensure_started(self) -> None:
        if not self.bars.live.is_started:
            self.bars.start()

    def say(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)

    def warn(self, message: str) -> None:
        self.console.print(Text.assemble(("Warning:", "yellow"), " ", message), highlight=False)

    def error(self, message: str) -> None:
        self.console.print(Text.assemble(("Error:", "bold red"), " ", message), highlight=False)

    def start_upload(self, total: int) -> None:
        self._ensure_started()
        self.digits = len(str(total))
        self.upload_task = self.bars.add_task(
            "Backfilling:".ljust(LABEL_WIDTH), total=total, note="", digits=self.digits
        )

    def advance_upload(self, n: int) -> None:
        if self.upload_task is not None:
            self.bars.update(self.upload_task, advance=n, note="")

    def upload_retrying(self, why: str, attempt: int, attempts: int) -> None:
        if self.upload_task is not None:
            self.bars.update(self.upload_task, note=f"retrying ({attempt}/{attempts}): {why}")

    def finish_upload(self) -> None:
        if self.upload_task is not None:
            self.bars.update(self.upload_task, note="✓")
            self.bars.refresh()

    def start_processing(self, total: int) -> None:
        self._ensure_started()
        self.process_task = self.bars.add_task(
            "Processing:".ljust(LABEL_WIDTH), total=total, note="", digits=self.digits
        )

    def update_processing(self, progress: Progress) -> None:
        if self.process_task is not None:
            note = describe_pending(progress) or "✓"
            self.bars.update(
                self.process_task, completed=progress.done, total=progress.total, note=note
            )

    def finish_processing(self) -> None:
        self.bars.refresh()

    def close(self) -> None:
        if self.bars.live.is_started:
            self.bars.stop()


class PlainUI:
    """No animation: a line per phase change and at most one progress line every few seconds;
    warnings on stderr."""

    def __init__(self, console: Console, every: float = 5.0) -> None:
        self.console = console
        self.err = Console(file=sys.stderr, force_terminal=False, soft_wrap=True)
        self.every = every
        self.upload_total = 0
        self.uploaded = 0
        self.last_upload_line = 0.0
        self.last_process_line = 0.0
        self.last_retry_line = 0.0
        self.last_progress: Progress | None = None

    def _line(self, message: str) -> None:
        self.console.print(message, highlight=False, soft_wrap=True, markup=False)

    def say(self, message: str) -> None:
        self._line(message)

    def warn(self, message: str) -> None:
        self.err.print(f"Warning: {message}", highlight=False, soft_wrap=True, markup=False)

    def error(self, message: str) -> None:
        self.err.print(f"Error: {message}", highlight=False, soft_wrap=True, markup=False)

    def start_upload(self, total: int) -> None:
        self.upload_total = total
        self.last_upload_line = time.monotonic()
        self._line(f"Backfilling: {total} session{'' if total == 1 else 's'}")

    def advance_upload(self, n: int) -> None:
        self.uploaded += n
        if time.monotonic() - self.last_upload_line >= self.every:
            self.last_upload_line = time.monotonic()
            self._line(f"Backfilling: {self.uploaded}/{self.upload_total}")

    def upload_retrying(self, why: str, attempt: int, attempts: int) -> None:
        if time.monotonic() - self.last_retry_line >= self.every:
            self.last_retry_line = time.monotonic()
            self._line(f"Backfilling: retrying (attempt {attempt} of {attempts}): {why}")

    def finish_upload(self) -> None:
        self._line(f"Backfilling: {self.uploaded}/{self.upload_total} done")

    def start_processing(self, total: int) -> None:
        self.last_process_line = time.monotonic()
        self._line(f"Processing: {total} session{'' if total == 1 else 's'}")

    def update_processing(self, progress: Progress) -> None:
        self.last_progress = progress
        if time.monotonic() - self.last_process_line >= self.every:
            self.last_process_line = time.monotonic()
            self._line(self._progress_line(progress))

    def _progress_line(self, progress: Progress) -> str:
        pending = describe_pending(progress)
        return f"Processing: {progress.done}/{progress.total}" + (f"  {pending}" if pending else "")

    def finish_processing(self) -> None:
        if self.last_progress is not None:
            self._line(self._progress_line(self.last_progress))

    def close(self) -> None:
        pass


def text_console() -> Console:
    """A console for what people read: on a terminal, text wraps at words (a terminal left to
    itself folds lines mid-word); into a pipe, each line stays whole for grep and logs."""
    out = Console(highlight=False)
    out.soft_wrap = not out.is_terminal
    return out


def make_ui(json_output: bool) -> tuple[UI, Console]:
    """The UI for this run, and the console that final human output goes to."""
    if json_output:
        # stdout carries the JSON object alone; anything for people goes to stderr, plainly.
        err = Console(file=sys.stderr, force_terminal=False, soft_wrap=True)
        return PlainUI(err), err
    out = text_console()
    if out.is_terminal:
        return TerminalUI(out), out
    return PlainUI(Console(soft_wrap=True, force_terminal=False)), out
