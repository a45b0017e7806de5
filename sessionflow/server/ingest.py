"""Receiving a transcript: stream it to a staging file while hashing it, decompressing gzip
in bounded steps, so neither a huge body nor a gzip bomb can exhaust memory.

The body arrives on the event loop, but hashing, inflating and writing happen in a worker
thread, a batch of chunks at a time: the loop also carries the live stream's fan-out and the
in-process worker's heartbeats, and a 256 MiB upload must not stall them."""

from __future__ import annotations

import hashlib
import os
import tempfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import anyio

from sessionflow.server.errors import ApiError, bad_request
from sessionflow.storage import discard

# Largest piece inflated at once: memory per upload stays near this, whatever the ratio.
_INFLATE_STEP = 1024 * 1024
# Bytes gathered on the loop before a thread takes them: large enough that a hop to the
# thread costs little next to the work, small enough to keep memory per upload low.
_BATCH_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Received:
    path: Path
    sha256: str
    size: int


def compressed_limit(limit: int) -> int:
    """The most a body may be as sent: gzip of incompressible bytes is a little larger than
    they are (a few bytes per 16 KiB block and a header), never by 1%."""
    return limit + limit // 100 + 64 * 1024


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "too_large", f"the transcript is over the {limit}-byte limit (after decompression)"
    )


class _Sink:
    """What one upload's body turns into: plain bytes hashed and written to a file, within the
    limits. Runs in a worker thread; raises ApiError for a body it refuses."""

    def __init__(self, out: IO[bytes], *, gzipped: bool, limit: int) -> None:
        self.out = out
        self.limit = limit
        self.sent_limit = compressed_limit(limit) if gzipped else limit
        self.hasher = hashlib.sha256()
        self.size = 0
        self.sent = 0
        self.inflater = zlib.decompressobj(wbits=31) if gzipped else None

    def feed(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.sent += len(chunk)
            if self.sent > self.sent_limit:
                raise ApiError(
                    413,
                    "too_large",
                    f"the request body is over {self.sent_limit} bytes, more than any "
                    f"transcript within the {self.limit}-byte limit needs",
                )
            if self.inflater is None:
                self._take(chunk)
            else:
                self._inflate(chunk)

    def _inflate(self, data: bytes) -> None:
        inflater = self.inflater
        assert inflater is not None
        if inflater.eof:
            if data:
                raise _after_the_end()
            return
        while data:
            self._take(_decompress(inflater, data))
            if inflater.eof:
                if inflater.unused_data:
                    raise _after_the_end()
                return
            data = inflater.unconsumed_tail

    def finish(self) -> None:
        inflater = self.inflater
        if inflater is None:
            return
        # Output zlib still holds once the input has all arrived.
        while not inflater.eof:
            piece = _decompress(inflater, inflater.unconsumed_tail)
            if not piece and not inflater.unconsumed_tail:
                break
            self._take(piece)
        if not inflater.eof:
            raise bad_request("the gzip body ends before its end marker (truncated upload?)")
        if inflater.unused_data:
            raise _after_the_end()

    def _take(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise _too_large(self.limit)
        self.hasher.update(data)
        self.out.write(data)


def _decompress(inflater: zlib._Decompress, data: bytes) -> bytes:
    try:
        return inflater.decompress(data, _INFLATE_STEP)
    except zlib.error:
        raise bad_request("the body is not valid gzip") from None


def _after_the_end() -> ApiError:
    return bad_request(
        "the body goes on after the end of its gzip stream; send one gzip stream and nothing "
        "after it"
    )


async def receive_transcript(
    chunks: AsyncIterator[bytes], *, gzipped: bool, limit: int, staging: Path
) -> Received:
    """Write the (decompressed) body to a file in staging; the caller owns the file after."""
    fd, name = tempfile.mkstemp(dir=staging, prefix="upload-", suffix=".part")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            sink = _Sink(out, gzipped=gzipped, limit=limit)
            batch: list[bytes] = []
            batched = 0
            async for chunk in chunks:
                batch.append(chunk)
                batched += len(chunk)
                if batched >= _BATCH_BYTES:
                    await anyio.to_thread.run_sync(sink.feed, batch)
                    batch, batched = [], 0
            await anyio.to_thread.run_sync(sink.feed, batch)
            await anyio.to_thread.run_sync(sink.finish)
    except BaseException:
        discard(path)
        raise
    return Received(path=path, sha256=sink.hasher.hexdigest(), size=sink.size)
