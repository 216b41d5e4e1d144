"""What the contract tests share: the fuzzing target (one real Backstock for the session, its
fixture is ``target`` in ``tests/conftest.py``), deterministic schemathesis settings, the rows
and jobs the documents' examples name, and the check every error answer must pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckContext

from backstock.domain.jobs import KINDS
from backstock.domain.resources import CATEGORY, ITEM, RESOURCES, VARIANT
from backstock.http import openapi_schemas as openapi
from backstock.settings import Settings
from tests.support import (
    Api,
    category_body,
    cid,
    enc,
    item_body,
    item_path,
    job_body,
    served,
    variant_body,
)

KLAVIYO = Path(__file__).parent / "klaviyo"


def fuzz(max_examples: int) -> settings:
    """Deterministic and bounded: the same cases on every run (derandomized, no example
    database, nothing written to .hypothesis), no deadline (a 2-core CI box has noisy
    latencies). The health check on function-scoped fixtures is suppressed on purpose:
    ``seeded_target`` runs once per operation, not per case."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def phases(*, coverage: bool) -> schemathesis.Config:
    """Examples and fuzzing (positive and negative cases) always; with ``coverage``, also
    schemathesis' coverage phase: a deterministic pass over every parameter's and body
    member's boundary and wrong-type values, and over the methods a path does not serve."""
    return schemathesis.Config.from_dict({"phases": {"coverage": {"enabled": coverage}}})


# Rows the documents' examples name: Backstock's own (``openapi.example_external``) and
# Klaviyo's samples. Each item is in each category of its row.
CATALOG = [
    (
        openapi.example_external(ITEM),
        [openapi.example_external(VARIANT)],
        [openapi.example_external(CATEGORY)],
    ),
    ("SAMPLE-DATA-ITEM-1", ["SAMPLE-DATA-ITEM-1-VARIANT-MEDIUM"], ["SAMPLE-DATA-CATEGORY-APPAREL"]),
]
SEEDED = {e for item, variants, categories in CATALOG for e in (item, *variants, *categories)}
# Job ids the documents use as examples; a case naming one asks for the seeded complete job of
# its path's kind.
EXAMPLE_JOB_IDS = {"01JABCDEF0123456789XYZABCD", "01GSQPBF74KQ5YTDEPP41T1BZH"}


@dataclass
class Target:
    url: str
    app: Any
    key: str
    api: Api
    job_ids: dict[str, str] = field(default_factory=dict)
    """By job type: a complete job of the key's account with one item error."""

    def prepare(self, case: schemathesis.Case, revision: str) -> None:
        """A valid key and revision on every case (both are fuzzed elsewhere: tests/api), and
        the seeded job of the path's kind where a case names an example job id."""
        case.headers = {
            **(case.headers or {}),
            "Authorization": f"Klaviyo-API-Key {self.key}",
            "revision": revision,
        }
        params = case.path_parameters or {}
        if params.get("job_id") in EXAMPLE_JOB_IDS:
            kind = next(t for t, k in KINDS.items() if case.path.startswith(f"{k.path}/"))
            params["job_id"] = self.job_ids[kind]
        self._make_room(case)

    def _make_room(self, case: schemathesis.Case) -> None:
        """A create naming a seeded row (Klaviyo's examples do) finds it gone, so that it
        succeeds and its answer is checked; ``seeded_target`` puts it back."""
        res = next((r for r in RESOURCES.values() if case.path.rstrip("/") == r.path), None)
        data = case.body.get("data") if isinstance(case.body, dict) else None
        attributes = data.get("attributes") if isinstance(data, dict) else None
        external = attributes.get("external_id") if isinstance(attributes, dict) else None
        if case.method == "POST" and res is not None and str(external) in SEEDED:
            response = self.api.delete(f"{res.path}/{enc(cid(external))}")
            assert response.status_code in (204, 404), response.text


def target_settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        run_worker=False,
        sqlite_synchronous="NORMAL",
        # On, so the RateLimit-* headers are checked; per second only (a per-minute moving
        # window would keep every hit of the run in memory).
        write_limits="100000/second",
        read_limits="100000/second",
        max_jobs_in_progress=1_000_000,
    )


