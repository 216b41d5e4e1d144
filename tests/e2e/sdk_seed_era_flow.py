"""Klaviyo's seed-era Python SDK, ``klaviyo-api`` 1.2.1 (revision 2023-02-22), through its catalog
flows against a running Backstock, unchanged: a plain script, not a test module.

``tests/e2e/test_sdk_seed_era.py`` runs it with 1.2.1 first on ``PYTHONPATH`` (it cannot share
the venv with klaviyo-api 25) and ``SEED_ERA_FLOW`` set to a JSON object::

    {"sdk_dir": "<where 1.2.1 is installed>",
     "live": {"url": ..., "key": ...},      # a server with its job worker
     "idle": {"url": ..., "key": ...},      # a server without one (its jobs stay queued)
     "jobs": {"idempotent": ..., "failed": ..., "retry": ..., "cancelled": ...}}

``jobs`` are variant bulk update jobs the test made beforehand over plain HTTP with Backstock's
extensions (an ``Idempotency-Key`` spawn, a failed job and its ``/retry``, all of the live key's
account; a ``/cancel``-ed job of the idle key's account). The script only uses the SDK.

Each step checks what it got; the script prints, as one line of JSON on stdout, what it found.
A failed check exits with status 1 after printing, on stderr, the step, what was expected and
what came back, and the last SDK call (method, arguments and the HTTP request it makes); an SDK
error adds the status and body of the response (an ``ApiException``) or the traceback (a response
the SDK could not take).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

import klaviyo_api
from klaviyo_api import KlaviyoAPI
from openapi_client.exceptions import ApiException, NotFoundException

SEED_REVISION = "2023-02-22"
VARIANT_UPDATES = "/api/catalog-variant-bulk-update-jobs/"
BULK = [f"BOOT-{n:03}" for n in range(100)]
"""The variants of the create-variants job: with the three created one by one, 103 of ``BOOT``,
so that listing them takes two pages (the seed era's page size is 100, and fixed)."""


class Failed(Exception):
    pass


def cid(external: str) -> str:
    return f"$custom:::$default:::{external}"


def expect(got: Any, want: Any, what: str) -> None:
    if got != want:
        raise Failed(f"{what}: expected {want!r}, got {got!r}")


def ids(document: dict[str, Any]) -> list[str]:
    return [resource["id"] for resource in document["data"]]


class Recorded:
    """``KlaviyoAPI(...).Catalogs`` that remembers its last call, for the failure report."""

    def __init__(self, catalogs: Any) -> None:
        self._catalogs = catalogs
        self.last = "(none)"

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._catalogs, name)
        endpoint = getattr(self._catalogs, f"{name}_endpoint", None)
        route = (
            "" if endpoint is None else "{http_method} {endpoint_path}".format(**endpoint.settings)
        )

        def call(*args: Any, **kwargs: Any) -> Any:
            shown = [repr(a)[:300] for a in args] + [f"{k}={v!r}"[:300] for k, v in kwargs.items()]
            self.last = f"Catalogs.{name}({', '.join(shown)})  [{route}]"
            return method(*args, **kwargs)

        return call


