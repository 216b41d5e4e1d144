"""Completed jobs expire: 404 once ``expires_at`` has passed, deleted by the reaper."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from starlette.testclient import TestClient

from tests.support import Api, call, get_job, listed_ids, spawn, wait_for_job

pytestmark = pytest.mark.own_database


RETENTION_DAYS = 0.00002
"""1.728 s: long enough to read a fresh job, short enough to wait for."""


def test_a_job_answers_404_once_it_has_expired_and_is_then_reaped(
    app_factory: Callable[..., TestClient], key_for: Callable[..., str]
) -> None:
    client = app_factory(job_retention_days=RETENTION_DAYS)
    api = Api(client, key_for())
    old = wait_for_job(api, spawn(api, [("V1", {"price": 1.0})]))
    completed = datetime.fromisoformat(old["attributes"]["completed_at"])
    expires = datetime.fromisoformat(old["attributes"]["expires_at"])
    assert abs(expires - completed - timedelta(days=RETENTION_DAYS)) < timedelta(milliseconds=1)

    deadline = time.monotonic() + 5
    while get_job(api, old["id"]).status_code == 200:
        assert time.monotonic() < deadline, "the job never expired"
        time.sleep(0.02)
    assert datetime.now(UTC) >= expires
    assert get_job(api, old["id"]).json()["errors"][0]["code"] == "not_found"
    assert listed_ids(api) == []

    fresh = wait_for_job(api, spawn(api, [("V2", {"price": 2.0})]))["id"]
    services = client.app.services  # type: ignore[attr-defined]
    assert call(services, services.jobs.delete_expired) == 1
    assert call(services, services.jobs.delete_expired) == 0
    assert get_job(api, fresh).status_code == 200
    assert listed_ids(api) == [fresh]
