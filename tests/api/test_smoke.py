from __future__ import annotations

from tests.support import Api, bulk_body, seed_catalog


def test_bulk_job_completes(api: Api) -> None:
    externals = seed_catalog(api)
    response = api.post(
        "/api/catalog-variant-bulk-update-jobs", bulk_body([(externals[0], {"price": 1.0})])
    )
    assert response.status_code == 202, response.text
