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
    klaviyos = [op for op in operations() if not op.extension]
    ours = {(op.method, op.path): (op.id, op.scope, op.limits, op.status) for op in klaviyos}
    theirs = _klaviyo()
    assert len(theirs) == 54
    assert ours == theirs


def test_extensions_are_apart_from_klaviyos_paths() -> None:
    """Backstock's own operations live under a job's path, where Klaviyo has nothing: an
    unmodified Klaviyo client never reaches one."""
    theirs = {path for _, path in _klaviyo()}
    extensions = [op for op in operations() if op.extension]
    assert {op.path.rsplit("/", 1)[1] for op in extensions} == {"cancel", "retry", "events"}
    assert len(extensions) == 3 * 9
    for op in extensions:
        assert op.path not in theirs
        assert op.path.rsplit("/", 1)[0] in theirs  # …/{job_id}, one of Klaviyo's


def test_operation_ids_are_unique() -> None:
    ids = [op.id for op in operations()]
    assert len(ids) == len(set(ids))


def test_the_document_marks_backstocks_own_operations() -> None:
    import orjson

    from backstock.http.app import _openapi_document

    document = orjson.loads(_openapi_document())
    marked = {
        operation["operationId"]
        for item in document["paths"].values()
        for operation in item.values()
        if operation.get("x-backstock-extension")
    }
    extensions = {op.id for op in operations() if op.extension}
    assert marked == extensions | {f"{name}_slash" for name in extensions}
    spawns = [op for op in operations() if op.id.startswith("bulk_")]
    for op in spawns:
        described = document["paths"][op.path]["post"]
        assert "x-backstock-extension" not in described  # Klaviyo's, with extensions inside
        names = {p.get("name") for p in described["parameters"]}
        assert {"Idempotency-Key", "dry_run"} <= names


def operations_page() -> str:
    """``docs/operations.md``: every operation, with the limits that apply by default."""
    from backstock.services.limits import Limiter
    from backstock.settings import Settings

    limiter = Limiter(Settings(operation_limits="", write_limits=None, read_limits=None))
    lines = [
        "# Every operation",
        "",
        "Generated from the route table (`src/backstock/http/routes.py`) by "
        "`tests/unit/test_routes.py`, which checks this page against it. Klaviyo's 54 operations "
        "keep their `operationId`s, scopes and success statuses; the rate limits are those that "
        "apply by default (Klaviyo's `x-klaviyo-ratelimit`, the seeds' for the variant bulk "
        "update job and its GET; `BACKSTOCK_OPERATION_LIMITS` and friends change them). "
        "Backstock's extensions ([extensions.md](extensions.md)) are marked. Every path is also "
        "served with a trailing slash.",
        "",
        "| operationId | method and path | scope | success | rate limits (burst; steady) | |",
        "|---|---|---|---|---|---|",
    ]
    for op in operations():
        limits = limiter.limits(op.id, op.scope, op.limits).replace(";", "; ")
        mark = "extension" if op.extension else ""
        lines.append(
            f"| `{op.id}` | `{op.method} {op.path}` | `{op.scope}` | {op.status} | {limits} "
            f"| {mark} |"
        )
    return "\n".join(lines) + "\n"


def test_the_operations_page_lists_every_operation() -> None:
    """Regenerate with ``python -c "from tests.unit.test_routes import operations_page as p;
    print(p(), end='')" > docs/operations.md``."""
    from pathlib import Path

    page = Path(__file__).parents[2] / "docs" / "operations.md"
    assert page.read_text() == operations_page()
