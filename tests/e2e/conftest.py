"""What the end-to-end tests share: real `sessionflow serve` and `worker` processes on this
test's database, stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Processes


@pytest.fixture
def procs(db_dsn: str, tmp_path: Path) -> Iterator[Processes]:
    p = Processes(db_dsn, tmp_path)
    yield p
    p.stop_all()
