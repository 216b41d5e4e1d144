"""Keep a Klaviyo catalog in step with a shop's products, with Klaviyo's official SDK.

    klaviyo = client(api_key)                # the SDK, its own retries off: this module retries
    report = CatalogSync(klaviyo).sync(products)
    for failure in report.failed:
        print(failure)

Items, then their variants, are upserted through bulk jobs (at most 100 entries each): ids the
catalog has are updated, the others created. Spawns and polls refused with 429 are retried after
``Retry-After``; 503s with exponential backoff (never sooner than ``Retry-After``). Every job is
polled until it is complete, and each item it failed is reported, with Klaviyo's error code.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from klaviyo_api import KlaviyoAPI
from openapi_client.exceptions import ApiException

log = logging.getLogger("catalog_sync")
T = TypeVar("T")

JOB_SIZE = 100  # Klaviyo's limit of entries per bulk job
LOOKUP_SIZE = 50  # ids per existence lookup (``any(ids,[...])``)
PREFIX = "$custom:::$default:::"  # an id is this and the external id
ITEM, VARIANT = "catalog-item", "catalog-variant"
# The SDK's methods for each job (spawn it, get it) and its body's member.
JOBS = {
    (ITEM, "create"): ("bulk_create_catalog_items", "get_bulk_create_catalog_items_job", "items"),
    (ITEM, "update"): ("bulk_update_catalog_items", "get_bulk_update_catalog_items_job", "items"),
    (VARIANT, "create"): (
        "bulk_create_catalog_variants",
        "get_bulk_create_variants_job",
        "variants",
    ),
    (VARIANT, "update"): (
        "bulk_update_catalog_variants",
        "get_bulk_update_variants_job",
        "variants",
    ),
}


def client(api_key: str, host: str = "") -> KlaviyoAPI:
    """Klaviyo's SDK (``host``: another server, such as a Backstock), with its own retries off."""
    return KlaviyoAPI(api_key, max_retries=1, test_host=host)


@dataclass(frozen=True)
class Failure:
    type: str
    external_id: str
    code: str
    detail: str


@dataclass
class Report:
    applied: dict[str, int] = field(default_factory=lambda: {ITEM: 0, VARIANT: 0})
    failed: list[Failure] = field(default_factory=list)
    retries: int = 0


@dataclass(frozen=True)
class Retry:
    attempts: int = 8
    """Tries of one request before its 429 or 503 is raised."""
    backoff: float = 0.5
    """The first wait after a 503; it doubles with each try (with jitter), up to ``max_wait``."""
    max_wait: float = 60.0
    sleep: Callable[[float], None] = time.sleep

    def wait(self, error: ApiException, attempt: int) -> float:
        given = float((error.headers or {}).get("Retry-After") or 0)
        if error.status == 429 and given:
            return min(given, self.max_wait)
        backoff = min(self.backoff * 2**attempt, self.max_wait)
        return max(given, random.uniform(backoff / 2, backoff))  # jitter


@dataclass
class Record:
    """One item or variant to send: its external id, attributes and (variants) item."""

    external_id: str
    attributes: dict[str, Any]
    item: str | None = None


