"""Bulk jobs of several kinds for the crash tests, and what they must leave behind.

Besides the variant update jobs of each test (over variants ``V0``, ``V1``, … that are never
deleted), a ``Mix`` makes, for the same accounts, variant create jobs, variant update jobs and
variant delete jobs over a pool of ids (``N0``, ``N1``, …: a create may find its variant there
already, an update or a delete may find it gone), item update jobs, and lifecycles (create,
update, then delete of the same fresh variants).

``check`` replays every committed job of each account in acceptance order (the order of the job
rows) on a ``Model`` of the account's catalog and compares: each job is complete with the
completed and failed counts of the replay, and the catalog holds the variants and items of the
replay, each row once, with its ``update_count`` and the attributes last set. A lost job, one
applied twice (a create applied again fails as a conflict; an update counts twice) or jobs run
out of their account's order (an update before its create fails as not found) all show.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from backstock.domain.jobs import KINDS, linked_external_ids
from backstock.storage.schema import accounts, catalog_items, catalog_variants, jobs
from tests.support import cid, job_body, sql, variant_body

VARIANT_CREATE = "catalog-variant-bulk-create-job"
VARIANT_UPDATE = "catalog-variant-bulk-update-job"
VARIANT_DELETE = "catalog-variant-bulk-delete-job"
ITEM_UPDATE = "catalog-item-bulk-update-job"
ITEM = "I"
"""The item every variant belongs to."""
ITEMS = (ITEM, "J0", "J1")
"""The items each account starts with (item update jobs also name ``GONE``, which is not)."""

Entries = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Job:
    """A bulk job as its client sent it: the account (by name), the job type, and the
    resources it names with the attributes it sets (a create's whole variant, of ``ITEM``)."""

    account: str
    kind: str
    entries: Entries

    @property
    def path(self) -> str:
        return KINDS[self.kind].path

    @property
    def externals(self) -> list[str]:
        return [external for external, _ in self.entries]

    def body(self) -> dict[str, Any]:
        kind = KINDS[self.kind]
        res = kind.resource
        if kind.action == "create":
            made = [variant_body(e, ITEM, **attributes)["data"] for e, attributes in self.entries]
        elif kind.action == "update":
            made = [{"type": res.type, "id": cid(e), "attributes": a} for e, a in self.entries]
        else:
            made = [{"type": res.type, "id": cid(e)} for e, _ in self.entries]
        return job_body(kind.type, res.plural, made)


def variant_updates(account: str, entries: Entries) -> Job:
    return Job(account, VARIANT_UPDATE, entries)


@dataclass
class Mix:
    """Random jobs of the other kinds, reproducible from ``seed``."""

    seed: int
    pool: int = 30
    size: int = 10
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def job(self, account: str, n: int) -> Job:
        """The ``n``-th job: a variant create, update or delete over the pool, or an item
        update, in turn; values unique to ``n``."""
        kind = (VARIANT_CREATE, VARIANT_UPDATE, VARIANT_DELETE, ITEM_UPDATE)[n % 4]
        rng = self.rng
        if kind == ITEM_UPDATE:
            entries = [
                (rng.choice([*ITEMS, "GONE"]), {"title": f"item {n}-{k}", "price": float(n + k)})
                for k in range(self.size)
            ]
            return Job(account, kind, entries)
        ids = [f"N{rng.randrange(self.pool)}" for _ in range(self.size)]
        if kind == VARIANT_CREATE:
            return Job(account, kind, [(e, created(n, k)) for k, e in enumerate(ids)])
        if kind == VARIANT_UPDATE:
            return Job(account, kind, [(e, updated(n, k)) for k, e in enumerate(ids)])
        return Job(account, kind, [(e, {}) for e in ids])

    @staticmethod
    def lifecycle(account: str, n: int, count: int = 5) -> list[Job]:
        """Create fresh variants, update them, delete them: three jobs, to be accepted in this
        order (others may come between); the variants must end deleted."""
        ids = [f"L{n}-{k}" for k in range(count)]
        return [
            Job(account, VARIANT_CREATE, [(e, created(n, k)) for k, e in enumerate(ids)]),
            Job(account, VARIANT_UPDATE, [(e, updated(n, k)) for k, e in enumerate(ids)]),
            Job(account, VARIANT_DELETE, [(e, {}) for e in ids]),
        ]


def created(n: int, k: int) -> dict[str, Any]:
    return {
        "title": f"created {n}-{k}", "sku": f"c{n}-{k}", "price": float(n * 1000 + k),
        "inventory_quantity": float(k),
    }  # fmt: skip


def updated(n: int, k: int) -> dict[str, Any]:
    return {"sku": f"u{n}-{k}", "price": -float(n * 1000 + k)}


# ---- what the jobs must leave behind -----------------------------------------------------------


@dataclass
class Row:
    attributes: dict[str, Any]
    """The attributes jobs have set (a seeded row's others are not followed)."""
    updates: int = 0


class Model:
    """One account's catalog as its jobs, applied one by one in acceptance order, leave it."""

    def __init__(self, variants: Iterable[str], items: Iterable[str] = ITEMS) -> None:
        self.tables: dict[str, dict[str, Row]] = {
            "catalog-variant": {e: Row({}) for e in variants},
            "catalog-item": {e: Row({}) for e in items},
        }

    def apply(self, job: Job) -> tuple[int, int]:
        """Apply the job; how many of its resources were applied and how many failed."""
        kind = KINDS[job.kind]
        table = self.tables[kind.resource.type]
        applied = 0
        for external, attributes in job.entries:
            row = table.get(external)
            if kind.action == "create":
                done = row is None
                if done:
                    table[external] = Row(dict(attributes))
            elif kind.action == "update":
                done = row is not None
                if row is not None:
                    row.attributes.update(attributes)
                    row.updates += 1
            else:
                done = table.pop(external, None) is not None
            applied += done
        return applied, len(job.entries) - applied


def check(
    database_url: str, seeded: dict[str, list[str]], job_of: Callable[[Any], Job]
) -> dict[str, int]:
    """Replay the committed jobs (``job_of`` says what each job row was sent as) on a model of
    each account of ``seeded`` (its name and the variants it started with, besides ``ITEMS``)
    and compare jobs and catalog with it. Returns a few figures."""
    with sql(database_url) as conn:
        names = dict(conn.execute(select(accounts.c.id, accounts.c.name)).all())
        job_rows = conn.execute(select(jobs).order_by(jobs.c.pk)).all()
        tables = {
            "catalog-variant": conn.execute(select(catalog_variants)).all(),
            "catalog-item": conn.execute(select(catalog_items)).all(),
        }
    models = {name: Model(variants) for name, variants in seeded.items()}
    figures: dict[str, int] = {}
    for row in job_rows:  # acceptance order
        job = job_of(row)
        assert (names[row.account_id], row.kind) == (job.account, job.kind), row.id
        assert linked_external_ids(row.linkage) == job.externals, row.id
        assert row.status == "complete", row.id
        assert row.total_count == len(job.entries), row.id
        expected = models[job.account].apply(job)
        assert (row.completed_count, row.failed_count) == expected, (row.id, job.kind)
        figures[job.kind] = figures.get(job.kind, 0) + 1
        figures["items failed"] = figures.get("items failed", 0) + row.failed_count
    for type_, rows in tables.items():
        found = {(names[r.account_id], r.external_id): r for r in rows}
        assert len(found) == len(rows), f"{type_}: a resource is there twice"
        wanted = {
            (account, external): model_row
            for account, model in models.items()
            for external, model_row in model.tables[type_].items()
        }
        mine = {key for key in found if key[0] in models}
        assert mine == wanted.keys(), f"{type_}: {sorted(mine ^ wanted.keys())[:10]}"
        for key, model_row in wanted.items():
            assert found[key].update_count == model_row.updates, (
                f"{key} applied {found[key].update_count}x, sent {model_row.updates}x"
            )
            for name, value in model_row.attributes.items():
                assert getattr(found[key], name) == value, (key, name)
        figures[type_] = len(wanted)
    return figures


def matching(job_id: str, kind: str, linkage: str, candidates: Iterable[Job]) -> Job:
    """The one job among ``candidates`` (requests that got no 202) that a committed job row
    of this kind and linkage was sent as."""
    externals = linked_external_ids(linkage)
    found = [j for j in candidates if j.kind == kind and j.externals == externals]
    assert found, f"job {job_id} was committed but no client sent it"
    assert all(j == found[0] for j in found), f"job {job_id}: which request?"
    return found[0]
