"""Request bodies, decoded and validated straight from bytes; every rule comes from the
resource descriptions (``domain.resources``).

Fast path: msgspec decodes and type-checks the whole body in one pass, into structs generated
from the descriptions, and a few checks msgspec cannot express follow (compound ids, NUL in
text, flat and small ``custom_metadata``, a variant's required item). Slow path, only when the
fast one refuses: the body is parsed as plain JSON and walked, and *every* problem is reported
with its JSON pointer. The two agree on what is valid (``tests/unit/test_body_properties.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Final, Literal

import msgspec
import zstandard
from msgspec import UNSET, UnsetType

from backstock.domain.errors import InvalidBody, Problem
from backstock.domain.ids import (
    MAX_EXTERNAL_ID,
    PREFIX,
    ExternalId,
    InvalidCompoundId,
    compound_id,
    parse_compound_id,
    shown,
)
from backstock.domain.resources import RESOURCES, Attribute, Relation, Resource, resource

MAX_METADATA_BYTES = 100 * 1024
MAX_ENTRIES = 100
"""Resources per bulk job (the seeds' limit)."""
COSTLY_BYTES = 256 * 1024
"""Above it, decoding a body may take a millisecond or more (bench/decode.py measures it): the
service decodes it off the event loop."""

Action = Literal["create", "update", "delete"]
Shape = Literal["array", "data"]
"""``array``: ``variants: [...]`` (2023-02-22); ``data``: ``variants: {data: [...]}`` (later)."""
Links = dict[str, list[str]]

_NUL = "\x00"
_PREFIX_LENGTH = len(PREFIX)
_ENCODER = msgspec.json.Encoder()
_NO_LINKS: Links = {}
_NO_RELATIONS: tuple[Links, dict[str, list[str]]] = (_NO_LINKS, {})
"""What an object without relations names (shared: never changed)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One resource of a request, valid: what a create or an update applies."""

    external_id: ExternalId
    attributes: dict[str, Any]
    """Create: the attributes given (nulls included; defaults apply to both). Update: the
    attributes to set (null clears)."""
    links: Links
    """Related ids by relation name: a create's relations, an update's new complete sets."""
    pointers: dict[str, list[str]]
    """Where each of those ids is in the request (a 404 names the one that does not exist)."""


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A valid bulk job request: what the job stores and what its 202 shows."""

    shape: Shape
    external_ids: list[ExternalId]
    payload: bytes
    """``[[external_id, {attributes}, {relation: [ids]}], ...]`` as JSON, zstd-compressed
    (``compress_payload``; ``load_payload`` reads it): as the database keeps it."""
    linkage: str
    """``[{"type": …, "id": …}, …]``: the job's relationship data, rendered once here rather
    than on every read of the job."""


PayloadItem = tuple[str, dict[str, Any], dict[str, list[str]]]
_PAYLOAD = msgspec.json.Decoder(list[PayloadItem])
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def costly(body: bytes) -> bool:
    """Whether ``body`` is decoded on a thread: by its size alone. Counting its containers as
    well took two passes over every body (47 µs of the ~320 the peers' 80 KB update took to
    check and decode), and bought nothing: decoding holds the GIL, in msgspec's and orjson's C
    calls and in Python between them, so on a thread it lets the event loop in only every
    switch interval (5 ms). Of the bodies under 256 KB that ``bench/decode.py`` tries, valid
    and hostile, all but one decode in 2.5 ms at most (a refused one of 76,000 lists and a NUL,
    rebuilt to name the NUL's place: 13 ms), and for none was the loop's longest stall shorter
    on a thread."""
    return len(body) > COSTLY_BYTES


def compress_payload(payload: bytes) -> bytes:
    """A payload, zstd-compressed (level 1): the peers' 75 KB bulk update to 6 KB in 0.05-0.1
    ms. ``load_payload`` reads either form (older versions stored some plain)."""
    return zstandard.compress(payload, 1)


def payload_json(stored: bytes) -> bytes:
    """A stored payload's JSON, whether it was kept compressed (``compress_payload``) or not."""
    return zstandard.decompress(stored) if stored[:4] == _ZSTD_MAGIC else stored


def load_payload(payload: bytes) -> list[PayloadItem]:
    return _PAYLOAD.decode(payload_json(payload))


def entries_pointer(plural: str, shape: Shape) -> str:
    """Where a bulk job's entries are: ``/data/attributes/variants`` or ``…/variants/data``."""
    return f"/data/attributes/{plural}" + ("" if shape == "array" else "/data")


# ---- the fast path: structs generated from the descriptions -----------------------------------


_SCALAR = str | int | float | bool | None
_FLAT = dict[str, _SCALAR | list[_SCALAR]]
"""``custom_metadata``: a flat object (msgspec checks it; ``metadata_problem`` says why not)."""


def _value_type(attribute: Attribute) -> Any:
    return {
        "text": str,
        "number": float,
        "policy": Literal[0, 1, 2],
        "boolean": bool,
        "strings": list[str],
        "metadata": _FLAT,
        "identity": Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EXTERNAL_ID)],
        "integration": Literal["$custom"],
        "catalog": Literal["$default"],
    }[attribute.kind]


