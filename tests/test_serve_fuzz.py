"""Schema-driven fuzzing of the service (schemathesis): whatever a client sends that the
OpenAPI schema allows, or nearly allows, the answer is never a server error."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from medlite.serve import ServeSettings, UploadLimits, create_app, load_served_runs


@pytest.fixture(scope="module")
def api_schema(tiny_runs, tmp_path_factory):
    runs = load_served_runs([tiny_runs[t] for t in ("segmentation", "classification", "pasi",
                                                    "stress")])
    app = create_app(runs, ServeSettings(
        db_path=tmp_path_factory.mktemp("fuzz") / "v.sqlite",
        limits=UploadLimits(max_bytes=2 ** 20, max_pixels=250_000)))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_request_makes_a_server_error(case):
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500, response.text
