"""The one fixture set.

Databases: every test has one (``database_url``). By default it is a database shared by every
test of the session on that engine, and tests are isolated by tenant instead: each test's keys
belong to accounts of its own (``key_for``), and every statement in the service filters by
account, so a leak between tenants would break the exact-list assertions all over the suite.
A test marked ``own_database`` gets a fresh one (a SQLite file, or a clone of a migrated
PostgreSQL template): for settings that change how the worker runs, or for looking at every
row of a table.

Apps: ``client`` serves the test's database with no job worker (accepted jobs stay queued);
``worker_client`` serves a second shared database with its worker running; ``app_factory``
makes apps with settings of the test's own, on its database. ``api``, ``worker_api``: clients
with a key of a fresh account. ``live_server``: the worker app under uvicorn, for Klaviyo's
SDK. ``make_cluster``: real ``backstock`` processes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import requests
from starlette.testclient import TestClient

from backstock.bootstrap import build_app, build_services
from backstock.services.container import Services
from backstock.settings import Settings
from backstock.storage import migrate
from tests.support import BOTH_SCOPES, Api, Cluster, LiveServer, call, make_key, served

if TYPE_CHECKING:
    from tests.contract.fuzzing import Target

PG_ADMIN = os.environ.get("BACKSTOCK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BACKSTOCK_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"
TEMPLATE = f"backstock_tpl_{os.getpid()}"
KeyFactory = Callable[..., str]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "own_database: the test gets a fresh database")


def unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({exc})"
    if IN_CI:
        pytest.fail(f"{message}; under CI=true these tests must run")
    pytest.skip(message)


def pg_url_of(database: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + database


# ---- databases -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        unavailable("PostgreSQL at 127.0.0.1:5432", exc)
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
    migrate.upgrade(pg_url_of(TEMPLATE))
    yield TEMPLATE
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')


@contextmanager
def cloned_database(template: str, prefix: str = "backstock_t") -> Iterator[str]:
    """A fresh PostgreSQL database cloned from the migrated template, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        # No WAL flush at each commit, as SQLite's NORMAL in ``test_settings``: PostgreSQL's
        # own durability across a power loss is not under test (a commit is visible to every
        # session at once either way, and the e2e tests kill Backstock, never PostgreSQL).
        admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    try:
        yield pg_url_of(name)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlite_database(folder: Path) -> str:
    url = f"sqlite:///{folder / 'backstock.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
def _shared() -> Iterator[dict[str, Any]]:
    """The session's shared databases, apps and servers, made on first use."""
    with ExitStack() as stack:
        yield {"stack": stack}


def _shared_database(request: pytest.FixtureRequest, engine: str, role: str) -> str:
    shared = request.getfixturevalue("_shared")
    name = f"{engine}-{role}"
    if name not in shared:
        if engine == "sqlite":
            folder = request.getfixturevalue("tmp_path_factory").mktemp(role)
            shared[name] = sqlite_database(folder)
        else:
            template = request.getfixturevalue("pg_template")
            shared[name] = shared["stack"].enter_context(cloned_database(template, f"bs_{role}"))
    url: str = shared[name]
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> str:
    """Run the test on both databases."""
    return str(request.param)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return sqlite_database(tmp_path)


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    with cloned_database(pg_template) as url:
        yield url


@pytest.fixture
def database_url(engine: str, request: pytest.FixtureRequest) -> str:
    """The test's database: shared by the session, or its own when marked ``own_database``."""
    if request.node.get_closest_marker("own_database") is None:
        return _shared_database(request, engine, "idle")
    url: str = request.getfixturevalue("sqlite_url" if engine == "sqlite" else "pg_url")
    return url


@pytest.fixture
def worker_database_url(engine: str, request: pytest.FixtureRequest) -> str:
    return _shared_database(request, engine, "worker")


def test_settings(database_url: str, **overrides: Any) -> Settings:
    # NORMAL: no fsync per commit. Durability across power loss is not under test here (the
    # e2e tests run real processes with the default), and the API behaves the same either way.
    values: dict[str, Any] = {
        "database_url": database_url,
        "rate_limits": "off",
        "idle_check_seconds": 0.5,
        "sqlite_synchronous": "NORMAL",
    }
    return Settings(**(values | overrides))


