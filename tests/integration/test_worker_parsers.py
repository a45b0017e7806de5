"""The parser pool: a parser process that dies costs one attempt of one job, never the worker."""

from __future__ import annotations

import os

import pytest

from sessionflow.worker.parsers import ParserCrashed, ParserPool


def die() -> None:
    os._exit(3)  # as the kernel's OOM killer would end it: no exception, no cleanup


def pid() -> int:
    return os.getpid()


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


async def test_the_thread_parser_runs_in_this_process() -> None:
    pool = ParserPool("thread", 1)
    try:
        assert await pool.run(pid) == os.getpid()
    finally:
        pool.close()
