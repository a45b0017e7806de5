"""`serve` tunes the garbage collector for many long-lived connections, as its setting says,
and leaves it alone when told 0."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionflow.server.run import tune_gc
from sessionflow.settings import Settings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_serve_collects_young_objects_as_rarely_as_the_setting_says(
    restored_gc: None, tmp_path: Path
) -> None:
    _, older, oldest = gc.get_threshold()
    tune_gc(Settings(data_dir=tmp_path, gc_young_threshold=12_345))
    assert gc.get_threshold() == (12_345, older, oldest)
    assert gc.get_freeze_count() > 0  # what start-up made is no longer walked


def test_serve_leaves_the_collector_alone_when_the_setting_is_0(
    restored_gc: None, tmp_path: Path
) -> None:
    before = gc.get_threshold()
    tune_gc(Settings(data_dir=tmp_path, gc_young_threshold=0))
    assert gc.get_threshold() == before
