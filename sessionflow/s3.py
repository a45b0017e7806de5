"""The S3 object store (`s3://bucket/prefix`), for AWS or any S3-compatible server
(SESSIONFLOW_S3_ENDPOINT_URL). Needs boto3: `pip install 'sessionflow[s3]'`. Credentials and
region come from boto3's usual chain (AWS_* variables, ~/.aws, instance roles)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, BinaryIO

from sessionflow.storage import ObjectNotFound, StorageError

_MISSING = {"404", "NoSuchKey", "NotFound"}
_READ_BUFFER = 1024 * 1024


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise ValueError(
            "s3:// storage needs boto3: install it with pip install 'sessionflow[s3]'"
        ) from None
    return boto3


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class _Body(io.RawIOBase):
    """A boto3 response body as a raw stream whose failures are StorageErrors."""

    def __init__(self, body: Any, where: str) -> None:
        self._body = body
        self._where = where

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from botocore.exceptions import BotoCoreError

        try:
            data = self._body.read(len(buffer))
        except (BotoCoreError, OSError) as exc:
            raise StorageError(f"reading {self._where} failed midway: {exc}") from exc
        size = len(data)
        buffer[:size] = data
        return size

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Store:
    def __init__(
        self,
        *,
        bucket: str,
        prefix: str,
        endpoint_url: str | None,
        staging: Path,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        if not bucket:
            raise ValueError("an s3:// storage URL needs a bucket: s3://bucket/prefix")
        boto3 = _boto3()
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._staging = staging
        # Clients (unlike sessions) are thread-safe: one serves every worker thread.
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"mode": "standard", "max_attempts": 3},
            ),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def staging_dir(self) -> Path:
        self._staging.mkdir(parents=True, exist_ok=True)
        return self._staging

    def put_file(self, key: str, path: Path) -> None:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        # An S3 PUT is atomic: readers see the whole object or none of it.
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key))
        except (Boto3Error, BotoCoreError, ClientError) as exc:
            raise StorageError(f"could not write {self._where(key)}: {exc}") from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                return False
            raise StorageError(f"could not look up {self._where(key)}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"could not look up {self._where(key)}: {exc}") from exc
        return True

    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import BotoCoreError, ClientError

        where = self._where(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                raise ObjectNotFound(f"the stored transcript {where} is missing") from exc
            raise StorageError(f"could not read {where}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"could not read {where}: {exc}") from exc
        return io.BufferedReader(_Body(response["Body"], where), buffer_size=_READ_BUFFER)
