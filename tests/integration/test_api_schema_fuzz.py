"""Schemathesis over the API's own OpenAPI schema, against a real dashboard_api process on real Redis
holding 44 series (the byte comparisons' world): no generated request may get a server error, and
every answer must be one the schema documents, in the content type and shape it documents.

Valid requests (the schema's) and invalid ones (values the schema excludes: the API must answer
those with a 4xx it documents, never a 5xx). Bounded: a fixed number of examples per operation
and mode, derandomised (the same cases every run), well under a minute. /api/stream is left out
(an endless event stream); POST /api/backfill is exercised without the token (the fuzzer does not
know it), so its answers are the 401/413/422 a stranger gets.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.integration import test_api_hardening as hardening
from tests.integration import test_api_speed_paths as speed
from tests.integration.test_api_hardening import Api

schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis (pip install -e '.[dev]')")
hypothesis = pytest.importorskip("hypothesis")

world = speed.world
api = hardening.api

EXAMPLES = 25  # per operation and mode


def fuzz(base_url: str) -> tuple[int, list[str]]:
    from schemathesis import checks

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json").exclude(path="/api/stream")
    wanted = [
        checks.not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_schema_conformance,
    ]
    calls = 0
    problems: list[str] = []
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for operation, mode in [(r.ok(), m) for r in schema.get_all_operations() for m in modes]:
        label = f"{operation.label} ({mode.value})"

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            nonlocal calls
            response = case.call(base_url=base_url, timeout=10)
            calls += 1
            if response.status_code >= 500:
                problems.append(f"{label}: {response.status_code} {response.text[:200]} for {case.as_curl_command()}")  # noqa: B023
                return
            try:
                case.validate_response(response, checks=wanted)
            except Exception as exc:  # every other check's failure, reported together at the end
                problems.append(f"{label}: {type(exc).__name__}: {str(exc)[:400]}")  # noqa: B023

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            assert not mode.is_positive, label  # nothing invalid to make of an operation without parameters
    return calls, problems


async def test_no_generated_request_gets_a_server_error_or_an_undocumented_answer(api: Api) -> None:
    start = time.monotonic()
    calls, problems = await asyncio.to_thread(fuzz, api.url)
    took = time.monotonic() - start
    print(f"\nschemathesis: {calls} requests in {took:.1f}s, {len(problems)} problems")
    assert calls >= 100
    assert problems == [], "\n".join(problems[:20])
    assert took < 60
