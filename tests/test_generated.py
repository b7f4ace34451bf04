"""Property-based tests generated from the app's own OpenAPI schema (schemathesis).

For every rerank route, positive (schema-valid) and negative (schema-violating) requests:
never a 5xx, every reply — success or error — conforms to the documented schema, status codes
and content type, and every schema-violating request is refused. (Schema-valid requests may still
be refused with a 4xx: rules a JSON schema cannot state, such as `rank_fields` naming keys that a
document lacks.) Example counts are bounded so CI stays fast.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance, negative_data_rejection, not_a_server_error, response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig

from reranker_serve.app import create_app
from reranker_serve.config import Settings

MAX_EXAMPLES = 100

_config = SchemathesisConfig()
_config.projects.default.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES, deterministic=True
)
# The schema is the app's own, as served at /openapi.json (building the app loads no model).
schema = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None)).openapi(), config=_config).include(
    path_regex="rerank"
)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_rerank_routes_hold_to_their_schema(case, server):
    response = case.call_and_validate(
        base_url=server.url,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
                negative_data_rejection],
    )
    assert response.status_code < 500, response.text
