"""JSON:API rendering: resource objects, documents, error documents, sparse fieldsets."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from starlette.responses import Response

from backstock.domain.clock import to_iso
from backstock.domain.errors import BackstockError, InvalidParameter
from backstock.domain.ids import compound_id
from backstock.domain.pagination import Cursor, Page, encode_cursor

MEDIA_TYPE = "application/vnd.api+json"

VARIANT_FIELDS = frozenset({
    "external_id", "title", "description", "sku", "inventory_policy", "inventory_quantity",
    "price", "url", "image_full_url", "image_thumbnail_url", "images", "custom_metadata",
    "published", "created", "updated",
})  # fmt: skip
ITEM_FIELDS = VARIANT_FIELDS - {"sku", "inventory_policy", "inventory_quantity"}
JOB_FIELDS = frozenset({
    "job_id", "status", "created_at", "total_count", "completed_count", "failed_count",
    "completed_at", "expires_at", "errors",
})  # fmt: skip
JOB_TYPE = "catalog-variant-bulk-update-job"


class Renderer:
    """Renders resources for one request: its base URL, its sparse fieldsets, its revision."""

    def __init__(
        self, base_url: str, fields: Mapping[str, frozenset[str]], omit_nulls: bool = False
    ) -> None:
        self.base = base_url
        self.fields = fields
        self.omit_nulls = omit_nulls

    def _attributes(self, kind: str, attributes: dict[str, Any]) -> dict[str, Any]:
        wanted = self.fields.get(kind)
        if wanted is not None:
            attributes = {k: v for k, v in attributes.items() if k in wanted}
        if self.omit_nulls:
            attributes = {k: v for k, v in attributes.items() if v is not None}
        return attributes

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def variant(self, record: Mapping[str, Any]) -> dict[str, Any]:
        vid = compound_id(record["external_id"])
        self_url = self.url(f"/api/catalog-variants/{quoted_id(record['external_id'])}")
        attributes = {name: record[name] for name in _VARIANT_ORDER}
        attributes["created"] = to_iso(record["created"])
        attributes["updated"] = to_iso(record["updated"])
        return {
            "type": "catalog-variant",
            "id": vid,
            "attributes": self._attributes("catalog-variant", attributes),
            # No relationship links: no endpoint serves a variant's item (none in the spec).
            "relationships": {
                "item": {
                    "data": {"type": "catalog-item", "id": compound_id(record["item_external_id"])}
                }
            },
            "links": {"self": self_url},
        }

    def item(
        self, record: Mapping[str, Any], variant_ids: Sequence[str] | None = None
    ) -> dict[str, Any]:
        iid = compound_id(record["external_id"])
        self_url = self.url(f"/api/catalog-items/{quoted_id(record['external_id'])}")
        attributes = {name: record[name] for name in _ITEM_ORDER}
        attributes["created"] = to_iso(record["created"])
        attributes["updated"] = to_iso(record["updated"])
        variants: dict[str, Any] = {
            "links": {
                "self": f"{self_url}/relationships/variants",
                "related": f"{self_url}/variants",
            }
        }
        if variant_ids is not None:
            variants["data"] = linkage("catalog-variant", variant_ids)
        return {
            "type": "catalog-item",
            "id": iid,
            "attributes": self._attributes("catalog-item", attributes),
            "relationships": {"variants": variants},
            "links": {"self": self_url},
        }

    def job(self, job: Any) -> dict[str, Any]:
        """A job resource; ``job`` is a ``JobRecord``. ``errors`` and the variant ids are
        spliced in as the JSON text they are stored as."""
        attributes: dict[str, Any] = {
            "job_id": job.id,
            "status": job.status,
            "created_at": to_iso(job.created_at),
            "total_count": job.total_count,
            "completed_count": job.completed_count,
            "failed_count": job.failed_count,
            "completed_at": to_iso(job.completed_at),
            "expires_at": to_iso(job.expires_at),
            "errors": orjson.Fragment(job.errors),
        }
        return {
            "type": JOB_TYPE,
            "id": job.id,
            "attributes": self._attributes(JOB_TYPE, attributes),
            "relationships": {"variants": {"data": orjson.Fragment(job.variant_linkage)}},
            "links": {"self": self.url(f"/api/catalog-variant-bulk-update-jobs/{job.id}")},
        }

    def page_links(self, path: str, query: Mapping[str, str], page: Page[Any]) -> dict[str, str]:
        links = {"self": self.url(path) + _query(query)}
        for name, cursor in (("next", page.next), ("prev", page.prev)):
            if cursor is not None:
                links[name] = self.url(path) + _query(query, cursor)
        return links


_VARIANT_ORDER = (
    "external_id", "title", "description", "sku", "inventory_policy", "inventory_quantity",
    "price", "url", "image_full_url", "image_thumbnail_url", "images", "custom_metadata",
    "published",
)  # fmt: skip
_ITEM_ORDER = tuple(
    n for n in _VARIANT_ORDER if n not in ("sku", "inventory_policy", "inventory_quantity")
)


_QUOTED_PREFIX = quote(compound_id(""), safe="")


def quoted_id(external: str) -> str:
    """The compound id as one path segment (every reserved character encoded, as Klaviyo's SDK
    sends it), without re-encoding the fixed prefix each time."""
    return _QUOTED_PREFIX + quote(external, safe="")


def linkage(kind: str, external_ids: Iterable[str]) -> list[dict[str, str]]:
    return [{"type": kind, "id": compound_id(external)} for external in external_ids]


def _query(query: Mapping[str, str], cursor: Cursor | None = None) -> str:
    """The request's query; with ``cursor``, pointing at that page instead. Without one it
    keeps the request's own ``page[cursor]``, so ``links.self`` names the current page."""
    params = dict(query)
    if cursor is not None:
        params["page[cursor]"] = encode_cursor(cursor)
    # Brackets and double quotes are not allowed in a URI (RFC 3986): encoded, as Klaviyo does.
    return "?" + urlencode(params, safe=",:$'()") if params else ""


def document(
    body: dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type=MEDIA_TYPE)


def error_response(exc: BackstockError, headers: Mapping[str, str] | None = None) -> Response:
    errors = []
    for problem in exc.problems:
        source: dict[str, str] = {}
        if problem.pointer is not None:
            source["pointer"] = problem.pointer
        if problem.parameter is not None:
            source["parameter"] = problem.parameter
        error: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "status": str(exc.status),  # JSON:API: the status code as a string
            "code": problem.code or exc.code,
            "title": problem.title or exc.title,
            "detail": problem.detail,
        }
        if source:
            error["source"] = source
        errors.append(error)
    all_headers = exc.headers | dict(headers or {})
    if exc.retry_after is not None:
        all_headers["Retry-After"] = str(int(exc.retry_after))
    return Response(
        orjson.dumps({"errors": errors}), exc.status, all_headers, media_type=MEDIA_TYPE
    )


def parse_fields(
    query: Mapping[str, str], allowed: Mapping[str, frozenset[str]]
) -> dict[str, frozenset[str]]:
    """``fields[TYPE]=a,b`` for the types this operation renders; unknown names are a 400."""
    fields: dict[str, frozenset[str]] = {}
    for kind, names in allowed.items():
        parameter = f"fields[{kind}]"
        text = query.get(parameter)
        if text is None:
            continue
        wanted = frozenset(name.strip() for name in text.split(",") if name.strip())
        unknown = wanted - names - {"id"}
        if unknown or not wanted:
            detail = f"Unknown field(s) {', '.join(sorted(unknown)) or '(none given)'} for {kind}"
            raise InvalidParameter(parameter, detail)
        fields[kind] = wanted
    return fields
