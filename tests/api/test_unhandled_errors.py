"""An unexpected exception anywhere becomes a JSON:API 500 without a stack trace, logged once."""

from __future__ import annotations

import logging

import pytest

from backstock.services.catalog import Catalog
from backstock.services.jobs import Jobs
from tests.support import Api


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url


def _boom(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("secret internals")


@pytest.mark.parametrize(
    ("target", "name", "path"),
    [
        (Catalog, "list_resources", "/api/catalog-variants"),
        (Jobs, "poll", "/api/catalog-variant-bulk-update-jobs/01ABC"),
    ],
)
def test_unhandled_error_is_a_jsonapi_500(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    target: object, name: str, path: str,
) -> None:  # fmt: skip
    monkeypatch.setattr(target, name, _boom)
    with caplog.at_level(logging.ERROR, logger="backstock.http"):
        response = api.get(path)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/vnd.api+json"
    error = response.json()["errors"][0]
    assert error["code"] == "error" and "secret" not in response.text
    assert [r for r in caplog.records if "unhandled error" in r.getMessage()].__len__() == 1
