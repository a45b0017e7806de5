"""The hostile-input suite against a real `sessionflow serve` (with its worker): every shape of
abuse the edge must bound, sent at once while an honest client backfills. The server answers
no 5xx, its memory stays within 100 MiB of idle during and after, and the honest client's
sessions all end final with exact counts."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from sessionflow.samples import write_sample_transcripts
from tests.helpers import Processes, auth, cli_env, db_counts
from tests.integration.ws_support import RawWebSocket, masked_frame, watch_text

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc"),
]

MAX_GROWTH = 100 * 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Sampler:
    """The server's RSS, sampled every 0.1 s in a thread until stopped: the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def hostile_http(url: str, token: str, statuses: list[int]) -> None:
    """Every HTTP shape at once, a few times each; the status codes go into statuses."""
    transcript = b'{"type":"user","sessionId":"h","message":{"role":"user","content":"hi"}}\n'
    digest = hashlib.sha256(transcript).hexdigest()
    junk = os.urandom(8 * 1024 * 1024)
    deflate = zlib.compressobj(6, zlib.DEFLATED, 31)
    block = deflate.flush(zlib.Z_FULL_FLUSH)
    empty_blocks = deflate.compress(b"") + block * (8 * 1024 * 1024 // len(block)) + deflate.flush()
    nul = (
        json.dumps(
            {
                "type": "user",
                "sessionId": "nul",
                "cwd": "/a\u0000b" + "x" * 500_000,
                "message": {"role": "user", "content": "a\u0000b" * 100_000},
            }
        ).encode()
        + b"\n"
    )
    headers = {**auth(token), "Content-Encoding": "gzip"}
    with httpx.Client(base_url=url, timeout=60) as client:
        for n in range(3):
            for body, sha in (
                (gzip.compress(transcript) + junk, digest),  # bytes after the gzip stream
                (empty_blocks, hashlib.sha256(b"").hexdigest()),  # inflates to nothing
                (gzip.compress(nul), hashlib.sha256(nul).hexdigest()),  # NUL, huge strings
            ):
                try:
                    response = client.put(
                        f"/api/sessions/hostile-{n}/transcript",
                        content=body,
                        headers={**headers, "X-Content-SHA256": sha},
                    )
                    statuses.append(response.status_code)
                except httpx.TransportError:
                    pass  # a connection the server cut short is no 5xx
            for _ in range(100):
                statuses.append(client.get("/metrics").status_code)
            statuses.append(
                client.post(
                    "/api/sessions/batch-status",
                    json={"session_ids": ["x"] * 100_000},
                    headers=auth(token),
                ).status_code
            )


async def hostile_websockets(url: str, token: str) -> None:
    """A client that resends watch and never reads; one that sends a 16 MiB frame."""
    resender = await RawWebSocket.connect(url, token, rcvbuf=4096)
    huge = await RawWebSocket.connect(url, token)
    try:

        async def resend() -> None:
            ids = [f"w-{i}" for i in range(500)]
            for _ in range(3000):
                await resender.send_text(watch_text(ids))

        flood = asyncio.create_task(resend())
        await huge.send_bytes(masked_frame(b"[" + b"1," * (8 * 1024 * 1024) + b"1]"))
        await huge.close_code()
        await asyncio.wait([flood], timeout=20)
        flood.cancel()
        await asyncio.gather(flood, return_exceptions=True)
    except (ConnectionError, OSError):
        pass  # dropped by the server: what it should do
    finally:
        resender.close()
        huge.close()


def test_the_hostile_suite_gets_no_5xx_bounded_memory_and_loses_no_honest_work(
    procs: Processes, tmp_path: Path, make_token: Callable[[str], str], db_dsn: str
) -> None:
    server = procs.serve(env={"SESSIONFLOW_WS_PING_INTERVAL_SECONDS": "2"})
    honest, attacker = make_token("honest"), make_token("mallory")
    folder = tmp_path / "projects"
    write_sample_transcripts(folder, 30, seed=21)
    time.sleep(1)
    idle = rss(server.proc.pid)
    sampler = Sampler(server.proc.pid)

    backfill = subprocess.Popen(
        [
            *(sys.executable, "-m", "sessionflow", "backfill", str(folder)),
            *("--server", server.url, "--json", "--timeout", "240"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(honest, tmp_path),
    )
    statuses: list[int] = []
    http = threading.Thread(target=hostile_http, args=(server.url, attacker, statuses))
    http.start()
    asyncio.run(hostile_websockets(server.url, attacker))
    http.join(240)
    out, err = backfill.communicate(timeout=300)
    time.sleep(2)
    after = rss(server.proc.pid)
    peak = sampler.stop()

    assert statuses and not [s for s in statuses if s >= 500], sorted(set(statuses))
    assert peak - idle <= MAX_GROWTH, f"RSS rose {(peak - idle) >> 20} MiB over idle"
    assert after - idle <= MAX_GROWTH, f"RSS stayed {(after - idle) >> 20} MiB over idle"
    report = json.loads(out)
    assert report["complete"] is True, err
    assert report["counts"] == db_counts(db_dsn, "honest")
    assert sum(report["counts"].values()) == report["files"]["sessions"]
