"""The job table as a queue: claiming, leases, fencing, resumption, ordering, exactly-once.

These drive the service layer directly (what the worker calls) on SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from sqlalchemy import select, text, update

from backstock.domain.errors import TooManyJobs
from backstock.services import accounts, catalog
from backstock.services.accounts import Principal
from backstock.services.container import Services
from backstock.storage.schema import accounts as accounts_table
from backstock.storage.schema import catalog_variants, jobs
from backstock.worker import Worker
from tests.support import bulk_body, item_body, variant_body


def principal(services: Services, account: str = "acme") -> Principal:
    key = accounts.create_key(services.db, account, ["catalogs:read", "catalogs:write"])
    return accounts.authenticate(services.db, f"Klaviyo-API-Key {key.key}")


def seed(services: Services, who: Principal, count: int, item: str = "I") -> list[str]:
    catalog.create_item(services.db, who, item_body(item))
    externals = [f"{item}-{n}" for n in range(count)]
    for external in externals:
        catalog.create_variant(services.db, who, variant_body(external, item))
    return externals


def spawn(services: Services, who: Principal, updates: list[tuple[str, dict[str, Any]]]) -> str:
    return services.jobs.spawn_update_job(who, orjson.dumps(bulk_body(updates))).id


def job_row(services: Services, job_id: str) -> Any:
    with services.db.read() as conn:
        return conn.execute(select(jobs).where(jobs.c.id == job_id)).one()


def variant_rows(services: Services) -> dict[str, Any]:
    with services.db.read() as conn:
        return {r.external_id: r for r in conn.execute(select(catalog_variants))}


def claim(services: Services, owner: str) -> Any:
    """Claim the next job; the claim applies its first batch in the same transaction."""
    claimed = services.jobs.claim(owner)
    return None if claimed is None else claimed[0]


def drain(services: Services, owner: str = "w") -> None:
    while (claimed := services.jobs.claim(owner)) is not None:
        job, done = claimed
        while done is False:
            done = services.jobs.run_batch(job)


@pytest.fixture
def services(services_for: Callable[..., Services]) -> Services:
    return services_for(worker_batch_size=10, lease_seconds=30)


def test_claimed_job_is_invisible_to_other_workers(services: Services) -> None:
    who = principal(services)
    externals = seed(services, who, 3)
    spawn(services, who, [(externals[0], {"price": float(n)}) for n in range(25)])
    first = claim(services, "a")
    assert first is not None
    assert services.jobs.claim("b") is None
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
    assert services.jobs.run_batch(job) is False
    assert job_row(services, job_id).next_index == 20
    assert services.jobs.run_batch(job) is True
    row = job_row(services, job_id)
    assert (row.next_index, row.completed_count, row.failed_count) == (25, 25, 0)
    assert row.status == "complete" and row.lease_owner is None
    assert row.expires_at > row.completed_at
    with services.db.read() as conn:
        assert conn.execute(select(accounts_table.c.open_jobs)).scalar() == 0


def test_lapsed_lease_is_resumed_where_it_stopped_and_nothing_applies_twice(
    services: Services,
) -> None:
    who = principal(services)
    externals = seed(services, who, 25)
    job_id = spawn(services, who, [(e, {"price": 5.0}) for e in externals])
    dead = claim(services, "dead")
    assert dead is not None and services.jobs.run_batch(dead) is False  # 20 items, then "dies"
    assert services.jobs.claim("b") is None  # the lease still holds
    with services.db.write() as conn:  # time passes: the lease lapses
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(lease_expires_at=0))
    resumed = claim(services, "b")
    assert resumed is not None and resumed.next_index == 20 and resumed.completed_count == 20
    drain_job(services, resumed)
    row = job_row(services, job_id)
    assert (row.completed_count, row.failed_count, row.attempts) == (25, 0, 2)
    assert {r.update_count for r in variant_rows(services).values()} == {1}


def drain_job(services: Services, job: Any) -> None:
    while services.jobs.run_batch(job) is False:
        pass


def test_a_worker_that_lost_its_lease_cannot_commit(services: Services) -> None:
    """Fencing: the old owner's batch is refused once another worker took the job over."""
    who = principal(services)
    externals = seed(services, who, 25)
    job_id = spawn(services, who, [(e, {"price": 5.0}) for e in externals])
    slow = claim(services, "slow")
    assert slow is not None
    with services.db.write() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(lease_expires_at=0))
    fast = claim(services, "fast")
    assert fast is not None
    assert services.jobs.run_batch(slow) is None  # lost: nothing written
    drain_job(services, fast)
    assert services.jobs.run_batch(slow) is None
    row = job_row(services, job_id)
    assert (row.completed_count, row.status) == (25, "complete")
    assert {r.update_count for r in variant_rows(services).values()} == {1}


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
    assert errors[0]["code"] == "not_found" and "GONE" in errors[0]["detail"]


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
    assert services.jobs.claim("c") is None  # acme's second waits for its first
    drain_job(services, a)
    c = claim(services, "c")
    assert c is not None and c.id == second


