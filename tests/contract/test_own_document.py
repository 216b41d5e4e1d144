"""Backstock against its own OpenAPI document (``GET /openapi.json``), every operation fuzzed in
both spellings.

The document is the one the app serves (``_openapi_document``), loaded at collection time so
that pytest can collect one test per operation; ``test_served_document`` holds the served
``/openapi.json`` to be that very document. Each case gets a valid key and revision
(``Target.prepare``): the newest on the slash-less paths, 2023-02-22 (the seeds' revision, whose
clients add the slash) on the others.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import orjson
import requests
import schemathesis
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from backstock.http import openapi
from backstock.http.app import _openapi_document
from backstock.http.render import MEDIA_TYPE
from tests.contract.fuzzing import Target, fuzz, jsonapi_error_document, phases

DOCUMENT = orjson.loads(_openapi_document())
METHODS = ("get", "post", "put", "patch", "delete")
_TEMPLATE = re.compile(r"\{[^}]*\}")

# The slash-less spelling gets the coverage phase too; the trailing-slash one (the same
# handlers: only the edge strips the slash) examples and fuzzing, to keep the run short.
SLASHLESS = schemathesis.openapi.from_dict(DOCUMENT, config=phases(coverage=True)).exclude(
    path_regex="/$"
)
SLASHED = schemathesis.openapi.from_dict(DOCUMENT, config=phases(coverage=False)).include(
    path_regex="/$"
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    unsupported_method,
    allow_header_conformance,
    jsonapi_error_document,
]


def test_served_document(target: Target, http_session: requests.Session) -> None:
    response = http_session.get(f"{target.url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "ratelimit-limit" not in response.headers  # served without a key, never counted
    assert response.json() == DOCUMENT
    schemathesis.openapi.from_dict(response.json()).validate()  # the OpenAPI 3.1 meta-schema


def _served(node: Any, path: str = "") -> set[tuple[str, str]]:
    """What the router serves: (path template, method), walking its tree of segments."""
    found = {(path or "/", method.lower()) for method in node.routes}
    for segment, child in node.children.items():
        found |= _served(child, f"{path}/{segment}")
    if node.wildcard is not None:
        found |= _served(node.wildcard, f"{path}/{{}}")
    return found


def test_every_route_is_documented_in_both_spellings(target: Target) -> None:
    documented = {
        (_TEMPLATE.sub("{}", path), method)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in METHODS and not path.endswith("/")
    }
    assert documented == _served(target.app.router.root)
    slashless = {p for p in DOCUMENT["paths"] if not p.endswith("/")} - {openapi.PATH}
    slashed = {p for p in DOCUMENT["paths"] if p.endswith("/")}
    assert slashed == {p + "/" for p in slashless}
    for path in slashless:
        assert DOCUMENT["paths"][path].keys() == DOCUMENT["paths"][path + "/"].keys()
        for method, operation in DOCUMENT["paths"][path].items():
            twin = DOCUMENT["paths"][path + "/"][method]
            assert twin == {**operation, "operationId": operation["operationId"] + "_slash"}


def test_undocumented_methods_answer_405_as_documented(
    seeded_target: Target, http_session: requests.Session
) -> None:
    """What the document can only say in words: any other method on a documented path is a
    405 whose ``Allow`` names exactly the documented methods (``#/components/responses/Error405``)."""
    schema = f"#/components/responses/Error405/content/{MEDIA_TYPE.replace('/', '~1')}/schema"
    validator = jsonschema_rs.Draft202012Validator(
        {"components": DOCUMENT["components"], "$ref": schema}, validate_formats=True
    )
    headers = {"Authorization": f"Klaviyo-API-Key {seeded_target.key}", "revision": "2026-10-15"}
    example = "%24custom%3A%3A%3A%24default%3A%3A%3AEXAMPLE-ITEM"
    for path, item in DOCUMENT["paths"].items():
        allowed = sorted(method.upper() for method in item if method in METHODS)
        url = seeded_target.url + _TEMPLATE.sub(example, path)
        for method in sorted(set(METHODS) - set(item)):
            response = http_session.request(method.upper(), url, headers=headers, json={})
            assert response.status_code == 405, (method, path, response.text)
            assert response.headers["allow"] == ", ".join(allowed), (method, path)
            assert response.headers["content-type"] == MEDIA_TYPE
            assert "ratelimit-limit" not in response.headers  # never counted
            validator.validate(response.json())


def test_fastapi_documents_are_gone(target: Target, http_session: requests.Session) -> None:
    """FastAPI's pages are gone; ``/docs`` is Backstock's own (Swagger UI over this document,
    every file served here, nothing from a CDN as FastAPI's page loads)."""
    assert http_session.get(f"{target.url}/redoc").status_code == 404
    page = http_session.get(f"{target.url}/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "cdn." not in page.text
    assert "/docs/swagger-ui-bundle.js" in page.text


@fuzz(max_examples=8)
@SLASHLESS.parametrize()
def test_backstock_conforms_to_its_own_document(
    case: schemathesis.Case, seeded_target: Target, http_session: requests.Session
) -> None:
    seeded_target.prepare(case, "2026-10-15")
    case.call_and_validate(base_url=seeded_target.url, session=http_session, checks=CHECKS)


@fuzz(max_examples=4)
@SLASHED.parametrize()
def test_trailing_slash_spelling_conforms_too(
    case: schemathesis.Case, seeded_target: Target, http_session: requests.Session
) -> None:
    seeded_target.prepare(case, "2023-02-22")  # the seeds' revision, whose clients add the slash
    case.call_and_validate(base_url=seeded_target.url, session=http_session, checks=CHECKS)
