"""GET /api/catalog-variant-bulk-update-jobs/{job_id}: fieldsets, include, scoping, progress."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from backstock.domain import jobs
from backstock.domain.errors import NotAuthenticated
from backstock.domain.jobs import JobRecord
from backstock.domain.keys import ApiKey, KeyRecord
from backstock.services.container import Services
from backstock.storage.sql import Conn, Statement
from tests.conftest import KeyFactory
from tests.support import (
    JOB_TYPE,
    JOBS,
    Api,
    bulk_body,
    call,
    cid,
    errors_of,
    get_job,
    key_id,
    listed_ids,
    parameter,
    seed_catalog,
    spawn,
    wait_for_job,
)

pytestmark = pytest.mark.own_database


JOB_FIELDS = f"fields[{JOB_TYPE}]"


def test_a_job_fieldset_limits_the_attributes(idle_api: Api) -> None:
    job_id = spawn(idle_api, [("V1", {"price": 1.0})])

    response = get_job(idle_api, job_id, **{JOB_FIELDS: "status,total_count"})

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["attributes"] == {"status": "queued", "total_count": 1}
    assert data["id"] == job_id
    assert data["links"]["self"].endswith(f"/{job_id}")
    assert data["relationships"]["variants"]["data"] == [
        {"type": "catalog-variant", "id": cid("V1")}
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (JOB_FIELDS, "status,colour"),
        (JOB_FIELDS, ""),
        ("fields[catalog-variant]", "sku,weight"),
        ("include", "bogus"),
        ("include", "variants,items"),
        ("filter", "equals(status,'queued')"),
        ("page[cursor]", "abc"),
    ],
)
def test_a_bad_query_parameter_is_400(idle_api: Api, name: str, value: str) -> None:
    job_id = spawn(idle_api, [("V1", {"price": 1.0})])
    assert parameter(get_job(idle_api, job_id, **{name: value})) == name


def test_include_variants_adds_the_existing_variants(worker_api: Api) -> None:
    [first, second, untouched] = seed_catalog(worker_api, variants=3)
    updates = [
        (second, {"price": 2.0}),
        ("GONE", {"price": 3.0}),
        (first, {"price": 1.0, "published": True}),
        (second, {"sku": "TWO"}),
    ]
    job_id = spawn(worker_api, updates)
    wait_for_job(worker_api, job_id)

    response = get_job(worker_api, job_id, include="variants")

    assert response.status_code == 200, response.text
    included = response.json()["included"]
    assert [resource["id"] for resource in included] == [cid(second), cid(first)]
    for resource, price in zip(included, (2.0, 1.0), strict=True):
        assert resource["type"] == "catalog-variant"
        assert resource["attributes"]["price"] == price
        assert resource["links"]["self"].endswith(quote(resource["id"], safe=""))
        assert worker_api.get(resource["links"]["self"]).json()["data"] == resource
    assert included[0]["attributes"]["sku"] == "TWO"
    assert included[1]["attributes"]["published"] is True  # a JSON boolean on both databases
    assert cid(untouched) not in {resource["id"] for resource in included}


def test_a_variant_fieldset_limits_the_included_variants(worker_api: Api) -> None:
    [external] = seed_catalog(worker_api, variants=1)
    job_id = spawn(worker_api, [(external, {"price": 5.0})])
    wait_for_job(worker_api, job_id)

    response = get_job(
        worker_api,
        job_id,
        include="variants",
        **{"fields[catalog-variant]": "sku,price", JOB_FIELDS: "status"},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["data"]["attributes"] == {"status": "complete"}
    [resource] = body["included"]
    assert resource["attributes"] == {"sku": f"SKU-{external}", "price": 5.0}
    assert resource["links"]["self"]


def test_without_include_there_is_nothing_included(idle_api: Api) -> None:
    [external] = seed_catalog(idle_api, variants=1)
    job_id = spawn(idle_api, [(external, {"price": 5.0})])
    assert "included" not in get_job(idle_api, job_id).json()


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/{id}"), ("PATCH", "/{id}"), ("PUT", "/{id}"), ("POST", "/{id}"), ("DELETE", "")],
)
def test_other_methods_are_405(idle_api: Api, method: str, path: str) -> None:
    job_id = spawn(idle_api, [("V1", {"price": 1.0})])
    response = idle_api.client.request(
        method, JOBS + path.format(id=job_id), headers=idle_api._headers(None)
    )
    [error] = errors_of(response, 405)
    assert error["code"] == "method_not_allowed"
    assert get_job(idle_api, job_id).status_code == 200


def test_the_202_takes_a_job_fieldset(idle_api: Api) -> None:
    body = bulk_body([("V1", {"price": 1.0})])
    response = idle_api.post(JOBS, body, params={JOB_FIELDS: "status,job_id"})
    assert response.status_code == 202, response.text
    data = response.json()["data"]
    assert data["attributes"] == {"status": "queued", "job_id": data["id"]}
    assert parameter(idle_api.post(JOBS, body, params={"include": "variants"})) == "include"
    assert listed_ids(idle_api) == [data["id"]]


@pytest.mark.parametrize("whose", ["another account's", "unknown"])
def test_a_job_one_cannot_see_is_404(idle_api: Api, idle_key: KeyFactory, whose: str) -> None:
    other = idle_api.as_key(idle_key("other"))
    theirs = spawn(other, [("V1", {"price": 1.0})])
    job_id = theirs if whose == "another account's" else "01JABCDEF0123456789XYZABCD"

    response = get_job(idle_api, job_id, include="variants")

    [error] = errors_of(response, 404)
    assert error["code"] == "not_found"
    assert get_job(other, theirs).status_code == 200


def test_progress_only_moves_forward(
    app_factory: Callable[..., TestClient], key_for: Callable[..., str]
) -> None:
    api = Api(app_factory(worker_batch_size=1), key_for())
    externals = seed_catalog(api, variants=5)
    updates = [(externals[i % 5], {"price": float(i)}) for i in range(30)]
    updates[7] = ("GONE", {"price": 0.0})
    job_id = spawn(api, updates)

    seen: list[tuple[str, int, int]] = []
    deadline = time.monotonic() + 10
    while not seen or seen[-1][0] != "complete":
        assert time.monotonic() < deadline, seen[-1]
        attributes = get_job(api, job_id).json()["data"]["attributes"]
        seen.append(
            (attributes["status"], attributes["completed_count"], attributes["failed_count"])
        )
        assert attributes["total_count"] == 30
        assert attributes["completed_count"] + attributes["failed_count"] <= 30
        time.sleep(0.002)

    order = ["queued", "processing", "complete"]
    assert [order.index(status) for status, _, _ in seen] == sorted(
        order.index(s) for s, _, _ in seen
    )
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen)
    assert [failed for _, _, failed in seen] == sorted(failed for _, _, failed in seen)
    assert seen[-1] == ("complete", 29, 1)


def test_a_poll_is_one_statement_of_the_key_and_the_job(
    idle_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = spawn(idle_api, [("V1", {"price": 1.0})])
    ran: list[str] = []
    run_statement = Conn.all

    async def counted(self: Conn, statement: Statement, params: Any = None) -> list[Any]:
        ran.append(statement.name)
        return await run_statement(self, statement, params)

    monkeypatch.setattr(Conn, "all", counted)
    assert get_job(idle_api, job_id).json()["data"]["id"] == job_id
    assert get_job(idle_api, "01ARZ3NDEKTSV4RRFFQ69G5FAV").status_code == 404
    # Only the reads a poll could make: other apps' workers of this test session run their
    # own statements (claims, deliveries) meanwhile, on threads of their own.
    reads = [name for name in ran if name in ("poll", "polls", "find_key", "find_keys", "get_job")]
    assert reads == ["poll", "poll"]


def test_a_poll_reads_the_job_only_through_a_valid_key(idle_api: Api, services: Services) -> None:
    job_id = spawn(idle_api, [("V1", {"price": 1.0})])
    key = key_id(idle_api.key)
    secret = idle_api.key.split("_", 2)[2]  # pk_<id>_<secret>, and a secret may hold "_"
    kind = jobs.KINDS[JOB_TYPE]

    def poll(secret: str) -> tuple[KeyRecord | None, JobRecord | None]:
        return call(
            services, lambda: services.jobs.store.poll(ApiKey(key, secret), JOB_TYPE, job_id)
        )

    record, found = poll(secret)
    assert record is not None and record.id == key and found is not None and found.id == job_id
    who, job = call(services, lambda: services.jobs.poll(ApiKey(key, secret), kind, job_id))
    assert job == found and who.account_id == record.account_id
    record, job = poll(secret + "x")  # the key's row (for the 401), not its account's job
    assert record is not None and record.id == key and job is None
    with pytest.raises(NotAuthenticated):
        call(services, lambda: services.jobs.poll(ApiKey(key, secret + "x"), kind, job_id))
    call(services, lambda: services.accounts.revoke_key(key))
    record, job = poll(secret)
    assert record is not None and record.revoked_at is not None and job is None
    unknown = ApiKey("0" * 12, secret)
    assert call(services, lambda: services.jobs.store.poll(unknown, JOB_TYPE, job_id)) == (
        None,
        None,
    )


def test_a_job_id_with_a_nul_finds_nothing_and_fails_no_poll_read_with_it(
    idle_api: Api, services: Services
) -> None:
    """PostgreSQL text holds no NUL and refuses it as a parameter. A path keeps ``%00`` as
    text, but the store is called by other code too: a poll or a lookup of an id with a NUL
    finds nothing, and the polls read in the same statement as it
    (``Database.read_together``) still find theirs."""
    job_id = spawn(idle_api, [("V1", {"price": 1.0})])
    key = ApiKey(key_id(idle_api.key), idle_api.key.split("_", 2)[2])
    store = services.jobs.store

    async def together() -> list[Any]:
        asks = [job_id, "A\x00B", job_id]
        return await asyncio.gather(*(store.poll(key, JOB_TYPE, ask) for ask in asks))

    found = [job and job.id for _, job in call(services, together)]
    assert found == [job_id, None, job_id]
    who = call(services, lambda: services.accounts.authenticate(key))
    assert call(services, lambda: store.get(who.account_id, JOB_TYPE, "A\x00B")) is None
