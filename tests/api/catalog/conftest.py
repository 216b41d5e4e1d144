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

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from backstock.bootstrap import build_app
from backstock.services import accounts
from backstock.services.container import Services
from backstock.settings import Settings
from backstock.storage import migrate
from tests.conftest import Api, LiveServer, cloned_database, served

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
    with cloned_database(pg_template, "backstock_cat") as url:
        yield url


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
def _servers() -> Iterator[tuple[ExitStack, dict[str, str]]]:
    """Live servers started so far (by database URL), stopped at the end of the session."""
    with ExitStack() as stack:
        yield stack, {}


@pytest.fixture
def live_server(
    database_url: str, key_for: Callable[..., str], _servers: tuple[ExitStack, dict[str, str]]
) -> LiveServer:
    """The app under uvicorn on a loopback port (one per backend), for Klaviyo's SDK."""
    stack, urls = _servers
    if database_url not in urls:
        urls[database_url] = stack.enter_context(served(build_app(_settings(database_url))))
    return LiveServer(urls[database_url], key_for)


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
