"""Backstock's job extensions (docs/extensions.md) on SQLite and PostgreSQL: idempotent spawns,
cancel, dry runs, retry of failed items, event streams and webhooks."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from backstock.domain.errors import Throttled
from backstock.domain.jobs import KINDS, JobKind
from backstock.domain.webhooks import verify
from backstock.services.container import Services
from backstock.storage.schema import account_slots, accounts, webhook_deliveries
from tests.support import (
    JOBS,
    Api,
    Receiver,
    account_name,
    assert_error,
    bulk_body,
    call,
    cid,
    item_body,
    job_body,
    job_entry,
    listed_ids,
    ok,
    seed_catalog,
    spawn,
    sql,
    sse_events,
    variant_body,
    variant_path,
    wait_for_job,
)

ALL = list(KINDS.values())
ITEM_UPDATES = "/api/catalog-item-bulk-update-jobs"


def _prices(api: Api, *externals: str) -> list[float]:
    return [
        ok(api.get(variant_path(cid(external))))["data"]["attributes"]["price"]
        for external in externals
    ]


def _attributes(response: Any, status: int = 200) -> dict[str, Any]:
    attributes: dict[str, Any] = ok(response, status)["data"]["attributes"]
    return attributes


# ---- idempotent spawns ---------------------------------------------------------------------------


def test_the_same_key_and_body_is_the_same_job(api: Api) -> None:
    externals = seed_catalog(api, "P", 2)
    body = bulk_body([(external, {"price": 3.0}) for external in externals])
    first = api.post(JOBS, body, headers={"Idempotency-Key": "sync-42"})
    again = api.post(JOBS, body, headers={"Idempotency-Key": "sync-42"})
    assert first.status_code == again.status_code == 202, again.text
    assert again.json()["data"] == first.json()["data"]
    assert listed_ids(api) == [first.json()["data"]["id"]]
    unkeyed = spawn(api, [(externals[0], {"price": 3.0})])  # no key: a job each time
    assert listed_ids(api) == [unkeyed, first.json()["data"]["id"]]


def test_the_same_key_with_another_request_is_422_and_writes_nothing(api: Api) -> None:
    externals = seed_catalog(api, "P", 2)
    key = {"Idempotency-Key": "sync-43"}
    first = ok(api.post(JOBS, bulk_body([(externals[0], {"price": 3.0})]), headers=key), 202)
    other_body = api.post(JOBS, bulk_body([(externals[0], {"price": 4.0})]), headers=key)
    errors = assert_error(other_body, 422, "idempotency_key_reused")
    assert "Idempotency-Key" in errors[0]["detail"]
    item_job = job_body("catalog-item-bulk-update-job", "items", [])  # another kind, same key
    item_job["data"]["attributes"]["items"] = {
        "data": [{"type": "catalog-item", "id": cid("P"), "attributes": {"title": "t"}}]
    }
    assert_error(api.post(ITEM_UPDATES, item_job, headers=key), 422, "idempotency_key_reused")
    assert listed_ids(api) == [first["data"]["id"]]
    assert ok(api.get(ITEM_UPDATES))["data"] == []


def test_keys_belong_to_their_account(api: Api, key_for: Any) -> None:
    other = api.as_key(key_for("other"))
    ids = []
    for who in (api, other):
        seed_catalog(who, "P", 1)
        body = bulk_body([("P-V0", {"price": 3.0})])
        ids.append(ok(who.post(JOBS, body, headers={"Idempotency-Key": "same"}), 202)["data"]["id"])
    assert ids[0] != ids[1]


@pytest.mark.parametrize("bad", ["", "k" * 256, "del\x7f"], ids=["empty", "256", "control"])
def test_a_malformed_key_is_a_400_before_anything_is_written(api: Api, bad: str) -> None:
    externals = seed_catalog(api, "P", 1)
    body = bulk_body([(externals[0], {"price": 3.0})])
    refused = api.post(JOBS, body, headers={"Idempotency-Key": bad})
    assert_error(refused, 400, "invalid", parameter="Idempotency-Key")
    assert listed_ids(api) == []


def test_concurrent_spawns_with_one_key_make_one_job(api: Api) -> None:
    externals = seed_catalog(api, "P", 3)
    body = bulk_body([(external, {"price": 5.0}) for external in externals])

    def post(_: int) -> Any:
        return api.post(JOBS, body, headers={"Idempotency-Key": "burst"})

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(post, range(32)))
    assert {r.status_code for r in responses} == {202}, [r.text for r in responses][:3]
    assert len({r.json()["data"]["id"] for r in responses}) == 1
    assert len(listed_ids(api)) == 1


# ---- dry runs ------------------------------------------------------------------------------------


def _seed_for(api: Api, kind: JobKind) -> list[str]:
    """Entries naming A and B (which exist, but for a create) and one that fails."""
    ok(api.post("/api/catalog-items", item_body("ITEM")), 201)
    if kind.action != "create":
        for name in ("A", "B"):
            entry = job_entry(KINDS[f"{kind.resource.type}-bulk-create-job"], name)
            ok(api.post(kind.resource.path, {"data": entry}), 201)
        return ["A", "GONE", "B"]
    return ["A", "B", "A"]  # the second A is a conflict


def _catalog(api: Api, kind: JobKind) -> list[Any]:
    return ok(api.get(kind.resource.path))["data"]


def _outcome(attributes: dict[str, Any]) -> tuple[Any, ...]:
    errors = [(e["code"], e["source"]["pointer"], e["detail"]) for e in attributes["errors"]]
    counts = ("total_count", "completed_count", "failed_count")
    return (*(attributes[name] for name in counts), errors)


@pytest.mark.parametrize("kind", ALL, ids=[k.type for k in ALL])
def test_a_dry_run_reports_what_the_job_will_and_writes_nothing(
    worker_api: Api, kind: JobKind
) -> None:
    names = _seed_for(worker_api, kind)
    body = job_body(kind.type, kind.resource.plural, [job_entry(kind, n) for n in names])
    before = _catalog(worker_api, kind)
    dry = ok(worker_api.post(kind.path, body, params={"dry_run": "true"}))
    assert dry["meta"] == {"dry_run": True}
    assert dry["data"]["type"] == kind.type and "links" not in dry["data"]
    assert dry["data"]["attributes"]["status"] == "complete"
    linkage = [{"type": kind.resource.type, "id": cid(n)} for n in names]
    assert dry["data"]["relationships"][kind.resource.plural]["data"] == linkage
    assert _catalog(worker_api, kind) == before  # not a row changed
    assert ok(worker_api.get(kind.path))["data"] == []  # no job
    real = ok(worker_api.post(kind.path, body), 202)["data"]["id"]
    done = wait_for_job(worker_api, real, path=kind.path)["attributes"]
    assert _outcome(dry["data"]["attributes"]) == _outcome(done)
    assert dry["data"]["attributes"]["failed_count"] == 1


def test_a_dry_run_takes_no_queue_slot(api: Api, services: Services) -> None:
    externals = seed_catalog(api, "P", 1)
    body = bulk_body([(externals[0], {"price": 1.0})])
    for _ in range(3):
        ok(api.post(JOBS, body, params={"dry_run": "true"}))
    name = account_name(services, api.key)
    with sql(services.settings.database_url) as conn:
        held = conn.execute(
            select(account_slots.c.open_jobs, account_slots.c.open_bytes)
            .join(accounts, accounts.c.id == account_slots.c.account_id)
            .where(accounts.c.name == name)
        ).one()
    assert tuple(held) == (0, 0)
    assert listed_ids(api) == []


def test_dry_run_takes_true_or_false_and_the_write_scope(api: Api, key_for: Any) -> None:
    externals = seed_catalog(api, "P", 1)
    body = bulk_body([(externals[0], {"price": 1.0})])
    assert_error(api.post(JOBS, body, params={"dry_run": "yes"}), 400, parameter="dry_run")
    reader = api.as_key(key_for("acme", ("catalogs:read",)))
    assert_error(reader.post(JOBS, body, params={"dry_run": "true"}), 403, "permission_denied")
    bad = bulk_body([(externals[0], {"price": "free"})])
    assert_error(api.post(JOBS, bad, params={"dry_run": "true"}), 400)
    ok(api.post(JOBS, body, params={"dry_run": "false"}), 202)  # an ordinary spawn


# ---- cancel --------------------------------------------------------------------------------------


def test_a_queued_job_is_cancelled_at_once(api: Api) -> None:
    externals = seed_catalog(api, "P", 2)
    prices = _prices(api, *externals)
    job = spawn(api, [(external, {"price": 99.0}) for external in externals])
    cancelled = _attributes(api.post(f"{JOBS}/{job}/cancel"))
    assert (cancelled["status"], cancelled["completed_count"], cancelled["failed_count"]) == (
        "cancelled", 0, 0,
    )  # fmt: skip
    assert cancelled["completed_at"] and cancelled["expires_at"]
    assert _attributes(api.get(f"{JOBS}/{job}"))["status"] == "cancelled"
    assert _attributes(api.post(f"{JOBS}/{job}/cancel"))["status"] == "cancelled"  # again: same
    assert listed_ids(api, filter='equals(status,"cancelled")') == [job]
    assert _prices(api, *externals) == prices


@pytest.mark.own_database
def test_a_processing_job_stops_at_its_batch_boundary_for_good(
    app_factory: Any, key_for: Any
) -> None:
    client = app_factory(run_worker=False, worker_batch_size=1, lease_seconds=0.2)
    api, services = Api(client, key_for()), client.app.services
    externals = seed_catalog(api, "P", 3)
    prices = _prices(api, *externals)
    job_id = spawn(api, [(external, {"price": 42.0}) for external in externals])
    later = spawn(api, [(externals[2], {"price": 7.0})])
    claimed = call(services, lambda: services.jobs.claim("worker-1"))
    assert claimed is not None
    job, done = claimed
    assert job.id == job_id and not done  # its first batch (one item) is applied
    cancelled = _attributes(api.post(f"{JOBS}/{job_id}/cancel"))
    assert (cancelled["status"], cancelled["completed_count"]) == ("cancelled", 1)
    assert call(services, lambda: services.jobs.run_batch(job)) is None  # its worker stops
    time.sleep(0.3)  # and once its lease lapses, no worker resumes it
    resumed = call(services, lambda: services.jobs.claim("worker-2"))
    assert resumed is not None and resumed[0].id == later and resumed[1]  # the next job, done
    assert _prices(api, *externals) == [42.0, prices[1], 7.0]
    assert _attributes(api.get(f"{JOBS}/{job_id}"))["completed_count"] == 1


def test_a_complete_job_cannot_be_cancelled(worker_api: Api) -> None:
    externals = seed_catalog(worker_api, "P", 1)
    job = spawn(worker_api, [(externals[0], {"price": 1.0})])
    wait_for_job(worker_api, job)
    assert_error(worker_api.post(f"{JOBS}/{job}/cancel"), 409, "job_finished")
    assert_error(worker_api.post(f"{JOBS}/01NOSUCHJOB/cancel"), 404, "not_found")


# ---- retry ---------------------------------------------------------------------------------------


def test_a_retry_is_exactly_the_failed_items_once(worker_api: Api, worker_client: Any) -> None:
    externals = seed_catalog(worker_api, "P", 1)
    job = spawn(
        worker_api,
        [("GONE-1", {"price": 1.0}), (externals[0], {"price": 2.0}), ("GONE-2", {"price": 3.0})],
    )
    assert wait_for_job(worker_api, job)["attributes"]["failed_count"] == 2
    for name in ("GONE-1", "GONE-2"):
        ok(worker_api.post("/api/catalog-variants", variant_body(name, "P")), 201)
    retried = ok(worker_api.post(f"{JOBS}/{job}/retry"), 202)["data"]
    assert retried["attributes"]["retry_of"] == job
    assert retried["attributes"]["total_count"] == 2
    assert retried["relationships"]["variants"]["data"] == [
        {"type": "catalog-variant", "id": cid(name)} for name in ("GONE-1", "GONE-2")
    ]
    again = ok(worker_api.post(f"{JOBS}/{job}/retry"), 202)["data"]
    assert again["id"] == retried["id"]
    done = wait_for_job(worker_api, retried["id"])["attributes"]
    assert (done["completed_count"], done["failed_count"], done["retry_of"]) == (2, 0, job)
    assert _prices(worker_api, "GONE-1", "GONE-2", externals[0]) == [1.0, 3.0, 2.0]
    # a job without failures has nothing to retry
    assert_error(worker_api.post(f"{JOBS}/{retried['id']}/retry"), 409, "job_finished")
    # the kept items moved to the retry, which applied them all: nothing is held any more
    services = worker_client.app.services
    name = account_name(services, worker_api.key)
    with sql(services.settings.database_url) as conn:
        held = conn.execute(
            select(account_slots.c.open_bytes)
            .join(accounts, accounts.c.id == account_slots.c.account_id)
            .where(accounts.c.name == name)
        ).one()
    assert held == (0,)


def test_only_a_complete_job_can_be_retried(api: Api) -> None:
    job = spawn(api, [("GONE", {"price": 1.0})])
    assert_error(api.post(f"{JOBS}/{job}/retry"), 409, "job_finished")  # still queued
    assert_error(api.post(f"{JOBS}/01NOSUCHJOB/retry"), 404, "not_found")
    assert "retry_of" not in _attributes(api.get(f"{JOBS}/{job}"))  # Klaviyo's shape as is


# ---- event streams -------------------------------------------------------------------------------

STREAM = {"Accept": "text/event-stream"}


def test_events_stream_a_job_to_its_end(worker_api: Api) -> None:
    externals = seed_catalog(worker_api, "P", 2)
    job = spawn(worker_api, [(external, {"price": 8.0}) for external in externals])
    response = worker_api.get(f"{JOBS}/{job}/events", headers=STREAM)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream"
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[-1] == "complete" and set(names) <= {"queued", "processing", "complete"}
    final = events[-1][1]
    assert final["data"]["attributes"]["completed_count"] == 2
    assert final["links"]["self"].endswith(f"{JOBS}/{job}")
    assert final == ok(worker_api.get(f"{JOBS}/{job}"))


def test_a_cancelled_job_streams_its_end(api: Api) -> None:
    job = spawn(api, [("GONE", {"price": 1.0})])
    ok(api.post(f"{JOBS}/{job}/cancel"))
    events = sse_events(api.get(f"{JOBS}/{job}/events", headers=STREAM).text)
    assert [name for name, _ in events] == ["cancelled"]


def test_events_of_an_unknown_job_are_a_404(api: Api) -> None:
    assert_error(api.get(f"{JOBS}/01NOSUCHJOB/events", headers=STREAM), 404, "not_found")


def test_event_streams_per_account_are_capped(services_for: Any, api: Api) -> None:
    services = services_for(max_event_streams=1)
    job_id = spawn(api, [("GONE", {"price": 1.0})])
    kind = KINDS["catalog-variant-bulk-update-job"]
    from backstock.domain.keys import from_authorization

    async def streams() -> None:
        who = await services.accounts.authenticate(from_authorization(f"Klaviyo-API-Key {api.key}"))
        first = services.jobs.watch(who, kind, job_id)
        assert (await anext(first)).id == job_id
        with pytest.raises(Throttled):
            await anext(services.jobs.watch(who, kind, job_id))
        await first.aclose()
        freed = services.jobs.watch(who, kind, job_id)  # closing one frees its place
        assert (await anext(freed)).id == job_id
        await freed.aclose()

    call(services, streams)


# ---- webhooks ------------------------------------------------------------------------------------


def _deliveries(services: Services, name: str) -> list[Any]:
    return call(services, lambda: services.webhooks.deliveries(name))


def _wait(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.own_database
def test_a_receiver_that_is_down_gets_its_signed_delivery_later(
    app_factory: Any, key_for: Any
) -> None:
    receiver = Receiver()  # not listening yet: connections are refused
    client = app_factory(webhook_backoff_seconds=0.1)
    api, services = Api(client, key_for()), client.app.services
    name = account_name(services, api.key)
    hook = call(services, lambda: services.webhooks.set(name, receiver.url))
    job = spawn(api, [("GONE", {"price": 1.0})])
    wait_for_job(api, job)
    _wait(lambda: (d := _deliveries(services, name)) and d[0].attempts >= 2)
    [pending] = _deliveries(services, name)
    assert pending.status == "pending" and pending.last_error and pending.last_status is None
    receiver.start()
    try:
        [got] = receiver.wait(1)
    finally:
        receiver.stop()
    assert verify(hook.secret, got.headers["Backstock-Signature"], got.body)
    assert not verify("whsec_other", got.headers["Backstock-Signature"], got.body)
    event = orjson.loads(got.body)
    assert event["meta"] == {"event": "job.complete"}
    assert (event["data"]["id"], event["data"]["type"]) == (job, "catalog-variant-bulk-update-job")
    assert event["data"]["attributes"]["failed_count"] == 1
    _wait(lambda: _deliveries(services, name)[0].status == "delivered")
    [delivered] = _deliveries(services, name)
    assert got.headers["Backstock-Delivery"] == str(delivered.pk)
    assert delivered.attempts >= 2 and delivered.last_status == 200 and delivered.delivered_at


@pytest.mark.own_database
def test_a_cancel_is_delivered_and_a_failing_receiver_is_given_up(
    app_factory: Any, key_for: Any
) -> None:
    receiver = Receiver().start()
    receiver.status = 500
    idle = Api(app_factory(run_worker=False), key_for())
    services = idle.client.app.services
    name = account_name(services, idle.key)
    call(services, lambda: services.webhooks.set(name, receiver.url, "whsec_fixed"))
    job = spawn(idle, [("GONE", {"price": 1.0})])
    ok(idle.post(f"{JOBS}/{job}/cancel"))
    try:
        app_factory(webhook_backoff_seconds=0.05, webhook_max_attempts=3)  # a worker starts
        _wait(lambda: _deliveries(services, name)[0].status == "failed")
    finally:
        receiver.stop()
    [given_up] = _deliveries(services, name)
    assert (given_up.event, given_up.job_id) == ("job.cancelled", job)
    assert (given_up.attempts, given_up.last_status) == (3, 500)
    assert given_up.last_error == "HTTP 500 Internal Server Error"
    assert receiver.answered == [500, 500, 500]


def test_no_webhook_no_delivery(worker_api: Api, worker_client: Any) -> None:
    services = worker_client.app.services
    job = spawn(worker_api, [("GONE", {"price": 1.0})])
    wait_for_job(worker_api, job)
    with sql(services.settings.database_url) as conn:
        rows = conn.execute(
            select(webhook_deliveries.c.pk).where(webhook_deliveries.c.job_id == job)
        ).all()
    assert rows == []
