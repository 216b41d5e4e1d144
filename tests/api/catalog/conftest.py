from __future__ import annotations
from collections.abc import Callable
import pytest
from starlette.testclient import TestClient

@pytest.fixture
def client(app_factory: Callable[..., TestClient]) -> TestClient:
    return app_factory(run_worker=False)
