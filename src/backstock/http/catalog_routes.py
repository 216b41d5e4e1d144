"""Catalog items and variants over JSON:API."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from backstock.domain.documents import load_json
from backstock.domain.errors import InvalidParameter
from backstock.domain.filters import ITEM_FILTERS, VARIANT_FILTERS, FieldRule, parse_filter
from backstock.domain.pagination import PageRequest, decode_cursor, parse_page_size
from backstock.http import conventions
from backstock.http.calls import READ, WRITE, Call, begin, path_id
from backstock.http.jsonapi import ITEM_FIELDS, VARIANT_FIELDS, document, linkage
from backstock.services import catalog

router = APIRouter()

_VARIANT_FIELDS = {"catalog-variant": VARIANT_FIELDS}
_ITEM_FIELDS = {"catalog-item": ITEM_FIELDS, "catalog-variant": VARIANT_FIELDS}
_LIST = ("filter", "sort", "page[cursor]", "page[size]")


def _list_request(call: Call, rules: dict[str, FieldRule] | Any) -> tuple[list[Any], PageRequest]:
    query = call.query
    conditions = parse_filter(query["filter"], rules) if "filter" in query else []
    sort = query.get("sort", "created")
    if sort not in ("created", "-created"):
        raise InvalidParameter("sort", "sort must be 'created' or '-created'.")
    cursor = decode_cursor(query["page[cursor]"]) if "page[cursor]" in query else None
    page = PageRequest(parse_page_size(query.get("page[size]")), cursor, sort == "-created")
    return conditions, page


# ---- variants --------------------------------------------------------------------------------


@router.get("/api/catalog-variants")
async def get_catalog_variants(request: Request) -> Response:
    call = begin(
        request, "get_catalog_variants", READ, (*_LIST, "fields[catalog-variant]"), _VARIANT_FIELDS
    )
    conditions, page = _list_request(call, VARIANT_FILTERS)
    result = await call.run(
        lambda who: catalog.list_variants(call.services.db, who, conditions, page)
    )
    return document({
        "data": [call.render.variant(r) for r in result.rows],
        "links": call.render.page_links("/api/catalog-variants", call.query, result),
    })  # fmt: skip


@router.post("/api/catalog-variants")
async def create_catalog_variant(request: Request) -> Response:
    call = begin(
        request, "create_catalog_variant", WRITE, ("fields[catalog-variant]",), _VARIANT_FIELDS
    )
    doc = load_json(await call.body())
    record = await call.run(lambda who: catalog.create_variant(call.services.db, who, doc))
    return document({"data": call.render.variant(record)}, 201)


@router.get("/api/catalog-variants/{vid}")
async def get_catalog_variant(request: Request, vid: str) -> Response:
    call = begin(
        request, "get_catalog_variant", READ, ("fields[catalog-variant]",), _VARIANT_FIELDS
    )
    external = path_id(vid)
    record = await call.run(lambda who: catalog.get_variant(call.services.db, who, external))
    return document({"data": call.render.variant(record)})


@router.patch("/api/catalog-variants/{vid}")
async def update_catalog_variant(request: Request, vid: str) -> Response:
    call = begin(
        request, "update_catalog_variant", WRITE, ("fields[catalog-variant]",), _VARIANT_FIELDS
    )
    external = path_id(vid)
    doc = load_json(await call.body())
    record = await call.run(
        lambda who: catalog.update_variant(call.services.db, who, external, doc)
    )
    return document({"data": call.render.variant(record)})


@router.delete("/api/catalog-variants/{vid}")
async def delete_catalog_variant(request: Request, vid: str) -> Response:
    call = begin(request, "delete_catalog_variant", WRITE)
    external = path_id(vid)
    await call.run(lambda who: catalog.delete_variant(call.services.db, who, external))
    return Response(status_code=204)


# ---- items -----------------------------------------------------------------------------------


def _item_params(single: bool) -> tuple[str, ...]:
    common = ("fields[catalog-item]", "fields[catalog-variant]", "include")
    return common if single else (*common, *_LIST)


def _include_variants(call: Call) -> bool:
    return "variants" in conventions.include(call.query, ("variants",))


async def _render_items(call: Call, records: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    if not _include_variants(call):
        return [call.render.item(r) for r in records], []
    ids = await call.run(lambda who: catalog.item_variant_ids(call.services.db, who, records))
    every = sorted({v for vs in ids.values() for v in vs})
    variants = await call.run(lambda who: catalog.variants_by_ids(call.services.db, who, every))
    data = [call.render.item(r, ids[r["pk"]]) for r in records]
    return data, [call.render.variant(v) for v in variants]


@router.get("/api/catalog-items")
async def get_catalog_items(request: Request) -> Response:
    call = begin(request, "get_catalog_items", READ, _item_params(False), _ITEM_FIELDS)
    conditions, page = _list_request(call, ITEM_FILTERS)
    result = await call.run(lambda who: catalog.list_items(call.services.db, who, conditions, page))
    data, included = await _render_items(call, result.rows)
    body: dict[str, Any] = {
        "data": data,
        "links": call.render.page_links("/api/catalog-items", call.query, result),
    }
    if included or _include_variants(call):
        body["included"] = included
    return document(body)


@router.post("/api/catalog-items")
async def create_catalog_item(request: Request) -> Response:
    call = begin(request, "create_catalog_item", WRITE, ("fields[catalog-item]",), _ITEM_FIELDS)
    doc = load_json(await call.body())
    record = await call.run(lambda who: catalog.create_item(call.services.db, who, doc))
    return document({"data": call.render.item(record)}, 201)


@router.get("/api/catalog-items/{iid}")
async def get_catalog_item(request: Request, iid: str) -> Response:
    call = begin(request, "get_catalog_item", READ, _item_params(True), _ITEM_FIELDS)
    external = path_id(iid)
    record = await call.run(lambda who: catalog.get_item(call.services.db, who, external))
    data, included = await _render_items(call, [record])
    body: dict[str, Any] = {"data": data[0]}
    if _include_variants(call):
        body["included"] = included
    return document(body)


@router.patch("/api/catalog-items/{iid}")
async def update_catalog_item(request: Request, iid: str) -> Response:
    call = begin(request, "update_catalog_item", WRITE, ("fields[catalog-item]",), _ITEM_FIELDS)
    external = path_id(iid)
    doc = load_json(await call.body())
    record = await call.run(lambda who: catalog.update_item(call.services.db, who, external, doc))
    return document({"data": call.render.item(record)})


@router.delete("/api/catalog-items/{iid}")
async def delete_catalog_item(request: Request, iid: str) -> Response:
    call = begin(request, "delete_catalog_item", WRITE)
    external = path_id(iid)
    await call.run(lambda who: catalog.delete_item(call.services.db, who, external))
    return Response(status_code=204)


@router.get("/api/catalog-items/{iid}/variants")
async def get_variants_for_catalog_item(request: Request, iid: str) -> Response:
    call = begin(
        request,
        "get_catalog_item_variants",
        READ,
        (*_LIST, "fields[catalog-variant]"),
        _VARIANT_FIELDS,
    )
    external = path_id(iid)
    conditions, page = _list_request(call, VARIANT_FILTERS)
    result = await call.run(
        lambda who: catalog.list_variants(call.services.db, who, conditions, page, external)
    )
    path = f"/api/catalog-items/{iid}/variants"
    return document({
        "data": [call.render.variant(r) for r in result.rows],
        "links": call.render.page_links(path, call.query, result),
    })  # fmt: skip


@router.get("/api/catalog-items/{iid}/relationships/variants")
async def get_variant_ids_for_catalog_item(request: Request, iid: str) -> Response:
    call = begin(request, "get_catalog_item_variants", READ, _LIST)
    external = path_id(iid)
    conditions, page = _list_request(call, VARIANT_FILTERS)
    result = await call.run(
        lambda who: catalog.list_variants(call.services.db, who, conditions, page, external)
    )
    path = f"/api/catalog-items/{iid}/relationships/variants"
    return document({
        "data": linkage("catalog-variant", [r["external_id"] for r in result.rows]),
        "links": call.render.page_links(path, call.query, result),
    })  # fmt: skip
