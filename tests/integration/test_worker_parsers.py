"""The parser pool: a parser process that dies costs one attempt of one job, never the worker."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import psutil
import pytest

from sessionflow.worker.parsers import ParserCrashed, ParserPool


def die() -> None:
    os._exit(3)  # as the kernel's OOM killer would end it: no exception, no cleanup


def pid() -> int:
    return os.getpid()


def nap_after_touching(marker: Path) -> None:
    marker.touch()
    time.sleep(600)


def gone(process_id: int) -> bool:
    try:
        return psutil.Process(process_id).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_a_dead_parser_process_is_replaced_and_reported_as_a_crash() -> None:
    pool = ParserPool("process", 1)
    try:
        await pool.warm()
        first = await pool.run(pid)
        assert first != os.getpid()  # parsing really happens in another process

        with pytest.raises(ParserCrashed, match="out of memory"):
            await pool.run(die)

        second = await pool.run(pid)
        assert second not in (first, os.getpid())  # a fresh process took over
    finally:
        pool.close()


async def test_a_parse_given_up_ends_its_process_and_a_new_one_takes_its_place(
    tmp_path: Path,
) -> None:
    pool = ParserPool("process", 1)
    try:
        await pool.warm()
        busy = await pool.run(pid)
        marker = tmp_path / "started"
        job = asyncio.create_task(pool.run(nap_after_touching, marker))
        for _ in range(500):
            if marker.exists():
                break
            await asyncio.sleep(0.02)
        assert marker.exists()

        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job

        assert await pool.run(pid) not in (busy, os.getpid())
        for _ in range(500):
            if gone(busy):
                break
            await asyncio.sleep(0.02)
        assert gone(busy)  # not left napping for ten minutes
    finally:
        pool.close()


async def test_the_thread_parser_runs_in_this_process() -> None:
    pool = ParserPool("thread", 1)
    try:
        assert await pool.run(pid) == os.getpid()
    finally:
        pool.close()


def test_an_answer_larger_than_the_pipe_buffer_arrives_whole_under_uvloop() -> None:
    """uvloop makes a watched fd non-blocking: an answer written in parts used to fail with
    EAGAIN between them and count as a dead parser (seen on a session of 18 subagent runs)."""
    import uvloop

    from sessionflow.worker.parsers import ParserPool

    async def main() -> list[int]:
        pool = ParserPool("process", 1)
        await pool.warm()
        try:
            return [len(await pool.run(bytes, 4 * 1024 * 1024)) for _ in range(20)]
        finally:
            pool.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == [4 * 1024 * 1024] * 20
