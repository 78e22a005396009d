"""Schema-driven fuzzing of the service (schemathesis): whatever a client sends that the
OpenAPI schema allows, or nearly allows, the answer is never a server error."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from medlite.serve import ServeSettings, UploadLimits, create_app, load_served_runs


@pytest.fixture(scope="module")
def api_schema(tiny_runs, tmp_path_factory):
    runs = load_served_runs([tiny_runs[t] for t in ("segmentation", "classification", "pasi",
                                                    "stress")])
    app = create_app(runs, ServeSettings(
        db_path=tmp_path_factory.mktemp("fuzz") / "v.sqlite",
        limits=UploadLimits(max_bytes=2 ** 20, max_pixels=250_000)))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def fuzz(operation, statuses: dict[str, set[int]]) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=15, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call()
        statuses.setdefault(operation.label, set()).add(response.status_code)
        assert response.status_code < 500, (case.method, case.formatted_path,
                                            response.text[:200])

    check()


def test_no_request_makes_a_server_error(api_schema):
    # schemathesis' pytest plugin does not run under this pytest; its strategies, driven by
    # Hypothesis directly, do the same.
    statuses: dict[str, set[int]] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        fuzz(operation, statuses)
    # The fuzzer reached past validation into the handlers (not only 422s).
    assert statuses["POST /api/runs/{run}/segment"] & {400, 413}
    assert statuses["GET /api/runs/{run}"] == {200}