test_settings.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
def settings_for(database_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return test_settings(database_url, **overrides)

    return make


# ---- apps and services ---------------------------------------------------------------------------


def _shared_client(request: pytest.FixtureRequest, url: str, worker: bool) -> TestClient:
    shared = request.getfixturevalue("_shared")
    name = ("client", url)
    if name not in shared:
        app = build_app(test_settings(url, run_worker=worker))
        shared[name] = shared["stack"].enter_context(TestClient(app, raise_server_exceptions=False))
    client: TestClient = shared[name]
    return client


@pytest.fixture
def client(database_url: str, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    """The app on the test's database, without a job worker."""
    if request.node.get_closest_marker("own_database") is None:
        yield _shared_client(request, database_url, worker=False)
        return
    with TestClient(
        build_app(test_settings(database_url, run_worker=False)), raise_server_exceptions=False
    ) as made:
        yield made


@pytest.fixture
def idle_client(client: TestClient) -> TestClient:
    return client


@pytest.fixture
def worker_client(worker_database_url: str, request: pytest.FixtureRequest) -> TestClient:
    """The app with its job worker running, on the shared worker database."""
    return _shared_client(request, worker_database_url, worker=True)


@pytest.fixture
def services(client: TestClient) -> Services:
    found: Services = client.app.services  # type: ignore[attr-defined]
    return found


@pytest.fixture
def app_factory(settings_for: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """Apps with settings of the test's own (a job worker unless ``run_worker=False``)."""
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
    """Services outside any app (the CLI's and the worker's view), closed after the test."""
    made: list[Services] = []

    def make(**overrides: Any) -> Services:
        made.append(build_services(settings_for(**overrides)))
        return made[-1]

    yield make
    for services in made:
        services.close()


def _key_factory(services: Services) -> KeyFactory:
    """Keys of accounts of this test's own: ``make()`` and ``make("other")`` differ, and
    neither is shared with any other test."""
    tag = uuid.uuid4().hex[:10]

    def make(account: str = "acme", scopes: tuple[str, ...] = BOTH_SCOPES) -> str:
        return make_key(services, f"{account}-{tag}", scopes)

    return make


@pytest.fixture
def key_for(services: Services) -> KeyFactory:
    return _key_factory(services)


@pytest.fixture
def idle_key(key_for: KeyFactory) -> KeyFactory:
    return key_for


@pytest.fixture
def worker_key(worker_client: TestClient) -> KeyFactory:
    return _key_factory(worker_client.app.services)  # type: ignore[attr-defined]


@pytest.fixture
def api(client: TestClient, key_for: KeyFactory) -> Api:
    """A fresh account on the app without a worker: accepted jobs stay queued."""
    return Api(client, key_for())


@pytest.fixture
def idle_api(api: Api) -> Api:
    return api


@pytest.fixture
def worker_api(worker_client: TestClient, worker_key: KeyFactory) -> Api:
    """A fresh account on the app with its worker running."""
    return Api(worker_client, worker_key())


@pytest.fixture
def live_server(
    worker_client: TestClient, worker_key: KeyFactory, request: pytest.FixtureRequest
) -> LiveServer:
    """The worker app's database under uvicorn (worker included) on a loopback port, one per
    engine, for Klaviyo's SDK."""
    shared = request.getfixturevalue("_shared")
    services: Services = worker_client.app.services  # type: ignore[attr-defined]
    name = ("live", services.settings.database_url)
    if name not in shared:
        app = build_app(test_settings(services.settings.database_url))
        shared[name] = shared["stack"].enter_context(served(app))
    return LiveServer(shared[name], worker_key)


@pytest.fixture
def module_live_server(live_server: LiveServer) -> LiveServer:
    return live_server


# ---- real processes ------------------------------------------------------------------------------


@pytest.fixture
def cluster_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSTOCK_")}
    # One server process unless a test asks for more: with rate limits off, serve's ``auto``
    # would start one per CPU (tests/e2e/test_serve_processes.py tests that).
    env |= {
        "BACKSTOCK_RATE_LIMITS": "off",
        "BACKSTOCK_LOG_LEVEL": "warning",
        "BACKSTOCK_WORKERS": "1",
    }
    return env


@pytest.fixture
def make_cluster(tmp_path: Path, cluster_env: dict[str, str]) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(**settings: str) -> Cluster:
        env = cluster_env | {f"BACKSTOCK_{k.upper()}": v for k, v in settings.items()}
        cluster = Cluster(env, tmp_path)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop_all()


# ---- contract fuzzing (tests/contract) -----------------------------------------------------------


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One real Backstock for the contract fuzzing (``served``: uvicorn on a loopback port)
    over one SQLite file, with rate limits on (so every counted response carries
    ``RateLimit-*``) but generous enough that the fuzzing is not a sea of 429s, no job worker
    (spawned jobs stay queued; one job of each kind is applied here, so a ``complete`` job with
    an item error exists for every kind), a key with both scopes, and the catalog the
    documents' examples name."""
    from tests.contract import fuzzing

    url = sqlite_database(tmp_path_factory.mktemp("contract"))
    app = build_app(fuzzing.target_settings(url))
    services: Services = app.services
    key = make_key(services, "contract", BOTH_SCOPES)
    with fuzzing.serve(app) as base_url, fuzzing.HttpClient(base_url) as client:
        api = Api(client, key)
        fuzzing.seed(api)
        job_ids = fuzzing.spawn_jobs(api)
        while (claimed := call(services, lambda: services.jobs.claim("contract-seed"))) is not None:
            assert claimed[1], "a seeded job did not complete in one batch"
        yield fuzzing.Target(base_url, app, key, api, job_ids)


@pytest.fixture
def seeded_target(target: Target) -> Target:
    """The target with the example rows put back (an earlier operation may have deleted
    them), so that examples hit existing rows."""
    from tests.contract import fuzzing

    fuzzing.seed(target.api)
    return target


@pytest.fixture(scope="session")
def http_session() -> Iterator[requests.Session]:
    with requests.Session() as made:
        yield made
