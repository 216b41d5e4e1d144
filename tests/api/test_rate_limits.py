"""Rate limits per account and operation: burst and steady windows, headers, shared Redis,
fail-open when Redis is gone. Time is injected; no test sleeps through a window."""

from __future__ import annotations

import types
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from backstock.domain.errors import Throttled
from backstock.domain.ids import AccountId
from backstock.services.limits import Limiter
from backstock.settings import Settings
from tests.conftest import REDIS_URL, unavailable
from tests.support import Api, bulk_body

pytestmark = pytest.mark.own_database


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """Limits live outside the database: SQLite is enough."""
    return sqlite_url


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    import limits.storage.memory
    import limits.storage.redis

    import backstock.services.limits

    fake = FakeClock()
    stand_in = types.SimpleNamespace(time=fake.time, monotonic=fake.monotonic)
    for module in (limits.storage.memory, limits.storage.redis, backstock.services.limits):
        monkeypatch.setattr(module, "time", stand_in)
    return fake


@pytest.fixture
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        unavailable("Redis at 127.0.0.1:6379", exc)
    return REDIS_URL


def limited(app_factory: Callable[..., TestClient], key: str, **settings: Any) -> Api:
    client = app_factory(rate_limits="on", run_worker=False, **settings)
    return Api(client, key)


def spawn(api: Api, external: str) -> Any:
    return api.post(
        "/api/catalog-variant-bulk-update-jobs", bulk_body([(external, {"price": 1.0})])
    )


def test_a_burst_of_200_spawns_admits_75(
    app_factory: Callable[..., TestClient], key_for: Callable[..., str], clock: FakeClock
) -> None:
    api = limited(app_factory, key_for())
    statuses = [spawn(api, "V").status_code for _ in range(200)]
    assert statuses.count(202) == 75 and statuses.count(429) == 125
    listed = api.get("/api/catalog-variant-bulk-update-jobs").json()["data"]
    assert len(listed) == 75  # refused requests wrote nothing


def test_headers_on_admitted_and_refused_requests(
    app_factory: Callable[..., TestClient], key_for: Callable[..., str], clock: FakeClock
) -> None:
    api = limited(app_factory, key_for(), write_limits="2/second;700/minute")
    first = spawn(api, "V")
    assert first.status_code == 202
    assert first.headers["RateLimit-Limit"] == "2"
    assert first.headers["RateLimit-Remaining"] == "1"
    assert int(first.headers["RateLimit-Reset"]) >= 1
    assert spawn(api, "V").headers["RateLimit-Remaining"] == "0"
    refused = spawn(api, "V")
    assert refused.status_code == 429
    error = refused.json()["errors"][0]
    assert error["code"] == "throttled" and "2 per 1 second" in error["detail"]
    assert refused.headers["Retry-After"].isdigit() and int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Remaining"] == "0"
    clock.advance(1.01)
    assert spawn(api, "V").status_code == 202


def test_operations_and_accounts_have_their_own_buckets(
    app_factory: Callable[..., TestClient], key_for: Callable[..., str], clock: FakeClock
) -> None:
    api = limited(
        app_factory,
        key_for("acme"),
        write_limits="1/second;10/minute",
        read_limits="1/second;10/minute",
    )
    other = api.as_key(key_for("globex"))
    assert spawn(api, "V").status_code == 202
    assert spawn(api, "V").status_code == 429
    assert spawn(other, "V").status_code == 202  # another account
    assert api.get("/api/catalog-variants").status_code == 200  # another operation
    assert api.get("/api/catalog-variants").status_code == 429
    assert api.get("/api/catalog-items").status_code == 200


def test_the_steady_window_holds_over_a_minute(clock: FakeClock) -> None:
    limiter = Limiter(Settings(rate_limits="on", write_limits="75/second;700/minute"))
    account = AccountId(1)
    admitted = 0
    for _second in range(59):
        for _ in range(75):
            try:
                limiter.hit(account, "spawn", "75/second;700/minute")
                admitted += 1
            except Throttled as exc:
                assert exc.retry_after is not None and exc.retry_after >= 1
        clock.advance(1.0)
    assert admitted == 700
    clock.advance(2.0)  # the first second's requests have left the minute
    assert limiter.hit(account, "spawn", "75/second;700/minute") is not None


def test_rate_limits_off_admits_everything(
    app_factory: Callable[..., TestClient], key_for: Callable[..., str]
) -> None:
    api = Api(
        app_factory(rate_limits="off", run_worker=False, write_limits="1/second;1/minute"),
        key_for(),
    )
    assert [spawn(api, "V").status_code for _ in range(3)] == [202] * 3


@pytest.mark.redis
def test_two_processes_sharing_redis_admit_what_one_would(
    app_factory: Callable[..., TestClient],
    key_for: Callable[..., str],
    clock: FakeClock,
    redis_url: str,
) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    key = key_for()
    # A generous timeout: on a loaded machine a slow Redis answer would fail open (by design).
    # A minute-long window: Redis expires a window's key in real time (the fake clock cannot
    # stop it), so with a one-second window a slow machine's 200 spawns outlived it (100 in).
    shared = {
        "redis_url": redis_url, "redis_key_prefix": prefix, "redis_timeout_seconds": 5.0,
        "write_limits": "1000/second;75/minute",
    }  # fmt: skip
    one = limited(app_factory, key, **shared)
    two = limited(app_factory, key, **shared)
    statuses = [spawn(one if n % 2 else two, "V").status_code for n in range(200)]
    assert statuses.count(202) == 75


def test_unreachable_redis_fails_open_and_says_so(
    app_factory: Callable[..., TestClient], key_for: Callable[..., str]
) -> None:
    api = limited(
        app_factory, key_for(), redis_url="redis://127.0.0.1:1/0", write_limits="1/second;1/minute"
    )
    assert [spawn(api, "V").status_code for _ in range(3)] == [202] * 3
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert "failing open" in ready.json()["checks"]["rate_limits"]
