"""The rows of a set-based stage write: one JSON object per session, its pre-encoded JSON
placed as it is."""

from __future__ import annotations

import json

from sessionflow.worker.commits import encode_row


def test_a_row_holds_its_fields_and_its_json_as_given() -> None:
    fields = {"owner": 'o"wn\\er', "id": "se\nssion ✓", "lease": "l", "error": None, "n": 1.5}
    result = '{"title": "a \\"quoted\\" title", "tokens": [1, 2]}'
    row = encode_row(fields, {"parse_result": result, "summary": "{}"})

    assert json.loads(row) == {**fields, "parse_result": json.loads(result), "summary": {}}
    assert row.endswith(f'"parse_result": {result}, "summary": {{}}}}')  # not encoded again


def test_a_row_without_json_fields_is_its_fields() -> None:
    assert json.loads(encode_row({"owner": "o", "id": "s"}, {})) == {"owner": "o", "id": "s"}
