"""Faults on demand (``BACKSTOCK_TEST_FAULTS=on``, ``backstock.faults``): ``Prefer`` answers,
per-account rules turning on and off, the CLI that sets them, and none of it when faults are
off."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient
from typer.testing import CliRunner

from backstock.bootstrap import build_app
from backstock.cli import app as cli
from backstock.faults import RuleBook, preferences
from backstock.settings import Settings
from tests.conftest import test_settings
from tests.support import (
    JOBS,
    Api,
    account_name,
    assert_error,
    bulk_body,
    cid,
    listed_ids,
    make_key,
    ok,
    seed_catalog,
    spawn,
    variant_path,
    wait_for_job,
)


@pytest.fixture
def faulty(sqlite_url: str) -> Iterator[Api]:
    """An app with its worker and faults on, and a fresh account's client."""
    settings = test_settings(sqlite_url, test_faults="on", idle_check_seconds=0.1)
    with TestClient(build_app(settings), raise_server_exceptions=False) as client:
        yield Api(client, make_key(client.app.services, "acme"))  # type: ignore[attr-defined]


def _book(api: Api) -> tuple[RuleBook, int]:
    services = api.client.app.services
    name = account_name(services, api.key)
    [account] = [a.id for a in _accounts(services) if a.name == name]
    return RuleBook.of(services.settings), account


def _accounts(services: Any) -> list[Any]:
    from tests.support import call

    return call(services, services.accounts.list_accounts)


# ---- Prefer ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "limit"),
    [("GET", "/api/catalog-variants", "350"), ("POST", JOBS, "75")],
)
def test_prefer_429_answers_as_a_real_throttle(
    faulty: Api, method: str, path: str, limit: str
) -> None:
    response = faulty.client.request(
        method, path, headers={"Prefer": "code=429", "revision": "2026-10-15"}
    )
    assert_error(response, 429, "throttled")
    assert response.headers["Retry-After"] == "1"
    assert response.headers["RateLimit-Limit"] == limit
    assert response.headers["RateLimit-Remaining"] == "0"
    assert response.headers["content-type"] == "application/vnd.api+json"
    assert "test fault" in response.json()["errors"][0]["detail"]


def test_prefer_503_and_delay(faulty: Api) -> None:
    response = faulty.get("/api/catalog-items", headers={"Prefer": "code=503"})
    assert_error(response, 503, "service_unavailable")
    assert response.headers["Retry-After"] == "1"
    started = time.monotonic()
    assert faulty.get("/api/catalog-items", headers={"Prefer": "delay=300"}).status_code == 200
    assert time.monotonic() - started >= 0.3
    both = faulty.get("/api/catalog-items", headers={"Prefer": "delay=10, code=429"})
    assert both.status_code == 429
    # what Backstock does not fake is ignored
    assert faulty.get("/api/catalog-items", headers={"Prefer": "code=418"}).status_code == 200


def test_prefer_is_ignored_when_faults_are_off(api: Api) -> None:
    for prefer in ("code=429", "code=503", "delay=2000"):
        started = time.monotonic()
        assert api.get("/api/catalog-items", headers={"Prefer": prefer}).status_code == 200
        assert time.monotonic() - started < 1.5


def test_preferences_are_parsed_as_rfc_7240_says() -> None:
    headers = [(b"prefer", b'code=429; delay="15"'), (b"Prefer", b"respond-async, wait=5")]
    assert preferences(headers) == {"code": "429", "delay": "15", "respond-async": "", "wait": "5"}


# ---- per-account rules ------------------------------------------------------------------------------


def test_the_next_spawns_fail_then_the_rule_is_spent(faulty: Api) -> None:
    book, account = _book(faulty)
    externals = seed_catalog(faulty, "P", 1)
    book.change(account, fail_spawns=2, fail_status=503)
    body = bulk_body([(externals[0], {"price": 2.0})])
    for _ in range(2):
        refused = faulty.post(JOBS, body)
        assert_error(refused, 503, "service_unavailable")
        assert refused.headers["Retry-After"] == "1"
    assert listed_ids(faulty) == []  # nothing written for a refused spawn
    job = ok(faulty.post(JOBS, body), 202)["data"]["id"]
    assert book.rules(account).fail_spawns == 0
    book.change(account, fail_spawns=1, fail_status=429)
    assert_error(faulty.post(JOBS, body), 429, "throttled")
    assert listed_ids(faulty) == [job]


