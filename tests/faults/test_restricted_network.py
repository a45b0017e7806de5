"""Networks that get in the way: an nginx reverse proxy that does not pass WebSocket upgrades
(the CLI must complete by polling and say once that it fell back), and a connection between
CLI and server that drops mid-upload (retries; no duplicate or partial transcript; a re-run
uploads only what is missing)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from sessionflow.samples import write_sample_transcripts
from tests.faults.support import (
    FAST_WORKER,
    TRACK_ARGS,
    assert_truthful_end,
    finish,
    sample_folder,
    stop,
    stored,
    wait_until,
)
from tests.helpers import CuttingProxy, Processes, free_port, start_backfill

pytestmark = pytest.mark.slow

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# A plain reverse proxy, as many are configured: HTTP/1.0 upstream, no Upgrade or Connection
# headers passed on, so a WebSocket handshake reaches the server as an ordinary GET.
NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
        }}
    }}
}}
"""


@pytest.fixture
def procs(db_dsn: str, tmp_path: Path) -> Iterator[Processes]:
    p = Processes(db_dsn, tmp_path, env=FAST_WORKER)
    yield p
    p.stop_all()


@pytest.fixture
def nginx(procs: Processes, tmp_path: Path) -> Iterator[str]:
    """The URL of an nginx in front of a `sessionflow serve` (with its worker)."""
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (it is listed in .ci/apt-packages)")
    server = procs.serve()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(prefix=prefix, port=port, upstream=server.url.rsplit(":", 1)[1])
    )
    with (prefix / "stderr.log").open("wb") as log:
        proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url) or proc.poll() is not None, "nginx up", within=30)
        assert proc.poll() is None, (prefix / "stderr.log").read_text()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz").status_code == 200
    except httpx.TransportError:
        return False


def test_behind_a_proxy_without_websockets_auto_completes_by_polling_and_says_so_once(
    nginx: str, db_dsn: str, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    folder, n = sample_folder(tmp_path)
    cli = start_backfill(nginx, make_token("alice"), folder, "--transport", "auto", *TRACK_ARGS)
    try:
        report, err = finish(cli)
    finally:
        stop(cli)
    assert report["transport"] == "poll"
    assert report["uploaded"] == n
    assert err.count("live updates unavailable") == 1
    assert_truthful_end(report, db_dsn, tmp_path / "store", n)


def test_network_lost_mid_upload_retries_stores_each_transcript_once_and_whole(
    procs: Processes, db_dsn: str, tmp_path: Path, make_token: Callable[[str], str]
) -> None:
    server = procs.serve()
    proxy = CuttingProxy(int(server.url.rsplit(":", 1)[1]))
    token = make_token("alice")
    folder, n = sample_folder(tmp_path)
    url = f"http://127.0.0.1:{proxy.port}"
    try:
        cli = start_backfill(url, token, folder, "--concurrency", "2", *TRACK_ARGS)
        try:
            # Twice during the uploads: every open connection cut, then a second with
            # the network gone altogether.
            for at in (n // 4, n // 2):
                wait_until(lambda at=at: stored(db_dsn) >= at, f"{at} sessions uploaded")
                proxy.cut(block_websockets=False)
                proxy.outage(True)
                time.sleep(1.0)
                proxy.outage(False)
            report, _ = finish(cli)
        finally:
            stop(cli)
        assert report["uploaded"] == n
        assert report["upload_failed"] == []
        assert_truthful_end(report, db_dsn, tmp_path / "store", n)
        with psycopg.connect(db_dsn) as conn:
            versions = conn.execute(
                "SELECT count(*) FROM jobs WHERE owner = 'alice' AND attempts > 1"
            ).fetchone()
        assert versions == (0,)  # no transcript was queued and processed twice

        # A re-run uploads only what is missing: here, five new transcripts.
        write_sample_transcripts(folder / "later", 5, seed=99)
        rerun = start_backfill(url, token, folder, *TRACK_ARGS)
        try:
            again, _ = finish(rerun)
        finally:
            stop(rerun)
        assert again["uploaded"] == 5
        assert again["skipped"] == n
        assert_truthful_end(again, db_dsn, tmp_path / "store", n + 5)
    finally:
        proxy.close()
