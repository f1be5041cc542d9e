"""Schemathesis fuzzes every operation of the OpenAPI spec against the real app and a real Redis: no 5xx."""

from __future__ import annotations

import hypothesis
import schemathesis

from service.api.app import create_app
from service.core.settings import Settings

EXAMPLES_PER_OPERATION = 30


def test_no_input_makes_the_server_fail(settings: Settings) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    statuses: list[int] = []

    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,  # the same cases on every run: a failure here is never a fluke
            suppress_health_check=list(hypothesis.HealthCheck),
            database=None,
        )
        def no_server_error(case: schemathesis.Case) -> None:
            response = case.call()
            statuses.append(response.status_code)
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:500]}"
            if response.status_code >= 400 and response.headers.get("content-type") == "application/json":
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        no_server_error()

    assert any(200 <= status < 300 for status in statuses) and any(400 <= s < 500 for s in statuses)
    assert len(statuses) >= 5 * len(operations), "the fuzzer really ran"
