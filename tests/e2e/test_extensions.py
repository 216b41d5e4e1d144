"""Backstock's job extensions end to end, with real processes as an operator starts them: one
test for each guarantee of docs/extensions.md."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest
from sqlalchemy import create_engine, func, select

from backstock.domain.bodies import load_payload
from backstock.domain.webhooks import verify
from backstock.storage.database import sqlalchemy_url
from backstock.storage.schema import (
    catalog_variants,
    job_payloads,
    jobs,
    metadata,
    webhook_deliveries,
)
from tests.support import (
    REVISION,
    Cluster,
    Receiver,
    bulk_body,
    cid,
    free_port,
    item_body,
    kill,
    sse_events,
    variant_body,
)

pytestmark = pytest.mark.e2e

JOBS = "/api/catalog-variant-bulk-update-jobs"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'backstock.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def connect() -> Iterator[Callable[..., httpx.Client]]:
    """HTTP clients of a key to a server, closed after the test."""
    made: list[httpx.Client] = []

    def make(base_url: str, key: str, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Klaviyo-API-Key {key}", "revision": REVISION}
        made.append(httpx.Client(base_url=base_url, headers=headers, timeout=timeout))
        return made[-1]

    yield make
    for client in made:
        client.close()


def _serve(cluster: Cluster, *args: str) -> str:
    cluster.serve(*args)
    return cluster.base_url


def _seed(http: httpx.Client, variants: int) -> list[str]:
    assert http.post("/api/catalog-items", json=item_body("P")).status_code == 201
    externals = [f"V{n}" for n in range(variants)]
    for external in externals:
        assert (
            http.post("/api/catalog-variants", json=variant_body(external, "P")).status_code == 201
        )
    return externals


def _job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    response = http.get(f"{JOBS}/{job_id}")
    assert response.status_code == 200, response.text
    attributes: dict[str, Any] = response.json()["data"]["attributes"]
    return attributes


def _until(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.02)
    return found


def _complete(http: httpx.Client, job_id: str) -> dict[str, Any]:
    return _until(
        lambda: (a := _job(http, job_id))["status"] == "complete" and a, what=f"job {job_id}"
    )


@pytest.fixture
def ready(make_cluster: Callable[..., Cluster], db_url: str) -> Callable[..., tuple[Cluster, str]]:
    """A cluster of the test's database, migrated, and a key of its account ``acme``."""

    def make(**settings: str) -> tuple[Cluster, str]:
        cluster = make_cluster(database_url=db_url, **settings)
        cluster.cli("migrate")
        return cluster, cluster.new_key("acme")

    return make


@pytest.fixture
def rows_of(db_url: str) -> Iterator[Callable[..., Any]]:
    engine = create_engine(sqlalchemy_url(db_url))

    def read(query: Any) -> list[Any]:
        with engine.connect() as conn:
            return list(conn.execute(query).all())

    yield read
    engine.dispose()


def test_fifty_concurrent_spawns_with_one_key_across_two_api_processes_make_one_job(
    ready: Callable[..., tuple[Cluster, str]],
    connect: Callable[..., httpx.Client],
    rows_of: Callable[..., Any],
) -> None:
    cluster, key = ready()
    urls = [_serve(cluster, "--no-worker"), _serve(cluster, "--no-worker")]
    clients = [connect(url, key) for url in urls]
    _seed(clients[0], 5)
    body = bulk_body([(f"V{n}", {"price": 12.5}) for n in range(5)])

    def post(n: int) -> httpx.Response:
        headers = {"Idempotency-Key": "nightly-sync-2026-12-01"}
        return clients[n % 2].post(JOBS, json=body, headers=headers)

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(post, range(50)))
    assert {r.status_code for r in responses} == {202}, [r.text for r in responses[:3]]
    assert len({r.json()["data"]["id"] for r in responses}) == 1
    assert rows_of(select(func.count()).select_from(jobs)) == [(1,)]


