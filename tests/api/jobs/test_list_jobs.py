"""GET /api/catalog-variant-bulk-update-jobs: newest first, status filter, pages of 100."""

from __future__ import annotations

import pytest

from tests.conftest import KeyFactory
from tests.support import (
    JOB_TYPE,
    JOBS,
    Api,
    listed_ids,
    parameter,
    seed_catalog,
    spawn,
    wait_for_job,
)

QUEUED = ("equals(status,'queued')", 'equals(status,"queued")')
COMPLETE = ("equals(status,'complete')", 'equals(status,"complete")')


def test_jobs_are_listed_newest_first_and_filtered_by_status(idle_api: Api) -> None:
    created = [spawn(idle_api, [(f"V{i}", {"price": 1.0})]) for i in range(3)]

    response = idle_api.get(JOBS)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.api+json"
    body = response.json()
    assert [job["id"] for job in body["data"]] == created[::-1]
    for job in body["data"]:
        assert job["type"] == JOB_TYPE
        assert job["attributes"]["job_id"] == job["id"]
        assert job["links"]["self"].endswith(f"{JOBS}/{job['id']}")
    assert body["links"]["self"] == f"http://testserver{JOBS}"
    assert "next" not in body["links"]
    assert "prev" not in body["links"]
    for text in QUEUED:
        assert listed_ids(idle_api, filter=text) == created[::-1]
    for text in COMPLETE:
        assert listed_ids(idle_api, filter=text) == []


def test_complete_jobs_are_found_by_their_status(worker_api: Api) -> None:
    [external] = seed_catalog(worker_api, variants=1)
    done = [
        wait_for_job(worker_api, spawn(worker_api, [(external, {"price": p})]))["id"]
        for p in (1.0, 2.0)
    ]

    for text in COMPLETE:
        assert listed_ids(worker_api, filter=text) == done[::-1]
    assert listed_ids(worker_api, filter=QUEUED[0]) == []
    assert listed_ids(worker_api, filter="equals(status,'processing')") == []


@pytest.mark.parametrize(
    "text",
    [
        "equals(status,'done')",
        "equals(status,queued)",
        "equals(created_at,'2026-01-01')",
        "any(status,['queued','complete'])",
        "contains(status,'queue')",
        "equals(status,'queued'",
        "",
    ],
)
def test_a_bad_filter_is_400(idle_api: Api, text: str) -> None:
    assert parameter(idle_api.get(JOBS, params={"filter": text})) == "filter"


def test_two_different_statuses_match_nothing(idle_api: Api) -> None:
    spawn(idle_api, [("V1", {"price": 1.0})])
    both = "equals(status,'queued'),equals(status,'complete')"
    assert listed_ids(idle_api, filter=both) == []
    assert listed_ids(idle_api, filter="equals(status,'queued'),equals(status,'queued')")


@pytest.mark.parametrize("name", ["page[size]", "sort", "include"])
def test_unsupported_list_parameters_are_400(idle_api: Api, name: str) -> None:
    assert parameter(idle_api.get(JOBS, params={name: "10"})) == name


def test_pages_of_100_with_next_and_prev(idle_api: Api) -> None:
    created = [spawn(idle_api, [(f"V{i}", {"price": 1.0})]) for i in range(105)]
    newest_first = created[::-1]

    first = idle_api.get(JOBS, params={"filter": QUEUED[0]}).json()
    assert [job["id"] for job in first["data"]] == newest_first[:100]
    assert "prev" not in first["links"]
    second = idle_api.get(first["links"]["next"]).json()
    assert [job["id"] for job in second["data"]] == newest_first[100:]
    assert "next" not in second["links"]
    assert "filter=" in second["links"]["self"]
    back = idle_api.get(second["links"]["prev"]).json()
    assert [job["id"] for job in back["data"]] == newest_first[:100]
    assert back["links"]["next"] == first["links"]["next"]
    assert "prev" not in back["links"]
    slashed = idle_api.get(JOBS + "/", params={"filter": QUEUED[0]}).json()
    assert slashed["links"]["next"] == first["links"]["next"]


def test_only_the_accounts_own_jobs_are_listed(idle_api: Api, idle_key: KeyFactory) -> None:
    other = idle_api.as_key(idle_key("other"))
    mine = spawn(idle_api, [("V1", {"price": 1.0})])
    theirs = spawn(other, [("V1", {"price": 1.0})])

    assert listed_ids(idle_api) == [mine]
    assert listed_ids(other) == [theirs]
    assert listed_ids(idle_api, filter=QUEUED[0]) == [mine]
