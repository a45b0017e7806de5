"""Benchmark: `sessionflow status` in local mode, when it must start the data dir's local
server (embedded PostgreSQL, API, worker) and stop it again, against when a `sessionflow serve`
already runs on the data dir and is reused. The baseline, from the same run and interleaved
with both, is `sessionflow --help`: what starting the CLI at all costs.

    uv run python -m bench.local_reuse [--trials 5]
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

import httpx

from bench.common import percentile, print_table


def _timed(args: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sessionflow", *args],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )
    elapsed = time.monotonic() - started
    if done.returncode not in (0, 1):  # 1: "not found", which is the answer asked for
        raise RuntimeError(done.stderr.decode())
    return elapsed


def _serve(data_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionflow", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            url = json.loads((data_dir / "server.json").read_text())["url"]
            if url and httpx.get(f"{url}/readyz").status_code == 200:
                return proc
        except (OSError, ValueError, KeyError, httpx.TransportError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sessionflow-bench-reuse-") as tmp:
        data_dir = Path(tmp) / "data"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SESSIONFLOW_")},
            "HOME": tmp,
        }
        status = ["status", "some-id", "--data-dir", str(data_dir)]
        _timed(status, env)  # the first run makes the database: not what is measured
        cold, floor = [], []
        for _ in range(args.trials):
            cold.append(_timed(status, env))
            floor.append(_timed(["--help"], env))
        server = _serve(data_dir, env)
        try:
            warm = []
            for _ in range(args.trials):
                warm.append(_timed(status, env))
                floor.append(_timed(["--help"], env))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    base = percentile(floor, 50)
    rows = [("run", "p50 s", "of the floor")]
    for name, values in (
        ("status, starting the local server", cold),
        ("status, reusing a running serve", warm),
        ("--help (the floor)", floor),
    ):
        p50 = percentile(values, 50)
        rows.append((name, f"{p50:.2f}", f"{p50 / base:.1f}x"))
    print_table(f"local mode, {args.trials} trials each", rows)


if __name__ == "__main__":
    main()