def test_sigkill_of_a_worker_right_after_a_cancel_applies_nothing_more(
    ready: Callable[..., tuple[Cluster, str]],
    connect: Callable[..., httpx.Client],
    rows_of: Callable[..., Any],
) -> None:
    cluster, key = ready(worker_batch_size="1", lease_seconds="1")
    http = connect(_serve(cluster, "--no-worker"), key)
    externals = _seed(http, 100)
    worker = cluster.start("worker", log="worker-1.log")
    attempt = 0
    for attempt in range(5):  # noqa: B007 - a job that completed before its cancel: another
        response = http.post(JOBS, json=bulk_body([(e, {"price": 77.0}) for e in externals]))
        job_id = response.json()["data"]["id"]
        _until(lambda j=job_id: _job(http, j)["completed_count"] > 0, what="a batch applied")
        cancelled = http.post(f"{JOBS}/{job_id}/cancel")
        if cancelled.status_code == 200:
            break
        assert cancelled.status_code == 409, cancelled.text
    else:
        pytest.fail("every job completed before its cancel")
    kill(worker)
    at_cancel = cancelled.json()["data"]["attributes"]
    assert at_cancel["status"] == "cancelled"
    assert 0 < at_cancel["completed_count"] < 100
    later = http.post(JOBS, json=bulk_body([(externals[-1], {"price": 1.0})])).json()["data"]["id"]
    cluster.start("worker", log="worker-2.log")  # after the dead worker's lease lapsed, too
    _complete(http, later)
    time.sleep(1.5)
    final = _job(http, job_id)
    assert (final["status"], final["completed_count"]) == (
        "cancelled",
        at_cancel["completed_count"],
    )
    # every update applied, exactly once: the earlier attempts' (complete), the cancelled
    # job's up to its cancel, and the later job's
    [(applied,)] = rows_of(select(func.sum(catalog_variants.c.update_count)))
    assert applied == 100 * attempt + at_cancel["completed_count"] + 1


def test_a_dry_run_changes_no_row(
    ready: Callable[..., tuple[Cluster, str]],
    connect: Callable[..., httpx.Client],
    rows_of: Callable[..., Any],
) -> None:
    cluster, key = ready()
    http = connect(_serve(cluster), key)
    externals = _seed(http, 3)
    _complete(
        http, http.post(JOBS, json=bulk_body([(externals[0], {"price": 2.0})])).json()["data"]["id"]
    )

    def everything() -> dict[str, list[Any]]:
        return {
            name: sorted(map(tuple, rows_of(select(table))), key=repr)
            for name, table in metadata.tables.items()
        }

    before = everything()
    dry_runs = [
        (JOBS, bulk_body([(externals[1], {"price": 5.0}), ("GONE", {"price": 1.0})])),
        ("/api/catalog-variant-bulk-delete-jobs", {"data": {
            "type": "catalog-variant-bulk-delete-job",
            "attributes": {"variants": {"data": [
                {"type": "catalog-variant", "id": cid(e)} for e in externals]}}}}),
        ("/api/catalog-item-bulk-create-jobs", {"data": {
            "type": "catalog-item-bulk-create-job",
            "attributes": {"items": {"data": [item_body("NEW")["data"], item_body("P")["data"]]}}}}),
    ]  # fmt: skip
    for path, body in dry_runs:
        response = http.post(path, json=body, params={"dry_run": "true"})
        assert response.status_code == 200, response.text
        assert response.json()["meta"] == {"dry_run": True}
        assert response.json()["data"]["attributes"]["failed_count"] >= 0
    assert everything() == before


def test_a_retry_job_holds_exactly_the_failed_items(
    ready: Callable[..., tuple[Cluster, str]],
    connect: Callable[..., httpx.Client],
    rows_of: Callable[..., Any],
) -> None:
    cluster, key = ready()
    http = connect(_serve(cluster, "--no-worker"), key)
    externals = _seed(http, 4)
    updates = [
        ("GONE-A", {"price": 1.0, "sku": "a"}), (externals[0], {"price": 2.0}),
        ("GONE-B", {"price": 3.0}), (externals[1], {"price": 4.0}),
        ("GONE-C", {"title": "c"}),
    ]  # fmt: skip
    source = http.post(JOBS, json=bulk_body(updates)).json()["data"]["id"]
    worker = cluster.start("worker", log="worker-1.log")
    assert _complete(http, source)["failed_count"] == 3
    kill(worker)  # the retry job stays queued: its payload can be read
    retry = http.post(f"{JOBS}/{source}/retry")
    assert retry.status_code == 202, retry.text
    retry_id = retry.json()["data"]["id"]
    [payload] = rows_of(
        select(job_payloads.c.payload).join(jobs, jobs.c.pk == job_payloads.c.job_pk)
        .where(jobs.c.id == retry_id)
    )  # fmt: skip
    failed = [(external, changes) for external, changes in updates if external.startswith("GONE")]
    assert [[entry[0], entry[1]] for entry in load_payload(payload[0])] == [list(f) for f in failed]
    for external in ("GONE-A", "GONE-B", "GONE-C"):
        assert (
            http.post("/api/catalog-variants", json=variant_body(external, "P")).status_code == 201
        )
    cluster.start("worker", log="worker-2.log")
    done = _complete(http, retry_id)
    assert (done["completed_count"], done["failed_count"], done["retry_of"]) == (3, 0, source)


