import pytest
from tests.conftest import Api, seed_catalog
@pytest.mark.parametrize("n", range(10))
def test_x(api: Api, n: int) -> None:
    seed_catalog(api)