def _list_of(kind: Any, min_length: int = 0, max_length: int | None = None) -> Any:
    """``list[kind]`` of a type made at run time, its length bounded."""
    listed = list[kind]
    if min_length or max_length is not None:
        return Annotated[listed, msgspec.Meta(min_length=min_length, max_length=max_length)]
    return listed


def _struct(name: str, fields: list[Any]) -> Any:
    return msgspec.defstruct(
        name, fields, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
    )


def _attributes_struct(res: Resource, action: Action) -> Any:
    fields: list[Any] = []
    for attribute in res.attributes:
        kind = _value_type(attribute)
        if action == "create" and attribute.create == "required":
            fields.append((attribute.name, kind))
        elif (action == "create" and attribute.create == "optional") or (
            action == "update" and attribute.update
        ):
            fields.append((attribute.name, kind | None | UnsetType, UNSET))
    return _struct(f"{res.noun}_{action}_attributes", fields)


def _relations(res: Resource, action: Action) -> tuple[Relation, ...]:
    return _RELATIONS[res.type, action]


def _relations_of(res: Resource, action: Action) -> tuple[Relation, ...]:
    if action == "create":
        return tuple(r for r in res.relations if r.create != "absent")
    return tuple(r for r in res.relations if r.update and action == "update")


_RELATIONS: Final = {
    (res.type, action): _relations_of(res, action)
    for res in RESOURCES.values()
    for action in ("create", "update", "delete")
}
"""The relations an object of each type may name, by action (looked up per object)."""


def _relationships_struct(res: Resource, action: Action) -> Any:
    fields: list[Any] = []
    for relation in _relations(res, action):
        linkage = _struct("linkage", [("type", Literal[relation.target]), ("id", str)])
        data: Any = _list_of(linkage) if relation.many else linkage
        fields.append(
            (
                relation.name,
                _struct("relationship", [("data", data), ("links", msgspec.Raw, UNSET)])
                | UnsetType,
                UNSET,
            )
        )
        if relation.legacy_name:
            legacy = _struct(
                "relationship", [("data", _list_of(linkage, 1, 1)), ("links", msgspec.Raw, UNSET)]
            )
            fields.append((relation.legacy_name, legacy | UnsetType, UNSET))
    return _struct(f"{res.noun}_{action}_relationships", fields) if fields else None


def _object_struct(res: Resource, action: Action) -> Any:
    fields: list[Any] = [("type", Literal[res.type])]
    if action != "create":
        fields.append(("id", str))
    if action != "delete":
        fields.append(("attributes", _attributes_struct(res, action)))
    relationships = _relationships_struct(res, action)
    if relationships is not None:
        fields.append(("relationships", relationships | UnsetType, UNSET))
    return _struct(f"{res.noun}_{action}", fields)


