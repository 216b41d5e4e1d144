"""Contract fuzzing (schemathesis) against one Backstock for the whole session.

The target is a real server (``served``: uvicorn on a loopback port) over one SQLite file, with
rate limits on (so every counted response carries ``RateLimit-*``) but generous enough that the
fuzzing is not a sea of 429s, no job worker (spawned jobs stay queued; one seeded job is applied
by hand so a ``complete`` job with an item error exists), and a key with both scopes.

``seeded`` puts the rows the documents' examples name back before each operation is fuzzed
(an earlier DELETE may have removed them), so examples hit existing rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckContext

from backstock.bootstrap import build_app
from backstock.services import accounts
from backstock.services.container import Services
from backstock.settings import Settings
from backstock.storage import migrate
from tests.support import Api, bulk_body, item_body, served, variant_body

KLAVIYO = Path(__file__).parent / "klaviyo"


def fuzz(max_examples: int) -> settings:
    """Deterministic and bounded: the same cases on every run (derandomized, no example
    database, nothing written to .hypothesis), no deadline (a 2-core CI box has noisy
    latencies). The health check on function-scoped fixtures is suppressed on purpose:
    ``seeded`` runs once per operation, not per case."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


def phases(*, coverage: bool) -> schemathesis.Config:
    """Examples and fuzzing (positive and negative cases) always; with ``coverage``, also
    schemathesis' coverage phase: a deterministic pass over every parameter's and body
    member's boundary and wrong-type values (it costs as much as the rest together)."""
    return schemathesis.Config.from_dict({"phases": {"coverage": {"enabled": coverage}}})


# Rows the documents' examples name: Backstock's own (README's SHIRT) and Klaviyo's samples.
CATALOG = {
    "SHIRT": ["SHIRT-M", "SHIRT-L"],
    "SAMPLE-DATA-ITEM-1": ["SAMPLE-DATA-ITEM-1-VARIANT-MEDIUM"],
}
# Job ids the documents use as examples; a case naming one asks for the seeded complete job.
EXAMPLE_JOB_IDS = {"01JABCDEF0123456789XYZABCD", "01GSQPBF74KQ5YTDEPP41T1BZH"}


@dataclass
class Target:
    url: str
    app: Any
    key: str
    api: Api
    job_id: str
    """A complete job of the key's account, with one applied update and one item error."""

    def prepare(self, case: schemathesis.Case, revision: str) -> None:
        """A valid key and revision on every case (both are fuzzed elsewhere: tests/api), and
        the seeded job where a case names an example job id."""
        case.headers = {
            **(case.headers or {}),
            "Authorization": f"Klaviyo-API-Key {self.key}",
            "revision": revision,
        }
        params = case.path_parameters or {}
        if params.get("job_id") in EXAMPLE_JOB_IDS:
            params["job_id"] = self.job_id


def _settings(database_url: str) -> Settings:
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


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    url = f"sqlite:///{tmp_path_factory.mktemp('contract') / 'backstock.db'}"
    migrate.upgrade(url)
    app = build_app(_settings(url))
    services: Services = app.state.services
    key = accounts.create_key(services.db, "contract", ("catalogs:read", "catalogs:write")).key
    with served(app) as base_url, _Client(base_url) as client:
        api = Api(client, key)  # type: ignore[arg-type]  # duck-typed: a client over HTTP
        _seed(api)
        spawned = api.post(
            "/api/catalog-variant-bulk-update-jobs",
            bulk_body([("SHIRT-M", {"price": 39.0}), ("GONE", {"price": 1.0})]),
        )
        assert spawned.status_code == 202, spawned.text
        claimed = services.jobs.claim("contract-seed")
        assert claimed is not None and claimed[1], "the seeded job did not complete"
        yield Target(base_url, app, key, api, spawned.json()["data"]["id"])


class _Client(requests.Session):
    """What ``Api`` needs of a test client, over the network."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url

    def request(self, method: Any, url: Any, *args: Any, **kw: Any) -> Any:
        return super().request(method, f"{self.base_url}{url}", *args, **kw)


def _seed(api: Api) -> None:
    for item, variants in CATALOG.items():
        response = api.post("/api/catalog-items", item_body(item))
        assert response.status_code in (201, 409), response.text
        for variant in variants:
            response = api.post("/api/catalog-variants", variant_body(variant, item))
            assert response.status_code in (201, 409), response.text


@pytest.fixture
def seeded(target: Target) -> Target:
    _seed(target.api)
    return target


@pytest.fixture(scope="session")
def session() -> Iterator[requests.Session]:
    with requests.Session() as made:
        yield made


# ---- the check every error answer must pass --------------------------------------------------


@schemathesis.check
def jsonapi_error_document(ctx: CheckContext, response: schemathesis.Response, case: Any) -> None:
    """A 4xx is a JSON:API error document: a non-empty ``errors`` list of objects with at least
    ``status`` (the response's), ``title`` and ``detail``, and a ``source`` (when present)
    naming a ``pointer`` or a ``parameter``."""
    if not 400 <= response.status_code < 500:
        return
    problems = _error_document_problems(response)
    assert not problems, "Not a JSON:API error document: " + "; ".join(problems)


def _error_document_problems(response: schemathesis.Response) -> list[str]:
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
