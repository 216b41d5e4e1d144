"""The request limits of the bulk update endpoint: 4 MB of payload, jobs in progress."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import orjson
import pytest
from starlette.testclient import TestClient

from tests.support import JOBS, Api, bulk_body, errors_of, listed_ids, spawn, wait_for_job

pytestmark = pytest.mark.own_database


LIMIT = 4 * 1024 * 1024
"""The seed's "4MB", read generously: 4 MiB."""


def padded_body(size: int) -> bytes:
    """A valid job document of exactly ``size`` bytes (JSON allows trailing whitespace)."""
    body = orjson.dumps(bulk_body([("V1", {"price": 1.0})]))
    return body + b" " * (size - len(body))


def test_a_body_of_exactly_4_mb_is_accepted(idle_api: Api) -> None:
    response = idle_api.post(JOBS, content=padded_body(LIMIT))
    assert response.status_code == 202, response.text


def _chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 64 * 1024):
        yield body[start : start + 64 * 1024]


@pytest.mark.parametrize("length", ["declared", "understated", "absent"])
def test_a_body_over_4_mb_is_413(idle_api: Api, length: str) -> None:
    body = padded_body(LIMIT + 1)
    if length == "declared":
        response = idle_api.post(JOBS, content=body)
    elif length == "understated":
        response = idle_api.post(JOBS, content=body, headers={"Content-Length": "1000"})
    else:  # chunked transfer encoding
        response = idle_api.post(JOBS, content=_chunks(body))
        assert response.request.headers["transfer-encoding"] == "chunked"

    [error] = errors_of(response, 413)
    assert "4 MB" in error["detail"]
    assert listed_ids(idle_api) == []


def test_too_many_jobs_in_progress_is_429_for_that_account_only(
    app_factory: Callable[..., TestClient], key_for: Callable[..., str]
) -> None:
    api = Api(app_factory(run_worker=False, max_jobs_in_progress=3), key_for())
    other = api.as_key(key_for("other"))
    accepted = [spawn(api, [(f"V{i}", {"price": 1.0})]) for i in range(3)]

    refused = api.post(JOBS, bulk_body([("V9", {"price": 1.0})]))

    [error] = errors_of(refused, 429)
    assert error["code"] == "too_many_jobs"
    assert "3 jobs" in error["detail"]
    assert refused.headers["Retry-After"].isdigit()
    assert listed_ids(api) == accepted[::-1]
    assert listed_ids(other) == []
    spawn(other, [("V9", {"price": 1.0})])

    # Once a worker completes the account's jobs, their slots are free again.
    worker = Api(app_factory(max_jobs_in_progress=3), api.key)
    for job_id in accepted:
        wait_for_job(worker, job_id)
    spawn(api, [("V9", {"price": 1.0})])