@cache
def _single_decoder(type_: str, action: Action) -> msgspec.json.Decoder[Any]:
    document = _struct("document", [("data", _object_struct(resource(type_), action))])
    return msgspec.json.Decoder(document)


@cache
def _job_decoder(type_: str, action: Action) -> msgspec.json.Decoder[Any]:
    res = resource(type_)
    item = _object_struct(res, action)
    entries = _list_of(item, 1, MAX_ENTRIES)
    wrapped = _struct("entries", [("data", entries)])
    attributes = _struct("job_attributes", [(res.plural, entries | wrapped)])
    data = _struct("job", [("type", Literal[job_type(res, action)]), ("attributes", attributes)])
    return msgspec.json.Decoder(_struct("job_document", [("data", data)]))


def job_type(res: Resource, action: Action) -> str:
    return f"{res.type}-bulk-{action}-job"


def _fast(
    decoder: msgspec.json.Decoder[Any], body: bytes, slow: Callable[[Any], list[Problem]]
) -> Any:
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        # DecodeError covers ValidationError; msgspec raises the other two for invalid UTF-8
        # in a string and for too deep nesting (in custom_metadata).
        raise InvalidBody(_slow_problems(body, slow, exc)) from None


def _refuse_nul(body: bytes, slow: Callable[[Any], list[Problem]]) -> None:
    """msgspec's types cannot say "no NUL"; the walk's rules can (``custom_metadata`` may hold
    one). A NUL is always escaped in JSON: a body without this sequence holds none, and one
    without a backslash (most: found with memchr, 50x faster than the sequence) holds none."""
    if b"\\" in body and b"\\u0000" in body and (problems := slow(load_json(body))):
        raise InvalidBody(problems)


def _external(compound: str) -> ExternalId | None:
    """The external id of a well-formed compound id, else None (the slow path says why). The
    common case inline, without ``parse_compound_id``'s split."""
    external = compound[_PREFIX_LENGTH:]
    if compound.startswith(PREFIX) and 0 < len(external) <= MAX_EXTERNAL_ID:
        return ExternalId(external) if _NUL not in external else None
    try:
        return parse_compound_id(compound)
    except InvalidCompoundId:
        return None


def _as_dict(struct: Any) -> dict[str, Any]:
    return {
        name: value
        for name in struct.__struct_fields__
        if (value := getattr(struct, name)) is not UNSET
    }


def _links(res: Resource, action: Action, obj: Any) -> tuple[Links, dict[str, list[str]]] | None:
    """The related ids an object names, by relation, and where each is (in a single-resource
    request); None when one is not a valid id or a required relation is missing (the slow path
    reports it)."""
    relations = _relations(res, action)
    if not relations:
        return _NO_RELATIONS
    relationships = getattr(obj, "relationships", UNSET)
    links: Links = {}
    pointers: dict[str, list[str]] = {}
    for relation in relations:
        given = UNSET if relationships is UNSET else getattr(relationships, relation.name)
        member = relation.name
        if given is UNSET and relation.legacy_name and relationships is not UNSET:
            given, member = getattr(relationships, relation.legacy_name), relation.legacy_name
        if given is UNSET:
            if relation.create == "required" and action == "create":
                return None
            continue
        base = f"/data/relationships/{member}/data"
        if isinstance(given.data, list):
            data, at = given.data, [f"{base}/{index}/id" for index in range(len(given.data))]
        else:
            data, at = [given.data], [f"{base}/id"]
        ids = [_external(linkage.id) for linkage in data]
        if None in ids:
            return None
        links[relation.name] = ids  # type: ignore[assignment]
        pointers[relation.name] = at
    return links, pointers


def _metadata_ok(attributes: Any, sized: bool) -> bool:
    metadata = getattr(attributes, "custom_metadata", None)
    return not isinstance(metadata, dict) or metadata_problem(metadata, sized=sized) is None


def decode_create(res: Resource, body: bytes) -> Entry:
    """A ``POST`` of one resource."""
    return _decode_one(res, "create", body, None)


