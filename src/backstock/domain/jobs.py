"""Bulk jobs: the nine kinds (create, update or delete of items, variants or categories), the
job resource as the API shows it, and the per-item errors a job reports.

A kind names everything the one job engine needs to know about a family of jobs: its JSON:API
type and path, the resource it applies to and how (``storage.appliers``), and what its
documents may include.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

import msgspec

from backstock.domain.bodies import Action, job_type
from backstock.domain.catalog import Refusal
from backstock.domain.clock import to_iso
from backstock.domain.errors import InvalidParameter
from backstock.domain.filters import FieldRule
from backstock.domain.ids import AccountId, ExternalId, JobId, compound_id, parse_compound_id
from backstock.domain.resources import CATEGORY, ITEM, RESOURCES, VARIANT, Resource

Status = Literal["queued", "processing", "complete", "cancelled"]
STATUSES: Final[tuple[Status, ...]] = ("queued", "processing", "complete", "cancelled")
OPEN: Final = frozenset({"queued", "processing"})

FIELDS: Final = frozenset({
    "job_id", "status", "created_at", "total_count", "completed_count", "failed_count",
    "completed_at", "expires_at", "errors",
})  # fmt: skip
"""The names ``fields[<job type>]`` may list (besides ``id``); ``job_id`` repeats the id for
2023-02-22 clients, which read it there."""

FILTERS: Final = MappingProxyType(
    {"status": FieldRule(frozenset({"equals"}), "string", frozenset(STATUSES))}
)


@dataclass(frozen=True, slots=True)
class JobKind:
    resource: Resource
    action: Action
    type: str = field(init=False)
    """``catalog-variant-bulk-update-job``: also what the jobs table stores as ``kind``."""
    path: str = field(init=False)
    include: str | None = field(init=False)
    """What ``include`` may name on a job of this kind (a delete leaves nothing)."""

    def __post_init__(self) -> None:
        kind = job_type(self.resource, self.action)
        object.__setattr__(self, "type", kind)
        object.__setattr__(self, "path", f"/api/{kind}s")
        include = None if self.action == "delete" else self.resource.plural
        object.__setattr__(self, "include", include)


KINDS: Final = MappingProxyType(
    {
        kind.type: kind
        for kind in (
            JobKind(res, action)
            for res in (ITEM, VARIANT, CATEGORY)
            for action in ("create", "update", "delete")
        )
    }
)


def kind(type_: str) -> JobKind:
    return KINDS[type_]


class JobRecord(msgspec.Struct, frozen=True):
    """A job as the API shows it."""

    pk: int
    id: JobId
    kind: str
    status: str
    shape: str
    total_count: int
    completed_count: int
    failed_count: int
    created_at: int
    completed_at: int | None
    expires_at: int | None
    errors: str
    """The job's ``errors`` array as JSON text."""
    linkage: str
    """The request's resources as JSON:API resource identifiers (JSON text)."""
    retry_of: str | None = None
    """The job whose failed items this one retries (Backstock's extension)."""


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to accept: the validated request and who sent it."""

    account: AccountId
    id: JobId
    kind: str
    shape: str
    total: int
    payload: bytes
    linkage: str
    created_at: int
    idempotency_key: str | None = None
    request_hash: str | None = None
    """A hash of the request, to tell a retried spawn from another one with the same key."""
    retry_of: str | None = None
    not_before: int | None = None

    def record(self, pk: int) -> JobRecord:
        return JobRecord(
            pk, self.id, self.kind, "queued", self.shape, self.total, 0, 0, self.created_at,
            None, None, "[]", self.linkage, self.retry_of,
        )  # fmt: skip


@dataclass(slots=True)
class ClaimedJob:
    """A job a worker holds the lease of, and where it stands."""

    pk: int
    id: JobId
    account_id: AccountId
    kind: str
    shape: str
    total_count: int
    completed_count: int
    failed_count: int
    next_index: int
    errors: list[dict[str, Any]]
    owner: str
    payload: bytes = b""
    lease_expires_at: int = 0
    applied_now: int = 0
    failed_now: int = 0
    """The items the last batch applied and failed (for metrics)."""
    bytes_kept: int = 0
    """Once complete: the bytes of its failed items, kept for a retry (its account's quota
    frees the rest of its payload)."""


def item_error(code: str, title: str, detail: str, pointer: str) -> dict[str, Any]:
    """One entry of a job's ``errors``: a resource the job could not apply, pointed at in the
    request."""
    source = {"pointer": pointer}
    return {
        "id": str(uuid.uuid4()),
        "code": code,
        "title": title,
        "detail": detail,
        "source": source,
    }


def not_found(res: Resource, external: str, pointer: str) -> dict[str, Any]:
    detail = f"The catalog {res.noun} '{compound_id(external)}' does not exist."
    return item_error("not_found", f"Catalog {res.noun} not found.", detail, pointer)


def conflict(res: Resource, external: str, pointer: str) -> dict[str, Any]:
    detail = f"A catalog {res.noun} with id '{compound_id(external)}' already exists."
    return item_error("conflict", f"Catalog {res.noun} already exists.", detail, pointer)


def missing_related(res: Resource, external: str, pointer: str) -> dict[str, Any]:
    """A create or update naming a related resource that does not exist."""
    detail = f"The related catalog {res.noun} '{compound_id(external)}' does not exist."
    return item_error("not_found", f"Related catalog {res.noun} not found.", detail, pointer)


def failed_indexes(errors: list[dict[str, Any]]) -> list[int]:
    """The positions in its request of the items a job failed, in order (each error's pointer
    ends with the item's index)."""
    found = {int(e["source"]["pointer"].rpartition("/")[2]) for e in errors}
    return sorted(found)


def refused(res: Resource, refusal: Refusal, external: str, pointer: str) -> dict[str, Any]:
    """The error of an item a job did not apply."""
    if refusal.reason == "exists":
        return conflict(res, external, pointer)
    if refusal.reason == "missing":
        return not_found(res, external, pointer)
    if refusal.reason == "forced":
        detail = f"'{compound_id(external)}' failed on purpose (a BACKSTOCK_TEST_FAULTS rule)."
        return item_error(refusal.code, "Failed on purpose.", detail, pointer)
    target = res.relation(refusal.relation).target
    return missing_related(RESOURCES[target], refusal.external, pointer)


def internal_error(res: Resource, external: str, pointer: str) -> dict[str, Any]:
    detail = f"Applying '{compound_id(external)}' failed repeatedly; it was not applied."
    return item_error("internal_error", "The change could not be applied.", detail, pointer)


_LINKAGE = msgspec.json.Decoder(list[dict[str, str]])


def linked_external_ids(linkage: str) -> list[ExternalId]:
    """The external ids a job's linkage names, in request order."""
    return [parse_compound_id(entry["id"]) for entry in _LINKAGE.decode(linkage)]


# ---- Backstock's extensions (docs/extensions.md) ----------------------------------------------

FINAL: Final = frozenset({"complete", "cancelled"})
MAX_IDEMPOTENCY_KEY = 255


def idempotency_key(value: str | None) -> str | None:
    """A client's ``Idempotency-Key``: 1 to 255 printable ASCII characters."""
    if value is None:
        return None
    if not 0 < len(value) <= MAX_IDEMPOTENCY_KEY or not (value.isascii() and value.isprintable()):
        raise InvalidParameter(
            "Idempotency-Key",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters.",
        )
    return value


def request_hash(kind: str, body: bytes) -> str:
    """What makes two spawns with one ``Idempotency-Key`` the same request: the job kind and
    the body, byte for byte."""
    return hashlib.sha256(kind.encode() + b"\0" + body).hexdigest()


def finished_event(
    kind: str, job_id: str, status: str, counts: tuple[int, int, int], at: int
) -> bytes:
    """The body of the webhook a job's end sends: the job, as a JSON:API resource object
    (without ``errors``: GET the job for those)."""
    total, completed, failed = counts
    return msgspec.json.encode({
        "meta": {"event": f"job.{status}"},
        "data": {
            "type": kind,
            "id": job_id,
            "attributes": {
                "status": status, "total_count": total, "completed_count": completed,
                "failed_count": failed, "completed_at": to_iso(at),
            },
        },
    })  # fmt: skip
