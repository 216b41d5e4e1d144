"""Klaviyo's seed-era Python SDK, ``klaviyo-api`` 1.2.1 (revision 2023-02-22, packages
``klaviyo_api`` and ``openapi_client``), runs its catalog flows unchanged against a real
Backstock, on SQLite and PostgreSQL.

1.2.1 cannot share the venv with klaviyo-api 25 (tests/api/test_sdk_lifecycle.py), so it is
installed once (``pip --target``) into pytest's cache, and the flows run in a subprocess with it
first on ``PYTHONPATH``: tests/e2e/sdk_seed_era_flow.py, which says what each flow covers.

Before the SDK's flows, plain HTTP uses Backstock's extensions (docs/extensions.md) in the same
account: a spawn with an ``Idempotency-Key`` (sent twice: one job), a job with a failed item and
its ``/retry`` (whose job carries ``retry_of``); the SDK then lists and reads them with its own
jobs. A ``/cancel`` needs a job still queued, and the live server's worker claims a job within a
millisecond of its spawn (on SQLite the spawn and the claim even take turns at the one writer),
so the cancelled job is made on a second server of the same build without a worker (the test's
idle database, where accepted jobs stay queued) and the SDK reads it there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from backstock.bootstrap import build_app
from backstock.settings import Settings
from tests.conftest import IN_CI, KeyFactory
from tests.support import (
    JOBS,
    JSONAPI,
    REVISION,
    LiveServer,
    bulk_body,
    item_body,
    ok,
    served,
    variant_body,
)

# A cold install of 1.2.1 counts against the first test's timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SDK = "klaviyo-api==1.2.1"
INSTALLED = "klaviyo_api-1.2.1.dist-info"
FLOW = Path(__file__).with_name("sdk_seed_era_flow.py")


def _cache_folder(request: pytest.FixtureRequest) -> Path:
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider (CI)
    if cache is None:
        folder: Path = request.getfixturevalue("tmp_path_factory").mktemp("klaviyo-api-1.2.1")
        return folder
    made: Path = cache.mkdir("klaviyo-api-1.2.1")
    return made


@pytest.fixture(scope="module")
def seed_sdk(request: pytest.FixtureRequest) -> Path:
    """A folder holding klaviyo-api 1.2.1 and its dependencies, for ``PYTHONPATH``."""
    folder = _cache_folder(request)
    if (folder / INSTALLED).is_dir():
        return folder
    for leftover in folder.iterdir():  # of an install that failed half way
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(folder), SDK]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
        failure = None if done.returncode == 0 else done.stderr.strip()[-2000:]
    except subprocess.TimeoutExpired:
        failure = "pip did not finish within 240 s"
    if failure is None and not (folder / INSTALLED).is_dir():
        failure = f"pip succeeded, but {INSTALLED} is not in {folder}"
    if failure is not None:
        reason = f"cannot install {SDK}: {failure}"
        if IN_CI:
            pytest.fail(f"{reason}; under CI=true this test must run")
        pytest.skip(reason)
    return folder


@pytest.fixture
def idle_url(settings_for: Callable[..., Settings]) -> Iterator[str]:
    """A server without a job worker on the test's (idle) database: its jobs stay queued."""
    with served(build_app(settings_for(run_worker=False))) as url:
        yield url


@pytest.fixture
def connect() -> Iterator[Callable[[str, str], httpx.Client]]:
    """Plain HTTP clients of a key, speaking the current revision; closed after the test."""
    made: list[httpx.Client] = []

    def make(base_url: str, key: str) -> httpx.Client:
        headers = {
            "Authorization": f"Klaviyo-API-Key {key}",
            "revision": REVISION,
            "Accept": JSONAPI,
            "Content-Type": JSONAPI,
        }
        made.append(httpx.Client(base_url=base_url, headers=headers, timeout=30))
        return made[-1]

    yield make
    for client in made:
        client.close()