def decode_update(res: Resource, body: bytes, path_external: ExternalId) -> Entry:
    """A ``PATCH`` of the resource at ``path_external``."""
    return _decode_one(res, "update", body, path_external)


def _decode_one(
    res: Resource, action: Action, body: bytes, path_external: ExternalId | None
) -> Entry:
    def slow(doc: Any) -> list[Problem]:
        return _document_problems(doc, res, action, path_external)

    obj = _fast(_single_decoder(res.type, action), body, slow).data
    external = obj.attributes.external_id if action == "create" else _external(obj.id)
    found = _links(res, action, obj)
    if (
        external is None
        or found is None
        or (action == "update" and external != path_external)
        or not _metadata_ok(obj.attributes, sized=True)
    ):
        raise InvalidBody(_slow_problems(body, slow, None))
    _refuse_nul(body, slow)
    links, pointers = found
    return Entry(ExternalId(external), _as_dict(obj.attributes), links, pointers)


def decode_job(res: Resource, action: Action, body: bytes) -> JobRequest:
    """A bulk create, update or delete job of 1 to ``MAX_ENTRIES`` resources."""

    def slow(doc: Any) -> list[Problem]:
        return _job_problems(doc, res, action)

    given = getattr(_fast(_job_decoder(res.type, action), body, slow).data.attributes, res.plural)
    shape: Shape = "array" if isinstance(given, list) else "data"
    items = given if isinstance(given, list) else given.data
    rows: list[tuple[ExternalId, Any, Links]] = []
    valid = True
    related = bool(_relations(res, action))  # none for a delete
    for item in items:
        external = item.attributes.external_id if action == "create" else _external(item.id)
        found = _links(res, action, item) if related else _NO_RELATIONS
        if external is None or found is None:
            valid = False
            break
        rows.append((external, getattr(item, "attributes", _NO_LINKS), found[0]))
    payload = b""
    if valid:
        payload = _ENCODER.encode(rows)
        # The decoder checked each metadata object is flat; only its size is left. Each one's
        # JSON is part of the payload's: a payload within the limit spares measuring them.
        if len(payload) > MAX_METADATA_BYTES and action != "delete":
            valid = all(_metadata_ok(item.attributes, sized=True) for item in items)
    if not valid:
        raise InvalidBody(_slow_problems(body, slow, None))
    _refuse_nul(body, slow)
    externals = [external for external, _, _ in rows]
    linkage = _ENCODER.encode([{"type": res.type, "id": compound_id(e)} for e in externals])
    # Compressed here, off the event loop with the decode for a costly body (zstd lets go of
    # the GIL meanwhile): 0.05-0.1 ms for the peers' 75 KB payload.
    return JobRequest(shape, externals, compress_payload(payload), linkage.decode())


def decode_linkage(target: Resource, body: bytes) -> list[ExternalId]:
    """A relationship request (``POST``/``PATCH``/``DELETE …/relationships/NAME``): the
    related ids of ``{"data": [{"type", "id"}, …]}``."""

    def slow(doc: Any) -> list[Problem]:
        found = members(doc, "", ["data"])
        return found or _linkage_problems(doc["data"], "/data", target.type, "many")

    data = _fast(_linkage_decoder(target.type), body, slow).data
    ids = [_external(item.id) for item in data]
    if None in ids:
        raise InvalidBody(_slow_problems(body, slow, None))
    _refuse_nul(body, slow)
    return ids  # type: ignore[return-value]


@cache
def _linkage_decoder(type_: str) -> msgspec.json.Decoder[Any]:
    linkage = _struct("linkage", [("type", Literal[type_]), ("id", str)])
    return msgspec.json.Decoder(_struct(f"{type_}_linkages", [("data", _list_of(linkage))]))


# ---- the slow path: every problem, with its pointer --------------------------------------------


def load_json(body: bytes) -> Any:
    """Parse a body; malformed JSON, NaN, invalid UTF-8 or too deep nesting are one 400.
    msgspec, not orjson: integers beyond 64 bits stay exact (orjson makes them floats)."""
    if not body.strip():
        raise InvalidBody([Problem("The request body is empty; send a JSON:API document", "")])
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidBody([Problem(f"The request body is not valid JSON: {exc}", "")]) from exc


