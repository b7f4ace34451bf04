"""Property-based tests generated from the app's own OpenAPI schema (schemathesis).

For every rerank route, positive (schema-valid) and negative (schema-violating) requests:
never a 5xx, every reply — success or error — conforms to the documented schema, status codes
and content type, and every schema-violating request is refused. (Schema-valid requests may still
be refused with a 4xx: rules a JSON schema cannot state, such as `rank_fields` naming keys that a
document lacks.) Example counts are bounded so CI stays fast.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
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



# Schemathesis never generates lone UTF-16 surrogates (raw UTF-8 cannot carry them), but JSON can,
# as "\ud800" escapes, and clients that cut text in the middle of an emoji send exactly that. So
# half of the bodies get a lone surrogate put into every string (json.dumps escapes it on the wire).
def _with_surrogates(value: Any, draw: st.DrawFn) -> Any:
    # Only into strings that already hold a non-space character: a negative case whose fault is
    # an empty or blank string must stay faulty (a surrogate would satisfy `minLength`/`\S`).
    if isinstance(value, str) and value.strip():
        at = draw(st.integers(0, len(value)))
        return value[:at] + draw(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)) + value[at:]
    if isinstance(value, dict):
        return {k: _with_surrogates(v, draw) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_surrogates(v, draw) for v in value]
    return value


@schema.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy:
    return st.one_of(st.just(body), st.composite(lambda draw: _with_surrogates(body, draw))())


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_rerank_routes_hold_to_their_schema(case, server):
    response = case.call_and_validate(
        base_url=server.url,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
                negative_data_rejection],
    )
    assert response.status_code < 500, response.text