def _wait(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        data: dict[str, Any] = ok(client.get(f"{JOBS}/{job_id}"))["data"]
        if data["attributes"]["status"] == "complete":
            return data
        assert time.monotonic() < deadline, data
        time.sleep(0.02)


def _extension_jobs(live: httpx.Client, idle: httpx.Client) -> dict[str, str]:
    """Variant update jobs made with Backstock's extensions; their ids."""
    ok(live.post("/api/catalog-items", json=item_body("EXT")), 201)
    for external in ("EXT-1", "EXT-2"):
        ok(live.post("/api/catalog-variants", json=variant_body(external, "EXT")), 201)

    # an idempotent spawn, sent twice: one job
    body, key = bulk_body([("EXT-1", {"price": 5.0})]), {"Idempotency-Key": "seed-era-nightly"}
    idempotent = ok(live.post(JOBS, json=body, headers=key), 202)["data"]["id"]
    assert ok(live.post(JOBS, json=body, headers=key), 202)["data"]["id"] == idempotent
    _wait(live, idempotent)

    # a job with a failed item (EXT-3 does not exist yet), retried once EXT-3 does
    body = bulk_body([("EXT-2", {"price": 6.0}), ("EXT-3", {"price": 7.0})])
    failed = ok(live.post(JOBS, json=body), 202)["data"]["id"]
    attributes = _wait(live, failed)["attributes"]
    assert (attributes["completed_count"], attributes["failed_count"]) == (1, 1)
    ok(live.post("/api/catalog-variants", json=variant_body("EXT-3", "EXT")), 201)
    retry = ok(live.post(f"{JOBS}/{failed}/retry"), 202)["data"]
    assert retry["attributes"]["retry_of"] == failed
    attributes = _wait(live, retry["id"])["attributes"]
    assert (attributes["completed_count"], attributes["failed_count"]) == (1, 0)

    # a queued job, cancelled
    queued = ok(idle.post(JOBS, json=bulk_body([("EXT-1", {"price": 8.0})])), 202)["data"]["id"]
    assert ok(idle.post(f"{JOBS}/{queued}/cancel"))["data"]["attributes"]["status"] == "cancelled"
    return {"idempotent": idempotent, "failed": failed, "retry": retry["id"], "cancelled": queued}


def test_the_seed_era_sdk_runs_its_catalog_flows(
    seed_sdk: Path,
    live_server: LiveServer,
    idle_url: str,
    key_for: KeyFactory,
    connect: Callable[[str, str], httpx.Client],
    tmp_path: Path,
) -> None:
    live = {"url": live_server.url, "key": live_server.key_for()}
    idle = {"url": idle_url, "key": key_for()}
    jobs = _extension_jobs(connect(live["url"], live["key"]), connect(idle["url"], idle["key"]))

    config = {"sdk_dir": str(seed_sdk), "live": live, "idle": idle, "jobs": jobs}
    env = os.environ | {"PYTHONPATH": str(seed_sdk), "SEED_ERA_FLOW": json.dumps(config)}
    done = subprocess.run(
        [sys.executable, str(FLOW)],
        env=env,
        cwd=tmp_path,  # not the repository: nothing of it on the path
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{done.stderr}\nfound before the failure: {done.stdout}"
    found = json.loads(done.stdout.splitlines()[-1])

    assert found["sdk"]["version"] == "1.2.1"
    assert found["sdk"]["file"].startswith(str(seed_sdk))
    assert found["get_catalog_variants"]["pages"] == [100, 3]
    assert found["get_update_variants_job"] == {
        "counts": [3, 2, 1],
        "error": {"code": "not_found", "source": {"pointer": "/data/attributes/variants/2"}},
    }
    update = found["spawn_update_variants_job"]["id"]
    assert found["get_update_variants_jobs"]["ids"] == [
        update, jobs["retry"], jobs["failed"], jobs["idempotent"],
    ]  # fmt: skip
    assert found["extension: retry"] == {"retry_of": jobs["failed"], "counts": [1, 0]}
    assert found["extension: cancelled"] == {"status": "cancelled", "counts": [0, 0]}
    assert found["spawn_create_items_job"]["counts"] == [3, 2, 1]
    assert found["spawn_delete_variants_job"]["counts"] == [3, 2, 1]
    assert found["spawn_delete_variants_job"]["deleted_variant_status"] == 404
    assert found["get_catalog_category_items"]["items"] == [
        f"$custom:::$default:::{e}" for e in ("BOOT", "SANDAL", "CLOG")
    ]