WALK_VALUES = 50_000
"""Above about this many JSON values, a body the decoder refused is not walked for every
problem: building it as Python objects would hold the interpreter (and every other request)
for tenths of a second. The decoder's own first problem is reported. A real request of 100
resources holds a few thousand."""


def _sprawling(body: bytes) -> bool:
    return body.count(b",") + body.count(b"[") + body.count(b"{") > WALK_VALUES


def _slow_problems(
    body: bytes, walk: Callable[[Any], list[Problem]], exc: Exception | None
) -> list[Problem]:
    if exc is not None and _sprawling(body):
        message = shown(str(exc), 300)
        return [Problem(message, _pointer_of(message))]
    problems = walk(load_json(body))
    if not problems:
        # The walk found nothing the fast path refused: report msgspec's own words.
        message = str(exc) if exc is not None else "The request is invalid"
        problems = [Problem(message, _pointer_of(message))]
    return problems


def _pointer_of(message: str) -> str:
    """``… - at `$.data.attributes.variants[3].price``` → ``/data/attributes/variants/3/price``."""
    _, _, path = message.partition(" - at `$")
    path = path.rstrip("`")
    return path.replace("[", ".").replace("]", "").replace(".", "/")


def escape_pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def members(
    value: Any, pointer: str, required: Collection[str], optional: Collection[str] = ()
) -> list[Problem]:
    """Check that ``value`` is an object with the required members and no unknown ones."""
    if not isinstance(value, dict):
        return [Problem(f"'{pointer or '/'}' must be an object", pointer)]
    found = [
        Problem(f"'{name}' is required", f"{pointer}/{name}")
        for name in required
        if name not in value
    ]
    known = set(required) | set(optional)
    found += [
        Problem(
            f"'{shown(name)}' is not allowed here", f"{pointer}/{escape_pointer(shown(name, 200))}"
        )
        for name in value
        if name not in known
    ]
    return found


def _type_problem(value: Any, expected: str, pointer: str) -> list[Problem]:
    return [] if value == expected else [Problem(f"'type' must be '{expected}'", pointer)]


def _id_problem(value: Any, pointer: str) -> list[Problem]:
    if not isinstance(value, str):
        return [Problem("'id' must be a string", pointer)]
    try:
        parse_compound_id(value)
    except InvalidCompoundId as exc:
        return [Problem(str(exc), pointer)]
    return []


def _document_problems(
    doc: Any, res: Resource, action: Action, path_external: ExternalId | None = None
) -> list[Problem]:
    found = members(doc, "", ["data"])
    if found:
        return found
    if not isinstance(doc["data"], dict):
        return [Problem("'data' must be an object", "/data")]
    return _object_problems(doc["data"], "/data", res, action, path_external)


def _object_problems(
    value: Any, pointer: str, res: Resource, action: Action, path_external: str | None = None
) -> list[Problem]:
    """Every problem of one resource object: a missing member hides none of the others'."""
    relations = _relations(res, action)
    required = {"create": ["type", "attributes"], "update": ["type", "id", "attributes"]}.get(
        action, ["type", "id"]
    )
    problems = members(value, pointer, required, ["relationships"] if relations else [])
    if not isinstance(value, dict):
        return problems
    if "type" in value:
        problems += _type_problem(value["type"], res.type, f"{pointer}/type")
    if "id" in value and action != "create":
        if path_external is None:
            problems += _id_problem(value["id"], f"{pointer}/id")
        elif value["id"] != compound_id(path_external):
            problems.append(Problem("'id' must equal the id in the URL", f"{pointer}/id"))
    if "attributes" in value and action != "delete":
        problems += attribute_problems(res, action, value["attributes"], f"{pointer}/attributes")
    if relations:
        problems += _relationships_problems(value.get("relationships"), pointer, res, action)
    return problems


