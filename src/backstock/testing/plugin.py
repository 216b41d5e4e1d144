"""The pytest plugin (entry point ``pytest11``: installing Backstock is enough).

Fixtures:

- ``backstock_server`` (session): a ``BackstockServer`` started on first use; or, given
  ``--backstock-url URL`` (or ``BACKSTOCK_TEST_URL``), a ``RunningBackstock`` for the server
  already running there. Keys, faults and resets of a running server need its database:
  ``--backstock-database-url`` (or ``BACKSTOCK_TEST_DATABASE_URL``). Without one, every test
  gets the key in ``BACKSTOCK_TEST_KEY``.
- ``klaviyo_key`` (function): a key with both catalog scopes of an account of the test's own,
  named after the test, so tests never see each other's catalogs and need no reset.

Nothing is imported or started until a test asks for a fixture.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from backstock.testing.server import Backstock

URL_VARIABLE = "BACKSTOCK_TEST_URL"
DATABASE_VARIABLE = "BACKSTOCK_TEST_DATABASE_URL"
KEY_VARIABLE = "BACKSTOCK_TEST_KEY"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("backstock", "Backstock (a Klaviyo Catalogs API server for tests)")
    group.addoption(
        "--backstock-url",
        default=None,
        metavar="URL",
        help="use the Backstock running at URL instead of starting one in the test process "
        f"(default: ${URL_VARIABLE})",
    )
    group.addoption(
        "--backstock-database-url",
        default=None,
        metavar="URL",
        help="the database of the Backstock at --backstock-url, to make keys of fresh accounts, "
        f"set faults and reset (default: ${DATABASE_VARIABLE}; without one every test gets "
        f"${KEY_VARIABLE})",
    )


@pytest.fixture(scope="session")
def backstock_server(pytestconfig: pytest.Config) -> Iterator[Backstock]:
    """A Backstock for the session: started here, or the one at ``--backstock-url``."""
    from backstock.testing.server import BackstockServer, RunningBackstock

    url = pytestconfig.getoption("backstock_url") or os.environ.get(URL_VARIABLE)
    if not url:
        with BackstockServer() as server:
            yield server
        return
    database_url = pytestconfig.getoption("backstock_database_url") or os.environ.get(
        DATABASE_VARIABLE
    )
    with RunningBackstock(url, database_url) as running:
        yield running


@pytest.fixture
def klaviyo_key(backstock_server: Backstock, request: pytest.FixtureRequest) -> str:
    """An API key (both catalog scopes) of a new account named after the test."""
    from backstock.testing.server import RunningBackstock

    if isinstance(backstock_server, RunningBackstock) and backstock_server.database_url is None:
        given = os.environ.get(KEY_VARIABLE)
        if not given:
            pytest.fail(
                f"--backstock-url without --backstock-database-url: set {KEY_VARIABLE} to a key "
                "of that server (every test then shares its account)",
                pytrace=False,
            )
        return given
    return backstock_server.create_key(account_name(request.node.name))


def account_name(test: str) -> str:
    """A new account's name for a test: readable in logs and the CLI, unique."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", test).strip("-")[:80] or "test"
    return f"{readable}-{uuid.uuid4().hex[:8]}"
