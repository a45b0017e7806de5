"""`sessionflow backfill`: upload transcripts with one bar, then track the server's pipeline to
the end with a second one, and say truthfully how it ended."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.cells import cell_len
from rich.console import Console

from sessionflow.cli import options
from sessionflow.cli.localstack import (
    LocalServer,
    LocalStackError,
    StartCancelled,
    attach,
    leave,
    remote,
)
from sessionflow.cli.ui import UI, make_ui
from sessionflow.client.discovery import Discovery, DiscoveryError, LocalSession, discover
from sessionflow.client.http import AuthError, ClientError, ServerUnreachable, SessionflowClient
from sessionflow.client.tracking import IdFeed, PipelineWaitResult, TrackerDeps, Transport
from sessionflow.client.tracking import wait_for_pipeline_completion as track
from sessionflow.client.upload import UploadEvents, UploadOptions, UploadResult, backfill
from sessionflow.client.watch import watch
from sessionflow.protocol import Lifecycle

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
FAILED_SHOWN = 5
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


@dataclass
class BackfillOptions:
    paths: list[Path]
    server: str | None
    token: str | None
    data_dir: Path
    concurrency: int = 8
    force: bool = False
    timeout: float = 600.0
    wait: bool = True
    transport: Transport = "auto"
    poll_interval: float = 3.0
    reconcile_interval: float = 30.0
    exit_status: bool = False
    json_output: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES


class Interrupt:
    """First Ctrl-C: stop now and say so at once. Second: leave at once (a local server this
    run started then stops by itself, as nobody uses it any more)."""

    def __init__(self, ui: UI) -> None:
        self.ui = ui
        self.local = False
        self.phase = "starting"
        self.event = asyncio.Event()
        self.cancel_start = threading.Event()

    def __call__(self) -> None:
        if self.event.is_set():
            os._exit(EXIT_INTERRUPTED)
        self.event.set()
        self.cancel_start.set()
        self.ui.close()
        if self.phase == "starting":
            message = "Stopped."
        elif self.phase == "upload":
            message = "Stopped uploading; run the same command again to upload the rest."
        elif self.local:
            message = (
                "Stopped watching; what is left is processed the next time the local server runs."
            )
        else:
            message = "Stopped watching; the server keeps processing."
        print(f"\n{message}", file=sys.stderr, flush=True)


async def _failed_errors(client: SessionflowClient, ids: Sequence[str]) -> list[dict[str, str]]:
    """Each failed session's error, which batch-status does not carry."""
    semaphore = asyncio.Semaphore(8)

    async def one(session_id: str) -> dict[str, str]:
        async with semaphore:
            try:
                detail = await client.get_session(session_id)
                return {"id": session_id, "error": detail.error or "no reason recorded"}
            except ClientError as exc:
                return {"id": session_id, "error": f"(could not fetch the error: {exc})"}

    return list(await asyncio.gather(*(one(sid) for sid in ids)))


def _summary_lines(result: PipelineWaitResult) -> list[str]:
    counts = result.counts
    rows = [
        (label, counts.get(state, 0))
        for label, state in (
            ("Summarized", Lifecycle.SUMMARIZED),
            ("Parsed", Lifecycle.PARSED),
            ("Archived", Lifecycle.ARCHIVED),
            ("Failed", Lifecycle.FAILED),
        )
        if counts.get(state, 0)
        or state in (Lifecycle.SUMMARIZED, Lifecycle.PARSED, Lifecycle.FAILED)
    ]
    if result.not_found:
        rows.append(("Not found", len(result.not_found)))
    width = max(len(label) for label, _ in rows) + 1
    digits = max(len(str(n)) for _, n in rows)
    return [f"  {(label + ':').ljust(width)} {n:>{digits}}" for label, n in rows]


def _pending_description(result: PipelineWaitResult) -> str:
    by_state: dict[str, list[str]] = {}
    for sid in result.pending:
        by_state.setdefault(result.states[sid].lifecycle.value, []).append(sid)
    parts = []
    for state, ids in sorted(by_state.items(), key=lambda kv: -len(kv[1])):
        sample = ", ".join(ids[:3]) + (", …" if len(ids) > 3 else "")
        parts.append(f"{len(ids)} {state} ({sample})")
    return "; ".join(parts)


