"""Property-based fuzzing of every route in the server's own OpenAPI document (schemathesis
over hypothesis), against a real uvicorn, with a real token: valid and invalid requests
alike must never get a 5xx, and every answer must match what the document promises.

Not checked: that every schema-valid request is accepted. The document gives the default
limits (ids, batch sizes), but some (transcript size, metadata size, NUL characters) are
settings or storage rules it cannot express, and refusing those with a 4xx is right.

Sized for CI: 60 examples per route and mode, derandomized, no example database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.helpers import LiveServer, auth

pytestmark = pytest.mark.slow

Operation: TypeAlias = APIOperation[Any, Any, Any, Any]

EXAMPLES_PER_MODE = 60

# Transcripts are raw bytes (application/x-ndjson): sent as generated, or as the text of
# whatever non-bytes value a negative example puts there.
schemathesis.serializer.alias("application/x-ndjson", "application/octet-stream")


@pytest.fixture
def operations(live_server: LiveServer) -> list[Operation]:
    schema = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json")
    found = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document itself must be readable
        found.append(result.ok())
    return found


def fuzz(operation: Operation, mode: GenerationMode, base_url: str, token: str) -> None:
    @hypothesis_settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        derandomize=True,  # the same examples every run: CI never flakes on a new one
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case[Operation]) -> None:
        response = case.call(base_url=base_url, headers=auth(token), timeout=30)
        assert response.status_code < 500, (case.as_curl_command(), response.text)
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_every_route_survives_fuzzed_requests_and_keeps_its_documented_shape(
    live_server: LiveServer,
    operations: list[Operation],
    make_token: Callable[[str], str],
    db_dsn: str,
    mode: GenerationMode,
) -> None:
    token = make_token("fuzzer")
    assert {op.path for op in operations} >= {
        "/api/sessions",
        "/api/sessions/{session_id}/transcript",
        "/api/sessions/{session_id}",
        "/api/sessions/batch-status",
    }
    fuzzed: set[str] = set()
    for operation in operations:
        try:
            fuzz(operation, mode, live_server.url, token)
        except Unsatisfiable:
            # A route with no inputs (healthz, readyz, metrics) has no invalid request.
            assert mode == GenerationMode.NEGATIVE, operation.path
            continue
        fuzzed.add(operation.path)
    assert {"/api/sessions", "/api/sessions/batch-status"} <= fuzzed
    # Whatever was accepted belongs to the fuzzer's owner and nobody else.
    with psycopg.connect(db_dsn) as conn:
        owners = {row[0] for row in conn.execute("SELECT DISTINCT owner FROM sessions")}
    assert owners <= {"fuzzer"}
