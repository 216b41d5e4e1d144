"""The catalog-variant bulk update request: decoded straight from bytes, stored as one payload.

Fast path: msgspec decodes and type-checks the whole body in one pass (``parse_bulk_update``).
Only when it refuses does the slow path run, walking the parsed JSON to report *every* problem
with its pointer; the two agree on what is valid (a property test holds them to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from backstock.domain import attributes as rules
from backstock.domain.documents import id_problem, load_json, members, type_problem
from backstock.domain.errors import InvalidBody, Problem
from backstock.domain.ids import (
    MAX_EXTERNAL_ID,
    PREFIX,
    ExternalId,
    InvalidCompoundId,
    parse_compound_id,
)

MAX_VARIANTS = 100
_PREFIX_LENGTH = len(PREFIX)
JOB_TYPE = "catalog-variant-bulk-update-job"
Shape = Literal["array", "data"]
"""``array``: ``variants: [...]`` (2023-02-22); ``data``: ``variants: {data: [...]}`` (later)."""


class VariantChanges(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The attributes one update sets; UNSET members are left as they are."""

    title: str | UnsetType | None = UNSET
    description: str | UnsetType | None = UNSET
    sku: str | UnsetType | None = UNSET
    inventory_policy: Literal[0, 1, 2] | UnsetType | None = UNSET
    inventory_quantity: float | UnsetType | None = UNSET
    price: float | UnsetType | None = UNSET
    url: str | UnsetType | None = UNSET
    image_full_url: str | UnsetType | None = UNSET
    image_thumbnail_url: str | UnsetType | None = UNSET
    images: list[str] | UnsetType | None = UNSET
    custom_metadata: dict[str, Any] | UnsetType | None = UNSET
    published: bool | UnsetType | None = UNSET

    def as_dict(self) -> dict[str, Any]:
        return {
            name: value
            for name in self.__struct_fields__
            if (value := getattr(self, name)) is not UNSET
        }