def attribute_problems(res: Resource, action: Action, given: Any, pointer: str) -> list[Problem]:
    if not isinstance(given, dict):
        return [Problem("'attributes' must be an object", pointer)]
    required = sorted(
        a.name for a in res.attributes if action == "create" and a.create == "required"
    )
    found = [
        Problem(f"'{name}' is required", f"{pointer}/{escape_pointer(name)}")
        for name in required
        if name not in given
    ]
    for name, value in given.items():
        detail = _attribute_problem(res.by_name.get(name), action, name, value)
        if detail:
            found.append(Problem(detail, f"{pointer}/{escape_pointer(name)}"))
    return found


def _attribute_problem(
    attribute: Attribute | None, action: Action, name: str, value: Any
) -> str | None:
    accepted = attribute is not None and (
        attribute.update if action == "update" else attribute.create != "absent"
    )
    if attribute is None or not accepted:
        return f"'{name}' is not a valid attribute"
    if value is None:
        nullable = action == "update" or attribute.create == "optional"
        return None if nullable else f"'{name}' must not be null"
    return _CHECKS[attribute.kind](value, name)


def _relationships_problems(
    value: Any, pointer: str, res: Resource, action: Action
) -> list[Problem]:
    pointer += "/relationships"
    relations = _relations(res, action)
    if value is None:
        needed = [r for r in relations if r.create == "required" and action == "create"]
        if needed:
            detail = f"A {res.noun} needs its parent {needed[0].name} in 'relationships'"
            return [Problem(detail, pointer)]
        return []
    names = [r.name for r in relations] + [r.legacy_name for r in relations if r.legacy_name]
    problems = members(value, pointer, [], names)
    if problems:
        return problems
    for relation in relations:
        if relation.name in value:
            shape = "many" if relation.many else "one"
            problems += _linkage_problems(
                value[relation.name], f"{pointer}/{relation.name}", relation.target, shape, True
            )
        elif relation.legacy_name and relation.legacy_name in value:
            problems += _linkage_problems(
                value[relation.legacy_name], f"{pointer}/{relation.legacy_name}",
                relation.target, "legacy", True,
            )  # fmt: skip
        elif relation.create == "required" and action == "create":
            problems.append(Problem(f"'{relation.name}' is required", f"{pointer}/{relation.name}"))
    return problems


def _linkage_problems(
    value: Any, pointer: str, target: str, shape: str, wrapped: bool = False
) -> list[Problem]:
    """``{"data": linkage}`` (``wrapped``) or a bare ``data`` value; ``shape`` says whether the
    data is one linkage, an array of them, or 2023-02-22's array of exactly one."""
    if wrapped:
        problems = members(value, pointer, ["data"], ["links"])
        if problems:
            return problems
        value, pointer = value["data"], f"{pointer}/data"
    if shape == "one":
        entries = [(value, pointer)]
    elif shape == "legacy":
        if not isinstance(value, list) or len(value) != 1:
            noun = target.removeprefix("catalog-")
            return [Problem(f"'data' must list exactly one catalog {noun}", pointer)]
        entries = [(value[0], f"{pointer}/0")]
    elif not isinstance(value, list):
        return [Problem("'data' must be an array", pointer)]
    else:
        entries = [(entry, f"{pointer}/{index}") for index, entry in enumerate(value)]
    problems = []
    for entry, at in entries:
        found = members(entry, at, ["type", "id"])
        if not found:
            found = _type_problem(entry["type"], target, f"{at}/type")
            found += _id_problem(entry["id"], f"{at}/id")
        problems += found
        if found and shape == "one":
            break
    return problems


def _job_problems(doc: Any, res: Resource, action: Action) -> list[Problem]:
    problems = members(doc, "", ["data"])
    if problems:
        return problems
    data = doc["data"]
    problems = members(data, "/data", ["type", "attributes"])
    if not isinstance(data, dict):
        return problems
    if "type" in data:
        problems += _type_problem(data["type"], job_type(res, action), "/data/type")
    if "attributes" in data:
        attributes = data["attributes"]
        problems += members(attributes, "/data/attributes", [res.plural])
        if isinstance(attributes, dict) and res.plural in attributes:
            problems += _entries_problems(attributes[res.plural], res, action)
    return problems


