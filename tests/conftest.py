"""Fixtures: a real SQLite file per test, a fresh PostgreSQL database per test (cloned from a
migrated template), the app behind a test client, and API keys as factories."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from backstock.bootstrap import build_app, build_services
from backstock.services import accounts
from backstock.services.container import Services
from backstock.settings import Settings
from backstock.storage import migrate

PG_ADMIN = os.environ.get("BACKSTOCK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BACKSTOCK_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"
TEMPLATE = f"backstock_tpl_{os.getpid()}"
REVISION = "2026-10-15"


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({exc})"
    if IN_CI:
        pytest.fail(f"{message}; under CI=true these tests must run")
    pytest.skip(message)


def _pg_url(database: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + database


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        _unavailable("PostgreSQL at 127.0.0.1:5432", exc)
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
    migrate.upgrade(_pg_url(TEMPLATE))
    yield TEMPLATE
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')


@contextmanager
def cloned_database(template: str, prefix: str = "backstock_t") -> Iterator[str]:
    """A fresh PostgreSQL database cloned from the migrated template, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _pg_url(name)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    with cloned_database(pg_template) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'backstock.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Run the test on both databases."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def settings_for(database_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "rate_limits": "off",
            "idle_check_seconds": 0.5,
        }
        return Settings(**(values | overrides))

    return make


@dataclass
class Api:
    """A test client that speaks like Klaviyo's SDK: key, revision and media type preset."""

    client: TestClient
    key: str
    revision: str = REVISION
    headers: dict[str, str] = field(default_factory=dict)

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        base = {
            "Authorization": f"Klaviyo-API-Key {self.key}",
            "revision": self.revision,
            "Accept": "application/vnd.api+json",
            "Content-Type": "application/vnd.api+json",
        }
        return base | self.headers | (extra or {})

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(path, headers=self._headers(kw.pop("headers", None)), **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self._send("POST", path, body, kw)

    def patch(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self._send("PATCH", path, body, kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.client.delete(path, headers=self._headers(kw.pop("headers", None)), **kw)

    def _send(self, method: str, path: str, body: Any, kw: dict[str, Any]) -> Any:
        headers = self._headers(kw.pop("headers", None))
        if body is not None and "content" not in kw:
            kw["json"] = body
        return self.client.request(method, path, headers=headers, **kw)

    def as_key(self, key: str) -> Api:
        return Api(self.client, key, self.revision, dict(self.headers))


@pytest.fixture
def app_factory(settings_for: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(build_app(settings_for(**overrides)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def services_for(settings_for: Callable[..., Settings]) -> Iterator[Callable[..., Services]]:
    """Services outside any app (the CLI's view), closed after the test."""
    made: list[Services] = []

    def make(**overrides: Any) -> Services:
        made.append(build_services(settings_for(**overrides)))
        return made[-1]

    yield make
    for services in made:
        services.close()


@pytest.fixture
def key_for(services_for: Callable[..., Services]) -> Callable[..., str]:
    services = services_for()

    def make(
        account: str = "acme", scopes: tuple[str, ...] = ("catalogs:read", "catalogs:write")
    ) -> str:
        return accounts.create_key(services.db, account, scopes).key

    return make


@pytest.fixture
def client(app_factory: Callable[..., TestClient]) -> TestClient:
    return app_factory()


@pytest.fixture
def api(client: TestClient, key_for: Callable[..., str]) -> Api:
    return Api(client, key_for())


# ---- catalog factories -----------------------------------------------------------------------


def item_body(external: str, **attributes: Any) -> dict[str, Any]:
    base = {
        "external_id": external,
        "title": f"Item {external}",
        "description": "d",
        "url": "https://shop.example/i",
    }
    return {"data": {"type": "catalog-item", "attributes": base | attributes}}


def variant_body(external: str, item: str, **attributes: Any) -> dict[str, Any]:
    base = {
        "external_id": external, "title": f"Variant {external}", "description": "d",
        "sku": f"SKU-{external}", "inventory_quantity": 10, "price": 9.5,
        "url": "https://shop.example/v",
    }  # fmt: skip
    return {
        "data": {
            "type": "catalog-variant",
            "attributes": base | attributes,
            "relationships": {"item": {"data": {"type": "catalog-item", "id": cid(item)}}},
        }
    }


def cid(external: str) -> str:
    return f"$custom:::$default:::{external}"


def seed_catalog(api: Api, item: str = "ITEM", variants: int = 3) -> list[str]:
    assert api.post("/api/catalog-items", item_body(item)).status_code == 201
    externals = [f"{item}-V{i}" for i in range(variants)]
    for external in externals:
        response = api.post("/api/catalog-variants", variant_body(external, item))
        assert response.status_code == 201, response.text
    return externals


def bulk_body(updates: list[tuple[str, dict[str, Any]]], shape: str = "data") -> dict[str, Any]:
    variants = [{"type": "catalog-variant", "id": cid(e), "attributes": a} for e, a in updates]
    return {
        "data": {
            "type": "catalog-variant-bulk-update-job",
            "attributes": {"variants": {"data": variants} if shape == "data" else variants},
        }
    }


# ---- a real HTTP server, for Klaviyo's SDK ---------------------------------------------------


@dataclass
class LiveServer:
    url: str
    key_for: Callable[..., str]

    def sdk(self, key: str | None = None) -> Any:
        from klaviyo_api import KlaviyoAPI

        return KlaviyoAPI(key or self.key_for(), test_host=self.url, max_retries=1, max_delay=0)


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` under uvicorn in a thread on a free loopback port; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def live_server(
    settings_for: Callable[..., Settings], key_for: Callable[..., str]
) -> Iterator[LiveServer]:
    """The app under uvicorn in a thread, on a free loopback port, with its worker running."""
    with served(build_app(settings_for())) as url:
        yield LiveServer(url, key_for)


def wait_for_job(api: Api, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """Poll the job until it is complete; return its resource object."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        response = api.get(f"/api/catalog-variant-bulk-update-jobs/{job_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        if data["attributes"]["status"] == "complete":
            return data
        assert time.monotonic() < deadline, f"job {job_id} not complete: {data}"
        time.sleep(0.01)