def test_open_job_cap_is_enforced_in_the_database(services_for: Callable[..., Services]) -> None:
    services = services_for(max_jobs_in_progress=2)
    who = principal(services)
    externals = seed(services, who, 1)
    spawn(services, who, [(externals[0], {"price": 1.0})])
    spawn(services, who, [(externals[0], {"price": 2.0})])
    with pytest.raises(TooManyJobs):
        spawn(services, who, [(externals[0], {"price": 3.0})])
    with services.db.read() as conn:
        assert conn.execute(select(jobs.c.pk)).all().__len__() == 2
    drain(services)
    spawn(services, who, [(externals[0], {"price": 4.0})])  # slots free again once complete


def test_graceful_release_hands_the_job_back(services: Services) -> None:
    who = principal(services)
    externals = seed(services, who, 25)
    job_id = spawn(services, who, [(e, {"price": 5.0}) for e in externals])
    job = claim(services, "a")
    assert job is not None and services.jobs.run_batch(job) is False
    services.jobs.release(job)
    row = job_row(services, job_id)
    assert (row.status, row.lease_owner, row.next_index) == ("queued", None, 20)
    again = claim(services, "b")
    assert again is not None and again.next_index == 20


def test_worker_wakes_on_a_new_job_without_polling(services_for: Callable[..., Services]) -> None:
    services = services_for(idle_check_seconds=30)  # a poll loop would take 30 s
    who = principal(services)
    externals = seed(services, who, 100)
    worker = Worker(services.jobs)
    worker.start()
    try:
        time.sleep(0.2)  # the worker is idle, waiting
        started = time.monotonic()
        job_id = spawn(services, who, [(e, {"price": 2.0}) for e in externals])
        while job_row(services, job_id).status != "complete":
            assert time.monotonic() - started < 5
            time.sleep(0.005)
    finally:
        worker.shutdown()
    assert time.monotonic() - started < 2


@pytest.mark.postgres
def test_postgres_listen_notify_wakes_a_worker_in_another_process(pg_url: str) -> None:
    """Accepted by one Services (an API process) and run by another (a worker process): only
    NOTIFY can wake the worker before its 30 s idle check."""
    from backstock.bootstrap import Runtime, build_services
    from backstock.settings import Settings

    api_side = build_services(Settings(database_url=pg_url))
    worker_side = build_services(Settings(database_url=pg_url, idle_check_seconds=30))
    who = principal(api_side)
    externals = seed(api_side, who, 10)
    runtime = Runtime(worker_side, 1)
    runtime.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        job_id = spawn(api_side, who, [(e, {"price": 2.0}) for e in externals])
        while job_row(api_side, job_id).status != "complete":
            assert time.monotonic() - started < 5, "the worker was not woken"
            time.sleep(0.005)
    finally:
        runtime.stop()
        api_side.close()
        worker_side.close()


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
        thread.join(30)
    with services.db.read() as conn:
        rows = conn.execute(select(catalog_variants)).all()
        states = conn.execute(
            select(jobs.c.status, jobs.c.completed_count, jobs.c.total_count)
        ).all()
    assert {s.status for s in states} == {"complete"}
    assert all(s.completed_count == s.total_count for s in states)
    for row in rows:
        key = (row.account_id, row.external_id)
        assert (row.price, row.sku) == (expected[key]["price"], expected[key]["sku"])
        assert row.update_count == counts[key]


def test_expired_jobs_are_deleted(services: Services) -> None:
    who = principal(services)
    externals = seed(services, who, 1)
    job_id = spawn(services, who, [(externals[0], {"price": 1.0})])
    drain(services)
    assert services.jobs.delete_expired() == 0
    with services.db.write() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(expires_at=1))
    assert services.jobs.delete_expired() == 1
    with services.db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 0


def test_a_batch_that_keeps_failing_is_marked_failed_and_the_queue_moves_on(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that fails one job's writes every time must not hold its account's queue."""
    from backstock.storage import jobs as jobs_store

    who = principal(services)
    externals = seed(services, who, 3)
    poisoned = spawn(services, who, [(e, {"price": 1.0}) for e in externals])
    healthy = spawn(services, who, [(externals[0], {"price": 2.0})])
    real = jobs_store.apply_variant_changes

    def failing_for_price_one(conn: Any, account: Any, changes: Any, now: int) -> list[bool]:
        if any(c.get("price") == 1.0 for _, c in changes):
            raise RuntimeError("a bug")
        return real(conn, account, changes, now)

    monkeypatch.setattr(jobs_store, "apply_variant_changes", failing_for_price_one)
    worker = Worker(services.jobs)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while job_row(services, healthy).status != "complete":
            assert time.monotonic() < deadline, "the queue stayed blocked"
            time.sleep(0.05)
    finally:
        worker.shutdown()
    row = job_row(services, poisoned)
    assert (row.status, row.completed_count, row.failed_count) == ("complete", 0, 3)
    assert {e["code"] for e in orjson.loads(row.errors)} == {"internal_error"}
    prices = {r.external_id: r.price for r in variant_rows(services).values()}
    assert prices == {
        externals[0]: 2.0,
        externals[1]: 9.5,
        externals[2]: 9.5,
    }  # nothing half-applied
