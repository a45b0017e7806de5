"""The transcript object store: content-addressed blobs on local disk (default) or S3.

Keys are derived from the sha256 of a transcript, never from a session id, so no client input
ever becomes a path."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse


class StorageError(Exception):
    """The store could not be reached or failed: transient, worth a retry."""


class ObjectNotFound(StorageError):
    """No object under that key: permanent for the session that points at it."""


def discard(path: Path) -> None:
    """Remove a local temporary file, if it is still there."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def transcript_key(sha256_hex: str) -> str:
    return f"transcripts/{sha256_hex[:2]}/{sha256_hex}.jsonl"


class ObjectStore(Protocol):
    url: str

    def put_file(self, key: str, path: Path) -> None:
        """Store the file at path under key (atomically: readers see all of it or nothing)."""

    def exists(self, key: str) -> bool: ...

    def open(self, key: str) -> BinaryIO:
        """A binary stream of the object, to be read sequentially and closed."""

    def staging_dir(self) -> Path:
        """A local folder for temporary files on their way into the store."""


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / key

    def staging_dir(self) -> Path:
        # Inside the root, so that moving a staged file in is an atomic rename.
        path = self.root / ".staging"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.parent == self.staging_dir():
                os.replace(path, target)
            else:
                with (
                    tempfile.NamedTemporaryFile(dir=self.staging_dir(), delete=False) as tmp,
                    path.open("rb") as src,
                ):
                    shutil.copyfileobj(src, tmp)
                os.replace(tmp.name, target)
        except OSError as exc:
            raise StorageError(f"could not write {target}: {exc.strerror}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"the stored transcript {key} is missing from {self.url}") from exc
        except OSError as exc:
            raise StorageError(f"could not read {key} from {self.url}: {exc.strerror}") from exc


def open_store(
    url: str, *, s3_endpoint_url: str | None = None, data_dir: Path | None = None
) -> ObjectStore:
    """The store a storage URL names: file:///path or s3://bucket/prefix."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        root = Path(unquote(parsed.path))
        root.mkdir(parents=True, exist_ok=True)
        return LocalStore(root)
    if parsed.scheme == "s3":
        from sessionflow.s3 import S3Store  # type: ignore[import-untyped,unused-ignore]

        store: ObjectStore = S3Store(
            bucket=parsed.netloc,
            prefix=parsed.path.lstrip("/"),
            endpoint_url=s3_endpoint_url,
            staging=(data_dir or Path(tempfile.gettempdir())) / "staging",
        )
        return store
    raise ValueError(
        f"unsupported storage URL {url!r}: use file:///absolute/path or s3://bucket/prefix"
    )