def test_held_jobs_stay_queued_then_run(faulty: Api) -> None:
    book, account = _book(faulty)
    externals = seed_catalog(faulty, "P", 1)
    book.change(account, hold_seconds=0.6)
    job = spawn(faulty, [(externals[0], {"price": 2.0})])
    time.sleep(0.3)
    assert ok(faulty.get(f"{JOBS}/{job}"))["data"]["attributes"]["status"] == "queued"
    assert wait_for_job(faulty, job, timeout=10)["attributes"]["completed_count"] == 1
    book.change(account, hold_seconds=0)
    quick = spawn(faulty, [(externals[0], {"price": 3.0})])
    wait_for_job(faulty, quick, timeout=2)


def test_delayed_items_show_processing_and_growing_counts(faulty: Api) -> None:
    book, account = _book(faulty)
    externals = seed_catalog(faulty, "P", 5)
    book.change(account, item_delay_ms=80)
    job = spawn(faulty, [(external, {"price": 4.0}) for external in externals])
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + 10
    while not seen or seen[-1][0] != "complete":
        attributes = ok(faulty.get(f"{JOBS}/{job}"))["data"]["attributes"]
        seen.append((attributes["status"], attributes["completed_count"]))
        assert time.monotonic() < deadline
        time.sleep(0.02)
    partial = {count for status, count in seen if status == "processing"}
    assert partial & {1, 2, 3, 4}, seen  # polling saw it part-way
    counts = [count for _, count in seen]
    assert counts == sorted(counts) and counts[-1] == 5


def test_chosen_items_fail_with_the_chosen_code(faulty: Api) -> None:
    book, account = _book(faulty)
    externals = seed_catalog(faulty, "P", 3)
    book.change(account, fail_items={externals[1]: "internal_error"})
    job = spawn(faulty, [(external, {"price": 6.0}) for external in externals])
    done = wait_for_job(faulty, job)["attributes"]
    assert (done["completed_count"], done["failed_count"]) == (2, 1)
    [error] = done["errors"]
    assert error["code"] == "internal_error"
    assert error["source"]["pointer"] == "/data/attributes/variants/data/1"
    prices = [
        ok(faulty.get(variant_path(cid(e))))["data"]["attributes"]["price"] for e in externals
    ]
    assert prices == [6.0, 9.5, 6.0]  # the chosen item was not applied
    book.clear(account)
    again = spawn(faulty, [(externals[1], {"price": 6.0})])
    assert wait_for_job(faulty, again)["attributes"]["failed_count"] == 0


# ---- refused where it does not belong, and the CLI -------------------------------------------------


def test_faults_are_refused_with_postgresql() -> None:
    with pytest.raises(ValidationError, match="refused with a PostgreSQL"):
        Settings(database_url="postgresql://postgres@127.0.0.1/x", test_faults="on")


def test_the_cli_sets_shows_and_clears_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKSTOCK_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    runner = CliRunner()
    made = runner.invoke(cli, ["keys", "create", "--account", "demo", "--scope", "catalogs:read"])
    assert made.exit_code == 0, made.output
    result = runner.invoke(
        cli,
        ["faults", "set", "demo", "--fail-spawns", "3", "--status", "503", "--hold", "1.5",
         "--fail-item", "SKU-1=not_found", "--fail-item", "SKU-2=internal_error"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "BACKSTOCK_TEST_FAULTS=on" in result.stderr  # this shell's settings have faults off
    shown = runner.invoke(cli, ["faults", "show", "demo"]).stdout
    assert '"fail_spawns": 3' in shown and '"fail_status": 503' in shown
    assert '"SKU-2": "internal_error"' in shown and '"hold_seconds": 1.5' in shown
    assert runner.invoke(cli, ["faults", "set", "demo", "--status", "500"]).exit_code == 2
    assert runner.invoke(cli, ["faults", "set", "nobody", "--hold", "1"]).exit_code == 1
    assert runner.invoke(cli, ["faults", "clear", "demo"]).exit_code == 0
    assert '"fail_spawns": 0' in runner.invoke(cli, ["faults", "show", "demo"]).stdout
