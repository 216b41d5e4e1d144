"""Fixtures and helpers of the bulk update job API tests.

Most tests need no settings of their own, so a module shares one app per database engine
(``idle_api``: no worker, jobs stay queued; ``worker_api``: with its worker) and every test gets
a fresh account on it: its own catalog, its own job list. That spares a database and an app
start-up and shut-down per test. Tests that need other settings use ``app_factory``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from backstock.bootstrap import build_app
from backstock.services import accounts
from backstock.settings import Settings
from backstock.storage import migrate
from tests.conftest import Api, LiveServer, bulk_body, cloned_database, served

JOBS = "/api/catalog-variant-bulk-update-jobs"
JOB_TYPE = "catalog-variant-bulk-update-job"
SEED_REVISION = "2023-02-22"
BOTH_SCOPES = ("catalogs:read", "catalogs:write")
KeyFactory = Callable[..., str]


# ---- one database and app per module and engine ------------------------------------------


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextmanager
def _database(engine: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated database of its own: a SQLite file, or a clone of the PostgreSQL template."""
    if engine == "sqlite":
        folder: Path = request.getfixturevalue("tmp_path_factory").mktemp("jobs")
        url = f"sqlite:///{folder / 'backstock.db'}"
        migrate.upgrade(url)
        yield url
        return
    with cloned_database(request.getfixturevalue("pg_template"), "backstock_m") as url:
        yield url


def _settings(url: str, **overrides: Any) -> Settings:
    values = {"database_url": url, "rate_limits": "off", "idle_check_seconds": 0.5}
    return Settings(**(values | overrides))


@contextmanager
def _client(engine: str, request: pytest.FixtureRequest, **overrides: Any) -> Iterator[TestClient]:
    with (
        _database(engine, request) as url,
        TestClient(build_app(_settings(url, **overrides)), raise_server_exceptions=False) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def idle_client(engine: str, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    with _client(engine, request, run_worker=False) as client:
        yield client


@pytest.fixture(scope="module")
def worker_client(engine: str, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    with _client(engine, request) as client:
        yield client


def _key_factory(client: TestClient) -> KeyFactory:
    """Keys of a fresh account; ``make("other")`` is a key of a second fresh account."""
    account = f"acme-{uuid.uuid4().hex[:12]}"
    db = client.app.state.services.db  # type: ignore[attr-defined]

    def make(suffix: str = "", scopes: tuple[str, ...] = BOTH_SCOPES) -> str:
        return accounts.create_key(db, f"{account}-{suffix}", scopes).key

    return make


@pytest.fixture
def idle_key(idle_client: TestClient) -> KeyFactory:
    return _key_factory(idle_client)


@pytest.fixture
def idle_api(idle_client: TestClient, idle_key: KeyFactory) -> Api:
    """A fresh account on the module's app without a worker: accepted jobs stay queued."""
    return Api(idle_client, idle_key())


@pytest.fixture
def worker_key(worker_client: TestClient) -> KeyFactory:
    return _key_factory(worker_client)


@pytest.fixture
def worker_api(worker_client: TestClient, worker_key: KeyFactory) -> Api:
    """A fresh account on the module's app with its worker running."""
    return Api(worker_client, worker_key())


@pytest.fixture(scope="module")
def module_live_server(engine: str, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """The app under uvicorn (worker included) on a free loopback port, for Klaviyo's SDK."""
    with _database(engine, request) as url:
        app = build_app(_settings(url))
        db = app.state.services.db
        with served(app) as base:
            yield LiveServer(
                base,
                lambda: accounts.create_key(db, f"sdk-{uuid.uuid4().hex[:12]}", BOTH_SCOPES).key,
            )


# ---- helpers ---------------------------------------------------------------------------------


def spawn(api: Api, updates: list[tuple[str, dict[str, Any]]], shape: str = "data") -> str:
    """Accept a job (202 asserted) and return its id."""
    response = api.post(JOBS, bulk_body(updates, shape))
    assert response.status_code == 202, response.text
    job_id: str = response.json()["data"]["id"]
    return job_id


def get_job(api: Api, job_id: str, **params: str) -> Any:
    return api.get(f"{JOBS}/{job_id}", params=params)


def listed_ids(api: Api, **params: str) -> list[str]:
    """The ids on the first page of the job list."""
    response = api.get(JOBS, params=params)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["data"]]


def errors_of(response: Any, status: int) -> list[dict[str, Any]]:
    """The JSON:API errors of ``response``, after checking its status and their members."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/vnd.api+json"
    errors: list[dict[str, Any]] = response.json()["errors"]
    assert errors
    for error in errors:
        assert {"id", "code", "title", "detail"} <= error.keys(), error
        assert all(isinstance(error[name], str) for name in ("id", "code", "title", "detail"))
    return errors


def pointers(response: Any, status: int = 400) -> list[str]:
    return [error["source"]["pointer"] for error in errors_of(response, status)]


def parameter(response: Any, status: int = 400) -> str:
    errors = errors_of(response, status)
    assert len(errors) == 1, errors
    name: str = errors[0]["source"]["parameter"]
    return name