def _new_report() -> dict[str, Any]:
    return {
        "uploaded": 0,
        "skipped": 0,
        "upload_failed": [],
        "files": {"found": 0, "sessions": 0, "in_sessions": 0, "subagent_runs": 0},
        "files_skipped": [],
        "files_withheld": [],
        "main_transcript_missing": [],
        "complete": False,
        "timed_out": False,
        "interrupted": False,
        "transport": "none",
        "counts": {},
        "failed": [],
        "not_found": [],
        "pending": [],
    }


async def run(options: BackfillOptions, ui: UI, out: Console) -> tuple[int, dict[str, Any]]:
    """The whole command; returns (exit code, the report --json prints)."""
    report = _new_report()
    loop = asyncio.get_running_loop()
    # From the start: a Ctrl-C while the local server starts is answered like any other.
    interrupt = Interrupt(ui)
    loop.add_signal_handler(signal.SIGINT, interrupt)
    try:
        return await _run(options, ui, out, interrupt, report)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _run(
    options: BackfillOptions, ui: UI, out: Console, interrupt: Interrupt, report: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    try:
        found = await asyncio.to_thread(discover, options.paths, max_bytes=options.max_bytes)
    except DiscoveryError as exc:
        ui.error(
            f"{exc}. Pass the folders that hold your transcripts (default ~/.claude/projects)."
        )
        report["error"] = str(exc)
        return EXIT_ERROR, report
    _account_for_files(found, report)
    for path, why in found.unusable_paths:
        ui.warn(f"{path} {why}; going on with the other paths")
    if found.skipped:
        # Named once, in the summary: a folder of hundreds of them would bury the bars here.
        withheld = len(found.withheld)
        parts = [
            f"{_count(n, noun)} {why}"
            for n, noun, why in (
                (len(found.skipped) - withheld, "file", "with no conversation to upload"),
                (withheld, "transcript", "that cannot be uploaded"),
            )
            if n
        ]
        ui.say(f"Skipping {' and '.join(parts)} (listed at the end).")
    if not found.sessions:
        where = ", ".join(str(p) for p in options.paths)
        ui.say(f"No transcripts to backfill under {where}.")
        report["complete"] = True
        code = EXIT_ERROR if found.withheld else EXIT_OK
        if code and not options.json_output:
            _print_files(out, report, options.paths)
            _print_verdict(out, report, None)
        return code, report
    if interrupt.event.is_set():
        report["interrupted"] = True
        return EXIT_INTERRUPTED, report

    local: LocalServer | None = None
    try:
        if options.server:
            url, token = remote(options.server, options.token), options.token or ""
        else:
            local = await asyncio.to_thread(
                attach, options.data_dir, ui.say, interrupt.cancel_start
            )
            url, token = local.url, options.token or local.token
            interrupt.local = True
        interrupt.phase = "upload"
        async with SessionflowClient(url, token) as client:
            return await _phases(
                options, client, url, token, found.sessions, ui, out, interrupt, report
            )
    except StartCancelled:
        report["interrupted"] = True
        return EXIT_INTERRUPTED, report
    except AuthError as exc:
        ui.close()
        ui.error(
            f"{exc}. Check --token / SESSIONFLOW_TOKEN "
            "(`sessionflow token create --owner NAME` makes one)."
        )
        report["error"] = str(exc)
    except ServerUnreachable as exc:
        ui.close()
        ui.error(f"{exc}. Is the server running? Check --server / SESSIONFLOW_URL.")
        report["error"] = str(exc)
    except (LocalStackError, ClientError) as exc:
        ui.close()
        ui.error(str(exc))
        report["error"] = str(exc)
    finally:
        if local is not None:
            await asyncio.to_thread(leave, local)
    return EXIT_ERROR, report


async def _first(task: asyncio.Future[Any], event: asyncio.Event) -> bool:
    """Wait for task or event; True if the event came first (the task is then cancelled)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        return False
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, ClientError):
        await task
    return True


async def _phases(
    options: BackfillOptions,
    client: SessionflowClient,
    url: str,
    token: str,
    sessions: Sequence[LocalSession],
    ui: UI,
    out: Console,
    interrupt: Interrupt,
    report: dict[str, Any],
) -> tuple[int, dict[str, Any]]:
    # Uploading, and from the first session the server has, following its processing: both
    # bars live at once.
    started = time.monotonic()
    ui.start_upload(len(sessions))
    feed = IdFeed(expected=len(sessions))
    tracking: asyncio.Future[PipelineWaitResult] | None = None
    if options.wait:
        ui.start_processing(len(sessions))

        def fell_back(why: str) -> None:
            ui.warn(f"live updates unavailable ({why}); polling every {options.poll_interval:g} s")

        deps = TrackerDeps(
            client=client,
            watch=lambda ids: watch(url, token, ids, reconnect=False),
            on_progress=ui.update_processing,
            on_fallback=fell_back,
            timeout=options.timeout or math.inf,  # 0: no limit
            poll_interval=options.poll_interval,
            reconcile_interval=options.reconcile_interval,
            transport=options.transport,
            stop=interrupt.event,
        )
        tracking = asyncio.ensure_future(track(feed, deps))

    def failed(_sid: str, _why: str) -> None:
        feed.drop_expected()

    events = UploadEvents(
        on_progress=ui.advance_upload,
        on_ready=feed.add,
        on_failed=failed,
        on_retry=ui.upload_retrying,
    )
    upload_options = UploadOptions(concurrency=options.concurrency, force=options.force)
    uploading = asyncio.ensure_future(backfill(client, sessions, upload_options, events=events))
    try:
        interrupted = await _first(uploading, interrupt.event)
        uploaded: UploadResult | None = None if interrupted else uploading.result()
    except BaseException:
        if tracking is not None:
            await _cancel(tracking)
        raise
    if uploaded is None:
        if tracking is not None:
            await _cancel(tracking)
        report["interrupted"] = True
        return EXIT_INTERRUPTED, report
    feed.close()
    ui.finish_upload()
    uploads_ended = time.monotonic()
    report["upload_seconds"] = round(uploads_ended - started, 3)
    report["uploaded"] = len(uploaded.uploaded)
    report["skipped"] = len(uploaded.skipped)
    report["upload_failed"] = [{"id": sid, "error": why} for sid, why in uploaded.failed]
    if not uploaded.uploaded and not uploaded.failed:
        ui.say(
            f"Nothing to upload: {_count(len(uploaded.skipped), 'session')} already on the server."
        )
    for sid, why in uploaded.failed[:FAILED_SHOWN]:
        ui.warn(f"upload of {sid} failed: {why}")
    if len(uploaded.failed) > FAILED_SHOWN:
        ui.warn(f"and {_count(len(uploaded.failed) - FAILED_SHOWN, 'more upload')} failed")
    if tracking is None:
        ui.close()
        ui.say(
            f"Uploaded {len(uploaded.uploaded)}, {len(uploaded.skipped)} already on the server; "
            "not waiting for processing (--no-wait). `sessionflow status ID` tells where one is."
        )
        if not options.json_output:
            _print_files(out, report, options.paths)
            _print_verdict(out, report, None)
        return _exit_code(options, report, None), report

    interrupt.phase = "processing"
    result = await tracking
    report["processing_seconds"] = round(time.monotonic() - uploads_ended, 3)  # after the upload
    ui.finish_processing()
    ui.close()

    failed_ids = result.failed()
    report.update(
        complete=result.complete,
        timed_out=result.timed_out,
        interrupted=result.interrupted,
        transport=result.transport,
        counts=result.counts,
        not_found=result.not_found,
        pending=result.pending,
        failed=[{"id": sid, "error": None} for sid in failed_ids],
    )
    if result.interrupted:
        return EXIT_INTERRUPTED, report  # promptly: no more requests
    report["failed"] = await _failed_errors(client, failed_ids)
    if not options.json_output:
        _print_outcome(out, result, report["failed"])
        _print_files(out, report, options.paths)
        _print_verdict(out, report, result)
    elif result.timed_out:
        ui.warn(
            f"timed out after {options.timeout:g} s; still pending: {_pending_description(result)}"
        )
    return _exit_code(options, report, result), report


async def _cancel(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, ClientError):
        await task


def _count(n: int, noun: str) -> str:
    """'1 session', '2 sessions'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _exit_code(
    options: BackfillOptions, report: dict[str, Any], result: PipelineWaitResult | None
) -> int:
    """0 only when every transcript found is on the server and reached a final state."""
    if result is not None and result.timed_out:
        return EXIT_TIMEOUT
    if _not_accounted(report, result):
        return EXIT_ERROR
    if options.exit_status and report["failed"]:
        return EXIT_ERROR
    return EXIT_OK


def _not_accounted(report: dict[str, Any], result: PipelineWaitResult | None) -> list[str]:
    """Why not every transcript found is on the server in a final state, one reason a kind."""
    reasons = []
    if report["files_withheld"]:
        reasons.append(f"{_count(len(report['files_withheld']), 'transcript')} could not be sent")
    if report["upload_failed"]:
        reasons.append(f"{_count(len(report['upload_failed']), 'upload')} failed")
    if result is not None and result.not_found:
        reasons.append(f"{_count(len(result.not_found), 'session')} not found on the server")
    return reasons


def _account_for_files(found: Discovery, report: dict[str, Any]) -> None:
    """Every file found, in the report: in which session, or why in none."""
    report["files"] = {
        "found": found.files_found,
        "sessions": len(found.sessions),
        "in_sessions": found.files_in_sessions,
        "subagent_runs": sum(1 for s in found.sessions for f in s.files if f.role == "subagent"),
    }
    report["files_skipped"] = [{"path": str(p), "reason": why} for p, why in found.skipped]
    report["files_withheld"] = [str(p) for p in found.withheld]
    report["main_transcript_missing"] = [s.session_id for s in found.sessions if s.main is None]


def _print_files(out: Console, report: dict[str, Any], roots: list[Path]) -> None:
    """Where every file found went: no transcript is left out without a line that names it,
    and a run that ends with something missing says so last."""
    files = report["files"]
    runs = files["subagent_runs"]
    line = (
        f"Files: {files['found']} found, {files['in_sessions']} in "
        f"{_count(files['sessions'], 'session')} ({runs} of them subagent run"
        f"{'' if runs == 1 else 's'})"
    )
    skipped = report["files_skipped"]
    out.print(line + (f", {len(skipped)} skipped:" if skipped else ""), highlight=False)
    _print_some(out, [(_shown(Path(item["path"]), roots), item["reason"]) for item in skipped])
    failed = report["upload_failed"]
    if failed:
        out.print(f"Not uploaded: {_count(len(failed), 'session')}:", highlight=False)
        _print_some(out, [(item["id"], item["error"]) for item in failed])
    missing = report["main_transcript_missing"]
    if missing:
        shown = ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
        out.print(
            f"{_count(len(missing), 'session')} with subagent runs but no main transcript in "
            f"the paths given: {shown}",
            highlight=False,
            markup=False,
        )


def _shown(path: Path, roots: list[Path]) -> str:
    """A found file as a person finds it again: under the folder they named, the rest of its
    path (a projects folder's paths are long, and wrap into noise on a narrow terminal)."""
    for root in roots:
        if root.is_dir() and path.is_relative_to(root):
            return str(path.relative_to(root))
    return str(path)


def _print_some(out: Console, items: list[tuple[str, str]]) -> None:
    """A few `what: why` lines, then how many more. On a terminal too narrow for one, the what
    (a path or an id, to copy whole) has its line and the why is wrapped at words below it;
    into a pipe each stays one line."""
    for what, why in items[:FAILED_SHOWN]:
        line = f"  {what}: {why}"
        if not out.is_terminal or cell_len(line) <= out.width:
            out.print(line, highlight=False, markup=False)
            continue
        out.print(f"  {what}:", highlight=False, markup=False)
        for part in textwrap.wrap(why, max(20, out.width - 4), break_on_hyphens=False):
            out.print(f"    {part}", highlight=False, markup=False)
    if len(items) > FAILED_SHOWN:
        out.print(
            f"  and {len(items) - FAILED_SHOWN} more (--json lists them all)", highlight=False
        )


def _print_verdict(out: Console, report: dict[str, Any], result: PipelineWaitResult | None) -> None:
    """Why the exit code is 1 when not every transcript found is on the server, final."""
    reasons = _not_accounted(report, result)
    if reasons:
        out.print(
            f"Not every transcript is on the server: {'; '.join(reasons)} (listed above).",
            highlight=False,
            markup=False,
        )


def _print_outcome(out: Console, result: PipelineWaitResult, failed: list[dict[str, str]]) -> None:
    if result.timed_out:
        out.print(
            f"Warning: timed out; {_count(len(result.pending), 'session')} still processing: "
            f"{_pending_description(result)}",
            highlight=False,
        )
        out.print("Finished so far:", highlight=False)
    else:
        out.print("Processing complete!", highlight=False)
    for line in _summary_lines(result):
        out.print(line, highlight=False)
    if failed:
        out.print("", highlight=False)
        out.print("Failed sessions:", highlight=False)
        for item in failed[:FAILED_SHOWN]:
            out.print(f"  {item['id']}: {item['error']}", highlight=False)
        if len(failed) > FAILED_SHOWN:
            out.print(f"  and {len(failed) - FAILED_SHOWN} more", highlight=False)
        out.print(f"See one with: sessionflow show {failed[0]['id']}", highlight=False)


Paths = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Files or folders to search for *.jsonl transcripts (default: ~/.claude/projects).",
        metavar="PATHS",
        show_default=False,
    ),
]