@pytest.mark.postgres
def test_events_reach_a_client_of_another_api_process(
    make_cluster: Callable[..., Cluster], connect: Callable[..., httpx.Client], pg_url: str
) -> None:
    cluster = make_cluster(database_url=pg_url, worker_batch_size="10")
    key = cluster.new_key()
    accepting = connect(_serve(cluster, "--no-worker"), key)
    watching = connect(_serve(cluster, "--no-worker"), key, timeout=60)
    externals = _seed(accepting, 50)
    job_id = accepting.post(JOBS, json=bulk_body([(e, {"price": 3.0}) for e in externals]))
    job_id = job_id.json()["data"]["id"]
    received: list[str] = []
    first = threading.Event()

    def watch() -> None:
        with watching.stream("GET", f"{JOBS}/{job_id}/events") as stream:
            assert stream.status_code == 200
            for chunk in stream.iter_text():
                received.append(chunk)
                first.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert first.wait(10), "no first event"
    cluster.start("worker", log="worker.log")  # the job runs only now, in another process
    watcher.join(30)
    assert not watcher.is_alive(), "the stream did not end"
    events = sse_events("".join(received))
    assert events[0][0] == "queued"
    assert events[-1][0] == "complete"
    assert events[-1][1]["data"]["attributes"]["completed_count"] == 50
    counts = [data["data"]["attributes"]["completed_count"] for _, data in events]
    assert counts == sorted(counts)  # progress, in order


def test_a_cancel_ends_a_stream_in_the_same_process(
    ready: Callable[..., tuple[Cluster, str]], connect: Callable[..., httpx.Client]
) -> None:
    cluster, key = ready()
    http = connect(_serve(cluster, "--no-worker"), key)
    job_id = http.post(JOBS, json=bulk_body([("GONE", {"price": 1.0})])).json()["data"]["id"]
    received: list[str] = []
    first = threading.Event()

    def watch() -> None:
        with connect(cluster.base_url, key).stream("GET", f"{JOBS}/{job_id}/events") as stream:
            for chunk in stream.iter_text():
                received.append(chunk)
                first.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert first.wait(10)
    started = time.monotonic()
    assert http.post(f"{JOBS}/{job_id}/cancel").status_code == 200
    watcher.join(10)
    assert not watcher.is_alive()
    assert time.monotonic() - started < 0.9  # heard of at once, not at the next poll
    assert [name for name, _ in sse_events("".join(received))] == ["queued", "cancelled"]


def test_a_webhook_receiver_that_is_down_for_a_while_still_gets_its_delivery(
    ready: Callable[..., tuple[Cluster, str]],
    connect: Callable[..., httpx.Client],
    rows_of: Callable[..., Any],
) -> None:
    cluster, key = ready(webhook_backoff_seconds="0.2")
    cluster.env["COLUMNS"] = "250"  # the CLI's tables, unwrapped
    receiver = Receiver(free_port())  # down: nothing listens on its port yet
    secret = cluster.cli("webhooks", "set", "acme", receiver.url)
    assert secret.startswith("whsec_")
    http = connect(_serve(cluster), key)
    job_id = http.post(JOBS, json=bulk_body([("GONE", {"price": 1.0})])).json()["data"]["id"]
    _complete(http, job_id)
    tried = select(webhook_deliveries.c.attempts, webhook_deliveries.c.last_error)
    _until(lambda: (found := rows_of(tried)) and found[0][0] >= 2, what="two tries")
    assert "Connection refused" in cluster.cli("webhooks", "deliveries", "acme")  # the log says
    receiver.start()
    try:
        [got] = receiver.wait(1, timeout=30)
    finally:
        receiver.stop()
    assert verify(secret, got.headers["Backstock-Signature"], got.body)
    assert orjson.loads(got.body)["data"]["id"] == job_id
    settled = select(webhook_deliveries.c.status)
    _until(lambda: rows_of(settled) == [("delivered",)], what="delivered")
    log = cluster.cli("webhooks", "deliveries", "acme")
    assert job_id in log and "delivered" in log
    assert "whsec_" not in cluster.cli("webhooks", "show", "acme")
