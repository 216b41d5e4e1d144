"""SQLite acceptance: concurrent spawns committed in groups, in order, each with its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from backstock.domain.errors import TooManyJobs, Unavailable
from backstock.services import accounts
from backstock.services.container import Services
from backstock.storage.schema import jobs
from tests.support import bulk_body


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url


def _key(services: Services, account: str) -> str:
    key = accounts.create_key(services.db, account, ["catalogs:read", "catalogs:write"]).key
    return f"Klaviyo-API-Key {key}"


def _body(n: int) -> bytes:
    return orjson.dumps(bulk_body([(f"V{n}", {"price": float(n)})]))


def _spawn_all(services: Services, requests: list[tuple[str, bytes]]) -> list[Any]:
    """Spawn concurrently on one event loop; each request's job or exception, in order."""

    async def run() -> list[Any]:
        async def admit(_who: object) -> None:
            return None

        spawns = [services.jobs.spawn(key, body, admit) for key, body in requests]
        try:
            return await asyncio.gather(*spawns, return_exceptions=True)
        finally:
            await services.jobs.direct.close()

    return asyncio.run(run())


def _recording_groups(services: Services) -> list[int]:
    sizes: list[int] = []
    group = services.jobs._group
    commit = group._commit

    def recording(batch: list[Any]) -> list[Any]:
        sizes.append(len(batch))
        return commit(batch)

    group._commit = recording
    return sizes


def test_concurrent_spawns_share_commits_in_acceptance_order(
    services_for: Callable[..., Services],
) -> None:
    services = services_for()
    key = _key(services, "acme")
    sizes = _recording_groups(services)

    outcomes = _spawn_all(services, [(key, _body(n)) for n in range(30)])

    assert [type(o).__name__ for o in outcomes] == ["JobRecord"] * 30
    assert sum(sizes) == 30 and max(sizes) > 1, sizes  # grouped, nothing lost or repeated
    with services.db.read() as conn:
        stored = [row.id for row in conn.execute(select(jobs.c.id).order_by(jobs.c.pk))]
    assert stored == [o.id for o in outcomes]  # queued in the order the requests came


def test_each_request_of_a_group_gets_its_own_429(services_for: Callable[..., Services]) -> None:
    services = services_for(max_jobs_in_progress=3)
    acme, other = _key(services, "acme"), _key(services, "other")
    sizes = _recording_groups(services)

    outcomes = _spawn_all(services, [(acme, _body(n)) for n in range(6)] + [(other, _body(9))])

    assert max(sizes) > 1
    assert [type(o).__name__ for o in outcomes] == ["JobRecord"] * 3 + ["TooManyJobs"] * 3 + [
        "JobRecord"
    ]
    assert all(isinstance(o, TooManyJobs) for o in outcomes[3:6])
    with services.db.read() as conn:
        assert len(conn.execute(select(jobs.c.id)).all()) == 4


def test_a_failed_commit_fails_every_request_of_its_group(
    services_for: Callable[..., Services],
) -> None:
    services = services_for()
    key = _key(services, "acme")

    def failing(_batch: list[Any]) -> list[Any]:
        raise Unavailable("The database's disk is full", retry_after=5)

    services.jobs._group._commit = failing
    outcomes = _spawn_all(services, [(key, _body(n)) for n in range(5)])

    assert all(isinstance(o, Unavailable) for o in outcomes)
    with services.db.read() as conn:
        assert conn.execute(select(jobs.c.id)).all() == []


def test_close_stops_the_committer_and_a_later_spawn_starts_another(
    services_for: Callable[..., Services],
) -> None:
    services = services_for()
    key = _key(services, "acme")
    assert len(_spawn_all(services, [(key, _body(1))])) == 1
    committer = services.jobs._group._thread
    assert committer is not None and committer.is_alive()

    services.jobs.close()
    assert not committer.is_alive()
    [job] = _spawn_all(services, [(key, _body(2))])
    assert job.status == "queued"