class CatalogSync:
    def __init__(
        self,
        klaviyo: KlaviyoAPI,
        retry: Retry | None = None,
        poll_interval: float = 1.0,
        timeout: float = 600.0,
        on_progress: Callable[[str, str, int, int], None] | None = None,
    ) -> None:
        self.catalogs = klaviyo.Catalogs
        self.retry = retry or Retry()
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.on_progress = on_progress
        """Called after each poll with the job's id, status, items done and items in all."""

    def sync(self, products: Sequence[Mapping[str, Any]]) -> Report:
        report = Report()
        items = [Record(p["id"], _item_attributes(p)) for p in products]
        failed = {f.external_id for f in self._upsert(ITEM, items, report)}
        variants = []
        for product in products:
            for variant in product.get("variants", ()):
                if product["id"] in failed:
                    detail = f"Its item {product['id']} failed; the variant was not sent."
                    report.failed.append(Failure(VARIANT, variant["id"], "item_failed", detail))
                else:
                    attributes = _variant_attributes(product, variant)
                    variants.append(Record(variant["id"], attributes, product["id"]))
        self._upsert(VARIANT, variants, report)
        return report

    def _upsert(self, kind: str, records: list[Record], report: Report) -> list[Failure]:
        existing = self._existing(kind, [r.external_id for r in records], report)
        spawned = []  # every job first (they run in order), then the polls
        for action in ("create", "update"):
            chosen = [r for r in records if (r.external_id in existing) == (action == "update")]
            for batch in _chunks(chosen, JOB_SIZE):
                spawned.append((action, batch, self._spawn(kind, action, batch, report)))
        failures = []
        for action, batch, job_id in spawned:
            job = self._wait(getattr(self.catalogs, JOBS[kind, action][1]), job_id, report)
            report.applied[kind] += job.attributes.completed_count
            for error in job.attributes.errors or ():
                index = int(error.source.pointer.rsplit("/", 1)[1])
                failure = Failure(kind, batch[index].external_id, error.code, error.detail)
                log.warning("%s %s failed: %s", kind, failure.external_id, error.detail)
                failures.append(failure)
        report.failed.extend(failures)
        return failures

    def _existing(self, kind: str, external_ids: list[str], report: Report) -> set[str]:
        """Which of the external ids the catalog has."""
        catalogs = self.catalogs
        listing = catalogs.get_catalog_items if kind == ITEM else catalogs.get_catalog_variants
        found: set[str] = set()
        for batch in _chunks(external_ids, LOOKUP_SIZE):
            wanted = ",".join(f'"{PREFIX}{external_id}"' for external_id in batch)
            page = self._call(listing, report, filter=f"any(ids,[{wanted}])", page_size=100)
            found.update(resource.id.removeprefix(PREFIX) for resource in page.data)
        return found

    def _spawn(self, kind: str, action: str, batch: list[Record], report: Report) -> str:
        spawn, _, member = JOBS[kind, action]
        entries = []
        for record in batch:
            entry: dict[str, Any] = {"type": kind, "attributes": dict(record.attributes)}
            if action == "update":
                entry["id"] = PREFIX + record.external_id
            else:
                entry["attributes"]["external_id"] = record.external_id
                if record.item is not None:
                    item = {"data": {"type": ITEM, "id": PREFIX + record.item}}
                    entry["relationships"] = {"item": item}
            entries.append(entry)
        job_type = f"{kind}-bulk-{action}-job"
        body = {"data": {"type": job_type, "attributes": {member: {"data": entries}}}}
        job_id: str = self._call(getattr(self.catalogs, spawn), report, body).data.id
        log.info("spawned %s %s job %s (%d entries)", kind, action, job_id, len(entries))
        return job_id

    def _wait(self, get: Callable[..., Any], job_id: str, report: Report) -> Any:
        deadline = time.monotonic() + self.timeout
        while True:
            job = self._call(get, report, job_id).data
            status = job.attributes.status
            if self.on_progress is not None:
                done = job.attributes.completed_count + job.attributes.failed_count
                self.on_progress(job_id, status, done, job.attributes.total_count)
            if status == "complete":
                return job
            if status == "cancelled":
                raise RuntimeError(f"job {job_id} was cancelled")
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {status} after {self.timeout} s")
            time.sleep(self.poll_interval)

    def _call(self, operation: Callable[..., T], report: Report, *args: Any, **kwargs: Any) -> T:
        """``operation``, tried again after a 429 or a 503 (``retry.attempts`` tries in all)."""
        for attempt in range(self.retry.attempts):
            try:
                return operation(*args, **kwargs)
            except ApiException as error:
                if error.status not in (429, 503) or attempt + 1 == self.retry.attempts:
                    raise
                wait = self.retry.wait(error, attempt)
                log.warning("answered %s; trying again in %.1f s", error.status, wait)
                report.retries += 1
                self.retry.sleep(wait)
        raise AssertionError("unreachable")


def _item_attributes(product: Mapping[str, Any]) -> dict[str, Any]:
    names = ("title", "description", "url", "price")
    attributes = {name: product[name] for name in names if name in product}
    if "image_url" in product:
        attributes["image_full_url"] = product["image_url"]
    return attributes


def _variant_attributes(product: Mapping[str, Any], variant: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "title": variant.get("title", product["title"]),
        "description": variant.get("description", product["description"]),
        "url": variant.get("url", product["url"]),
        "sku": variant.get("sku", variant["id"]),
        "price": variant.get("price", product.get("price")),
        "inventory_quantity": variant.get("inventory", 0),
    }


def _chunks(values: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