class _Variant(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["catalog-variant"]
    id: str
    attributes: VariantChanges


_Variants = Annotated[list[_Variant], msgspec.Meta(min_length=1, max_length=MAX_VARIANTS)]


class _VariantData(msgspec.Struct, forbid_unknown_fields=True):
    data: _Variants


class _JobAttributes(msgspec.Struct, forbid_unknown_fields=True):
    variants: _Variants | _VariantData


class _JobData(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["catalog-variant-bulk-update-job"]
    attributes: _JobAttributes


class _Document(msgspec.Struct, forbid_unknown_fields=True):
    data: _JobData


_DECODER = msgspec.json.Decoder(_Document)
_PAYLOAD_DECODER = msgspec.json.Decoder(list[tuple[str, VariantChanges]])
_CHANGES_DECODER = msgspec.json.Decoder(list[tuple[str, dict[str, Any]]])
_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class BulkUpdate:
    """A valid request: what the job stores and what its 202 shows."""

    shape: Shape
    external_ids: list[ExternalId]
    payload: bytes
    """``[[external_id, {changes}], ...]`` as JSON, decoded by the worker with ``load_payload``."""
    linkage: str
    """``[{"type": "catalog-variant", "id": …}, …]``: the job's ``relationships.variants.data``,
    rendered once here rather than on every read of the job."""


def parse_bulk_update(body: bytes) -> BulkUpdate:
    try:
        document = _DECODER.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        # DecodeError covers ValidationError; msgspec raises the other two for invalid UTF-8
        # in a string and for too deep nesting (in custom_metadata).
        raise InvalidBody(_slow_problems(body, exc)) from None
    # msgspec's types cannot say "no NUL"; the walk's rules can. A NUL is always escaped in
    # JSON, so a body without this sequence cannot hold one.
    if b"\\u0000" in body and (nul_problems := _document_problems(load_json(body))):
        raise InvalidBody(nul_problems)
    variants = document.data.attributes.variants
    shape: Shape = "array" if isinstance(variants, list) else "data"
    items = variants if isinstance(variants, list) else variants.data
    problems: list[Problem] = []
    external_ids: list[ExternalId] = []
    for index, item in enumerate(items):
        # The common case inline (what ``parse_compound_id`` accepts, without its split); any
        # other id goes through it for its error.
        compound = item.id
        external = compound[_PREFIX_LENGTH:]
        if (
            compound.startswith(PREFIX)
            and 0 < len(external) <= MAX_EXTERNAL_ID
            and "\x00" not in external
        ):
            external_ids.append(ExternalId(external))
        else:
            try:
                external_ids.append(parse_compound_id(compound))
            except InvalidCompoundId as exc:
                problems.append(Problem(str(exc), f"{variants_pointer(shape)}/{index}/id"))
    # Each metadata object's JSON is part of the payload's: a payload within the metadata
    # limit spares measuring them one by one. (With a refused id the ids are fewer than the
    # items and the payload is not used: then every object is measured.)
    payload = _ENCODER.encode(
        [(ext, item.attributes) for ext, item in zip(external_ids, items, strict=False)]
    )
    sized = bool(problems) or len(payload) > rules.MAX_METADATA_BYTES
    for index, item in enumerate(items):
        metadata = item.attributes.custom_metadata
        if isinstance(metadata, dict) and (detail := rules.metadata_problem(metadata, sized=sized)):
            pointer = f"{variants_pointer(shape)}/{index}/attributes/custom_metadata"
            problems.append(Problem(detail, pointer))
    if problems:
        raise InvalidBody(problems)
    linkage = _ENCODER.encode([{"type": "catalog-variant", "id": item.id} for item in items])
    return BulkUpdate(shape, external_ids, payload, linkage.decode())


def linked_external_ids(linkage: str) -> list[str]:
    """The external ids named by a job's ``linkage``, in request order."""
    return [parse_compound_id(entry["id"]) for entry in msgspec.json.decode(linkage)]


def load_payload(payload: bytes) -> list[tuple[str, VariantChanges]]:
    return _PAYLOAD_DECODER.decode(payload)


def load_changes(payload: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``load_payload`` for the worker: each update as a dict of the attributes it sets (the
    payload holds only those, with the types validated at acceptance)."""
    return _CHANGES_DECODER.decode(payload)


def variants_pointer(shape: Shape) -> str:
    suffix = "" if shape == "array" else "/data"
    return f"/data/attributes/variants{suffix}"


def _slow_problems(body: bytes, exc: Exception) -> list[Problem]:
    doc = load_json(body)
    problems = _document_problems(doc)
    if not problems:
        # The walk found nothing msgspec refused: report msgspec's own words.
        problems = [Problem(str(exc), _pointer_of(str(exc)))]
    return problems


def _document_problems(doc: Any) -> list[Problem]:
    problems = members(doc, "", ["data"])
    if problems:
        return problems
    data = doc["data"]
    problems = members(data, "/data", ["type", "attributes"])
    if not isinstance(data, dict):
        return problems
    if "type" in data:
        problems += type_problem(data["type"], JOB_TYPE, "/data/type")
    if "attributes" in data:
        attributes = data["attributes"]
        problems += members(attributes, "/data/attributes", ["variants"])
        if isinstance(attributes, dict) and "variants" in attributes:
            problems += _variants_problems(attributes["variants"])
    return problems


def _variants_problems(variants: Any) -> list[Problem]:
    pointer = "/data/attributes/variants"
    if isinstance(variants, dict):
        found = members(variants, pointer, ["data"])
        if found:
            return found
        variants, pointer = variants["data"], pointer + "/data"
    if not isinstance(variants, list):
        return [Problem("'variants' must be an array of catalog variants", pointer)]
    if not 1 <= len(variants) <= MAX_VARIANTS:
        detail = f"A job takes 1 to {MAX_VARIANTS} variants; this one has {len(variants)}"
        return [Problem(detail, pointer)]
    problems: list[Problem] = []
    for index, item in enumerate(variants):
        problems += _item_problems(item, f"{pointer}/{index}")
    return problems


def _item_problems(item: Any, pointer: str) -> list[Problem]:
    """Every problem of one variant: a missing member does not hide the others' problems."""
    problems = members(item, pointer, ["type", "id", "attributes"])
    if not isinstance(item, dict):
        return problems
    if "type" in item:
        problems += type_problem(item["type"], "catalog-variant", f"{pointer}/type")
    if "id" in item:
        problems += id_problem(item["id"], f"{pointer}/id")
    if "attributes" in item:
        problems += rules.VARIANT_UPDATE.problems(item["attributes"], f"{pointer}/attributes")
    return problems


def _pointer_of(message: str) -> str:
    """``… - at `$.data.attributes.variants[3].price``` → ``/data/attributes/variants/3/price``."""
    _, _, path = message.partition(" - at `$")
    path = path.rstrip("`")
    return path.replace("[", ".").replace("]", "").replace(".", "/")