def _entries_problems(entries: Any, res: Resource, action: Action) -> list[Problem]:
    pointer = f"/data/attributes/{res.plural}"
    if isinstance(entries, dict):
        found = members(entries, pointer, ["data"])
        if found:
            return found
        entries, pointer = entries["data"], pointer + "/data"
    if not isinstance(entries, list):
        return [Problem(f"'{res.plural}' must be an array of catalog {res.plural}", pointer)]
    if not 1 <= len(entries) <= MAX_ENTRIES:
        detail = f"A job takes 1 to {MAX_ENTRIES} {res.plural}; this one has {len(entries)}"
        return [Problem(detail, pointer)]
    problems: list[Problem] = []
    for index, entry in enumerate(entries):
        problems += _object_problems(entry, f"{pointer}/{index}", res, action)
    return problems


# ---- the checks of each kind of attribute ------------------------------------------------------


def _string(value: Any, name: str) -> str | None:
    if not isinstance(value, str):
        return f"'{name}' must be a string"
    return _text(value, name)


def _text(value: str, name: str) -> str | None:
    """No NUL (PostgreSQL text cannot hold one) and no lone surrogate (no UTF-8 has one)."""
    if _NUL in value:
        return f"'{name}' must not contain NUL characters"
    try:
        value.encode()
    except UnicodeEncodeError:
        return f"'{name}' must be valid Unicode (a lone surrogate is not)"
    return None


def _number(value: Any, name: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"'{name}' must be a number"
    try:
        finite = math.isfinite(float(value))
    except OverflowError:
        finite = False
    return None if finite else f"'{name}' is out of range"


def _policy(value: Any, name: str) -> str | None:
    if isinstance(value, bool) or value not in (0, 1, 2) or not isinstance(value, int):
        return f"'{name}' must be one of 0, 1, 2"
    return None


def _boolean(value: Any, name: str) -> str | None:
    return None if isinstance(value, bool) else f"'{name}' must be true or false"


def _strings(value: Any, name: str) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f"'{name}' must be an array of strings"
    return next((found for v in value if (found := _text(v, name))), None)


def _metadata(value: Any, name: str) -> str | None:
    if not isinstance(value, dict):
        return f"'{name}' must be a JSON object"
    return metadata_problem(value, name)


def metadata_problem(
    value: dict[str, Any], name: str = "custom_metadata", sized: bool = True
) -> str | None:
    """A flat object: no nested objects, arrays of scalars only, at most 100 KB as JSON
    (``sized=False``: the caller knows it is smaller)."""
    for key, member in value.items():
        if isinstance(member, dict) or (
            isinstance(member, list) and any(isinstance(v, dict | list) for v in member)
        ):
            return f"'{name}' must be a flat object; '{key}' is nested"
    if sized and len(_ENCODER.encode(value)) > MAX_METADATA_BYTES:  # any int size, unlike orjson
        return f"'{name}' must not exceed 100 KB"
    return None


def _identity(value: Any, name: str) -> str | None:
    if not isinstance(value, str) or not value:
        return f"'{name}' must be a non-empty string"
    if len(value) > MAX_EXTERNAL_ID:
        return f"'{name}' must be at most {MAX_EXTERNAL_ID} characters"
    return _text(value, name)


def _fixed(expected: str) -> Callable[[Any, str], str | None]:
    def check(value: Any, name: str) -> str | None:
        return None if value == expected else f"'{name}' must be {expected}"

    return check


_CHECKS: dict[str, Callable[[Any, str], str | None]] = {
    "text": _string,
    "number": _number,
    "policy": _policy,
    "boolean": _boolean,
    "strings": _strings,
    "metadata": _metadata,
    "identity": _identity,
    "integration": _fixed("$custom"),
    "catalog": _fixed("$default"),
}
