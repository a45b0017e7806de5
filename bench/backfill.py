"""Benchmark: `sessionflow backfill` of generated transcripts, end to end, as a user runs it.

In one run: against a running server, once following processing over the WebSocket and once
by polling (each as a different owner, so each uploads everything), then in local mode. For
each: time to upload, time until every session is terminal, the CLI's peak memory, and the
delay from the last session's final commit to the CLI's exit — the figure that shows what the
live stream buys over polling every 3 s.

Then Ctrl-C: SIGINT to a CLI that is watching sessions no worker will finish, until it exits
(130), `--ctrl-c-trials` times; the issue asks for within a second. The baseline, from the same
run, is SIGINT to a bare `python -c "time.sleep(...)"`: what any Python process takes to go.

    uv run python -m bench.backfill [--sessions 2000] [--ctrl-c-trials 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench.common import (
    bench_database,
    make_token,
    percentile,
    print_table,
    server_process,
    write_report,
)
from sessionflow.samples import write_sample_transcripts


def run_cli(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float, int]:
    """Run the CLI; returns (its JSON report, wall-clock exit time, peak RSS of the CLI)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionflow", "backfill", *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    watched = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    exited = time.time()
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"backfill exited {proc.returncode}: {out[:500]!r}")
    return json.loads(out), exited, peak


def last_commit(dsn: str, owner: str) -> float:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(finished_at)) FROM sessions WHERE owner = %s", (owner,)
        ).fetchone()
    assert row is not None and row[0] is not None
    return float(row[0])


def measure(
    label: str, args: list[str], env: dict[str, str], dsn: str, owner: str
) -> dict[str, Any]:
    started = time.monotonic()
    report, exited, peak = run_cli(args, env)
    total = time.monotonic() - started
    assert report["complete"], report
    return {
        "mode": label,
        "sessions": sum(report["counts"].values()),
        "transport": report["transport"],
        "upload_s": report["upload_seconds"],
        "to_all_terminal_s": report["upload_seconds"] + report["processing_seconds"],
        "wall_s": total,
        "exit_delay_s": exited - last_commit(dsn, owner),
        "peak_rss_mb": peak / 2**20,
        "counts": report["counts"],
    }


def _sigint_to_exit(command: list[str], env: dict[str, str], ready: str | None) -> float:
    """Start `command`, wait for a stdout line containing `ready` (or a moment), send SIGINT,
    and return the seconds until the process has exited."""
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
    )
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 120
        while ready is not None:
            line = proc.stdout.readline()
            if ready in line:
                break
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"{ready!r} never came from {command}")
        time.sleep(0.5)  # settled: watching, or sleeping
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        return time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def ctrl_c(url: str, env: dict[str, str], folder: Path, trials: int) -> dict[str, Any]:
    cli = [sys.executable, "-m", "sessionflow", "backfill", str(folder), "--server", url]
    bare = [sys.executable, "-c", "import time; time.sleep(600)"]
    delays, baseline = [], []
    for _ in range(trials):  # interleaved, so both see the same neighbours
        delays.append(_sigint_to_exit(cli, env, ready=" done"))  # uploaded: now watching
        baseline.append(_sigint_to_exit(bare, env, ready=None))
    return {
        "trials": trials,
        "cli_p50_s": percentile(delays, 50),
        "cli_max_s": max(delays),
        "bare_python_p50_s": percentile(baseline, 50),
        "ratio_p50": percentile(delays, 50) / max(percentile(baseline, 50), 1e-3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--ctrl-c-trials", type=int, default=10)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sessionflow-bench-backfill-") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "projects"
        write_sample_transcripts(folder, args.sessions, seed=11)
        size_mb = sum(p.stat().st_size for p in folder.rglob("*.jsonl")) / 2**20
        print(f"{args.sessions} transcripts, {size_mb:.0f} MB")
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONFLOW_")}
        base_env["HOME"] = str(tmp / "home")

        with bench_database("sessionflow_bench_backfill") as dsn:
            server_dir = tmp / "server"
            server_dir.mkdir()
            with server_process(dsn, server_dir) as (url, _proc):
                for owner, transport in (("ws-user", "websocket"), ("poll-user", "poll")):
                    env = {**base_env, "SESSIONFLOW_TOKEN": make_token(dsn, owner)}
                    rows.append(
                        measure(
                            f"server, {transport}",
                            [str(folder), "--server", url, "--transport", transport],
                            env,
                            dsn,
                            owner,
                        )
                    )
            # Nothing finishes without a worker: the CLI watches until interrupted.
            idle_dir = tmp / "idle-server"
            idle_dir.mkdir()
            small = tmp / "small"
            write_sample_transcripts(small, 20, seed=3)
            with server_process(dsn, idle_dir, "--no-worker") as (url, _proc):
                env = {**base_env, "SESSIONFLOW_TOKEN": make_token(dsn, "ctrl-c-user")}
                interrupt = ctrl_c(url, env, small, args.ctrl_c_trials)
        local_dir = tmp / "local"
        started = time.monotonic()
        report, _exited, peak = run_cli([str(folder), "--data-dir", str(local_dir)], base_env)
        rows.append(
            {
                "mode": "local (embedded stack)",
                "sessions": sum(report["counts"].values()),
                "transport": report["transport"],
                "upload_s": report["upload_seconds"],
                "to_all_terminal_s": report["upload_seconds"] + report["processing_seconds"],
                "wall_s": time.monotonic() - started,
                "exit_delay_s": None,  # the embedded database is gone with the run
                "peak_rss_mb": peak / 2**20,
                "counts": report["counts"],
            }
        )

    table = [("mode", "upload s", "all terminal s", "exit delay s", "CLI peak MB")]
    for r in rows:
        delay = "-" if r["exit_delay_s"] is None else f"{r['exit_delay_s']:.2f}"
        table.append(
            (
                r["mode"],
                f"{r['upload_s']:.1f}",
                f"{r['to_all_terminal_s']:.1f}",
                delay,
                f"{r['peak_rss_mb']:.0f}",
            )
        )
    print_table(f"backfill of {args.sessions} transcripts ({size_mb:.0f} MB)", table)
    ws = next(r for r in rows if r["mode"] == "server, websocket")
    poll = next(r for r in rows if r["mode"] == "server, poll")
    summary = {
        "sessions": args.sessions,
        "megabytes": size_mb,
        "runs": rows,
        "exit_delay_ratio_poll_over_ws": poll["exit_delay_s"] / max(ws["exit_delay_s"], 1e-3),
        "ctrl_c": interrupt,
    }
    print(f"\nexit delay, polling / WebSocket: {summary['exit_delay_ratio_poll_over_ws']:.1f}x")
    print(
        f"Ctrl-C to exit, {interrupt['trials']} trials: p50 {interrupt['cli_p50_s']:.2f} s, "
        f"max {interrupt['cli_max_s']:.2f} s; a bare Python process: "
        f"{interrupt['bare_python_p50_s']:.2f} s ({interrupt['ratio_p50']:.1f}x)"
    )
    print(f"written to {write_report('backfill', summary)}")


if __name__ == "__main__":
    main()
