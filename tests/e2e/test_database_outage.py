"""The database goes away while jobs run and comes back: 503s meanwhile (JSON:API, with
Retry-After), then every accepted job completes exactly once, with no restart."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, select
from starlette.testclient import TestClient

from backstock.bootstrap import build_app, build_services
from backstock.settings import Settings
from backstock.storage.database import sqlalchemy_url
from backstock.storage.schema import catalog_variants, jobs
from tests.proxy import CuttableProxy
from tests.support import Api, bulk_body, make_key, seed_catalog

pytestmark = [pytest.mark.postgres]


@pytest.fixture
def proxy() -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(("127.0.0.1", 5432))
    yield proxy
    proxy.close()


def test_postgres_outage_gives_503_then_full_recovery(pg_url: str, proxy: CuttableProxy) -> None:
    via_proxy = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = Settings(
        database_url=via_proxy,
        rate_limits="off",
        worker_batch_size=1,
        lease_seconds=30,
        pool_timeout_seconds=1,
    )
    setup = build_services(Settings(database_url=pg_url))
    key = make_key(setup, "acme")
    setup.close()
    with TestClient(build_app(settings), raise_server_exceptions=False) as client:
        api = Api(client, key)
        externals = seed_catalog(api, variants=20)
        accepted = []
        for n in range(5):
            response = api.post(
                "/api/catalog-variant-bulk-update-jobs",
                bulk_body([(e, {"price": float(n)}) for e in externals]),
            )
            assert response.status_code == 202
            accepted.append(response.json()["data"]["id"])
        proxy.cut()
        outage = [api.get("/api/catalog-variants") for _ in range(3)]
        for response in outage:
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "1"
            assert response.json()["errors"][0]["code"] == "service_unavailable"
        time.sleep(0.5)  # the worker keeps failing meanwhile
        proxy.restore()
        deadline = time.monotonic() + 30
        while True:
            response = api.get(
                "/api/catalog-variant-bulk-update-jobs",
                params={"filter": 'equals(status,"complete")'},
            )
            if response.status_code == 200 and len(response.json()["data"]) == len(accepted):
                break
            assert time.monotonic() < deadline, response.text
            time.sleep(0.05)
    engine = create_engine(sqlalchemy_url(pg_url))
    with engine.connect() as conn:
        counts = [r.update_count for r in conn.execute(select(catalog_variants))]
        finished = conn.execute(select(jobs.c.completed_count, jobs.c.total_count)).all()
        prices = {r.price for r in conn.execute(select(catalog_variants))}
    engine.dispose()
    assert counts == [5] * 20  # each of the 5 jobs updated each variant exactly once
    assert all(done == total == 20 for done, total in finished)
    assert prices == {4.0}  # the last accepted job wins
