"""The real CLI at the rough edges a new user hits: a --data-dir that cannot be a folder, a
--server without its scheme or with a wrong one, a missing path among good ones, a server
that refuses the token. Each ends in a sentence, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sessionflow.samples import write_sample_transcripts
from tests.helpers import CuttingProxy, Processes, cli_env, run_cli

pytestmark = pytest.mark.slow


def sessionflow(
    home: Path, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    # Wide, so that rich's error box does not fold the paths the tests look for.
    return run_cli(token or "sf_none", home, *args, timeout=120, COLUMNS="400")


@pytest.mark.parametrize(
    "command",
    [
        ["backfill"],
        ["show", "some-id"],
        ["status", "some-id"],
        ["serve"],
        ["worker"],
        ["token", "create", "--owner", "me"],
    ],
)
def test_a_data_dir_that_cannot_be_a_folder_is_a_usage_error(
    tmp_path: Path, command: list[str]
) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")
    for data_dir in (not_a_folder, not_a_folder / "below"):
        done = sessionflow(tmp_path, *command, "--data-dir", str(data_dir))
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert str(not_a_folder) in done.stderr and "is a file" in done.stderr


def test_a_server_given_without_its_scheme_is_taken_as_http(
    procs: Processes, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    server = procs.serve()
    folder = tmp_path / "projects"
    write_sample_transcripts(folder, 3, seed=2)
    bare = server.url.removeprefix("http://")
    done = sessionflow(
        tmp_path, "backfill", str(folder), "--server", bare, "--json", token=make_token("a")
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["complete"] is True


def test_a_server_of_another_scheme_is_refused_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "projects"
    write_sample_transcripts(folder, 1, seed=2)
    done = sessionflow(tmp_path, "backfill", str(folder), "--server", "ftp://example.test")
    assert done.returncode == 1
    assert "Error: --server 'ftp://example.test' is not a server's URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_path_among_good_ones_is_a_warning_and_the_rest_go_on(
    procs: Processes, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    server = procs.serve()
    folder = tmp_path / "projects"
    write_sample_transcripts(folder, 2, seed=4)
    missing = tmp_path / "nowhere"
    done = sessionflow(
        tmp_path,
        "backfill",
        str(missing),
        str(folder),
        "--server",
        server.url,
        "--json",
        token=make_token("a"),
    )
    assert done.returncode == 0, done.stderr
    assert f"Warning: {missing} does not exist" in done.stderr
    report = json.loads(done.stdout)
    assert report["complete"] is True and report["uploaded"] == 2
    # With no usable path at all it is an error.
    only_missing = sessionflow(tmp_path, "backfill", str(missing), "--server", server.url)
    assert only_missing.returncode == 1
    assert f"Error: {missing} does not exist" in only_missing.stderr


def test_a_refused_token_is_an_error_with_what_to_do_and_json_still_prints(
    procs: Processes, tmp_path: Path
) -> None:
    server = procs.serve()
    folder = tmp_path / "projects"
    write_sample_transcripts(folder, 12, seed=5)
    done = sessionflow(
        tmp_path, "backfill", str(folder), "--server", server.url, "--json", token="sf_bad"
    )
    assert done.returncode == 1
    assert "Error:" in done.stderr and "sessionflow token create" in done.stderr
    assert "Traceback" not in done.stderr and "ExceptionGroup" not in done.stderr
    assert "refused the API token" in json.loads(done.stdout)["error"]


def test_uploads_the_server_refuses_are_named_the_rest_go_on_and_the_exit_is_1(
    procs: Processes, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    folder = tmp_path / "projects"
    write_sample_transcripts(folder, 40, seed=6)
    sizes = sorted(p.stat().st_size for p in folder.rglob("*.jsonl"))
    limit = sizes[len(sizes) * 3 // 4]  # about a quarter of the files are over it
    server = procs.serve(env={"SESSIONFLOW_MAX_TRANSCRIPT_BYTES": str(limit)})
    token = make_token("a")
    done = sessionflow(tmp_path, "backfill", str(folder), "--server", server.url, token=token)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "Processing complete!" in done.stdout
    lines = done.stdout.splitlines()
    heading = next(line for line in lines if line.startswith("Not uploaded: "))
    count = int(heading.split()[2])
    assert count >= 2 and heading.endswith(("session:", "sessions:"))
    listed = lines[lines.index(heading) + 1 :]
    assert sum(1 for line in listed[:5] if "the limit is" in line) == min(count, 5)
    assert not any("413" in line or "too_large" in line for line in listed)  # words, not codes
    if count > 5:
        assert listed[5].strip().startswith(f"and {count - 5} more")
    assert lines[-1].startswith("Not every transcript is on the server:")
    assert f"{count} uploads failed" in lines[-1]
    # The others were all uploaded and processed; --json says the same.
    report = json.loads(
        sessionflow(
            tmp_path, "backfill", str(folder), "--server", server.url, "--json", token=token
        ).stdout
    )
    assert len(report["upload_failed"]) == count
    assert report["complete"] is True
    assert sum(report["counts"].values()) == report["skipped"] + report["uploaded"]


def test_a_retried_upload_says_it_is_retrying(
    procs: Processes, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    server = procs.serve()
    proxy = CuttingProxy(int(server.url.rsplit(":", 1)[1]))
    folder = tmp_path / "projects"
    write_sample_transcripts(folder, 3, seed=7)
    try:
        proxy.outage(True)  # the server is away when the upload starts...
        url = f"http://127.0.0.1:{proxy.port}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "sessionflow", "backfill", str(folder), "--server", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(make_token("a"), tmp_path),
        )
        assert proc.stdout is not None
        first = proc.stdout.readline() + proc.stdout.readline() + proc.stdout.readline()
        time.sleep(1.0)
        proxy.outage(False)  # ...and back a moment later
        out, err = proc.communicate(timeout=120)
    finally:
        proxy.close()
    out = first + out
    assert proc.returncode == 0, err
    assert "Backfilling: retrying (attempt 2 of 5): the server is not answering" in out
    assert "Processing complete!" in out
    assert "1 transcripts" not in out and "1 sessions" not in out


def projects_with(tmp_path: Path, extra: str, *, samples: int, seed: int) -> tuple[Path, Path]:
    """A projects folder of generated sessions, and an empty project folder `extra` in it."""
    folder = tmp_path / "projects"
    write_sample_transcripts(folder, samples, seed=seed)
    (folder / extra).mkdir()
    return folder, folder / extra


def backfill_on_a_server(
    procs: Processes, tmp_path: Path, folder: Path, token: str
) -> subprocess.CompletedProcess[str]:
    server = procs.serve()
    return sessionflow(tmp_path, "backfill", str(folder), "--server", server.url, token=token)


def test_files_with_no_transcript_are_one_line_up_front_and_named_under_their_folder_at_the_end(
    procs: Processes, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    folder, empty = projects_with(tmp_path, "-home-someone-empty-files", samples=3, seed=8)
    for n in range(8):
        (empty / f"00000000-0000-4000-8000-00000000000{n}.jsonl").touch()
    done = backfill_on_a_server(procs, tmp_path, folder, make_token("a"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    summary = lines.index(next(line for line in lines if line.startswith("Files: ")))
    # Before the summary: one line for all eight, no path.
    assert [line for line in lines[:summary] if "empty-files" in line] == []
    assert sum(1 for line in lines[:summary] if line.startswith("Skipping 8 files")) == 1
    assert "empty-files" not in done.stderr
    # In it: five of them, by their path under the folder given, then how many more.
    assert lines[summary].endswith("8 skipped:")
    named = lines[summary + 1 : summary + 6]
    assert all(line.strip().startswith("-home-someone-empty-files/") for line in named), named
    assert lines[summary + 6].strip().startswith("and 3 more")


def test_a_transcript_that_cannot_be_uploaded_is_counted_apart_from_files_with_no_transcript(
    procs: Processes, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    folder, odd = projects_with(tmp_path, "-home-someone-odd", samples=2, seed=9)
    (odd / "00000000-0000-4000-8000-000000000000.jsonl").touch()
    sample = next(p for p in folder.rglob("*.jsonl") if p.stat().st_size)
    event = next(
        e for e in map(json.loads, sample.read_text().splitlines()) if e.get("type") == "user"
    )
    event.pop("sessionId", None)
    (odd / "no usable id!.jsonl").write_text(json.dumps(event) + "\n")
    done = backfill_on_a_server(procs, tmp_path, folder, make_token("a"))
    assert done.returncode == 1, done.stdout  # a transcript found is not on the server
    assert (
        "Skipping 1 file with no conversation to upload and 1 transcript that cannot be "
        "uploaded (listed at the end)."
    ) in done.stdout
