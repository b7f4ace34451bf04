"""RERANKER_API_KEY: every rerank route needs the bearer key; probes stay open, the other system routes need it too."""

from __future__ import annotations

import pytest

from conftest import DOCS, QUERY

KEY = "s3cret-key"
ROUTES = {
    "/rerank": ("error", {"query": QUERY, "documents": DOCS}),
    "/v1/rerank": ("message", {"query": QUERY, "documents": DOCS}),
    "/v2/rerank": ("message", {"query": QUERY, "documents": DOCS}),
    "/api/v1/rerank": ("detail", {"query": QUERY, "documents": DOCS}),
}


@pytest.fixture(scope="module")
def secured(serve):
    return serve(api_key=KEY)


@pytest.mark.parametrize("path", sorted(ROUTES))
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}])
def test_rejected_without_the_key(secured, path, headers):
    field, body = ROUTES[path]
    r = secured.client.post(path, json=body, headers=headers)
    assert r.status_code == 401
    assert set(r.json()) == {field} | ({"error_type"} if field == "error" else set())
    assert "API key" in r.json()[field]
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_accepted_with_the_key(secured, path):
    _, body = ROUTES[path]
    r = secured.client.post(path, json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == len(DOCS)


def test_auth_is_checked_before_the_body(secured):
    r = secured.client.post("/v1/rerank", content=b"{broken", headers={"content-type": "application/json"})
    assert r.status_code == 401


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_probes_stay_open(secured, path):
    assert secured.client.get(path).status_code == 200


# Issue 21: what is served, to whom and how much, is for key holders (test_security.py has more).
@pytest.mark.parametrize("path", ["/info", "/v1/models", "/docs", "/openapi.json", "/metrics"])
def test_system_routes_need_the_key(secured, path):
    r = secured.client.get(path)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
    assert "missing API key" in r.json()["detail"]
    assert secured.client.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_open_server_needs_no_key(client):
    assert client.post("/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200