def serve(app: Any) -> Any:
    """``app`` under uvicorn in a thread on a free loopback port, as ``tests.support.served``,
    but taking request lines of up to 1 MB: a filter of ``MAX_FILTER_LENGTH`` four-byte
    characters, percent-encoded, is 120 KB, past h11's 16 KB default. What is fuzzed is
    Backstock, not the test server's line limit."""
    return served(app, http="h11", h11_max_incomplete_event_size=1 << 20)


class HttpClient(requests.Session):
    """What ``Api`` needs of a test client, over the network."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url

    def request(self, method: Any, url: Any, *args: Any, **kw: Any) -> Any:  # type: ignore[override]
        return super().request(method, f"{self.base_url}{url}", *args, **kw)


def seed(api: Api) -> None:
    """Put the example rows back (an earlier case may have deleted or changed them)."""
    for item, variants, categories in CATALOG:
        for path, body in [
            ("/api/catalog-items", item_body(item)),
            *(("/api/catalog-variants", variant_body(v, item)) for v in variants),
            *(("/api/catalog-categories", category_body(c)) for c in categories),
        ]:
            response = api.post(path, body)
            assert response.status_code in (201, 409), response.text
        linkage = {"data": [{"type": CATEGORY.type, "id": cid(c)} for c in categories]}
        response = api.post(f"{item_path(cid(item))}/relationships/categories", linkage)
        assert response.status_code == 204, response.text


def job_entries(type_: str) -> list[dict[str, Any]]:
    """A job of each kind that completes with one applied entry (none for a delete) and one
    item error: an existing id to create, or a missing one to update or delete."""
    kind = KINDS[type_]
    res, example = kind.resource, openapi.example_external(kind.resource)
    if kind.action == "delete":
        return [{"type": res.type, "id": cid("GONE")}]
    if kind.action == "update":
        return [{"type": res.type, "id": cid(e), "attributes": {}} for e in (example, "GONE")]
    bodies: dict[str, Callable[[str], dict[str, Any]]] = {
        ITEM.type: item_body,
        VARIANT.type: lambda e: variant_body(e, openapi.example_external(ITEM)),
        CATEGORY.type: category_body,
    }
    return [bodies[res.type](e)["data"] for e in (f"JOB-{example}", example)]


def spawn_jobs(api: Api) -> dict[str, str]:
    """One job of each kind (``job_entries``), accepted: their ids by job type."""
    spawned = {}
    for type_, kind in KINDS.items():
        body = job_body(type_, kind.resource.plural, job_entries(type_))
        response = api.post(kind.path, body)
        assert response.status_code == 202, response.text
        spawned[type_] = response.json()["data"]["id"]
    return spawned


# ---- the check every error answer must pass --------------------------------------------------


@schemathesis.check
def jsonapi_error_document(ctx: CheckContext, response: schemathesis.Response, case: Any) -> None:
    """A 4xx is a JSON:API error document: a non-empty ``errors`` list of objects with at least
    ``status`` (the response's), ``title`` and ``detail``, and a ``source`` (when present)
    naming a ``pointer`` or a ``parameter``."""
    if not 400 <= response.status_code < 500:
        return
    problems = error_document_problems(response)
    assert not problems, "Not a JSON:API error document: " + "; ".join(problems)


def error_document_problems(response: schemathesis.Response) -> list[str]:
    try:
        body = response.json()
    except ValueError:
        return [f"the body is not JSON: {response.text[:200]!r}"]
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors:
        return ["`errors` is not a non-empty list"]
    problems = []
    for index, error in enumerate(errors):
        if not isinstance(error, dict):
            problems.append(f"errors[{index}] is not an object")
            continue
        for member in ("status", "title", "detail"):
            if not isinstance(error.get(member), str) or not error[member]:
                problems.append(f"errors[{index}].{member} is missing or not a string")
        if error.get("status") != str(response.status_code):
            problems.append(f"errors[{index}].status is not {response.status_code}")
        source = error.get("source")
        if source is not None and not (
            isinstance(source, dict)
            and any(isinstance(source.get(m), str) for m in ("pointer", "parameter"))
        ):
            problems.append(f"errors[{index}].source names neither a pointer nor a parameter")
    return problems
