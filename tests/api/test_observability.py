"""What operators see: /metrics whose values move, an access line per request with the route
template (never the raw id) and the account (never the key), and request ids."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from tests.support import (
    Api,
    cid,
    item_body,
    item_path,
    job_body,
    ok,
    seed_catalog,
    spawn,
    wait_for_job,
)

pytestmark = pytest.mark.own_database


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of Prometheus' text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        base, _, rest = sample.partition("{")
        if base == name and ",".join(sorted(rest.rstrip("}").split(","))) == wanted:
            return float(value)
    return 0.0


def test_metrics_move_with_requests_jobs_and_refusals(app_factory: Any, key_for: Any) -> None:
    client = app_factory(rate_limits="on", write_limits="3/second;100/minute")
    api = Api(client, key_for())
    before = client.get("/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    for external in ("I", "J", "K"):  # three creates: the rate limit's edge
        ok(api.post("/api/catalog-items", item_body(external)), 201)
    throttled = api.post("/api/catalog-items", item_body("X"))
    assert throttled.status_code == 429
    ok(api.get(item_path(cid("I"))))
    text = client.get("/metrics").text

    def moved(name: str, **labels: str) -> float:
        return _metric(text, name, **labels) - _metric(before.text, name, **labels)

    assert moved("backstock_requests_total", operation="create_catalog_item", status="201") == 3
    assert moved("backstock_requests_total", operation="create_catalog_item", status="429") == 1
    assert moved("backstock_requests_total", operation="get_catalog_item", status="200") == 1
    assert moved("backstock_refusals_total", reason="throttled") == 1
    assert moved("backstock_request_seconds_count", operation="get_catalog_item") == 1
    assert "backstock_jobs_queued " in text and "backstock_oldest_queued_job_seconds " in text


def test_job_metrics_by_kind(app_factory: Any, key_for: Any) -> None:
    client = app_factory()
    api = Api(client, key_for())
    externals = seed_catalog(api, "I", 2)
    before = client.get("/metrics").text
    wait_for_job(api, spawn(api, [(externals[0], {"price": 1.0}), ("GONE", {"price": 2.0})]))
    text = client.get("/metrics").text
    kind = "catalog-variant-bulk-update-job"

    def moved(name: str, **labels: str) -> float:
        return _metric(text, name, **labels) - _metric(before, name, **labels)

    assert moved("backstock_jobs_accepted_total", kind=kind) == 1
    assert moved("backstock_jobs_completed_total", kind=kind, outcome="with_errors") == 1
    assert moved("backstock_job_items_total", kind=kind, outcome="applied") == 1
    assert moved("backstock_job_items_total", kind=kind, outcome="failed") == 1
    assert moved("backstock_worker_batch_seconds_count", kind=kind) == 1


def test_per_account_counts_only_when_asked_and_bounded(app_factory: Any, key_for: Any) -> None:
    quiet = app_factory()
    Api(quiet, key_for()).get("/api/catalog-items")
    assert "backstock_account_requests" not in quiet.get("/metrics").text
    loud = app_factory(metrics_top_accounts=1)
    busy, other = Api(loud, key_for("busy")), Api(loud, key_for("other"))
    for _ in range(3):
        busy.get("/api/catalog-items")
    other.get("/api/catalog-items")
    text = loud.get("/metrics").text.splitlines()
    lines = [line for line in text if line.startswith("backstock_account_requests{")]
    assert len(lines) == 1 and lines[0].endswith(" 3.0")


def test_one_access_line_per_request_with_the_route_template_and_the_account(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    ok(api.post("/api/catalog-items", item_body("SECRET-ID")), 201)
    with caplog.at_level(logging.INFO, logger="backstock.access"):
        response = api.get(item_path(cid("SECRET-ID")), headers={"X-Request-Id": "trace-42"})
    assert response.headers["X-Request-Id"] == "trace-42"
    [line] = [r for r in caplog.records if r.name == "backstock.access"]
    message = line.getMessage()
    assert re.fullmatch(r"GET /api/catalog-items/\{id\} 200 [0-9.]+ms account=\d+", message), (
        message
    )
    assert "SECRET-ID" not in message and api.key not in message
    assert line.request_id == "trace-42"  # type: ignore[attr-defined]


def test_a_request_id_is_made_when_none_or_a_bad_one_is_sent(api: Api) -> None:
    made = api.get("/api/catalog-items").headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    bad = api.get("/api/catalog-items", headers={"X-Request-Id": "x" * 200}).headers["X-Request-Id"]
    assert bad != "x" * 200 and re.fullmatch(r"[0-9a-f]{32}", bad)
    assert api.get("/api/nope").headers["X-Request-Id"]  # errors carry one too


def test_job_body_helper_round_trips(api: Api) -> None:
    """(The helper the loader tests share.)"""
    body = job_body(
        "catalog-item-bulk-delete-job", "items", [{"type": "catalog-item", "id": cid("A")}]
    )
    assert api.post("/api/catalog-item-bulk-delete-jobs", body).status_code == 202
