"""Keys, scopes and the revision header on the bulk update job endpoints."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import KeyFactory
from tests.support import JOBS, Api, bulk_body, errors_of, listed_ids, parameter, spawn

READ = ("catalogs:read",)
WRITE = ("catalogs:write",)
OPERATIONS = ("spawn", "get job", "list jobs")


def send(api: Api, operation: str, job_id: str, headers: dict[str, str | None]) -> Any:
    """Call ``operation`` with the API's usual headers, replaced (or removed, with ``None``)
    by ``headers``."""
    sent = {
        "Authorization": f"Klaviyo-API-Key {api.key}",
        "revision": api.revision,
        "Accept": "application/vnd.api+json",
        "Content-Type": "application/vnd.api+json",
    }
    for name, value in headers.items():
        if value is None:
            sent.pop(name, None)
        else:
            sent[name] = value
    if operation == "spawn":
        return api.client.post(JOBS, json=bulk_body([("V1", {"price": 1.0})]), headers=sent)
    return api.client.get(f"{JOBS}/{job_id}" if operation == "get job" else JOBS, headers=sent)


@pytest.fixture
def job_id(idle_api: Api) -> str:
    return spawn(idle_api, [("V1", {"price": 1.0})])


@pytest.mark.parametrize(
    ("scopes", "operation"),
    [(WRITE, "get job"), (WRITE, "list jobs"), (READ, "spawn")],
)
def test_a_key_without_the_scope_is_403(
    idle_api: Api,
    idle_key: KeyFactory,
    job_id: str,
    scopes: tuple[str, ...],
    operation: str,
) -> None:
    limited = idle_api.as_key(idle_key(scopes=scopes))

    [error] = errors_of(send(limited, operation, job_id, {}), 403)

    assert error["code"] == "permission_denied"
    assert listed_ids(idle_api) == [job_id]


@pytest.mark.parametrize(
    ("scopes", "operation"), [(READ, "get job"), (READ, "list jobs"), (WRITE, "spawn")]
)
def test_a_key_with_the_scope_is_enough(
    idle_api: Api,
    idle_key: KeyFactory,
    job_id: str,
    scopes: tuple[str, ...],
    operation: str,
) -> None:
    response = send(idle_api.as_key(idle_key(scopes=scopes)), operation, job_id, {})
    assert response.status_code in (200, 202), response.text


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(
    "authorization",
    [None, "", "Klaviyo-API-Key pk_000000000000_wrong", "Bearer pk_abc", "Klaviyo-API-Key"],
)
def test_no_valid_key_is_401(
    idle_api: Api, job_id: str, operation: str, authorization: str | None
) -> None:

    response = send(idle_api, operation, job_id, {"Authorization": authorization})

    [error] = errors_of(response, 401)
    assert error["code"] == "not_authenticated"
    assert listed_ids(idle_api) == [job_id]


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("revision", [None, "", "2023-13-45", "latest", "2022-10-17", "2026/07/15"])
def test_a_bad_revision_is_400(
    idle_api: Api, job_id: str, operation: str, revision: str | None
) -> None:

    response = send(idle_api, operation, job_id, {"revision": revision})

    assert parameter(response) == "revision"
    assert listed_ids(idle_api) == [job_id]


@pytest.mark.parametrize("revision", ["2023-02-22", "2024-10-15", "2026-07-15.pre", "2026-10-15"])
def test_known_revisions_are_served(idle_api: Api, job_id: str, revision: str) -> None:
    assert send(idle_api, "get job", job_id, {"revision": revision}).status_code == 200
    assert send(idle_api, "spawn", job_id, {"revision": revision}).status_code == 202
