"""The job dashboard (``/ui``) and the API docs (``/docs``) in a real browser: Debian's Chromium,
headless, driven by Playwright, against a real Backstock (uvicorn on a loopback port, its job
worker, a SQLite file).

A person's path through the dashboard: sign in with a key typed into the page, watch jobs spawned
through the API move from queued to complete (and, with the worker's batches applied one at a
time, the progress in between), open the job that failed an item and read its error and
pointer. The key must live in the tab's sessionStorage and nowhere else (no URL, no cookie, no
localStorage, no request URL); whatever the API returns is shown as text, never as markup; and
the page runs under its Content-Security-Policy without a single violation. A screenshot of the
dashboard is kept under the test's tmp dir (its path is printed).

Under ``CI=true`` these tests must run: a missing Chromium or Playwright fails them; elsewhere it
skips them with the reason.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx2 as httpx
import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the ``browser`` fixture skips (or, under CI, fails) with the reason
    expect = None

from backstock.bootstrap import build_app
from backstock.domain.jobs import ClaimedJob
from backstock.http.pages import DOCS_POLICY, UI_POLICY
from backstock.services.container import Services
from backstock.settings import Settings
from tests.support import (
    BOTH_SCOPES,
    JOBS,
    READ,
    Api,
    bulk_body,
    call,
    category_body,
    item_body,
    job_body,
    make_key,
    seed_catalog,
    served,
    wait_for_job,
)

pytestmark = pytest.mark.e2e

T = TypeVar("T")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
IN_CI = os.environ.get("CI", "").lower() == "true"
KEY_STORAGE = "backstock.apiKey"
HOSTILE = '<img src=x onerror="window.__pwned=1">&amp;'
"""An external id that is markup: the page must show it as these very characters."""
CATEGORY_JOBS = "/api/catalog-category-bulk-create-jobs"
ITEM_JOBS = "/api/catalog-item-bulk-create-jobs"


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what}; under CI=true the browser tests must run")
    pytest.skip(what)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _missing(f"Playwright is not installed ({exc}): pip install playwright")
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing: apt-get install -y chromium")
    expect.set_options(timeout=15_000)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


def off_thread(work: Callable[[], T]) -> T:
    """Run ``work`` on a thread of its own: Playwright's sync API owns this thread's event loop,
    and the service calls (``tests.support.call``) run one of their own."""
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(work())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if failure:
        raise failure[0]
    assert result, "the call did not finish"
    return result[0]


class Page:
    """A browser tab on the dashboard that records what would betray a problem: console
    errors (a CSP violation is one), uncaught exceptions, and every URL it requested."""

    def __init__(self, context: Any, base: str) -> None:
        self.context = context
        self.base = base
        self.tab = context.new_page()
        self.tab.set_default_timeout(15_000)
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.tab.on("console", self._console)
        self.tab.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.tab.on("request", lambda request: self.urls.append(request.url))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def shows(self, selector: str, text: str | re.Pattern[str]) -> None:
        """Wait until the element's text is ``text`` (Playwright's retrying assertion: the
        page's policy forbids the ``eval`` a string predicate would need)."""
        expect(self.tab.locator(selector)).to_have_text(text)

    def has(self, selector: str, attribute: str, value: str) -> None:
        expect(self.tab.locator(selector)).to_have_attribute(attribute, value)

    def sign_in(self, key: str) -> None:
        self.tab.fill("#api-key", key)
        self.tab.click("#sign-in-form button[type=submit]")

    def job(self, status: str, job_id: str) -> Any:
        return self.tab.locator(f"#jobs-{status} [data-job-id='{job_id}']")

    def session_key(self) -> Any:
        return self.tab.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')")

    def assert_key_kept_only_in_session_storage(self, key: str) -> None:
        assert self.session_key() == key
        assert self.tab.evaluate("localStorage.length") == 0
        assert key not in self.tab.url
        assert all(key not in cookie["value"] for cookie in self.context.cookies())
        assert self.context.cookies() == []
        assert not [url for url in self.urls if key in url]


