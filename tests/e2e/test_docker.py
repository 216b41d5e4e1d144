"""The deployment recipe, built and run: the ``Dockerfile`` (alone, on its SQLite file) and
``compose.yaml`` (PostgreSQL, Redis, a one-shot migrate, API processes, a worker).

Each needs a Docker daemon (``docker info`` must succeed) and, for compose, the ``docker compose``
plugin; without them these tests skip with the reason, in CI too (CI machines run no daemon).
Every container, image and volume they make is named after the test run and removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.support import BOTH_SCOPES, REVISION, bulk_body, free_port, item_body, variant_body

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BUILD_SECONDS = 900


def _docker(*args: str, timeout: float = 120, check: bool = True, **kw: Any) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check:
        assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr[-3000:]}"
    return done.stdout.strip()


def _output(command: list[str], **kw: Any) -> str:
    """What a command printed, both streams (for the logs of a failed run)."""
    done = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
        check=False, **kw,
    )  # fmt: skip
    return done.stdout


def _daemon() -> str | None:
    """Why Docker cannot be used here, or None."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        done = subprocess.run(
            ["docker", "info"], capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no Docker daemon (`docker info` failed: {last[:200]})"
    return None


@pytest.fixture(scope="module")
def docker() -> None:
    reason = _daemon()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def image(docker: None) -> Iterator[str]:
    tag = f"backstock-test:{uuid.uuid4().hex[:12]}"
    _docker("build", "--tag", tag, str(ROOT), timeout=BUILD_SECONDS)
    yield tag
    _docker("image", "rm", "--force", tag, check=False)


def _wait_ready(base: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    last = "nothing yet"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{base}/readyz", timeout=3)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.5)
    pytest.fail(f"{base} not ready in {timeout:g} s: {last}")


def _client(base: str, key: str) -> httpx.Client:
    headers = {
        "Authorization": f"Klaviyo-API-Key {key}",
        "revision": REVISION,
        "Accept": "application/vnd.api+json",
        "Content-Type": "application/vnd.api+json",
    }
    return httpx.Client(base_url=base, headers=headers, timeout=30)


def _scopes() -> list[str]:
    return [arg for scope in BOTH_SCOPES for arg in ("--scope", scope)]


def _job_round_trip(base: str, key: str) -> None:
    """A catalog made through the API, a bulk update with one missing variant applied by the
    deployment's worker, and the pages served."""
    with _client(base, key) as api:
        assert api.post("/api/catalog-items", json=item_body("ITEM")).status_code == 201
        response = api.post("/api/catalog-variants", json=variant_body("V1", "ITEM"))
        assert response.status_code == 201, response.text
        body = bulk_body([("V1", {"price": 2.0}), ("MISSING", {"price": 3.0})])
        response = api.post("/api/catalog-variant-bulk-update-jobs", json=body)
        assert response.status_code == 202, response.text
        job_id = response.json()["data"]["id"]
        deadline = time.monotonic() + 60
        while True:
            job = api.get(f"/api/catalog-variant-bulk-update-jobs/{job_id}").json()["data"]
            if job["attributes"]["status"] == "complete":
                break
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["attributes"]["completed_count"] == 1
        assert job["attributes"]["failed_count"] == 1
        assert job["links"]["self"].startswith(base)  # BACKSTOCK_BASE_URL names the links
    for path, kind in (("/ui", "text/html"), ("/docs", "text/html"), ("/openapi.json", "json")):
        response = httpx.get(f"{base}{path}", timeout=10)
        assert response.status_code == 200, path
        assert kind in response.headers["content-type"], path


def test_image_serves_as_a_non_root_user_and_requires_a_base_url(image: str) -> None:
    name = f"backstock-test-{uuid.uuid4().hex[:12]}"
    refused = subprocess.run(
        ["docker", "run", "--rm", image],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0
    assert "BACKSTOCK_BASE_URL" in refused.stderr

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    _docker(
        "run", "--detach", "--name", name, "--publish", f"127.0.0.1:{port}:8000",
        "--env", f"BACKSTOCK_BASE_URL={base}", image,
    )  # fmt: skip
    try:
        _wait_ready(base)
        assert _docker("exec", name, "id", "-u") != "0"
        assert _docker("exec", name, "id", "-un") == "backstock"
        key = _docker(
            "exec", name, "backstock", "keys", "create", "--account", "docker", *_scopes()
        )
        _job_round_trip(base, key.splitlines()[-1].strip())
        state = json.loads(_docker("inspect", "--format", "{{json .State}}", name))
        assert state["Running"], state
    finally:
        logs = _output(["docker", "logs", name])
        _docker("rm", "--force", "--volumes", name, check=False)
        print(logs[-4000:])


@pytest.fixture
def compose(docker: None) -> None:
    done = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        pytest.skip("the `docker compose` plugin is not installed")


def test_compose_runs_migrate_api_and_worker_on_postgres_and_redis(compose: None) -> None:
    project = f"backstock-test-{uuid.uuid4().hex[:10]}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BACKSTOCK_")},
        "BACKSTOCK_BASE_URL": base,
        "BACKSTOCK_PUBLISH": f"127.0.0.1:{port}",
        "POSTGRES_PASSWORD": uuid.uuid4().hex,
        "BACKSTOCK_IMAGE": f"{project}:latest",
    }
    compose = ["compose", "--project-name", project, "--file", str(ROOT / "compose.yaml")]
    try:
        _docker(*compose, "up", "--detach", "--build", timeout=BUILD_SECONDS, env=env, cwd=ROOT)
        _wait_ready(base, timeout=180)
        ps = _docker(*compose, "ps", "--all", "--format", "json", env=env, cwd=ROOT)
        rows = [json.loads(line) for line in ps.splitlines() if line.strip()]
        rows = rows[0] if len(rows) == 1 and isinstance(rows[0], list) else rows
        states = {row["Service"]: (row["State"], row.get("ExitCode")) for row in rows}
        assert states["migrate"] == ("exited", 0), states
        for service in ("postgres", "redis", "api", "worker"):
            assert states[service][0] == "running", states
        key = _docker(
            *compose, "exec", "-T", "api", "backstock", "keys", "create", "--account", "compose",
            *_scopes(), env=env, cwd=ROOT,
        )  # fmt: skip
        _job_round_trip(base, key.splitlines()[-1].strip())
        ready = httpx.get(f"{base}/readyz", timeout=10).json()
        assert ready["checks"] == {"database": "ok", "rate_limits": "ok"}, ready
    finally:
        logs = _output(["docker", *compose, "logs", "--no-color"], env=env, cwd=ROOT)
        _docker(
            *compose, "down", "--volumes", "--remove-orphans",
            check=False, env=env, cwd=ROOT, timeout=300,
        )  # fmt: skip
        _docker("image", "rm", "--force", env["BACKSTOCK_IMAGE"], check=False)
        print(logs[-6000:])
