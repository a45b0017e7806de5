"""One place for limits: the settings take their defaults from sessionflow/limits.py, and the
README's limits table says what that table says."""

from __future__ import annotations

from pathlib import Path

from sessionflow import protocol
from sessionflow.limits import LIMITS, markdown_table
from sessionflow.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_limit_is_a_setting_whose_default_is_the_tables() -> None:
    settings = Settings()
    for limit in LIMITS:
        value = getattr(settings, limit.name)
        if limit.name == "ws_max_message_bytes":
            assert value is None  # unset: it follows the id limits
            value = settings.ws_message_limit
        assert value == limit.default, limit.name


def test_the_wire_documents_the_same_defaults() -> None:
    table = {limit.name: limit.default for limit in LIMITS}
    assert table["max_batch_ids"] == protocol.MAX_BATCH_IDS
    assert table["max_id_length"] == protocol.MAX_ID_LENGTH
    assert table["max_session_files"] == protocol.MAX_SESSION_FILES


def test_the_readme_limits_table_is_the_table() -> None:
    assert markdown_table() in README.read_text(), (
        "README.md's limits table differs from sessionflow/limits.py; paste "
        "`python -c 'from sessionflow.limits import markdown_table; print(markdown_table())'`"
    )
