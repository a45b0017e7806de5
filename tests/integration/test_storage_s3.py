"""The S3 object store over real HTTP, against moto's S3-compatible server, and the pipeline
running on it end to end."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import random
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from sessionflow.db import make_pool
from sessionflow.s3 import S3Store
from sessionflow.samples import generate_transcript_bytes
from sessionflow.settings import Settings
from sessionflow.storage import ObjectNotFound, StorageError, open_store, transcript_key
from sessionflow.worker.runner import Worker
from tests.helpers import auth, free_port

BUCKET = "transcripts"


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server on a loopback port, with one bucket, and fake credentials."""
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import boto3

    boto3.session.Session().client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def s3_store(endpoint: str, tmp_path: Path, url: str = f"s3://{BUCKET}/team-a") -> S3Store:
    store = open_store(url, s3_endpoint_url=endpoint, data_dir=tmp_path)
    assert isinstance(store, S3Store)
    return store


def test_a_stored_transcript_reads_back_whole_under_the_prefix(
    s3_endpoint: str, tmp_path: Path
) -> None:
    store = s3_store(s3_endpoint, tmp_path)
    data = generate_transcript_bytes(random.Random(1), 300_000)
    key = transcript_key(hashlib.sha256(data).hexdigest())
    staged = store.staging_dir() / "upload.part"
    staged.write_bytes(data)

    assert not store.exists(key)
    store.put_file(key, staged)

    assert store.exists(key)
    with store.open(key) as stream:
        assert b"".join(iter(lambda: stream.read(65_536), b"")) == data
    with store.open(key) as stream:
        assert next(iter(stream)) == data.split(b"\n")[0] + b"\n"  # lines, for the parser
    listed = store.client.list_objects_v2(Bucket=BUCKET)["Contents"]
    assert [obj["Key"] for obj in listed] == [f"team-a/{key}"]
    assert store.url == f"s3://{BUCKET}/team-a"


def test_a_missing_object_is_not_found_and_a_missing_bucket_is_a_storage_error(
    s3_endpoint: str, tmp_path: Path
) -> None:
    store = s3_store(s3_endpoint, tmp_path)
    with pytest.raises(ObjectNotFound, match=f"s3://{BUCKET}/team-a/transcripts/"):
        store.open(transcript_key("0" * 64))

    nowhere = s3_store(s3_endpoint, tmp_path, "s3://no-such-bucket")
    with pytest.raises(StorageError) as raised:
        nowhere.open(transcript_key("0" * 64))
    assert not isinstance(raised.value, ObjectNotFound)  # a setup problem, not a lost file
    assert "NoSuchBucket" in str(raised.value)


def test_an_unreachable_endpoint_is_a_storage_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = S3Store(
        bucket=BUCKET, prefix="", endpoint_url=endpoint, staging=tmp_path, connect_timeout=1
    )
    with pytest.raises(StorageError, match=re.escape(endpoint)):
        store.open(transcript_key("0" * 64))
    with pytest.raises(StorageError, match=re.escape(endpoint)):
        store.exists(transcript_key("0" * 64))
    staged = tmp_path / "x"
    staged.write_bytes(b"{}\n")
    with pytest.raises(StorageError, match="could not write"):
        store.put_file("k", staged)


def test_missing_credentials_are_a_storage_error_that_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    store = S3Store(
        bucket=BUCKET, prefix="", endpoint_url=f"http://127.0.0.1:{free_port()}", staging=tmp_path
    )
    with pytest.raises(StorageError, match="Unable to locate credentials"):
        store.open(transcript_key("0" * 64))


def test_an_s3_url_without_a_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a bucket"):
        open_store("s3:///prefix")


# -- the pipeline on S3 ----------------------------------------------------------------------


@pytest.fixture
def s3_settings(settings: Settings, s3_endpoint: str) -> Settings:
    return settings.model_copy(
        update={
            "storage_url": f"s3://{BUCKET}/sessions",
            "s3_endpoint_url": s3_endpoint,
            "worker_poll_seconds": 0.5,
            "worker_lease_seconds": 2,
            "worker_retry_base_seconds": 0.05,
            "worker_retry_max_seconds": 0.1,
        }
    )


@pytest.fixture
async def s3_api(s3_settings: Settings, db_dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    from sessionflow.server.app import create_app

    app = create_app(s3_settings, db_dsn, run_worker=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s3.test") as client:
            yield client


async def finished(api: httpx.AsyncClient, token: str, session_id: str) -> dict[str, Any]:
    for _ in range(600):
        detail: dict[str, Any] = (
            await api.get(f"/api/sessions/{session_id}", headers=auth(token))
        ).json()
        if detail["lifecycle"] in ("parsed", "summarized", "failed"):
            return detail
        await asyncio.sleep(0.05)
    raise AssertionError(f"{session_id} never finished: {detail}")


async def test_an_upload_stored_in_s3_is_processed_by_the_in_process_worker(
    s3_api: httpx.AsyncClient, make_token: Any, s3_endpoint: str, tmp_path: Path
) -> None:
    token = make_token("alice")
    data = generate_transcript_bytes(random.Random(2), 120_000)
    response = await s3_api.put(
        "/api/sessions/s3-one/transcript",
        content=gzip.compress(data),
        headers={
            **auth(token),
            "Content-Encoding": "gzip",
            "X-Content-SHA256": hashlib.sha256(data).hexdigest(),
        },
    )
    assert response.status_code == 200, response.text

    detail = await finished(s3_api, token, "s3-one")
    assert detail["lifecycle"] == "summarized", detail["error"]
    assert detail["parse_result"]["parse_status"] == "ok"
    key = transcript_key(hashlib.sha256(data).hexdigest())
    assert s3_store(s3_endpoint, tmp_path, f"s3://{BUCKET}/sessions").exists(key)


async def test_an_unreachable_object_store_fails_the_session_after_its_attempts(
    s3_settings: Settings, db_dsn: str, tmp_path: Path
) -> None:
    settings = s3_settings.model_copy(
        update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}", "worker_max_attempts": 2}
    )
    sha256 = "ab" * 32
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sessions (owner, id, transcript_key, transcript_size, transcript_sha256)"
            " VALUES ('alice', 'cut-off', %s, 10, %s)",
            (transcript_key(sha256), sha256),
        )
        conn.execute("INSERT INTO jobs (owner, id) VALUES ('alice', 'cut-off')")
        conn.execute("INSERT INTO job_owners (owner) VALUES ('alice') ON CONFLICT DO NOTHING")
    store = open_store(
        settings.resolved_storage_url, s3_endpoint_url=settings.s3_endpoint_url, data_dir=tmp_path
    )
    pool = make_pool(db_dsn, min_size=1, max_size=4, timeout=5)
    await pool.open(wait=True)
    worker = Worker(settings, dsn=db_dsn, pool=pool, store=store)
    await worker.start()
    try:
        for _ in range(600):
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT lifecycle, error, attempts FROM sessions JOIN jobs USING (owner, id) "
                    "WHERE id = 'cut-off'"
                ).fetchone()
            assert row is not None
            if row[0] == "failed":
                break
            await asyncio.sleep(0.05)
    finally:
        await worker.stop(grace=0)
        await pool.close()
    lifecycle, error, attempts = row
    assert lifecycle == "failed"
    assert attempts == 2
    assert error.startswith("gave up after 2 attempts: the object store failed: could not read")
    assert "127.0.0.1" in error  # names the endpoint to check