def command(
    paths: Paths = None,
    server: options.Server = None,
    token: options.Token = None,
    data_dir: options.DataDir = None,
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            envvar="SESSIONFLOW_CONCURRENCY",
            metavar="N",
            help="Uploads at once (1 to 64).",
        ),
    ] = 8,
    force: Annotated[bool, typer.Option(help="Upload even what the server already has.")] = False,
    timeout: Annotated[
        float,
        typer.Option(
            min=0,
            envvar="SESSIONFLOW_TIMEOUT",
            metavar="SECONDS",
            help="Seconds to wait for processing (0: no limit).",
        ),
    ] = 600.0,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Track processing after the upload.")
    ] = True,
    transport: options.TransportChoice = options.TransportName.AUTO,
    poll_interval: Annotated[
        float, typer.Option(min=0.1, metavar="SECONDS", help="Seconds between batch-status polls.")
    ] = 3.0,
    reconcile_interval: Annotated[
        float,
        typer.Option(
            min=0,
            envvar="SESSIONFLOW_RECONCILE_INTERVAL",
            metavar="SECONDS",
            help="While on the WebSocket, check with one batch-status round this often "
            "(seconds; 0: never).",
        ),
    ] = 30.0,
    exit_status: Annotated[
        bool, typer.Option("--exit-status", help="Exit 1 if any session failed.")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object at the end, nothing else.")
    ] = False,
) -> None:
    """Upload transcripts, then watch the server process them to the end.

    Exits 0 when every transcript found is on the server and reached a final state; 1 when one
    is not (the summary says why), on an unreachable server or a refused token, or on a failed
    session with --exit-status; 124 on --timeout; 130 on Ctrl-C."""
    opts = BackfillOptions(
        paths=paths or [Path.home() / ".claude" / "projects"],
        server=server,
        token=token,
        data_dir=options.data_dir_or_default(data_dir),
        concurrency=concurrency,
        force=force,
        timeout=timeout,
        wait=wait,
        transport=options.transport(transport),
        poll_interval=poll_interval,
        reconcile_interval=reconcile_interval,
        exit_status=exit_status,
        json_output=json_output,
    )
    raise typer.Exit(execute(opts))


def execute(opts: BackfillOptions) -> int:
    """Run a backfill and print its outcome; returns the exit code."""
    ui, out = make_ui(opts.json_output)
    try:
        code, report = asyncio.run(run(opts, ui, out))
    except KeyboardInterrupt:  # before the handler was installed (starting the local server)
        ui.close()
        print("\nStopped.", file=sys.stderr)
        code, report = EXIT_INTERRUPTED, {**_new_report(), "interrupted": True}
    finally:
        ui.close()
    if opts.json_output:
        print_json(report)
    return code


def print_json(report: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
