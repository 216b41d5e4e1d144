"""The job table as a queue: claiming, leases, fencing, resumption, ordering, exactly-once.

Jobs are accepted the way the API accepts them (``Jobs.spawn``) and run the way the worker runs
them (``Jobs.claim`` and ``Jobs.run_batch``, or the ``Worker`` itself), on SQLite and
PostgreSQL. Every test has a database of its own: a claim takes the head of *any* account's
queue, so jobs left queued by other tests would be claimed here. Rows are read (and time is
made to pass) with plain SQL, as an operator would.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import orjson
import pytest
from sqlalchemy import func, select, text, update

from backstock.bootstrap import build_services, build_worker
from backstock.domain.bodies import decode_job, load_payload
from backstock.domain.clock import now_us
from backstock.domain.errors import TooManyJobs
from backstock.domain.jobs import KINDS, ClaimedJob, JobKind
from backstock.domain.keys import ApiKey, Principal, from_authorization
from backstock.domain.resources import CATEGORY, ITEM, VARIANT, Resource
from backstock.services.container import Services
from backstock.settings import Settings
from backstock.storage import catalog as catalog_store
from backstock.storage import jobs as jobs_store
from backstock.storage.jobs import _CLAIM_NEXT, _NEXT_LAPSE
from backstock.storage.schema import (
    account_slots,
    catalog_categories,
    catalog_items,
    catalog_variants,
    item_categories,
    job_payloads,
    jobs,
)
from backstock.worker import Worker
from tests.proxy import CuttableProxy
from tests.support import (
    bulk_body,
    call,
    category_body,
    cid,
    free_port,
    item_body,
    job_body,
    make_key,
    sql,
    variant_body,
)

pytestmark = pytest.mark.own_database

VARIANT_UPDATE = KINDS["catalog-variant-bulk-update-job"]


# ---- helpers: the API's side -----------------------------------------------------------------


def principal(services: Services, account: str = "acme") -> Principal:
    key = make_key(services, account)
    api_key = from_authorization(f"Klaviyo-API-Key {key}")
    return call(services, lambda: services.accounts.authenticate(api_key))


def create(services: Services, who: Principal, res: Resource, body: dict[str, Any]) -> None:
    call(services, lambda: services.catalog.create(who, res, orjson.dumps(body)))


def seed(services: Services, who: Principal, count: int, item: str = "I") -> list[str]:
    """An item and ``count`` variants of it, created as single requests would (on one event
    loop, so on PostgreSQL one connection)."""
    externals = [f"{item}-{n}" for n in range(count)]

    async def work() -> None:
        await services.catalog.create(who, ITEM, orjson.dumps(item_body(item)))
        for external in externals:
            body = orjson.dumps(variant_body(external, item))
            await services.catalog.create(who, VARIANT, body)

    call(services, work)
    return externals


def spawn_job(services: Services, who: Principal, kind: JobKind, body: dict[str, Any]) -> str:
    """Accept a job through the production path (what ``POST /api/<kind>s`` calls)."""
    return call(services, lambda: services.jobs.spawn(who, kind, orjson.dumps(body))).id


def spawn(services: Services, who: Principal, updates: list[tuple[str, dict[str, Any]]]) -> str:
    return spawn_job(services, who, VARIANT_UPDATE, bulk_body(updates))


# ---- helpers: the worker's side --------------------------------------------------------------


def claim(services: Services, owner: str) -> ClaimedJob | None:
    """Claim the next job; the claim applies its first batch in the same transaction."""
    claimed = call(services, lambda: services.jobs.claim(owner))
    return None if claimed is None else claimed[0]


def run_batch(services: Services, job: ClaimedJob) -> bool | None:
    return call(services, lambda: services.jobs.run_batch(job))


def drain_job(services: Services, job: ClaimedJob) -> None:
    while run_batch(services, job) is False:
        pass


def drain(services: Services, owner: str = "w") -> list[str]:
    """Run jobs until none can be claimed; the ids claimed, in order."""
    claimed_ids: list[str] = []
    while (claimed := call(services, lambda: services.jobs.claim(owner))) is not None:
        job, first_done = claimed
        claimed_ids.append(job.id)
        done: bool | None = first_done
        while done is False:
            done = run_batch(services, job)
    return claimed_ids


# ---- helpers: rows ---------------------------------------------------------------------------


@contextmanager
def rows(services: Services) -> Iterator[Any]:
    with sql(services.settings.database_url) as conn:
        yield conn


def job_row(services: Services, job_id: str) -> Any:
    return job_row_at(services.settings.database_url, job_id)


def job_row_at(database_url: str, job_id: str) -> Any:
    with sql(database_url) as conn:
        return conn.execute(select(jobs).where(jobs.c.id == job_id)).one()


def variant_rows(services: Services) -> dict[str, Any]:
    with rows(services) as conn:
        return {r.external_id: r for r in conn.execute(select(catalog_variants))}


def lapse_lease(services: Services, job_id: str) -> None:
    """Time passes: the job's lease lapses."""
    with rows(services) as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(lease_expires_at=0))


def payload_count(services: Services) -> int:
    with rows(services) as conn:
        return int(conn.execute(select(func.count()).select_from(job_payloads)).scalar_one())


def stored_payload(services: Services, job_id: str) -> bytes | None:
    """A job's payload as the database keeps it."""
    with rows(services) as conn:
        payload = conn.execute(
            select(job_payloads.c.payload)
            .join(jobs, jobs.c.pk == job_payloads.c.job_pk)
            .where(jobs.c.id == job_id)
        ).scalar()
    return None if payload is None else bytes(payload)


def kept_items(services: Services, job_id: str) -> list[str]:
    """The external ids of the items a finished job kept (its failed ones, for a retry)."""
    payload = stored_payload(services, job_id)
    return [] if payload is None else [entry[0] for entry in load_payload(payload)]


