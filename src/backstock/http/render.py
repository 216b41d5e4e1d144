"""JSON:API documents: resource objects rendered from the resource descriptions, job resources,
page links, sparse fieldsets, and error documents."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from backstock.domain.catalog import Record
from backstock.domain.clock import to_iso
from backstock.domain.errors import BackstockError, InvalidParameter
from backstock.domain.ids import compound_id
from backstock.domain.jobs import JobKind, JobRecord
from backstock.domain.pagination import Page, encode_cursor
from backstock.domain.resources import Resource

MEDIA_TYPE = "application/vnd.api+json"
_QUOTED_PREFIX = quote(compound_id(""), safe="")


def quoted_id(external: str) -> str:
    """The compound id as one path segment (every reserved character encoded, as Klaviyo's SDK
    sends it), without re-encoding the fixed prefix each time."""
    return _QUOTED_PREFIX + quote(external, safe="")


def linkage(type_: str, externals: Iterable[str]) -> list[dict[str, str]]:
    return [{"type": type_, "id": compound_id(external)} for external in externals]


class Renderer:
    """Renders for one request: its base URL, its sparse fieldsets, its revision."""

    __slots__ = ("base", "cursor_key", "fields", "omit_nulls")

    def __init__(
        self,
        base_url: str,
        fields: Mapping[str, frozenset[str]],
        omit_nulls: bool = False,
        cursor_key: bytes = b"",
    ) -> None:
        self.base = base_url
        self.fields = fields
        self.omit_nulls = omit_nulls
        self.cursor_key = cursor_key

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def _attributes(self, type_: str, attributes: dict[str, Any]) -> dict[str, Any]:
        wanted = self.fields.get(type_)
        if wanted is not None:
            attributes = {k: v for k, v in attributes.items() if k in wanted}
        if self.omit_nulls:
            attributes = {k: v for k, v in attributes.items() if v is not None}
        return attributes

    def resource(
        self, res: Resource, record: Record, included: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """A resource object; ``included``: the ids of the related resources ``include``
        renders (an item's variants)."""
        self_url = self.url(f"{res.path}/{quoted_id(record['external_id'])}")
        attributes = {a.name: record[a.name] for a in res.stored}
        for name in res.rendered_times:
            attributes[name] = to_iso(record[name])
        document: dict[str, Any] = {
            "type": res.type,
            "id": compound_id(record["external_id"]),
            "attributes": self._attributes(res.type, attributes),
        }
        relationships: dict[str, Any] = {}
        for relation in res.relations:
            if relation.rendered == "data":  # a variant's item: no endpoint serves it
                external = record[f"{relation.name}_external_id"]
                relationships[relation.name] = {
                    "data": {"type": relation.target, "id": compound_id(external)}
                }
            elif relation.rendered == "links":
                links = {
                    "self": f"{self_url}/relationships/{relation.name}",
                    "related": f"{self_url}/{relation.name}",
                }
                rendered: dict[str, Any] = {"links": links}
                if included is not None:
                    rendered["data"] = linkage(relation.target, included)
                relationships[relation.name] = rendered
        if relationships:
            document["relationships"] = relationships
        document["links"] = {"self": self_url}
        return document

    def job(self, kind: JobKind, job: JobRecord) -> dict[str, Any]:
        """A job resource. ``errors`` and the linkage are spliced in as the JSON text they are
        stored as."""
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
        if job.retry_of is not None:  # Backstock's extension: the job this one retries
            attributes["retry_of"] = job.retry_of
        return {
            "type": kind.type,
            "id": job.id,
            "attributes": self._attributes(kind.type, attributes),
            "relationships": {kind.resource.plural: {"data": orjson.Fragment(job.linkage)}},
            "links": {"self": self.url(f"{kind.path}/{job.id}")},
        }

    def page_links(self, path: str, query: Mapping[str, str], page: Page[Any]) -> dict[str, str]:
        links = {"self": self.url(path) + _query(query)}
        for name, cursor in (("next", page.next), ("prev", page.prev)):
            if cursor is not None:
                links[name] = self.url(path) + _query(query, encode_cursor(cursor, self.cursor_key))
        return links


def _query(query: Mapping[str, str], cursor: str | None = None) -> str:
    """The request's query; with ``cursor``, pointing at that page instead. Without one it
    keeps the request's own ``page[cursor]``, so ``links.self`` names the current page."""
    params = dict(query)
    if cursor is not None:
        params["page[cursor]"] = cursor
    # Brackets and double quotes are not allowed in a URI (RFC 3986): encoded, as Klaviyo does.
    return "?" + urlencode(params, safe=",:$'()") if params else ""


def dumps(body: Any) -> bytes:
    return orjson.dumps(body)


def error_body(exc: BackstockError) -> bytes:
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
    return orjson.dumps({"errors": errors})


def parse_fields(
    query: Mapping[str, str], allowed: Mapping[str, frozenset[str]]
) -> dict[str, frozenset[str]]:
    """``fields[TYPE]=a,b`` for the types this operation renders; unknown names are a 400."""
    fields: dict[str, frozenset[str]] = {}
    if not query:
        return fields
    for kind, names in allowed.items():
        parameter = f"fields[{kind}]"
        text = query.get(parameter)
        if text is None:
            continue
        wanted = frozenset(name.strip() for name in text.split(",") if name.strip())
        unknown = wanted - names - {"id"}
        if unknown or not wanted:
            shown = ", ".join(sorted(name[:60] for name in unknown)[:10]) or "(none given)"
            raise InvalidParameter(parameter, f"Unknown field(s) {shown} for {kind}")
        fields[kind] = wanted
    return fields
