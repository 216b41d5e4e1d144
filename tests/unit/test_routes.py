"""The route table against Klaviyo's own document: every /api/catalog-* operation is served,
with Klaviyo's operationId, scope, rate limits and success status, and nothing else is."""

from __future__ import annotations

import json
from pathlib import Path

from backstock.http.routes import operations

KLAVIYO = Path(__file__).parents[1] / "contract" / "klaviyo" / "klaviyo-catalogs.openapi.json"


def _klaviyo() -> dict[tuple[str, str], tuple[str, str, str, int]]:
    spec = json.loads(KLAVIYO.read_text())
    found = {}
    for path, operations_ in spec["paths"].items():
        for method, op in operations_.items():
            if method not in ("get", "post", "patch", "delete"):
                continue
            limits = op["x-klaviyo-ratelimit"]
            burst = limits["burst"].replace("/s", "/second")
            steady = limits["steady"].replace("/m", "/minute")
            success = int(next(code for code in op["responses"] if code.startswith("2")))
            found[(method.upper(), path)] = (
                op["operationId"], op["x-klaviyo-scopes"][0], f"{burst};{steady}", success,
            )  # fmt: skip
    return found


def test_every_operation_of_klaviyos_document_is_served_as_it_says() -> None:
    ours = {(op.method, op.path): (op.id, op.scope, op.limits, op.status) for op in operations()}
    theirs = _klaviyo()
    assert len(theirs) == 54
    assert ours == theirs


def test_operation_ids_are_unique() -> None:
    ids = [op.id for op in operations()]
    assert len(ids) == len(set(ids))