def wait_until(check: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, message
        time.sleep(0.01)


@pytest.fixture
def services(services_for: Callable[..., Services]) -> Services:
    return services_for(worker_batch_size=10, lease_seconds=30)


# ---- claiming, batches, leases -----------------------------------------------------------------


def test_claimed_job_is_invisible_to_other_workers(services: Services) -> None:
    who = principal(services)
    externals = seed(services, who, 3)
    spawn(services, who, [(externals[0], {"price": float(n)}) for n in range(25)])
    first = claim(services, "a")
    assert first is not None
    assert claim(services, "b") is None
    row = job_row(services, first.id)
    assert (row.status, row.lease_owner, row.attempts) == ("processing", "a", 1)
    assert (row.next_index, row.completed_count) == (10, 10)  # the claim ran the first batch


def test_batches_commit_progress_and_complete(services: Services) -> None:
    who = principal(services)
    externals = seed(services, who, 25)
    job_id = spawn(services, who, [(e, {"price": float(n)}) for n, e in enumerate(externals)])
    job = claim(services, "a")
    assert job is not None
    row = job_row(services, job_id)
    assert (row.next_index, row.completed_count, row.status) == (10, 10, "processing")
    assert run_batch(services, job) is False
    assert job_row(services, job_id).next_index == 20
    assert run_batch(services, job) is True
    row = job_row(services, job_id)
    assert (row.next_index, row.completed_count, row.failed_count) == (25, 25, 0)
    assert row.status == "complete" and row.lease_owner is None
    assert row.expires_at > row.completed_at
    with rows(services) as conn:
        assert conn.execute(select(account_slots.c.open_jobs)).scalar() == 0
    assert payload_count(services) == 0  # dropped with the last batch
    prices = {e: r.price for e, r in variant_rows(services).items()}
    assert prices == {e: float(n) for n, e in enumerate(externals)}


def test_lapsed_lease_is_resumed_where_it_stopped_and_nothing_applies_twice(
    services: Services,
) -> None:
    who = principal(services)
    externals = seed(services, who, 25)
    job_id = spawn(services, who, [(e, {"price": 5.0}) for e in externals])
    dead = claim(services, "dead")
    assert dead is not None and run_batch(services, dead) is False  # 20 items, then "dies"
    assert claim(services, "b") is None  # the lease still holds
    row = job_row(services, job_id)
    assert (row.next_index, row.completed_count, row.lease_owner) == (20, 20, "dead")
    lapse_lease(services, job_id)
    claimed = call(services, lambda: services.jobs.claim("b"))
    assert claimed is not None
    assert claimed[1] is True  # the claim's first batch, 20..24 (where "dead" stopped), was last
    row = job_row(services, job_id)
    assert (row.completed_count, row.failed_count, row.attempts) == (25, 0, 2)
    assert row.status == "complete"
    assert {r.update_count for r in variant_rows(services).values()} == {1}


def test_a_claim_whose_answer_was_lost_is_claimed_again_by_its_owner_at_once(
    services: Services,
) -> None:
    """A claim that committed but whose answer never reached its worker (the connection cut
    after the commit) leaves the job leased to that worker's task, which, claiming again, takes
    it back at once, where its first batch stopped; another worker still waits for the lease."""
    who = principal(services)
    externals = seed(services, who, 25)
    job_id = spawn(services, who, [(e, {"price": 7.0}) for e in externals])
    lost = claim(services, "a")  # what the worker never heard of
    assert lost is not None
    assert claim(services, "b") is None  # the lease holds against everyone else
    again = call(services, lambda: services.jobs.claim("a"))
    assert again is not None
    job, done = again
    assert job.id == job_id and done is False
    row = job_row(services, job_id)
    assert (row.next_index, row.completed_count, row.lease_owner) == (20, 20, "a")
    assert run_batch(services, job) is True
    row = job_row(services, job_id)
    assert (row.status, row.completed_count, row.failed_count) == ("complete", 25, 0)
    assert {r.update_count for r in variant_rows(services).values()} == {1}


def test_resumed_claim_without_a_first_batch_starts_where_the_job_stopped(
    services: Services,
) -> None:
    who = principal(services)
    externals = seed(services, who, 25)
    job_id = spawn(services, who, [(e, {"price": 5.0}) for e in externals])
    dead = claim(services, "dead")
    assert dead is not None and run_batch(services, dead) is False
    lapse_lease(services, job_id)
    claimed = call(services, lambda: services.jobs.claim("b", first_batch=False))
    assert claimed is not None
    resumed, done = claimed
    assert done is False
    assert (resumed.next_index, resumed.completed_count) == (20, 20)
    drain_job(services, resumed)
    assert job_row(services, job_id).completed_count == 25
    assert {r.update_count for r in variant_rows(services).values()} == {1}


def test_a_worker_that_lost_its_lease_cannot_commit(services: Services) -> None:
    """Fencing: the old owner's batch is refused once another worker took the job over."""
    who = principal(services)
    externals = seed(services, who, 25)
    job_id = spawn(services, who, [(e, {"price": 5.0}) for e in externals])
    slow = claim(services, "slow")
    assert slow is not None
    lapse_lease(services, job_id)
    fast = claim(services, "fast")
    assert fast is not None
    assert run_batch(services, slow) is None  # lost: nothing written
    assert job_row(services, job_id).next_index == 20  # the new owner's two batches only
    drain_job(services, fast)
    assert run_batch(services, slow) is None
    row = job_row(services, job_id)
    assert (row.completed_count, row.status) == (25, "complete")
    assert {r.update_count for r in variant_rows(services).values()} == {1}


def test_a_claim_applies_jobs_together_but_on_postgresql_changes_rows_again_under_a_batch(
    services: Services, engine: str
) -> None:
    """A claim applies the queued jobs in its transaction while they hold fewer than about
    ``CLAIM_ITEMS`` items: one commit for several jobs. On PostgreSQL it changes rows it has
    changed already fewer than a batch's worth of times: every version of a row a transaction
    writes stays until it commits, and jobs updating the same rows, applied together, grew the
    table by a copy of each row a job. A job past that is claimed, nothing of it applied, and
    its batch applied in a transaction of its own, as the worker runs a job it holds. Rows are
    an account's: another's of the same ids are other rows."""
    batch = services.settings.worker_batch_size
    who = principal(services)
    externals = seed(services, who, batch)
    full = [spawn(services, who, [(e, {"price": float(n)}) for e in externals]) for n in range(3)]
    small = [spawn(services, who, [(externals[0], {"sku": f"s{n}"})]) for n in range(4)]
    claims: list[list[tuple[str, bool]]] = []
    while claimed := call(services, lambda: services.jobs.claim_many("w")):
        claims.append([(job.id, done) for job, done in claimed])
        job, done = claimed[-1]
        if not done:
            row = job_row(services, job.id)  # claimed, and nothing of it applied
            assert (row.status, row.next_index, row.completed_count) == ("processing", 0, 0)
            drain_job(services, job)
    if engine == "sqlite":
        assert claims == [[(job_id, True) for job_id in full + small]]
    else:
        assert claims == [
            [(full[0], True), (full[1], False)],  # the second would change every row again
            [(full[2], True)] + [(job_id, True) for job_id in small],  # 4 rows again: under
        ]
    assert {job_row(services, job_id).status for job_id in full + small} == {"complete"}
    found = variant_rows(services)
    assert (found[externals[0]].update_count, found[externals[0]].sku) == (7, "s3")
    assert {found[e].update_count for e in externals[1:]} == {3}
    assert {found[e].price for e in externals} == {2.0}
    other = principal(services, "other")
    seed(services, other, batch)  # the same external ids, the other account's rows
    both = {spawn(services, account, [(e, {"price": 9.0}) for e in externals])
            for account in (who, other)}  # fmt: skip
    claimed = call(services, lambda: services.jobs.claim_many("w"))
    assert {(job.id, done) for job, done in claimed} == {(job_id, True) for job_id in both}
    with rows(services) as conn:
        assert set(conn.execute(select(account_slots.c.open_jobs))) == {(0,)}  # slots freed


@pytest.mark.postgres
def test_a_batch_takes_three_round_trips_on_postgresql(pg_url: str) -> None:
    """A write unit runs in pipeline mode: its BEGIN goes with its first query, and the job's
    progress and the account's slot with the COMMIT. A batch waits on the database three
    times: the fence, the updates, the commit (6 and 7 with psycopg's ``transaction()``)."""
    proxy = CuttableProxy(("127.0.0.1", 5432))
    via_proxy = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = Settings(
        database_url=via_proxy, rate_limits="off", worker_batch_size=10, lease_seconds=30
    )
    services = build_services(settings)
    try:
        who = principal(services)
        externals = seed(services, who, 25)
        body = orjson.dumps(bulk_body([(e, {"price": float(n)}) for n, e in enumerate(externals)]))

        async def batches() -> tuple[str, list[tuple[bool | None, int]]]:
            """On one event loop, so on one connection, opened by the spawn."""
            job_id = (await services.jobs.spawn(who, VARIANT_UPDATE, body)).id
            seen = []
            before = proxy.round_trips
            claimed = await services.jobs.claim("w")  # with the first batch
            assert claimed is not None
            job, done = claimed
            seen.append((done, proxy.round_trips - before))
            while not done:
                before = proxy.round_trips
                done = await services.jobs.run_batch(job)
                seen.append((done, proxy.round_trips - before))
            return job_id, seen

        job_id, seen = call(services, batches)
        # the last one frees the account's slot too, with the commit
        assert seen == [(False, 3), (False, 3), (True, 3)]
    finally:
        services.close()
        proxy.close()
    row = job_row_at(pg_url, job_id)
    assert (row.status, row.completed_count, row.next_index) == ("complete", 25, 25)
    with sql(pg_url) as conn:
        assert conn.execute(select(account_slots.c.open_jobs)).scalar() == 0
        prices = dict(
            conn.execute(select(catalog_variants.c.external_id, catalog_variants.c.price)).all()
        )
    assert prices == {e: float(n) for n, e in enumerate(externals)}


def test_a_batch_applies_repeated_updates_in_order_with_every_kind_of_value(
    services: Services,
) -> None:
    """One batch names a variant three times, between others and a missing one: each update
    lands in order (PostgreSQL updates a run of variants in one statement from a JSON array,
    so a variant named again starts a new run), and every kind of value arrives as sent."""
    who = principal(services)
    a, b = seed(services, who, 2)
    odd = 'quote " backslash \\ newline \n tab \t é 🚀 \u2028'
    every_kind = {
        "title": odd, "price": 1e308, "inventory_quantity": -0.5, "published": False,
        "inventory_policy": 2, "images": [odd, "https://x/1.png"],
        "custom_metadata": {"k": odd, "n": 4611686018427387904, "f": 0.1, "t": True},
        "image_full_url": None,
    }  # fmt: skip
    updates = [
        (a, {"sku": "a1", "price": 1.0}),
        (b, {"sku": "b1", "price": 1.0}),
        (a, {"sku": "a2", "price": 2.0}),
        ("GONE", {"sku": "x", "price": 3.0}),
        (a, every_kind),
        (b, {"sku": "b2", "published": True}),
    ]
    job_id = spawn(services, who, updates)
    drain(services)
    row = job_row(services, job_id)
    assert (row.completed_count, row.failed_count) == (5, 1)
    assert [e["source"]["pointer"] for e in orjson.loads(row.errors)] == [
        "/data/attributes/variants/data/3"
    ]
    found = variant_rows(services)
    assert (found[a].update_count, found[b].update_count) == (3, 2)
    assert (found[a].sku, found[a].title, found[a].price) == ("a2", odd, 1e308)
    assert (found[a].inventory_quantity, found[a].inventory_policy) == (-0.5, 2)
    assert not found[a].published and found[a].image_full_url is None
    assert orjson.loads(found[a].images) == [odd, "https://x/1.png"]
    metadata = msgspec.json.decode(found[a].custom_metadata)
    assert metadata == {"k": odd, "n": 4611686018427387904, "f": 0.1, "t": True}
    assert (found[b].sku, found[b].price, bool(found[b].published)) == ("b2", 1.0, True)


def test_a_create_batch_inserts_in_order_with_every_kind_of_value(services: Services) -> None:
    """One batch creates variants (PostgreSQL inserts them all in one statement from a JSON
    array): every kind of value stored as sent, omitted ones at their defaults, one named twice
    in the batch or existing already a ``conflict``, one under a missing item ``not_found``,
    and the rest inserted in the batch's order."""
    who = principal(services)
    create(services, who, ITEM, item_body("I"))
    create(services, who, VARIANT, variant_body("OLD", "I"))
    odd = 'quote " backslash \\ newline \n é 🚀 \u2028'
    every_kind = {
        "title": odd, "price": 1e308, "inventory_quantity": -0.5, "published": False,
        "inventory_policy": 2, "images": [odd], "custom_metadata": {"k": odd, "n": 2**62},
        "image_full_url": None,
    }  # fmt: skip
    entries = [
        variant_entry("V-1", "I"),
        variant_body("V-2", "I", **every_kind)["data"],
        variant_entry("V-1", "I"),  # again in the batch
        variant_entry("OLD", "I"),
        variant_entry("V-ORPHAN", "I-GONE"),
        variant_entry("V-3", "I"),
    ]
    job_id = spawn_entries(services, who, VARIANT, "create", entries)
    drain(services)
    row = job_row(services, job_id)
    assert (row.completed_count, row.failed_count) == (3, 3)
    assert [(e["source"]["pointer"][-1], e["code"]) for e in orjson.loads(row.errors)] == [
        ("2", "conflict"),
        ("3", "conflict"),
        ("4", "not_found"),
    ]
    with rows(services) as conn:
        created = conn.execute(select(catalog_variants).order_by(catalog_variants.c.pk)).all()
    assert [r.external_id for r in created] == ["OLD", "V-1", "V-2", "V-3"]
    v2 = created[2]
    assert (v2.title, v2.price, v2.inventory_quantity, v2.inventory_policy) == (odd, 1e308, -0.5, 2)
    assert not v2.published and v2.image_full_url is None and v2.update_count == 0
    assert orjson.loads(v2.images) == [odd]
    assert msgspec.json.decode(v2.custom_metadata) == {"k": odd, "n": 2**62}
    assert (created[1].sku, created[1].price, created[1].inventory_policy) == ("SKU-V-1", 9.5, 0)


def test_missing_variants_fail_alone_with_pointers(services: Services) -> None:
    who = principal(services)
    externals = seed(services, who, 2)
    job_id = spawn(
        services,
        who,
        [(externals[0], {"sku": "A"}), ("GONE", {"sku": "B"}), (externals[1], {"sku": "C"})],
    )
    drain(services)
    row = job_row(services, job_id)
    assert (row.completed_count, row.failed_count, row.status) == (2, 1, "complete")
    errors = orjson.loads(row.errors)
    assert [e["source"]["pointer"] for e in errors] == ["/data/attributes/variants/data/1"]
    assert errors[0]["code"] == "not_found" and cid("GONE") in errors[0]["detail"]
    skus = {e: r.sku for e, r in variant_rows(services).items()}
    assert skus == {externals[0]: "A", externals[1]: "C"}


# ---- ordering ----------------------------------------------------------------------------------


def test_jobs_of_one_account_run_one_at_a_time_in_acceptance_order(services: Services) -> None:
    who = principal(services)
    other = principal(services, "other")
    externals = seed(services, who, 2)
    other_externals = seed(services, other, 1, item="O")
    first = spawn(services, who, [(externals[0], {"price": 1.0})] * 15)  # two batches each
    second = spawn(services, who, [(externals[0], {"price": 2.0})] * 15)
    third = spawn(services, other, [(other_externals[0], {"price": 3.0})] * 15)
    a = claim(services, "a")
    b = claim(services, "b")
    assert a is not None and a.id == first
    assert b is not None and b.id == third  # the other account's head, not acme's second job
    assert claim(services, "c") is None  # acme's second waits for its first
    drain_job(services, a)
    c = claim(services, "c")
    assert c is not None and c.id == second


def variant_entry(external: str, item: str) -> dict[str, Any]:
    entry: dict[str, Any] = variant_body(external, item)["data"]
    return entry


def by_id(res: Resource, external: str, **attributes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": res.type, "id": cid(external)}
    if attributes:
        entry["attributes"] = attributes
    return entry


def kind_of(res: Resource, action: str) -> JobKind:
    return KINDS[f"{res.type}-bulk-{action}-job"]


def spawn_entries(
    services: Services, who: Principal, res: Resource, action: str, entries: list[dict[str, Any]]
) -> str:
    kind = kind_of(res, action)
    return spawn_job(services, who, kind, job_body(kind.type, res.plural, entries))


def test_jobs_of_every_kind_run_in_acceptance_order(services: Services) -> None:
    """A create, an update and a delete job of the same variant, accepted in that order, run
    in that order whichever worker asks: none can be claimed while the one before it is held,
    and the update lands exactly once, between the create and the delete."""
    who = principal(services)
    create(services, who, ITEM, item_body("I"))
    created = spawn_entries(services, who, VARIANT, "create", [variant_entry("V", "I")])
    updated = spawn_entries(services, who, VARIANT, "update", [by_id(VARIANT, "V", price=4.5)])
    deleted = spawn_entries(services, who, VARIANT, "delete", [by_id(VARIANT, "V")])

    held = call(services, lambda: services.jobs.claim("a", first_batch=False))
    assert held is not None and held[0].id == created
    assert claim(services, "b") is None  # the update waits for the create
    assert variant_rows(services) == {}
    assert run_batch(services, held[0]) is True

    update_job = call(services, lambda: services.jobs.claim("b", first_batch=False))
    assert update_job is not None and update_job[0].id == updated
    assert claim(services, "c") is None  # the delete waits for the update
    assert run_batch(services, update_job[0]) is True
    [row] = variant_rows(services).values()
    assert (row.external_id, row.price, row.update_count) == ("V", 4.5, 1)

    assert drain(services, "c") == [deleted]
    assert variant_rows(services) == {}
    for job_id in (created, updated, deleted):
        row = job_row(services, job_id)
        assert (row.status, row.completed_count, row.failed_count) == ("complete", 1, 0)


def test_jobs_of_every_kind_keep_acceptance_order_under_concurrent_workers(
    services: Services,
) -> None:
    """The same, run by four workers at once, over several variants: each update job ran
    after its create and before its delete (it found its variant, and the delete did too)."""
    who = principal(services)
    create(services, who, ITEM, item_body("I"))
    triples = []
    for n in range(4):
        external = f"V{n}"
        triples.append(
            (
                spawn_entries(services, who, VARIANT, "create", [variant_entry(external, "I")]),
                spawn_entries(
                    services, who, VARIANT, "update", [by_id(VARIANT, external, sku=f"S{n}")]
                ),
                spawn_entries(services, who, VARIANT, "delete", [by_id(VARIANT, external)]),
            )
        )
    claimed: list[list[str]] = [[] for _ in range(4)]
    threads = [
        threading.Thread(target=lambda i=i: claimed[i].extend(drain(services, f"w{i}")))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(job for ids in claimed for job in ids) == sorted(j for t in triples for j in t)
    for triple in triples:
        for job_id in triple:
            row = job_row(services, job_id)
            assert (row.status, row.completed_count, row.failed_count) == ("complete", 1, 0)
    assert variant_rows(services) == {}


# ---- every kind of job -------------------------------------------------------------------------


# PostgreSQL only: on SQLite, with one writer, a spawn waits for any write transaction.
@pytest.mark.parametrize(
    "engine", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_applying_batches_leaves_the_accounts_slots_free_for_its_spawns(
    services: Services, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every acceptance updates its account's slots row (its open jobs and bytes). While a worker's
    transaction claims a job and applies batches, that row must stay unlocked, or on
    PostgreSQL the account's spawns wait for every batch (they did: 26-148 spawns/s while the
    worker ran). Checked from inside the real claim and batch transactions, after each apply:
    another connection updates the row as an acceptance does, with a lock timeout."""
    import psycopg

    from backstock.storage import engine as engine_module
    from backstock.storage.database import postgres_url

    who = principal(services)
    externals = seed(services, who, 3)
    spawn(services, who, [(externals[n % 3], {"price": float(n)}) for n in range(25)])
    applied = engine_module.catalog.apply
    checked: list[str] = []

    def as_an_acceptance_would() -> None:
        with psycopg.connect(postgres_url(database_url), autocommit=True) as other:
            other.execute("SET lock_timeout = '2s'")
            other.execute(
                "UPDATE account_slots SET open_jobs = open_jobs WHERE account_id = %s",
                (who.account_id,),
            )
        checked.append("free")

    async def apply_then_check(*args: Any, **kwargs: Any) -> Any:
        outcomes = await applied(*args, **kwargs)
        await asyncio.to_thread(as_an_acceptance_would)  # raises LockNotAvailable if held
        return outcomes

    monkeypatch.setattr(engine_module.catalog, "apply", apply_then_check)
    job = claim(services, "w")  # the claim and the first batch
    assert job is not None
    drain_job(services, job)  # two more batches, the last completing the job
    assert checked == ["free"] * 3
    with rows(services) as conn:
        account = conn.execute(
            select(account_slots.c.open_jobs, account_slots.c.open_bytes).where(
                account_slots.c.account_id == who.account_id
            )
        ).one()
    assert tuple(account) == (0, 0)  # the slot freed at the end, in the same transaction


def test_payloads_are_kept_compressed_and_one_kept_plain_still_applies(
    services: Services,
) -> None:
    """Both databases keep a payload zstd-compressed; a payload an older version stored as
    plain JSON (PostgreSQL's, before session 15) is still read and applied."""
    who = principal(services)
    externals = seed(services, who, 30)
    first = spawn(services, who, [(e, {"description": "the same words " * 20}) for e in externals])
    second = spawn(services, who, [(e, {"price": 9.5}) for e in externals])

    def stored(job_id: str) -> bytes:
        payload = stored_payload(services, job_id)
        assert payload is not None
        return payload

    plain = msgspec.json.encode(load_payload(stored(first)))
    assert plain.startswith(b'[["I-0",')
    assert stored(first)[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    assert len(stored(first)) * 10 < len(plain)
    with rows(services) as conn:  # as a version before compression stored it
        pk = conn.execute(select(jobs.c.pk).where(jobs.c.id == second)).scalar_one()
        older = msgspec.json.encode(load_payload(stored(second)))
        conn.execute(update(job_payloads).where(job_payloads.c.job_pk == pk).values(payload=older))
    assert drain(services) == [first, second]
    assert {row.price for row in variant_rows(services).values()} == {9.5}
    assert job_row(services, second).completed_count == 30


def test_one_job_of_each_kind_applies_with_per_item_outcomes(services: Services) -> None:
    """Nine jobs, one of each kind, each with an item that applies and items that cannot: a
    create of what exists is a ``conflict``, a variant naming an item that does not exist and
    an update or delete of what does not exist are ``not_found``. Each job's payload is gone
    once it completes."""
    who = principal(services)
    for external in ("I-KEEP", "I-UPD", "I-DEL"):
        create(services, who, ITEM, item_body(external))
    for external in ("V-KEEP", "V-UPD", "V-DEL"):
        create(services, who, VARIANT, variant_body(external, "I-KEEP"))
    for external in ("C-KEEP", "C-UPD", "C-DEL"):
        create(services, who, CATEGORY, category_body(external))
    new_category = category_body("C-NEW")["data"]
    new_category["relationships"] = {"items": {"data": [{"type": ITEM.type, "id": cid("I-KEEP")}]}}
    jobs_of: list[tuple[Resource, str, list[dict[str, Any]], list[tuple[int, str, str]]]] = [
        # the resource, the action, the entries, and each failed entry: index, code, id
        (ITEM, "create", [item_body("I-NEW")["data"], item_body("I-KEEP")["data"]],
         [(1, "conflict", "I-KEEP")]),
        (ITEM, "update", [by_id(ITEM, "I-UPD", title="new"), by_id(ITEM, "I-GONE", title="x")],
         [(1, "not_found", "I-GONE")]),
        (ITEM, "delete", [by_id(ITEM, "I-DEL"), by_id(ITEM, "I-GONE")],
         [(1, "not_found", "I-GONE")]),
        (VARIANT, "create",
         [variant_entry("V-NEW", "I-NEW"),  # the item the first job creates
          variant_entry("V-ORPHAN", "I-GONE"), variant_entry("V-KEEP", "I-KEEP")],
         [(1, "not_found", "I-GONE"), (2, "conflict", "V-KEEP")]),
        (VARIANT, "update",
         [by_id(VARIANT, "V-UPD", price=7.5), by_id(VARIANT, "V-GONE", price=1.0)],
         [(1, "not_found", "V-GONE")]),
        (VARIANT, "delete", [by_id(VARIANT, "V-DEL"), by_id(VARIANT, "V-GONE")],
         [(1, "not_found", "V-GONE")]),
        (CATEGORY, "create", [new_category, category_body("C-KEEP")["data"]],
         [(1, "conflict", "C-KEEP")]),
        (CATEGORY, "update",
         [by_id(CATEGORY, "C-UPD", name="renamed"), by_id(CATEGORY, "C-GONE", name="x")],
         [(1, "not_found", "C-GONE")]),
        (CATEGORY, "delete", [by_id(CATEGORY, "C-DEL"), by_id(CATEGORY, "C-GONE")],
         [(1, "not_found", "C-GONE")]),
    ]  # fmt: skip
    accepted = [
        spawn_entries(services, who, res, action, entries) for res, action, entries, _ in jobs_of
    ]
    assert payload_count(services) == 9
    assert len({kind_of(res, action).type for res, action, _, _ in jobs_of}) == len(KINDS)

    assert drain(services) == accepted

    for job_id, (res, action, entries, failures) in zip(accepted, jobs_of, strict=True):
        row = job_row(services, job_id)
        assert row.kind == kind_of(res, action).type
        assert row.status == "complete"
        assert (row.completed_count, row.failed_count) == (
            len(entries) - len(failures),
            len(failures),
        ), row.kind
        errors = orjson.loads(row.errors)
        base = f"/data/attributes/{res.plural}/data"
        assert [(e["source"]["pointer"], e["code"]) for e in errors] == [
            (f"{base}/{index}", code) for index, code, _ in failures
        ], row.kind
        for error, (_, _, external) in zip(errors, failures, strict=True):
            assert cid(external) in error["detail"]
        # what a retry would send: exactly the failed items, in their order
        kept = [cid(external) for external in kept_items(services, job_id)]
        named = [entries[index].get("id") for index, _, _ in failures]  # update, delete
        named = [
            name or cid(entries[index]["attributes"]["external_id"])  # create
            for name, (index, _, _) in zip(named, failures, strict=True)
        ]
        assert kept == named, row.kind
    assert payload_count(services) == 9
    with rows(services) as conn:
        items = {r.external_id: r for r in conn.execute(select(catalog_items))}
        variants = {r.external_id: r for r in conn.execute(select(catalog_variants))}
        categories = {r.external_id: r for r in conn.execute(select(catalog_categories))}
        link_rows = conn.execute(select(item_categories.c.item_pk, item_categories.c.category_pk))
        links = {tuple(link) for link in link_rows}
        open_jobs = conn.execute(select(account_slots.c.open_jobs)).scalar()
    assert set(items) == {"I-KEEP", "I-UPD", "I-NEW"}
    assert (items["I-UPD"].title, items["I-UPD"].update_count) == ("new", 1)
    assert items["I-KEEP"].title == "Item I-KEEP"  # the conflicting create changed nothing
    assert set(variants) == {"V-KEEP", "V-UPD", "V-NEW"}
    assert variants["V-NEW"].item_pk == items["I-NEW"].pk
    assert variants["V-KEEP"].title == "Variant V-KEEP"
    assert (variants["V-UPD"].price, variants["V-UPD"].update_count) == (7.5, 1)
    assert set(categories) == {"C-KEEP", "C-UPD", "C-NEW"}
    assert (categories["C-UPD"].name, categories["C-UPD"].update_count) == ("renamed", 1)
    assert links == {(items["I-KEEP"].pk, categories["C-NEW"].pk)}
    assert open_jobs == 0


# ---- the account's cap, release, expiry ------------------------------------------------------


def test_open_job_cap_is_enforced_in_the_database(services_for: Callable[..., Services]) -> None:
    services = services_for(max_jobs_in_progress=2)
    who = principal(services)
    externals = seed(services, who, 1)
    spawn(services, who, [(externals[0], {"price": 1.0})])
    spawn(services, who, [(externals[0], {"price": 2.0})])
    with pytest.raises(TooManyJobs):
        spawn(services, who, [(externals[0], {"price": 3.0})])
    with rows(services) as conn:
        assert len(conn.execute(select(jobs.c.pk)).all()) == 2
        assert conn.execute(select(account_slots.c.open_jobs)).scalar() == 2
    assert payload_count(services) == 2  # the refused job left nothing behind
    drain(services)
    with rows(services) as conn:
        assert conn.execute(select(account_slots.c.open_jobs)).scalar() == 0
    spawn(services, who, [(externals[0], {"price": 4.0})])  # slots free again once complete


def test_the_default_cap_of_500_holds_under_concurrent_acceptance(services: Services) -> None:
    """510 requests at once against the default cap: exactly 500 are queued, whichever
    connections (PostgreSQL) or commit groups (SQLite) they arrive on."""
    assert services.settings.max_jobs_in_progress == 500
    who = principal(services)
    body = orjson.dumps(bulk_body([("V", {"price": 1.0})]))

    async def accept_all() -> list[Any]:
        spawns = (services.jobs.spawn(who, VARIANT_UPDATE, body) for _ in range(510))
        return list(await asyncio.gather(*spawns, return_exceptions=True))

    outcomes = call(services, accept_all)
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 10 and all(isinstance(o, TooManyJobs) for o in refused)
    with rows(services) as conn:
        assert conn.execute(select(func.count()).select_from(jobs)).scalar() == 500
        assert conn.execute(select(account_slots.c.open_jobs)).scalar() == 500
    assert payload_count(services) == 500


def test_graceful_release_hands_the_job_back(services: Services) -> None:
    who = principal(services)
    externals = seed(services, who, 25)
    job_id = spawn(services, who, [(e, {"price": 5.0}) for e in externals])
    job = claim(services, "a")
    assert job is not None and run_batch(services, job) is False
    call(services, lambda: services.jobs.release(job))
    row = job_row(services, job_id)
    assert (row.status, row.lease_owner, row.next_index) == ("queued", None, 20)
    again = call(services, lambda: services.jobs.claim("b", first_batch=False))
    assert again is not None
    assert (again[0].next_index, again[0].completed_count, again[1]) == (20, 20, False)
    assert run_batch(services, job) is None  # the released holder is fenced out
    assert run_batch(services, again[0]) is True
    assert {r.update_count for r in variant_rows(services).values()} == {1}


def test_expired_jobs_are_deleted(services: Services) -> None:
    who = principal(services)
    externals = seed(services, who, 1)
    job_id = spawn(services, who, [(externals[0], {"price": 1.0})])
    drain(services)
    assert call(services, services.jobs.delete_expired) == 0
    with rows(services) as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(expires_at=1))
    assert call(services, services.jobs.delete_expired) == 1
    with rows(services) as conn:
        assert conn.execute(select(func.count()).select_from(jobs)).scalar() == 0


# ---- many workers ------------------------------------------------------------------------------


def test_many_threads_apply_every_update_exactly_once_in_order(
    services_for: Callable[..., Services],
) -> None:
    """Four workers, two accounts, overlapping jobs: the final catalog equals applying the
    jobs one by one in acceptance order, and each update lands exactly once."""
    services = services_for(worker_batch_size=3)
    people = [principal(services, "acme"), principal(services, "globex")]
    catalogs = {p.account_id: seed(services, p, 6, item=f"I{p.account_id}") for p in people}
    expected: dict[tuple[int, str], dict[str, Any]] = {}
    counts: dict[tuple[int, str], int] = {}
    for n in range(40):
        who = people[n % 2]
        externals = catalogs[who.account_id]
        updates = [
            (externals[(n + k) % 6], {"price": float(n * 10 + k), "sku": f"{n}-{k}"})
            for k in range(4)
        ]
        spawn(services, who, updates)
        for external, changes in updates:  # acceptance order = spawn order here
            expected[(who.account_id, external)] = changes
            counts[(who.account_id, external)] = counts.get((who.account_id, external), 0) + 1
    threads = [threading.Thread(target=drain, args=(services, f"w{i}")) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with rows(services) as conn:
        variants = conn.execute(select(catalog_variants)).all()
        states = conn.execute(
            select(jobs.c.status, jobs.c.completed_count, jobs.c.total_count)
        ).all()
    assert len(states) == 40
    assert {s.status for s in states} == {"complete"}
    assert all(s.completed_count == s.total_count for s in states)
    assert len(variants) == 12
    for row in variants:
        key = (row.account_id, row.external_id)
        assert (row.price, row.sku) == (expected[key]["price"], expected[key]["sku"])
        assert row.update_count == counts[key]


# ---- polls -------------------------------------------------------------------------------------


def test_polls_asked_together_are_each_answered_as_alone(services: Services) -> None:
    """Polls arriving together are read together (on PostgreSQL in one statement:
    ``Database.read_together``). Each gets what it would alone: the key it names, and the job
    only through that key's valid secret, unrevoked, of the key's account and the asked kind,
    not expired."""
    acme = principal(services)
    externals = seed(services, acme, 3)
    mine = spawn(services, acme, [(e, {"price": 1.0}) for e in externals])
    lapsed = spawn(services, acme, [(externals[0], {"price": 2.0})])
    with rows(services) as conn:
        conn.execute(update(jobs).where(jobs.c.id == lapsed).values(expires_at=1))
    other = principal(services, "other")
    seed(services, other, 1, item="O")
    theirs = spawn(services, other, [("O-0", {"price": 3.0})])
    good = from_authorization(f"Klaviyo-API-Key {make_key(services)}")
    wrong = ApiKey(good.key_id, good.secret + "x")
    revoked = from_authorization(f"Klaviyo-API-Key {make_key(services)}")
    call(services, lambda: services.accounts.revoke_key(revoked.key_id))
    unknown = ApiKey("nosuchkey", "secret")
    theirs_key = from_authorization(f"Klaviyo-API-Key {make_key(services, 'other')}")
    create_kind, update_kind = KINDS["catalog-variant-bulk-create-job"].type, VARIANT_UPDATE.type
    asks = [
        (good, update_kind, mine, good.key_id, mine),
        (good, update_kind, theirs, good.key_id, None),  # another account's job
        (good, create_kind, mine, good.key_id, None),  # another kind
        (good, update_kind, lapsed, good.key_id, None),  # expired
        (wrong, update_kind, mine, good.key_id, None),  # the key's row, for the 401
        (revoked, update_kind, mine, revoked.key_id, None),
        (unknown, update_kind, mine, None, None),
        (theirs_key, update_kind, theirs, theirs_key.key_id, theirs),
        (good, update_kind, mine, good.key_id, mine),  # the same ask twice
        (good, update_kind, 'a"b\\c\u00e9\u2028\x01', good.key_id, None),  # JSON's specials
    ]

    async def together() -> list[Any]:
        return await asyncio.gather(
            *(services.jobs.store.poll(key, kind, job_id) for key, kind, job_id, _, _ in asks)
        )

    async def in_one_statement() -> list[Any]:  # on PostgreSQL; SQLite reads each alone
        polls = [(key, kind, job_id) for key, kind, job_id, _, _ in asks]
        return await services.jobs.store.db.read(
            lambda conn: jobs_store.polls(conn, polls, now_us(), jobs_store.Linkages())
        )

    answers = call(services, together)
    alone = [call(services, lambda a=a: services.jobs.store.poll(*a[:3])) for a in asks]
    assert [(k and k.id, j and j.id) for k, j in answers] == [a[3:] for a in asks]
    assert answers == alone
    assert call(services, in_one_statement) == alone
    assert call(services, together) == alone  # the linkages kept by the first: the same jobs
    assert answers[4][0] is not None and answers[4][0].secret_hash == good.secret_hash
    assert answers[5][0] is not None and answers[5][0].revoked_at is not None


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_polls_read_together_ask_only_for_the_linkage_not_kept(services: Services) -> None:
    """A job's linkage never changes: polls read together keep it (``Linkages``, per
    ``JobStore``) and ask PostgreSQL for it only for jobs not kept, through a valid key only.
    Shown with a kept value PostgreSQL does not hold: what comes back is the kept one."""
    who = principal(services)
    externals = seed(services, who, 3)
    first = spawn(services, who, [(e, {"price": 1.0}) for e in externals])
    second = spawn(services, who, [(externals[0], {"price": 2.0})])
    key = from_authorization(f"Klaviyo-API-Key {make_key(services)}")
    wrong = ApiKey(key.key_id, key.secret + "x")
    kind = VARIANT_UPDATE.type
    linkages = jobs_store.Linkages()
    linkages.keep(first, "[kept]")

    def together(asks: list[tuple[ApiKey, str]]) -> list[Any]:
        polls = [(k, kind, job_id) for k, job_id in asks]
        return call(
            services,
            lambda: services.jobs.store.db.read(
                lambda conn: jobs_store.polls(conn, polls, now_us(), linkages)
            ),
        )

    found = together([(key, first), (key, second), (wrong, first)])
    assert [job and job.id for _, job in found] == [first, second, None]
    assert found[0][1].linkage == "[kept]"  # not asked for
    stored = orjson.loads(found[1][1].linkage)  # asked for, and kept from now on
    assert stored == [{"type": "catalog-variant", "id": cid(externals[0])}]
    assert linkages.get(second) == found[1][1].linkage
    again = together([(key, second), (key, first)])
    assert [job.linkage for _, job in again] == [found[1][1].linkage, "[kept]"]


def test_linkages_keep_the_latest_within_their_budget() -> None:
    """Each job kept counts its linkage's characters and ``ENTRY`` more."""
    entry = jobs_store.Linkages.ENTRY
    linkages = jobs_store.Linkages(budget=3 * entry + 10)
    linkages.keep("a", "1234")
    linkages.keep("b", "5678")
    linkages.keep("a", "xxxx")  # kept already: a job's linkage never changes
    assert (linkages.get("a"), linkages.get("b")) == ("1234", "5678")
    linkages.keep("c", "90")  # three jobs and 10 characters: all fit
    linkages.keep("d", "1")  # past the budget: the oldest go first, as many as it takes
    assert [linkages.get(job) for job in "abcd"] == [None, "5678", "90", "1"]
    linkages.keep("e", "x" * (2 * entry + 11))  # larger than the budget: not kept, none dropped
    assert [linkages.get(job) for job in "bcde"] == ["5678", "90", "1", None]


def test_an_update_looks_its_resources_up_only_when_one_is_missing(
    services_for: Callable[..., Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite counts the rows an update batch changed and asks which resources exist only when
    the count falls short; PostgreSQL's ``RETURNING`` says it. So neither looks them up for a
    batch whose resources all exist, and the outcomes are the same either way."""
    services = services_for()
    who = principal(services)
    externals = seed(services, who, 3)
    looked: list[list[str]] = []
    real = catalog_store.keys

    async def counting(conn: Any, res: Resource, account: Any, found: Any, **kw: Any) -> Any:
        looked.append(list(found))
        return await real(conn, res, account, looked[-1], **kw)

    monkeypatch.setattr(catalog_store, "keys", counting)
    whole = spawn(services, who, [(e, {"price": 3.0}) for e in externals])
    drain(services)
    assert job_row(services, whole).completed_count == 3
    assert looked == []

    named = [(externals[0], {"price": 4.0}), ("GONE", {"price": 5.0}), (externals[0], {"sku": "s"})]
    partly = spawn(services, who, named)
    drain(services)
    row = job_row(services, partly)
    assert (row.completed_count, row.failed_count) == (2, 1)
    postgres = services.settings.database_url.startswith("postgresql")
    assert looked == ([] if postgres else [[externals[0], "GONE", externals[0]]])
    assert variant_rows(services)[externals[0]].sku == "s"


# ---- the worker ----------------------------------------------------------------------------------


def test_worker_wakes_on_a_new_job_without_polling(services_for: Callable[..., Services]) -> None:
    services = services_for(idle_check_seconds=30)  # a poll loop would take 30 s
    who = principal(services)
    externals = seed(services, who, 100)
    worker = Worker(services)
    worker.start()
    try:
        time.sleep(0.2)  # the worker is idle, waiting
        started = time.monotonic()
        job_id = spawn(services, who, [(e, {"price": 2.0}) for e in externals])
        wait_until(lambda: job_row(services, job_id).status == "complete", 5, "the worker slept on")
    finally:
        worker.shutdown()
    assert time.monotonic() - started < 2
    assert job_row(services, job_id).completed_count == 100


@pytest.mark.postgres
def test_postgres_listen_notify_wakes_a_worker_in_another_process(pg_url: str) -> None:
    """Accepted by one Services (an API process) and run by another (a worker process): only
    NOTIFY can wake the worker before its 30 s idle check."""
    api_side = build_services(Settings(database_url=pg_url, rate_limits="off"))
    worker_side = build_services(Settings(database_url=pg_url, idle_check_seconds=30))
    try:
        who = principal(api_side)
        externals = seed(api_side, who, 10)
        worker = build_worker(worker_side, 1)
        worker.start()
        try:
            time.sleep(0.5)  # listening, idle
            started = time.monotonic()
            job_id = spawn(api_side, who, [(e, {"price": 2.0}) for e in externals])
            wait_until(lambda: job_row(api_side, job_id).status == "complete", 5, "not woken")
        finally:
            worker.shutdown()
        assert time.monotonic() - started < 2
    finally:
        api_side.close()
        worker_side.close()


def test_a_job_that_ends_without_a_webhook_costs_the_delivery_loop_no_write(
    services_for: Callable[..., Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every job's end wakes the worker's webhook loop. It reads whether a delivery is due,
    and takes one (a write transaction) only then: not for the jobs of an account without a
    webhook, and at once for the first job after the account gets one."""
    services = services_for(idle_check_seconds=30)  # no idle check inside the test
    who = principal(services)
    externals = seed(services, who, 4)
    store = services.webhooks.store
    calls = {"next_due": 0, "take_due": 0}

    def counted(name: str) -> None:
        real = getattr(store, name)

        async def wrapper(*args: Any) -> Any:
            calls[name] += 1
            return await real(*args)

        monkeypatch.setattr(store, name, wrapper)

    counted("next_due")
    counted("take_due")
    worker = Worker(services)
    worker.start()
    try:
        wait_until(lambda: calls["next_due"] >= 1, 5, "the delivery loop did not start")
        looked, took = calls["next_due"], calls["take_due"]
        ended = [spawn(services, who, [(e, {"price": 1.0})]) for e in externals[:3]]
        wait_until(lambda: all(job_row(services, j).status == "complete" for j in ended), 5, "")
        wait_until(lambda: calls["next_due"] > looked, 5, "a job's end did not wake the loop")
        assert calls["take_due"] == took == 0

        hook = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: the try fails, is kept
        call(services, lambda: services.webhooks.set("acme", hook))
        job = spawn(services, who, [(externals[3], {"price": 2.0})])
        wait_until(lambda: calls["take_due"] >= 1, 5, "the due delivery was not taken")
    finally:
        worker.shutdown()
    # Taken once: no job ended without a webhook took, nor did the read before this take
    # (the failed try is next due after its backoff, past the test's end).
    assert calls["take_due"] == 1
    [delivery] = call(services, lambda: services.webhooks.deliveries("acme"))
    assert (delivery.job_id, delivery.attempts) == (job, 1)


def test_worker_shutdown_hands_its_job_back_where_it_stopped(
    services_for: Callable[..., Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping a worker in the middle of a job queues the job again at once (no lease to wait
    out), at the batch it reached; another worker finishes it, applying nothing twice."""
    services = services_for(worker_batch_size=1, lease_seconds=60)
    who = principal(services)
    externals = seed(services, who, 30)
    job_id = spawn(services, who, [(e, {"price": 3.0}) for e in externals])
    real = catalog_store.apply

    async def slow_apply(*args: Any) -> Any:
        time.sleep(0.02)  # a slow disk: the worker is mid-job when told to stop
        return await real(*args)

    monkeypatch.setattr(catalog_store, "apply", slow_apply)
    worker = Worker(services)
    worker.start()
    try:
        wait_until(lambda: job_row(services, job_id).next_index >= 3, 10, "the job did not start")
    finally:
        worker.shutdown()
    row = job_row(services, job_id)
    assert (row.status, row.lease_owner, row.lease_expires_at) == ("queued", None, None)
    assert 3 <= row.next_index < 30
    assert row.completed_count == row.next_index
    monkeypatch.setattr(catalog_store, "apply", real)
    assert drain(services, "next") == [job_id]
    row = job_row(services, job_id)
    assert (row.status, row.completed_count, row.attempts) == ("complete", 30, 2)
    assert {r.update_count for r in variant_rows(services).values()} == {1}


def test_a_batch_that_keeps_failing_is_marked_failed_and_the_queue_moves_on(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that fails one job's writes every time must not hold its account's queue: after
    ``POISON_TRIES`` failures the batch's items fail with ``internal_error``."""
    who = principal(services)
    externals = seed(services, who, 3)
    poisoned = spawn(services, who, [(e, {"price": 1.0}) for e in externals])
    healthy = spawn(services, who, [(externals[0], {"price": 2.0})])
    real = catalog_store.apply

    async def failing_for_price_one(*args: Any) -> Any:
        entries = args[4]
        if any(changes.get("price") == 1.0 for _, changes, _ in entries):
            raise RuntimeError("a bug")
        return await real(*args)

    monkeypatch.setattr(catalog_store, "apply", failing_for_price_one)
    worker = Worker(services)
    backoff = asyncio.sleep

    async def short_backoff(_seconds: float) -> None:
        await backoff(0.001)  # the retries' waits shortened; how they are counted is not

    monkeypatch.setattr(worker, "_sleep", short_backoff)
    worker.start()
    try:
        wait_until(
            lambda: job_row(services, healthy).status == "complete", 30, "the queue stayed blocked"
        )
    finally:
        worker.shutdown()
    row = job_row(services, poisoned)
    assert (row.status, row.completed_count, row.failed_count) == ("complete", 0, 3)
    errors = orjson.loads(row.errors)
    assert {e["code"] for e in errors} == {"internal_error"}
    assert [e["source"]["pointer"] for e in errors] == [
        f"/data/attributes/variants/data/{n}" for n in range(3)
    ]
    assert job_row(services, healthy).completed_count == 1
    prices = {e: r.price for e, r in variant_rows(services).items()}
    assert prices == {
        externals[0]: 2.0,
        externals[1]: 9.5,
        externals[2]: 9.5,
    }  # nothing half-applied
    assert kept_items(services, poisoned) == externals  # every item failed: kept for a retry
    assert kept_items(services, healthy) == []


# ---- the claim's plan ----------------------------------------------------------------------------


def fill_jobs(conn: Any, accounts: int = 500, total: int = 20_000) -> None:
    """``total`` jobs across ``accounts`` accounts: 1 % queued, 1 % processing (a live lease),
    the rest complete; then the planner's statistics. Temporary tables number them
    (``numbers``: the accounts, ``jobs_numbers``: the jobs)."""
    numbers = (
        "CREATE TEMPORARY TABLE {name} AS SELECT g AS n FROM generate_series(1, {count}) AS g"
        if conn.dialect.name == "postgresql"
        else "CREATE TEMPORARY TABLE {name} AS WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL "
        "SELECT n + 1 FROM g WHERE n < {count}) SELECT n FROM g"
    )
    conn.execute(text(numbers.format(name="numbers", count=accounts)))
    conn.execute(text(numbers.format(name="jobs_numbers", count=total)))
    conn.execute(
        text(
            "INSERT INTO accounts (name, created_at, cursor_key) "
            "SELECT 'bulk-' || n, 0, :key FROM numbers"
        ),
        {"key": b"\x00"},
    )
    conn.execute(text("INSERT INTO account_slots (account_id) SELECT id FROM accounts"))
    conn.execute(
        text(
            """
INSERT INTO jobs (id, account_id, kind, status, shape, total_count, completed_count, linkage,
                  errors, created_at, completed_at, expires_at, lease_owner, lease_expires_at)
SELECT 'job-' || n,
       (SELECT min(id) FROM accounts) + n % :accounts, 'catalog-variant-bulk-update-job',
       CASE n % 100 WHEN 0 THEN 'queued' WHEN 1 THEN 'processing' ELSE 'complete' END,
       'data', 1, 1, '[]', '[]', n, n, n + 1000000,
       CASE n % 100 WHEN 1 THEN 'w' END, CASE n % 100 WHEN 1 THEN 9000000000000000 END
  FROM jobs_numbers"""
        ),
        {"accounts": accounts},
    )
    conn.execute(text("ANALYZE"))


def plan_of(conn: Any, statement: str, params: dict[str, object]) -> list[str]:
    """The plan's lines: PostgreSQL's ``EXPLAIN``, SQLite's ``EXPLAIN QUERY PLAN``."""
    explain = "EXPLAIN " if conn.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
    rows = conn.connection.driver_connection.execute(explain + statement, params)
    return [str(row[-1]) for row in rows]


def assert_reads_the_wake_up_indexes(plan: list[str]) -> None:
    shown = "\n".join(plan)
    assert "ix_jobs_leases" in shown and "ix_jobs_held" in shown, shown
    assert "ix_jobs_open" not in shown, shown
    assert "Seq Scan" not in shown, shown  # PostgreSQL
    # SQLite: a scan of the table reads "SCAN jobs" ("SCAN TABLE jobs" before 3.36); one of an
    # index says which
    table_scans = [line for line in plan if line.startswith("SCAN") and "USING" not in line]
    assert not table_scans, shown


def test_the_idle_wake_up_reads_two_small_indexes(database_url: str) -> None:
    """A worker with nothing to claim asks, after every wake-up, when the earliest lease
    lapses or a held job may go (``next_lease_expiry``): on 20 000 jobs (1 % processing) the
    plan reads two partial indexes, never the whole table nor the open jobs' index; and the
    answer is the earliest of both, counting only processing jobs' leases and queued jobs'
    times still to come."""
    with sql(database_url) as conn:
        fill_jobs(conn)
        statement, constants = _NEXT_LAPSE.sql(conn.dialect.name)
        assert_reads_the_wake_up_indexes(plan_of(conn, statement, {**constants, "now": 10**6}))

        def answer(now: int) -> int | None:
            params = {**constants, "now": now}
            rows = list(conn.connection.driver_connection.execute(statement, params))
            return None if rows[0][0] is None else int(rows[0][0])

        conn.execute(text("UPDATE jobs SET status = 'complete' WHERE status = 'processing'"))
        assert answer(0) is None  # nothing processing, nothing held
        first = "SELECT min(pk) FROM jobs WHERE status = '{}'"
        complete = conn.execute(text(first.format("complete"))).scalar_one()
        queued = conn.execute(text(first.format("queued"))).scalar_one()
        conn.execute(text(f"UPDATE jobs SET not_before = 3000 WHERE pk = {complete}"))
        assert answer(0) is None  # a finished job's time is no reason to wake
        conn.execute(text(f"UPDATE jobs SET not_before = 5000 WHERE pk = {queued}"))
        conn.execute(
            text(
                "UPDATE jobs SET status = 'processing', lease_expires_at = 7000 "
                f"WHERE pk = {complete}"
            )
        )
        assert answer(4000) == 5000  # the held job goes first
        assert answer(6000) == 7000  # held no longer (its time has come): the lease


@pytest.mark.parametrize(
    "engine", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_the_idle_wake_up_reads_its_indexes_after_a_burst(database_url: str) -> None:
    """The same plan with 11 000 queued jobs the statistics have not seen (analyzed when the
    queue was empty, the finished jobs kept): PostgreSQL's planner once read the whole open
    jobs' index instead, 1.8 ms a wake-up, and idle workers wake at every acceptance."""
    import psycopg

    from backstock.storage.database import postgres_url

    job = (
        "INSERT INTO jobs (id, account_id, kind, status, shape, total_count, linkage, errors, "
        "created_at) SELECT '{status}-' || n, (SELECT min(id) FROM accounts), "
        "'catalog-variant-bulk-update-job', '{status}', 'data', 1, '[]', '[]', n "
        "FROM generate_series(1, {count}) AS n"
    )
    with psycopg.connect(postgres_url(database_url), autocommit=True) as conn:
        conn.execute("INSERT INTO accounts (name, created_at, cursor_key) VALUES ('a', 0, '')")
        conn.execute("INSERT INTO account_slots (account_id) SELECT id FROM accounts")
        conn.execute(job.format(status="complete", count=2000))
        conn.execute("ANALYZE")
        conn.execute(job.format(status="queued", count=11_000))
        statement, constants = _NEXT_LAPSE.sql("postgresql")
        plan = [
            str(row[0]) for row in conn.execute("EXPLAIN " + statement, {**constants, "now": 5})
        ]
    assert_reads_the_wake_up_indexes(plan)


def unbounded_scans(plan: list[str], table: str) -> list[str]:
    """PostgreSQL plan nodes that read ``table`` (or one of its indexes) with no ``Index Cond``
    that compares (``pk IS NOT NULL`` bounds nothing): all of it, or all of an index, each
    time they run."""
    found = []
    for at, line in enumerate(plan):
        if "Scan" in line and f" on {table} " in line:
            rest = plan[at + 1 :]
            end = next((n for n, later in enumerate(rest) if "->" in later), len(rest))
            if not any("Index Cond:" in later and " = " in later for later in rest[:end]):
                found.append(line.strip())
    return found


def test_the_claim_reads_the_queue_through_its_indexes(database_url: str) -> None:
    """The claim runs for every job and on every idle wake-up: on a table of 20 000 jobs (of
    500 accounts, 1 % of them open) its plan must not read the whole ``jobs`` table, nor the
    whole index of open jobs; nor with a burst of 20 000 jobs the statistics have not seen (the
    planner once read every open job to find the head among them: 3.7 ms a claim at 11,000)."""
    with sql(database_url) as conn:
        postgres = conn.dialect.name == "postgresql"
        fill_jobs(conn)
        statement, constants = _CLAIM_NEXT.sql(conn.dialect.name)
        params = {**constants, "owner": "w", "now": 10**15, "expires": 10**15 + 30}

        def planned() -> list[str]:
            return plan_of(conn, statement, params)

        plan = planned()
        bursts = []
        if postgres:
            # A burst of jobs the statistics have not seen yet: one account loading its
            # catalog into a queue that was empty when last analyzed, with the finished jobs
            # kept (as they are, for days), then with none.
            for emptied in ("status IN ('queued', 'processing')", "true"):
                conn.execute(text(f"DELETE FROM jobs WHERE {emptied}"))
                conn.execute(text("UPDATE account_slots SET open_jobs = 1"))  # as last analyzed
                conn.execute(text("ANALYZE"))
                conn.execute(text("UPDATE account_slots SET open_jobs = 0"))
                conn.execute(
                    text(
                        "INSERT INTO jobs (id, account_id, kind, status, shape, total_count, "
                        "linkage, errors, created_at) SELECT 'burst-' || n, "
                        "(SELECT min(id) FROM accounts), 'catalog-variant-bulk-update-job', "
                        "'queued', 'data', 1, '[]', '[]', n FROM jobs_numbers"
                    )
                )
                conn.execute(
                    text(
                        "UPDATE account_slots SET open_jobs = 20000 "
                        "WHERE account_id = (SELECT min(account_id) FROM jobs)"
                    )
                )
                bursts.append("\n".join(planned()))
    text_plan = "\n".join(plan)
    if postgres:
        # jobs are only looked up: each account's head in a partial index of the open jobs,
        # the chosen one by its key; never a scan of the table, nor a join of job with job
        for shown in (text_plan, *bursts):
            assert "Seq Scan on jobs" not in shown, shown
            assert "Anti Join" not in shown, shown
            assert "ix_jobs_open" in shown, shown
            assert unbounded_scans(shown.splitlines(), "jobs") == [], shown
    else:
        # The only scan is of the accounts (those with open jobs); jobs are searched: each
        # head in the open jobs' index, the chosen one by its key.
        scans = [line for line in plan if line.startswith("SCAN")]
        assert all(line.split()[1] in ("a", "account_slots") for line in scans), text_plan
        assert any("SEARCH e USING" in line and "ix_jobs_open" in line for line in plan), text_plan


# ---- fair queues and the queued-bytes quota (issue 13) -----------------------------------------


def test_claims_go_round_the_accounts_with_queued_work(services: Services) -> None:
    """One account's backlog does not hold the others up: after A has queued six jobs, B's one
    job and C's one job are claimed right after A's first, not after all of A's."""
    a, b, c = (principal(services, name) for name in ("a", "b", "c"))
    a_jobs = [spawn(services, a, [("GONE", {"price": float(n)})]) for n in range(6)]
    b_job = spawn(services, b, [("GONE", {"price": 1.0})])
    c_job = spawn(services, c, [("GONE", {"price": 1.0})])
    order = drain(services)
    assert order[:3] == [a_jobs[0], b_job, c_job]
    assert order[3:] == a_jobs[1:]  # and A's own jobs keep their order


def test_the_queued_bytes_quota_refuses_then_frees(services_for: Callable[..., Services]) -> None:
    """Queued payloads and the failed items finished jobs keep for a retry count against the
    quota; expiry (and a retry, which moves them) gives them back."""
    from backstock.domain.errors import QuotaExceeded

    rng = random.Random(13)  # titles that do not compress away
    updates = [(f"V{n}", {"title": rng.randbytes(40).hex()}) for n in range(30)]  # all fail
    # The bytes the payload takes as the database keeps it (compressed): the quota holds two
    # such jobs, not three.
    body = orjson.dumps(bulk_body(updates))
    size = len(decode_job(VARIANT, "update", body).payload)
    services = services_for(max_queued_bytes=size * 5 // 2, job_retention_days=0.3 / 86400)
    who = principal(services)

    def counted() -> tuple[int, int]:
        with sql(services.settings.database_url) as conn:
            open_bytes = conn.execute(select(account_slots.c.open_bytes)).scalar()
            held = conn.execute(select(func.sum(func.length(job_payloads.c.payload)))).scalar()
        return int(open_bytes), int(held or 0)

    spawn(services, who, updates)
    spawn(services, who, updates)
    with pytest.raises(QuotaExceeded) as refused:
        spawn(services, who, updates)
    assert refused.value.status == 429 and refused.value.code == "quota_exceeded"
    assert "BACKSTOCK_MAX_QUEUED_BYTES" in refused.value.detail
    drain(services)  # every item failed: kept for a retry, still counted
    with pytest.raises(QuotaExceeded):
        spawn(services, who, updates)
    open_bytes, held = counted()
    assert open_bytes == held >= 2 * size  # the counter is exactly what the payloads hold
    time.sleep(0.4)  # the finished jobs expire
    assert call(services, services.jobs.delete_expired) == 2
    assert counted() == (0, 0)
    spawn(services, who, updates)  # their bytes were given back
    assert counted()[0] == counted()[1] > 0
