"""`sessionflow backfill` on a real pseudo-terminal, read as a person reads it: both bars live
from the first upload, and at 60, 80 and 120 columns labels and counts whole and aligned, the
bar steady in width, the note what gets shortened."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from sessionflow.samples import write_sample_transcripts
from tests.helpers import Processes, cli_env
from tests.pty_screen import run_in_pty

pytestmark = pytest.mark.slow

ROW = re.compile(r"^(Backfilling: |Processing:  )\[([█░]+)\] +(\d+)/(\d+) *(.*)$")
SESSIONS = 200


def bar_rows(screen: list[str]) -> dict[str, re.Match[str]]:
    rows = {}
    for line in screen:
        match = ROW.match(line)
        if match:
            rows[match.group(1).strip()] = match
    return rows


@pytest.mark.parametrize("columns", [120, 80, 60])
def test_both_bars_live_from_the_first_upload_and_steady_at_every_width(
    procs: Processes, tmp_path: Path, make_token: Callable[[str], str], columns: int
) -> None:
    server = procs.serve()  # with its worker: sessions are processed as they arrive
    folder = tmp_path / "projects"
    write_sample_transcripts(folder, SESSIONS, seed=11)
    env = {**cli_env(make_token("alice"), tmp_path), "NO_COLOR": "1"}
    run = run_in_pty(
        ["backfill", str(folder), "--server", server.url, "--concurrency", "1"],
        env,
        columns=columns,
    )
    assert run.returncode == 0, "\n".join(run.final)
    assert "Processing complete!" in run.final

    frames = [bar_rows(screen) for screen in run.screens]
    both = [f for f in frames if "Backfilling:" in f and "Processing:" in f]
    assert both, run.output[-2000:]
    # Processing is followed while the upload goes on: some frame shows sessions processed
    # while others are still being uploaded.
    assert any(
        int(f["Backfilling:"].group(3)) < SESSIONS and int(f["Processing:"].group(3)) > 0
        for f in both
    ), [f"{f['Backfilling:'].group(0)} | {f['Processing:'].group(0)}" for f in both][-10:]

    bar_widths = set()
    for screen in run.screens:
        for line in screen:
            if line.startswith(("Backfilling:", "Processing: ")):
                assert len(line) <= columns, line
                assert ROW.match(line), f"a bar row cut or misshapen at {columns}: {line!r}"
    for frame in both:
        upload, process = frame["Backfilling:"], frame["Processing:"]
        # The two rows line up: the bar starts and ends, and the counts sit, at one column.
        assert upload.start(2) == process.start(2) == len("Backfilling: ") + 1
        assert upload.end(2) == process.end(2)
        assert upload.start(3) + len(upload.group(3)) == process.start(3) + len(process.group(3))
        bar_widths.add(len(upload.group(2)))
        bar_widths.add(len(process.group(2)))
    # The bar keeps one width however the note changes.
    assert len(bar_widths) == 1, bar_widths
    assert min(bar_widths) >= 10


def test_sentences_wrap_at_words_and_a_reason_hangs_under_its_file_on_a_narrow_terminal(
    procs: Processes, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    """A terminal left to itself folds a long line mid-word: at 60 columns the summary's
    sentences wrap at words, and a skipped file's reason is indented under the file."""
    server = procs.serve()
    folder = tmp_path / "projects"
    write_sample_transcripts(folder, 3, seed=5)
    notes = folder / "-home-user-src-tools" / "notes.jsonl"
    notes.parent.mkdir(parents=True, exist_ok=True)
    notes.write_text('{"hello": "world"}\n' * 3)
    env = {**cli_env(make_token("alice"), tmp_path), "NO_COLOR": "1"}
    run = run_in_pty(["backfill", str(folder), "--server", server.url], env, columns=60)
    assert run.returncode == 0, "\n".join(run.final)

    lines = [line.rstrip() for line in run.final]
    first = next(n for n, line in enumerate(lines) if line.startswith("Files: "))
    last = next(n for n in range(first, len(lines)) if lines[n].endswith("skipped:"))
    summary = " ".join(lines[first : last + 1])  # a fold inside a word would add a space
    assert re.fullmatch(
        r"Files: \d+ found, \d+ in \d+ sessions \(\d+ of them subagent runs?\), 1 skipped:",
        summary,
    ), lines[first : last + 1]
    assert lines[last + 1] == f"  {notes.relative_to(folder)}:"
    reason = []
    for line in lines[last + 2 :]:
        if not line.startswith("    "):
            break
        assert len(line) <= 60
        reason.append(line.strip())
    assert len(reason) > 1, lines[last:]
    assert " ".join(reason) == (
        "The file is not a Claude Code transcript: none of its first 3 lines is a JSON event "
        "with a 'type' of user, assistant, system or summary."
    )
