"""Backstock against its own OpenAPI document (``GET /openapi.json``), every operation fuzzed.

The document is loaded from ``backstock.http.openapi.build()`` so that pytest can collect one
test per operation; ``test_served_document`` holds the served ``/openapi.json`` to be that very
document. Each case gets a valid key and revision (``Target.prepare``): the newest on the
slash-less paths, 2023-02-22 (the seeds' revision, whose clients add the slash) on the others.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import requests
import schemathesis
from backstock.http.jsonapi import MEDIA_TYPE
from fastapi.routing import APIRoute
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from backstock.http import openapi
from tests.contract.conftest import Target, fuzz, jsonapi_error_document, phases

DOCUMENT = openapi.build()
METHODS = ("get", "post", "put", "patch", "delete")
_TEMPLATE = re.compile(r"\{[^}]*\}")

# The slash-less spelling gets the coverage phase too; the trailing-slash one (the same
# handlers: only the edge strips the slash) examples and fuzzing, to keep the run short.
SLASHLESS = schemathesis.openapi.from_dict(openapi.build(), config=phases(coverage=True)).exclude(
    path_regex="/$"
)
SLASHED = schemathesis.openapi.from_dict(openapi.build(), config=phases(coverage=False)).include(
    path_regex="/$"
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    jsonapi_error_document,
]


def test_served_document(target: Target, session: requests.Session) -> None:
    response = session.get(f"{target.url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "ratelimit-limit" not in response.headers  # served without a key, never counted
    assert response.json() == DOCUMENT
    schemathesis.openapi.from_dict(response.json()).validate()  # the OpenAPI 3.1 meta-schema


def test_every_route_is_documented_in_both_spellings(target: Target) -> None:
    served = set()
    for route in _routes(target.app.router.routes):
        for method in route.methods or ():
            served.add((_TEMPLATE.sub("{}", route.path), method.lower()))
    documented = {
        (_TEMPLATE.sub("{}", path), method)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in METHODS and not path.endswith("/")
    }
    assert documented == served
    slashless = {p for p in DOCUMENT["paths"] if not p.endswith("/")} - {openapi.PATH}
    slashed = {p for p in DOCUMENT["paths"] if p.endswith("/")}
    assert slashed == {p + "/" for p in slashless}
    for path in slashless:
        assert DOCUMENT["paths"][path].keys() == DOCUMENT["paths"][path + "/"].keys()


def _routes(routes: list[Any]) -> list[APIRoute]:
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif (router := getattr(route, "original_router", None)) is not None:  # FastAPI ≥ 0.16x
            found += _routes(router.routes)
    return found


def test_undocumented_methods_answer_405_as_documented(
    seeded: Target, session: requests.Session
) -> None:
    """What the document can only say in words: any other method on a documented path is a
    405 whose ``Allow`` names exactly the documented methods (``#/components/responses/Error405``)."""
    schema = f"#/components/responses/Error405/content/{MEDIA_TYPE.replace('/', '~1')}/schema"
    validator = jsonschema_rs.Draft202012Validator(
        {"components": DOCUMENT["components"], "$ref": schema}, validate_formats=True
    )
    headers = {"Authorization": f"Klaviyo-API-Key {seeded.key}", "revision": "2026-10-15"}
    for path, item in DOCUMENT["paths"].items():
        allowed = sorted(method.upper() for method in item if method in METHODS)
        url = seeded.url + _TEMPLATE.sub("%24custom%3A%3A%3A%24default%3A%3A%3ASHIRT", path)
        for method in sorted(set(METHODS) - set(item)):
            response = session.request(method.upper(), url, headers=headers, json={})
            assert response.status_code == 405, (method, path, response.text)
            assert response.headers["allow"] == ", ".join(allowed), (method, path)
            assert response.headers["content-type"] == MEDIA_TYPE
            validator.validate(response.json())


def test_fastapi_documents_are_gone(target: Target, session: requests.Session) -> None:
    for path in ("/docs", "/redoc"):
        assert session.get(f"{target.url}{path}").status_code == 404


@fuzz(max_examples=25)
@SLASHLESS.parametrize()
def test_backstock_conforms_to_its_own_document(
    case: schemathesis.Case, seeded: Target, session: requests.Session
) -> None:
    seeded.prepare(case, "2026-10-15")
    case.call_and_validate(base_url=seeded.url, session=session, checks=CHECKS)


@fuzz(max_examples=8)
@SLASHED.parametrize()
def test_trailing_slash_spelling_conforms_too(
    case: schemathesis.Case, seeded: Target, session: requests.Session
) -> None:
    seeded.prepare(case, "2023-02-22")  # the seeds' revision, whose clients add the slash
    case.call_and_validate(base_url=seeded.url, session=session, checks=CHECKS)
