"""Receiving a transcript: stream it to a staging file while hashing it, decompressing gzip
in bounded steps, so neither a huge body nor a gzip bomb can exhaust memory."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from sessionflow.server.errors import ApiError, bad_request

# Largest piece inflated at once: memory per upload stays near this, whatever the ratio.
_INFLATE_STEP = 1024 * 1024


@dataclass(frozen=True)
class Received:
    path: Path
    sha256: str
    size: int


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "too_large", f"the transcript is over the {limit}-byte limit (after decompression)"
    )


def discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def inflate(inflater: zlib._Decompress, data: bytes) -> bytes:
    try:
        return inflater.decompress(data, _INFLATE_STEP)
    except zlib.error:
        raise bad_request("the body is not valid gzip") from None


async def receive_transcript(
    chunks: AsyncIterator[bytes], *, gzipped: bool, limit: int, staging: Path
) -> Received:
    """Write the (decompressed) body to a file in staging; the caller owns the file after."""
    hasher = hashlib.sha256()
    size = 0
    inflater = zlib.decompressobj(wbits=31) if gzipped else None
    fd, name = tempfile.mkstemp(dir=staging, prefix="upload-", suffix=".part")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:

            def take(data: bytes) -> None:
                nonlocal size
                size += len(data)
                if size > limit:
                    raise _too_large(limit)
                hasher.update(data)
                out.write(data)

            async for chunk in chunks:
                if inflater is None:
                    take(chunk)
                    continue
                data = chunk
                while data:
                    take(inflate(inflater, data))
                    if inflater.eof:
                        break
                    data = inflater.unconsumed_tail
            if inflater is not None:
                # Output zlib still holds once the input has all arrived.
                while not inflater.eof:
                    piece = inflate(inflater, inflater.unconsumed_tail)
                    if not piece and not inflater.unconsumed_tail:
                        break
                    take(piece)
                if not inflater.eof:
                    raise bad_request(
                        "the gzip body ends before its end marker (truncated upload?)"
                    )
    except BaseException:
        discard(path)
        raise
    return Received(path=path, sha256=hasher.hexdigest(), size=size)
