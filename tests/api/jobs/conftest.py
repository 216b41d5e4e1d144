"""Helpers of the bulk update job API tests: paths, a worker-less API, job and error readers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import Api, bulk_body

JOBS = "/api/catalog-variant-bulk-update-jobs"
JOB_TYPE = "catalog-variant-bulk-update-job"
SEED_REVISION = "2023-02-22"


@pytest.fixture
def idle_api(app_factory: Callable[..., TestClient], key_for: Callable[..., str]) -> Api:
    """An API without a worker: accepted jobs stay queued, nothing is processed."""
    return Api(app_factory(run_worker=False), key_for())


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