class Flow:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.found: dict[str, Any] = {}
        self.step = "start"
        live, idle = config["live"], config["idle"]
        self.api = Recorded(self.client(live).Catalogs)
        self.idle = Recorded(self.client(idle).Catalogs)

    @staticmethod
    def client(server: dict[str, str]) -> Any:
        return KlaviyoAPI(server["key"], test_host=server["url"], max_retries=1, max_delay=0)

    @contextmanager
    def at(self, step: str) -> Iterator[dict[str, Any]]:
        self.step = step
        found: dict[str, Any] = {}
        yield found
        self.found[step] = found

    def wait(self, get: Callable[..., Any], job_id: str, **params: Any) -> dict[str, Any]:
        """Poll the job until it is complete, as a seed-era sync did; its resource object."""
        deadline = time.monotonic() + 30
        seen = []
        while True:
            data: dict[str, Any] = get(job_id, **params)["data"]
            status = data["attributes"]["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == "complete":
                return data
            if status not in ("queued", "processing") or time.monotonic() > deadline:
                raise Failed(f"job {job_id} went {seen}, never 'complete'")
            time.sleep(0.02)

    # ---- the flows --------------------------------------------------------------------------

    def run(self) -> None:
        self.sdk()
        self.catalog()
        self.update_job()
        self.update_jobs_listed()
        self.extension_jobs()
        self.create_items_job()
        self.delete_variants_job()
        self.category()

    def sdk(self) -> None:
        with self.at("sdk") as found:
            found["version"] = metadata.version("klaviyo-api")
            found["revision"] = KlaviyoAPI._REVISION
            found["file"] = klaviyo_api.__file__
            expect(found["version"], "1.2.1", "klaviyo-api's version")
            expect(found["revision"], SEED_REVISION, "the SDK's revision header")
            if not found["file"].startswith(self.config["sdk_dir"]):
                raise Failed(f"klaviyo_api is not 1.2.1's: {found['file']}")

    def catalog(self) -> None:
        api = self.api
        with self.at("create_catalog_item") as found:
            item = api.create_catalog_item({"data": {"type": "catalog-item", "attributes": {
                "external_id": "BOOT", "title": "Boot", "description": "A boot.",
                "url": "https://shop.example/boot", "integration_type": "$custom",
                "catalog_type": "$default", "price": 80.0,
                "image_full_url": "https://shop.example/boot.png",
                "images": ["https://shop.example/boot-1.png"],
                "custom_metadata": {"Top Pick": True}, "published": True,
            }}})["data"]  # fmt: skip
            found["id"] = item["id"]
            expect(item["id"], cid("BOOT"), "the new item's id")
            expect(item["type"], "catalog-item", "its type")
            attributes = item["attributes"]
            expect(
                [attributes[k] for k in ("external_id", "title", "price", "custom_metadata")],
                ["BOOT", "Boot", 80.0, {"Top Pick": True}],
                "its attributes",
            )

        with self.at("create_catalog_variant") as found:
            found["ids"] = []
            for size, price in (("S", 40.0), ("M", 42.0), ("L", 44.0)):
                variant = api.create_catalog_variant({"data": {"type": "catalog-variant",
                    "attributes": {
                        "external_id": f"BOOT-{size}", "title": f"Boot {size}",
                        "description": "A boot.", "sku": f"B-{size}", "inventory_quantity": 5,
                        "price": price, "url": "https://shop.example/boot",
                        "inventory_policy": 1,
                    },
                    # 2023-02-22's relationship: ``items``, an array of one
                    "relationships": {"items": {"data": [{"type": "catalog-item",
                                                          "id": cid("BOOT")}]}},
                }})["data"]  # fmt: skip
                expect(variant["id"], cid(f"BOOT-{size}"), "a new variant's id")
                found["ids"].append(variant["id"])

        with self.at("get_catalog_variant") as found:
            variant = api.get_catalog_variant(cid("BOOT-M"))["data"]
            found["attributes"] = attributes = variant["attributes"]
            expect(
                [attributes[k] for k in ("sku", "price", "inventory_quantity", "inventory_policy")],
                ["B-M", 42.0, 5, 1],
                "BOOT-M's attributes",
            )
            expect(variant["relationships"]["item"]["data"]["id"], cid("BOOT"), "BOOT-M's item")

        with self.at("spawn_create_variants_job") as found:
            body = {"data": {"type": "catalog-variant-bulk-create-job", "attributes": {
                "variants": [{"type": "catalog-variant", "attributes": {
                    "external_id": external, "title": external, "description": "d",
                    "sku": external, "inventory_quantity": 1, "price": 10.0,
                    "url": "https://shop.example/boot",
                }, "relationships": {"items": {"data": [{"type": "catalog-item",
                                                         "id": cid("BOOT")}]}}}
                    for external in BULK
                ],
            }}}  # fmt: skip
            job = api.spawn_create_variants_job(body)["data"]
            done = self.wait(api.get_create_variants_job, job["id"])["attributes"]
            found["counts"] = [done["total_count"], done["completed_count"], done["failed_count"]]
            expect(found["counts"], [100, 100, 0], "the create-variants job's counts")

        with self.at("get_catalog_variants") as found:
            mine = f'equals(item.id,"{cid("BOOT")}")'
            first = api.get_catalog_variants(filter=mine)
            if "next" not in first["links"]:
                raise Failed(f"103 variants, and no next page: {first['links']}")
            # the seed era's way on: ``links.next`` as the cursor, as is
            second = api.get_catalog_variants(filter=mine, page_cursor=first["links"]["next"])
            found["pages"] = [len(first["data"]), len(second["data"])]
            expect(found["pages"], [100, 3], "the page sizes")
            expect(
                ids(first) + ids(second),
                [cid(f"BOOT-{size}") for size in "SML"] + [cid(e) for e in BULK],
                "the variants of BOOT, both pages in order",
            )
            expect(second["links"].get("next"), None, "the last page's next link")
            found["second_page_links"] = sorted(second["links"])

    def update_job(self) -> None:
        """The seeds' operation: Spawn Update Variants Job, then Get Update Variants Job."""
        api = self.api
        with self.at("spawn_update_variants_job") as found:
            body = {"data": {"type": "catalog-variant-bulk-update-job", "attributes": {
                "variants": [  # 2023-02-22's shape: the array itself
                    {"type": "catalog-variant", "id": cid("BOOT-S"),
                     "attributes": {"price": 50.0, "title": "Boot S (sale)"}},
                    {"type": "catalog-variant", "id": cid("BOOT-M"),
                     "attributes": {"inventory_quantity": 7, "published": False}},
                    {"type": "catalog-variant", "id": cid("BOOT-GONE"),
                     "attributes": {"price": 1.0}},
                ],
            }}}  # fmt: skip
            accepted = api.spawn_update_variants_job(body)
            job = accepted["data"]
            found["id"] = job_id = job["id"]
            found["status"] = job["attributes"]["status"]
            expect(job["type"], "catalog-variant-bulk-update-job", "the job's type")
            expect(job["attributes"]["job_id"], job_id, "attributes.job_id")
            expect(job["attributes"]["total_count"], 3, "total_count")
            if found["status"] not in ("queued", "processing", "complete"):
                raise Failed(f"a fresh job is {found['status']!r}")
            expect(
                [v["id"] for v in job["relationships"]["variants"]["data"]],
                [cid("BOOT-S"), cid("BOOT-M"), cid("BOOT-GONE")],
                "the job's variants",
            )
            if not job["links"]["self"].endswith(f"{VARIANT_UPDATES.rstrip('/')}/{job_id}"):
                raise Failed(f"the job's self link: {job['links']['self']}")

        with self.at("get_update_variants_job") as found:
            done = self.wait(api.get_update_variants_job, job_id)["attributes"]
            found["counts"] = [done["total_count"], done["completed_count"], done["failed_count"]]
            expect(found["counts"], [3, 2, 1], "the counts")
            for member in ("created_at", "completed_at", "expires_at"):
                if not isinstance(done.get(member), str):
                    raise Failed(f"{member} of a complete job: {done.get(member)!r}")
            [error] = done["errors"]
            found["error"] = {k: error[k] for k in ("code", "source")}
            expect(error["code"], "not_found", "the missing variant's error code")
            expect(error["source"], {"pointer": "/data/attributes/variants/2"}, "its source")
            if cid("BOOT-GONE") not in error["detail"]:
                raise Failed(f"the error does not name the missing variant: {error['detail']}")

        with self.at("get_update_variants_job include=variants") as found:
            document = api.get_update_variants_job(job_id, include=["variants"])
            included = {v["id"]: v["attributes"] for v in document.get("included", [])}
            found["included"] = sorted(included)
            expect(found["included"], [cid("BOOT-M"), cid("BOOT-S")], "the included variants")
            s, m = included[cid("BOOT-S")], included[cid("BOOT-M")]
            expect([s["price"], s["title"]], [50.0, "Boot S (sale)"], "BOOT-S as updated")
            expect([m["inventory_quantity"], m["published"]], [7, False], "BOOT-M as updated")
            expect(
                api.get_catalog_variant(cid("BOOT-S"))["data"]["attributes"]["price"],
                50.0,
                "BOOT-S's price read back",
            )

    def update_jobs_listed(self) -> None:
        """Get Update Variants Jobs: the SDK's job and the extensions' ones, newest first."""
        api, jobs = self.api, self.config["jobs"]
        ours = self.found["spawn_update_variants_job"]["id"]
        newest_first = [ours, jobs["retry"], jobs["failed"], jobs["idempotent"]]
        with self.at("get_update_variants_jobs") as found:
            listed = api.get_update_variants_jobs()["data"]
            found["ids"] = [job["id"] for job in listed]
            expect(found["ids"], newest_first, "the account's update jobs")
            found["statuses"] = sorted({job["attributes"]["status"] for job in listed})
            expect(found["statuses"], ["complete"], "their statuses")
            complete = api.get_update_variants_jobs(filter='equals(status,"complete")')
            expect(ids(complete), newest_first, "filtered by status complete")
            sparse = api.get_update_variants_jobs(
                fields_catalog_variant_bulk_update_job=["status", "failed_count"]
            )["data"]
            found["sparse"] = sorted({tuple(sorted(job["attributes"])) for job in sparse})
            expect(found["sparse"], [("failed_count", "status")], "sparse fieldsets")

    def extension_jobs(self) -> None:
        """The jobs Backstock's extensions made, read as any job: a retry (``retry_of``), the
        job of an ``Idempotency-Key`` spawn, and a cancelled one."""
        api, jobs = self.api, self.config["jobs"]
        with self.at("extension: idempotent") as found:
            job = api.get_update_variants_job(jobs["idempotent"], include=["variants"])
            attributes = job["data"]["attributes"]
            found["counts"] = [attributes["completed_count"], attributes["failed_count"]]
            expect(found["counts"], [1, 0], "the idempotent spawn's counts")
            expect(ids({"data": job["included"]}), [cid("EXT-1")], "its variants")
            expect("retry_of" in attributes, False, "retry_of on a job that is no retry")

        with self.at("extension: failed") as found:
            attributes = api.get_update_variants_job(jobs["failed"])["data"]["attributes"]
            found["counts"] = [attributes["completed_count"], attributes["failed_count"]]
            expect(found["counts"], [1, 1], "the retried job's counts")
            expect(attributes["errors"][0]["code"], "not_found", "its error")

        with self.at("extension: retry") as found:
            job = api.get_update_variants_job(jobs["retry"], include=["variants"])
            attributes = job["data"]["attributes"]
            found["retry_of"] = attributes.get("retry_of")
            found["counts"] = [attributes["completed_count"], attributes["failed_count"]]
            expect(found["retry_of"], jobs["failed"], "the retry's retry_of")
            expect([attributes["status"], *found["counts"]], ["complete", 1, 0], "the retry")
            expect(ids({"data": job["included"]}), [cid("EXT-3")], "its variants")
            sparse = api.get_update_variants_job(
                jobs["retry"], fields_catalog_variant_bulk_update_job=["status"]
            )["data"]["attributes"]
            expect(sparse, {"status": "complete"}, "the retry with fields=status")

        with self.at("extension: cancelled") as found:
            idle = self.idle
            job = idle.get_update_variants_job(jobs["cancelled"], include=["variants"])
            attributes = job["data"]["attributes"]
            found["status"] = attributes["status"]
            found["counts"] = [attributes["completed_count"], attributes["failed_count"]]
            expect([found["status"], *found["counts"]], ["cancelled", 0, 0], "the cancelled job")
            for member in ("completed_at", "expires_at"):
                if not isinstance(attributes.get(member), str):
                    raise Failed(f"{member} of a cancelled job: {attributes.get(member)!r}")
            expect(ids(idle.get_update_variants_jobs()), [jobs["cancelled"]], "the idle jobs")
            cancelled = idle.get_update_variants_jobs(filter='equals(status,"cancelled")')
            expect(ids(cancelled), [jobs["cancelled"]], "filtered by status cancelled")

    def create_items_job(self) -> None:
        api = self.api
        with self.at("spawn_create_items_job") as found:
            items = [
                {"type": "catalog-item", "attributes": {
                    "external_id": external, "title": external.title(), "description": "d",
                    "url": f"https://shop.example/{external.lower()}", "price": 30.0,
                }}
                for external in ("SANDAL", "CLOG", "BOOT")  # BOOT exists: a conflict
            ]  # fmt: skip
            body = {
                "data": {"type": "catalog-item-bulk-create-job", "attributes": {"items": items}}
            }
            job = api.spawn_create_items_job(body)["data"]
            found["id"] = job["id"]
            done = self.wait(api.get_create_items_job, job["id"])["attributes"]
            found["counts"] = [done["total_count"], done["completed_count"], done["failed_count"]]
            expect(found["counts"], [3, 2, 1], "the create-items job's counts")
            [error] = done["errors"]
            found["error"] = {k: error[k] for k in ("code", "source")}
            expect(error["code"], "conflict", "BOOT's error")
            expect(error["source"], {"pointer": "/data/attributes/items/2"}, "its source")
            included = api.get_create_items_job(job["id"], include=["items"])["included"]
            expect(
                sorted(item["id"] for item in included),
                sorted(cid(e) for e in ("SANDAL", "CLOG", "BOOT")),
                "the job's included items",
            )
            expect(ids(api.get_create_items_jobs()), [job["id"]], "the create-items jobs")
            expect(
                api.get_catalog_item(cid("CLOG"))["data"]["attributes"]["title"],
                "Clog",
                "a created item read back",
            )

    def delete_variants_job(self) -> None:
        api = self.api
        with self.at("spawn_delete_variants_job") as found:
            doomed = ["BOOT-L", "BOOT-099", "BOOT-GONE"]  # BOOT-GONE never was
            body = {"data": {"type": "catalog-variant-bulk-delete-job", "attributes": {
                "variants": [{"type": "catalog-variant", "id": cid(e)} for e in doomed],
            }}}  # fmt: skip
            job = api.spawn_delete_variants_job(body)["data"]
            found["id"] = job["id"]
            done = self.wait(api.get_delete_variants_job, job["id"])["attributes"]
            found["counts"] = [done["total_count"], done["completed_count"], done["failed_count"]]
            expect(found["counts"], [3, 2, 1], "the delete-variants job's counts")
            expect(
                [(e["code"], e["source"]["pointer"]) for e in done["errors"]],
                [("not_found", "/data/attributes/variants/2")],
                "the never-existing variant's error",
            )
            try:
                api.get_catalog_variant(cid("BOOT-L"))
            except NotFoundException as exc:
                found["deleted_variant_status"] = exc.status
            else:
                raise Failed("BOOT-L is still there")
            expect(ids(api.get_delete_variants_jobs()), [job["id"]], "the delete-variants jobs")
            first = api.get_catalog_item_variants(cid("BOOT"))
            second = api.get_catalog_item_variants(cid("BOOT"), page_cursor=first["links"]["next"])
            found["variants_left"] = len(first["data"]) + len(second["data"])
            expect(
                ids(first) + ids(second),
                [cid(e) for e in ["BOOT-S", "BOOT-M", *BULK[:-1]]],
                "BOOT's variants left, over two pages",
            )

    def category(self) -> None:
        api = self.api
        with self.at("create_catalog_category") as found:
            category = api.create_catalog_category({"data": {"type": "catalog-category",
                "attributes": {"external_id": "SHOES", "name": "Shoes"},
                "relationships": {"items": {"data": [{"type": "catalog-item",
                                                      "id": cid("BOOT")}]}},
            }})["data"]  # fmt: skip
            found["id"] = category["id"]
            expect(category["id"], cid("SHOES"), "the new category's id")
            expect(category["attributes"]["name"], "Shoes", "its name")

        with self.at("create_catalog_category_relationships") as found:
            # 1.2.1 takes the body second (its README says third): by keyword, as documented
            answer = api.create_catalog_category_relationships(
                id=cid("SHOES"),
                related_resource="items",
                catalog_category_item_op={"data": [
                    {"type": "catalog-item", "id": cid("SANDAL")},
                    {"type": "catalog-item", "id": cid("CLOG")},
                ]},
            )  # fmt: skip
            expect(answer, None, "the answer (204)")
            found["added"] = ["SANDAL", "CLOG"]

        with self.at("get_catalog_category_items") as found:
            expected = [cid(e) for e in ("BOOT", "SANDAL", "CLOG")]
            found["items"] = ids(api.get_catalog_category_items(cid("SHOES")))
            expect(found["items"], expected, "the category's items")
            linkage = api.get_catalog_category_relationships(cid("SHOES"), "items")
            expect(ids(linkage), expected, "its item relationships")
            expect(
                ids(api.get_catalog_item_categories(cid("SANDAL"))),
                [cid("SHOES")],
                "SANDAL's categories",
            )
            in_shoes = api.get_catalog_items(filter=f'equals(category.id,"{cid("SHOES")}")')
            expect(ids(in_shoes), expected, "items filtered by category")


def main() -> int:
    config = json.loads(os.environ["SEED_ERA_FLOW"])
    flow = Flow(config)
    try:
        flow.run()
    except Exception as exc:  # every failure is reported, then the script fails
        lines = [f"FAILED at step {flow.step!r}"]
        if isinstance(exc, Failed):
            lines.append(str(exc))
        elif isinstance(exc, ApiException):
            body = exc.body.decode() if isinstance(exc.body, bytes) else exc.body
            lines += [f"the SDK raised {type(exc).__name__}: HTTP {exc.status} {exc.reason}", body]
        else:
            lines += ["the SDK could not take the response:", traceback.format_exc()]
        calls = [f"last SDK call ({name}): {api.last}" for name, api in
                 (("live", flow.api), ("idle", flow.idle))]  # fmt: skip
        print("\n".join(lines + calls), file=sys.stderr)
        print(json.dumps(flow.found, default=str))
        return 1
    print(json.dumps(flow.found, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