@contextmanager
def dashboard(browser: Any, base: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = Page(context, base)
        response = page.tab.goto(f"{base}/ui")
        assert response is not None
        assert response.status == 200
        headers = response.headers
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers["content-security-policy"] == UI_POLICY
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-cache"
        assert headers["etag"]
        yield page
        assert page.errors == [], page.errors
    finally:
        context.close()


def settings(database_url: str, **overrides: Any) -> Settings:
    # Rate limits on, as deployed: the dashboard's polling must fit within them.
    values: dict[str, Any] = {
        "database_url": database_url,
        "idle_check_seconds": 0.5,
        "sqlite_synchronous": "NORMAL",
    }
    return Settings(**(values | overrides))


@contextmanager
def backstock(database_url: str, **overrides: Any) -> Iterator[tuple[str, Services, str]]:
    """A real Backstock served on a loopback port: its URL, its services and a key."""
    app = build_app(settings(database_url, **overrides))
    key = off_thread(lambda: make_key(app.services, "ui", BOTH_SCOPES))
    with served(app) as base:
        yield base, app.services, key


# ---- the dashboard -------------------------------------------------------------------------------


def test_dashboard_shows_jobs_reaching_complete_and_a_failed_item(
    browser: Any, sqlite_url: str, tmp_path: Path
) -> None:
    with backstock(sqlite_url) as (base, _services, key), httpx.Client(base_url=base) as client:
        api = Api(client, key)
        seed_catalog(api, "ITEM", variants=3)
        assert api.post("/api/catalog-categories", category_body("CAT")).status_code == 201

        with dashboard(browser, base) as page:
            tab = page.tab
            assert tab.locator("#sign-in").is_visible()
            assert tab.locator("#dashboard").is_hidden()
            assert page.session_key() is None
            page.sign_in(key)
            tab.locator("#dashboard").wait_for(state="visible")
            assert tab.locator("#sign-in").is_hidden()
            page.shows("#count-variants", "3")
            assert tab.text_content("#count-items") == "1"
            assert tab.text_content("#count-categories") == "1"
            assert tab.input_value("#api-key") == ""  # the field does not keep it

            # Three jobs through the API: two variants updated and one missing (named by an id
            # that is markup), a category created, two items created.
            updates = [
                ("ITEM-V0", {"price": 1.5}),
                ("ITEM-V1", {"price": 2.5}),
                (HOSTILE, {"price": 3.5}),
            ]
            variant_job = api.post(JOBS, bulk_body(updates))
            assert variant_job.status_code == 202, variant_job.text
            variant_id = variant_job.json()["data"]["id"]
            category_job = api.post(
                CATEGORY_JOBS,
                job_body(
                    "catalog-category-bulk-create-job",
                    "categories",
                    [category_body("CAT-2")["data"]],
                ),
            )
            assert category_job.status_code == 202, category_job.text
            item_job = api.post(
                ITEM_JOBS,
                job_body(
                    "catalog-item-bulk-create-job",
                    "items",
                    [item_body("ITEM-2")["data"], item_body("ITEM-3")["data"]],
                ),
            )
            assert item_job.status_code == 202, item_job.text

            # The page follows them to complete, with their final progress.
            row = page.job("complete", variant_id)
            row.wait_for()
            assert row.locator(".progress").text_content() == "3 / 3 · 1 failed"
            assert row.locator(".kind").text_content() == "variants · update"
            assert row.locator("progress").evaluate("p => [p.value, p.max]") == [3, 3]
            for job_id, label in (
                (category_job.json()["data"]["id"], "categories · create"),
                (item_job.json()["data"]["id"], "items · create"),
            ):
                done = page.job("complete", job_id)
                done.wait_for()
                assert done.locator(".kind").text_content() == label
                assert "failed" not in (done.locator(".progress").text_content() or "")
            for status in ("queued", "processing"):
                assert tab.locator(f"#jobs-{status} .job").count() == 0
            assert tab.text_content("#jobs-complete .n") == "3"

            # The job's error, with its pointer, as the API reports it.
            job = wait_for_job(api, variant_id)
            [error] = job["attributes"]["errors"]
            pointer = error["source"]["pointer"]
            assert pointer.startswith("/data/attributes/variants/data/2")
            row.click()
            tab.locator("#detail-errors").wait_for(state="visible")
            assert tab.text_content("#detail-id") == variant_id
            cells = tab.locator("#detail-errors tbody tr td")
            assert cells.all_text_contents() == [
                pointer,
                error["code"],
                error["title"],
                error["detail"],
            ]
            assert HOSTILE in error["detail"]  # shown as the characters it is
            assert tab.locator("#detail-errors img").count() == 0
            assert tab.evaluate("window.__pwned") is None
            assert tab.locator("#job-detail .job, #job-detail script").count() == 0
            facts = tab.locator("#detail-facts dd").all_text_contents()
            assert facts[:3] == ["variants · update", "complete", "3 / 3 (2 applied, 1 failed)"]
            assert "selected" in (row.get_attribute("class") or "")

            # Counts follow the catalog (a reload recounts at once; the key survives it).
            tab.reload()
            tab.locator("#dashboard").wait_for(state="visible")
            page.shows("#count-items", "3")
            assert tab.text_content("#count-categories") == "2"
            assert tab.text_content("#count-variants") == "3"

            page.assert_key_kept_only_in_session_storage(key)
            page.job("complete", variant_id).click()
            tab.locator("#detail-errors").wait_for(state="visible")
            shot = tmp_path / "dashboard.png"
            tab.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            print(f"dashboard screenshot: {shot}")

            tab.click("#sign-out")
            tab.locator("#sign-in").wait_for(state="visible")
            assert page.session_key() is None
            assert tab.locator(".job").count() == 0


def test_dashboard_shows_live_progress_batch_by_batch(browser: Any, sqlite_url: str) -> None:
    """The worker's steps taken one at a time (its own claim and batch functions, one item a
    batch), and the page catching each: queued 0/3, processing 1/3, 2/3, complete 3/3."""
    overrides = {"run_worker": False, "worker_batch_size": 1}
    with (
        backstock(sqlite_url, **overrides) as (base, services, key),
        httpx.Client(base_url=base) as client,
    ):
        api = Api(client, key)
        seed_catalog(api, "ITEM", variants=3)
        with dashboard(browser, base) as page:
            tab = page.tab
            page.sign_in(key)
            tab.locator("#dashboard").wait_for(state="visible")
            response = api.post(JOBS, bulk_body([(f"ITEM-V{i}", {"price": 1.0}) for i in range(3)]))
            assert response.status_code == 202, response.text
            job_id = response.json()["data"]["id"]

            def shows(status: str, progress: str) -> None:
                row = page.job(status, job_id)
                expect(row.locator(".progress")).to_have_text(progress)
                assert row.get_attribute("data-status") == status

            shows("queued", "0 / 3")
            row = page.job("queued", job_id)
            row.click()
            page.has("#detail-facts", "data-status", "queued")

            claimed = off_thread(lambda: call(services, lambda: services.jobs.claim("ui-test")))
            assert claimed is not None
            held: ClaimedJob = claimed[0]
            assert held.id == job_id and not claimed[1]
            shows("processing", "1 / 3")
            page.has("#detail-facts", "data-status", "processing")
            assert tab.locator("#detail-progress").evaluate("p => [p.value, p.max]") == [1, 3]

            def batch() -> bool | None:
                return off_thread(lambda: call(services, lambda: services.jobs.run_batch(held)))

            assert batch() is False
            shows("processing", "2 / 3")
            assert batch() is True
            shows("complete", "3 / 3")
            assert tab.locator("#jobs-processing .job").count() == 0
            # The open job's panel follows it too.
            page.has("#detail-facts", "data-status", "complete")
            assert tab.is_visible("#detail-no-errors")
            assert tab.locator("#detail-progress").evaluate("p => [p.value, p.max]") == [3, 3]


def test_a_refused_key_is_not_kept(browser: Any, sqlite_url: str) -> None:
    with backstock(sqlite_url) as (base, services, _key):
        writer_only = off_thread(lambda: make_key(services, "writer", ("catalogs:write",)))
        reader = off_thread(lambda: make_key(services, "reader", (READ,)))
        with dashboard(browser, base) as page:
            tab = page.tab
            for wrong, status in (("pk_not_a_real_key_at_all", "401"), (writer_only, "403")):
                page.sign_in(wrong)
                # Wait for this attempt's own refusal: the previous one's text is still shown
                # until the answer comes back.
                page.shows("#sign-in-error", re.compile(f"refused \\(HTTP {status}\\b"))
                assert page.session_key() is None
                assert tab.locator("#dashboard").is_hidden()
            page.sign_in("not a key\n")
            page.shows("#sign-in-error", re.compile("does not look like"))
            # A read-only key is all the dashboard needs.
            page.sign_in(reader)
            tab.locator("#dashboard").wait_for(state="visible")
            page.shows("#count-items", "0")
            page.assert_key_kept_only_in_session_storage(reader)
            # The browser logs the refused requests themselves; nothing else may be logged.
            refused = [e for e in page.errors if re.search(r"status of 40[13]", e)]
            assert len(refused) == 2, page.errors
            page.errors[:] = [e for e in page.errors if e not in refused]


# ---- the API docs -----------------------------------------------------------------------------


def test_docs_render_the_openapi_document(browser: Any, sqlite_url: str) -> None:
    with backstock(sqlite_url, run_worker=False) as (base, _services, _key):
        context = browser.new_context()
        try:
            page = Page(context, base)
            tab = page.tab
            response = tab.goto(f"{base}/docs")
            assert response is not None
            assert response.status == 200
            assert response.headers["content-security-policy"] == DOCS_POLICY
            assert response.headers["x-content-type-options"] == "nosniff"
            tab.get_by_text("bulk_create_catalog_variants", exact=True).first.wait_for()
            assert tab.get_by_text("Bulk jobs", exact=True).first.is_visible()
            assert tab.locator(".opblock").count() > 40
            title = tab.locator(".info .title").text_content() or ""
            assert title.startswith("Backstock")
            # Everything came from this server: no CDN, no validator badge.
            assert page.urls
            assert all(url.startswith(base) for url in page.urls), page.urls
            assert page.errors == [], page.errors
        finally:
            context.close()
