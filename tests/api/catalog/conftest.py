"""Fixtures for the catalog item and variant HTTP suite.

Speed: a fresh PostgreSQL database per test costs ~0.5 s, so this suite shares one database
(and one app, without a job worker) per backend for the whole session and isolates tests by
tenant instead: every test gets its own accounts (``key_for`` suffixes the account name with a
per-test tag). Every statement in the service filters by account, so a test sees only its own
rows; a leak between tenants would break the exact-list assertions all over this suite.

The root fixtures keep their meaning: ``api`` is a client with a valid key, parametrized over
SQLite and PostgreSQL; ``key_for(account, scopes)``; ``live_server.sdk()``.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import uvicorn
from starlette.testclient import TestClient

from backstock.bootstrap import build_app
from backstock.services import accounts
from backstock.services.container import Services
from backstock.settings import Settings
from backstock.storage import migrate
from tests.conftest import PG_ADMIN, Api, LiveServer, _pg_url

JSONAPI = "application/vnd.api+json"
BASE = "http://testserver"
READ = "catalogs:read"
WRITE = "catalogs:write"


# ---- one database, app and live server per backend -------------------------------------------


@pytest.fixture(scope="session")
def shared_sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('catalog') / 'backstock.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
def shared_postgresql_url(pg_template: str) -> Iterator[str]:
    name = f"backstock_cat_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield _pg_url(name)
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Both databases, as in the root conftest, but shared by every test of the session."""
    url: str = request.getfixturevalue(f"shared_{request.param}_url")
    return url


def _settings(database_url: str) -> Settings:
    # NORMAL: no fsync per commit. Durability across power loss is not under test here, and
    # the API behaves the same either way.
    return Settings(
        database_url=database_url, rate_limits="off", run_worker=False, sqlite_synchronous="NORMAL"
    )


@pytest.fixture(scope="session")
def _clients() -> Iterator[dict[str, TestClient]]:
    made: dict[str, TestClient] = {}
    yield made
    for client in made.values():
        client.__exit__(None, None, None)


@pytest.fixture
def client(database_url: str, _clients: dict[str, TestClient]) -> TestClient:
    if database_url not in _clients:
        made = TestClient(build_app(_settings(database_url)), raise_server_exceptions=False)
        made.__enter__()
        _clients[database_url] = made
    return _clients[database_url]


@pytest.fixture
def services(client: TestClient) -> Services:
    found: Services = client.app.state.services  # type: ignore[attr-defined]
    return found


@pytest.fixture
def key_for(services: Services) -> Callable[..., str]:
    """Keys for this test's own accounts: ``key_for()`` and ``key_for("other")`` differ, and
    neither is shared with any other test."""
    tag = uuid.uuid4().hex[:10]

    def make(account: str = "acme", scopes: tuple[str, ...] = (READ, WRITE)) -> str:
        return accounts.create_key(services.db, f"{account}-{tag}", scopes).key

    return make


@pytest.fixture(scope="session")
def _servers() -> Iterator[dict[str, tuple[str, uvicorn.Server, threading.Thread]]]:
    made: dict[str, tuple[str, uvicorn.Server, threading.Thread]] = {}
    yield made
    for _url, server, thread in made.values():
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def live_server(
    database_url: str,
    key_for: Callable[..., str],
    _servers: dict[str, tuple[str, uvicorn.Server, threading.Thread]],
) -> LiveServer:
    """The app under uvicorn on a loopback port (one per backend), for Klaviyo's SDK."""
    if database_url not in _servers:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = uvicorn.Config(
            build_app(_settings(database_url)), host="127.0.0.1", port=port, log_level="warning"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        _servers[database_url] = (f"http://127.0.0.1:{port}", server, thread)
    return LiveServer(_servers[database_url][0], key_for)


# ---- helpers ---------------------------------------------------------------------------------


def enc(compound: str) -> str:
    """A compound id as Klaviyo's SDK puts it in a path: every reserved character encoded."""
    return quote(compound, safe="")


def variant_path(compound: str) -> str:
    return f"/api/catalog-variants/{enc(compound)}"


def item_path(compound: str) -> str:
    return f"/api/catalog-items/{enc(compound)}"


def assert_error(
    response: Any,
    status: int,
    code: str | None = None,
    *,
    pointer: str | list[str] | None = None,
    parameter: str | None = None,
) -> list[dict[str, Any]]:
    """A JSON:API error document with this status; ``pointer``/``parameter`` are checked
    exactly against every error's ``source``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == JSONAPI
    errors: list[dict[str, Any]] = response.json()["errors"]
    assert errors
    for error in errors:
        for member in ("id", "code", "title", "detail"):
            assert isinstance(error[member], str), error
            assert error[member], error
    if code is not None:
        assert {error["code"] for error in errors} == {code}
    if pointer is not None:
        wanted = [pointer] if isinstance(pointer, str) else pointer
        assert sorted(e.get("source", {}).get("pointer") for e in errors) == sorted(wanted)
    if parameter is not None:
        assert [e.get("source", {}).get("parameter") for e in errors] == [parameter]
    return errors


def ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == JSONAPI
    body: dict[str, Any] = response.json()
    return body


def ids(response: Any) -> list[str]:
    return [resource["id"] for resource in ok(response)["data"]]


def all_variant_ids(api: Api) -> list[str]:
    return ids(api.get("/api/catalog-variants"))


def all_item_ids(api: Api) -> list[str]:
    return ids(api.get("/api/catalog-items"))


def key_id(key: str) -> str:
    """The id part of ``pk_<key id>_<secret>``."""
    return key.removeprefix("pk_").split("_", 1)[0]
