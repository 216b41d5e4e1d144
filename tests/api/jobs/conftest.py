"""Helpers of the bulk update job API tests: paths, a worker-less API, job and error readers."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from backstock.bootstrap import build_app
from backstock.services import accounts
from backstock.settings import Settings
from backstock.storage import migrate
from tests.conftest import PG_ADMIN, Api, _pg_url, bulk_body

JOBS = "/api/catalog-variant-bulk-update-jobs"
JOB_TYPE = "catalog-variant-bulk-update-job"
SEED_REVISION = "2023-02-22"


@pytest.fixture
def idle_api(app_factory: Callable[..., TestClient], key_for: Callable[..., str]) -> Api:
    """An API without a worker: accepted jobs stay queued, nothing is processed."""
    return Api(app_factory(run_worker=False), key_for())


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def module_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One database per module and engine, for the tests that leave no trace (refused requests):
    hundreds of them then cost one database, not one each."""
    if request.param == "sqlite":
        url = f"sqlite:///{Path(tmp_path_factory.mktemp('jobs')) / 'backstock.db'}"
        migrate.upgrade(url)
        yield url
        return
    template: str = request.getfixturevalue("pg_template")
    name = f"backstock_m_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield _pg_url(name)
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def module_client(module_database: str) -> Iterator[TestClient]:
    """A worker-less app shared by a module's tests."""
    settings = Settings(database_url=module_database, rate_limits="off", run_worker=False)
    with TestClient(build_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def module_key(module_client: TestClient) -> Callable[..., str]:
    def make(
        account: str = "acme", scopes: tuple[str, ...] = ("catalogs:read", "catalogs:write")
    ) -> str:
        return accounts.create_key(module_client.app.state.services.db, account, scopes).key

    return make


@pytest.fixture
def shared_api(module_client: TestClient, module_key: Callable[..., str]) -> Api:
    """An API on the module's shared app, with a fresh key of the account ``acme``."""
    return Api(module_client, module_key())


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
