"""The pytest plugin (``backstock.testing.plugin``, entry point ``pytest11``): a project of its
own that only installs Backstock gets ``backstock_server`` and ``klaviyo_key``, with an
embedded server or one already running (``--backstock-url``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backstock.testing import BackstockServer
from backstock.testing.plugin import account_name

pytest_plugins = ["pytester"]

PROJECT_TESTS = """
import time

from klaviyo_api import KlaviyoAPI


def sdk(server, key):
    return KlaviyoAPI(key, test_host=server.url, max_retries=1).Catalogs


def item(external_id):
    return {"data": {"type": "catalog-item", "attributes": {
        "external_id": external_id, "title": "t", "description": "d", "url": "https://s/i"}}}


def test_one_account(backstock_server, klaviyo_key):
    catalogs = sdk(backstock_server, klaviyo_key)
    catalogs.create_catalog_item(item("SAME"))
    assert [i.id for i in catalogs.get_catalog_items().data] == ["$custom:::$default:::SAME"]


def test_another_account(backstock_server, klaviyo_key):
    catalogs = sdk(backstock_server, klaviyo_key)
    assert catalogs.get_catalog_items().data == []  # the other test's item is not here
    catalogs.create_catalog_item(item("SAME"))  # no conflict with it either


def test_faults(backstock_server, klaviyo_key):
    from openapi_client.exceptions import ApiException

    catalogs = sdk(backstock_server, klaviyo_key)
    backstock_server.faults(klaviyo_key).fail_next_spawns(1, status=503)
    body = {"data": {"type": "catalog-item-bulk-create-job",
                     "attributes": {"items": {"data": [item("A")["data"]]}}}}
    try:
        catalogs.bulk_create_catalog_items(body)
    except ApiException as refused:
        assert refused.status == 503
    else:
        raise AssertionError("the fault did not fire")
    job = catalogs.bulk_create_catalog_items(body).data.id
    while catalogs.get_bulk_create_catalog_items_job(job).data.attributes.status != "complete":
        time.sleep(0.02)


def test_one_server_for_the_session(backstock_server, request):
    assert request.fixturenames.count("backstock_server") == 1
    assert backstock_server is request.getfixturevalue("backstock_server")
    assert request.node.session.testscollected == 4
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A project with nothing but a test file: no conftest, no configuration."""
    pytester.makepyfile(test_catalog=PROJECT_TESTS)
    return pytester


@pytest.fixture
def running() -> Iterator[BackstockServer]:
    """A Backstock "started elsewhere" (for the subprocess, it is)."""
    with BackstockServer() as server:
        yield server


def test_the_fixtures_work_in_a_project_of_their_own(project: pytest.Pytester) -> None:
    # A new interpreter, as in that project's CI: the plugin comes from the entry point alone.
    result = project.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_the_options_are_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--backstock-url=URL*", "*--backstock-database-url=URL*"])


def test_against_a_running_server_with_its_database(
    project: pytest.Pytester, running: BackstockServer
) -> None:
    before = {a.name for a in running.call(running.services.accounts.list_accounts)}
    result = project.runpytest(
        "-p", "no:randomly", "-p", "no:cacheprovider",
        "--backstock-url", running.url,
        "--backstock-database-url", running.settings.database_url,
    )  # fmt: skip
    result.assert_outcomes(passed=4)
    made = {a.name for a in running.call(running.services.accounts.list_accounts)} - before
    assert {name.rsplit("-", 1)[0] for name in made} == {
        "test_one_account", "test_another_account", "test_faults",
    }  # fmt: skip


def test_against_a_running_server_with_a_key_only(
    pytester: pytest.Pytester, running: BackstockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = running.create_key("given")
    pytester.makepyfile(
        f"""
        def test_the_given_key(backstock_server, klaviyo_key):
            assert klaviyo_key == {key!r}
            assert backstock_server.url == {running.url!r}
        """
    )
    monkeypatch.setenv("BACKSTOCK_TEST_URL", running.url)
    monkeypatch.delenv("BACKSTOCK_TEST_DATABASE_URL", raising=False)
    monkeypatch.delenv("BACKSTOCK_TEST_KEY", raising=False)
    refused = pytester.runpytest("-p", "no:randomly")
    refused.assert_outcomes(errors=1)
    refused.stdout.fnmatch_lines(["*set BACKSTOCK_TEST_KEY to a key of that server*"])
    monkeypatch.setenv("BACKSTOCK_TEST_KEY", key)
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=1)


def test_account_names_are_readable_and_unique() -> None:
    first, second = account_name("test_x[a b/c]"), account_name("test_x[a b/c]")
    assert first != second
    assert first.startswith("test_x-a-b-c-")
    assert len(account_name("t" * 500)) <= 100


def test_the_readmes_example_test_passes(pytester: pytest.Pytester) -> None:
    """The README's complete example (a sync client and its test) runs as printed."""
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("# test_sync.py")
    pytester.makepyfile(test_readme_example=readme[start : readme.index("```", start)])
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=1)
