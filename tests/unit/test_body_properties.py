"""Every request body has two validators, both derived from the resource descriptions:
msgspec's typed decoding (the fast path) and a walk that reports every problem with its pointer
(the slow path). They must agree on what is valid, for every resource and every kind of job, and
any input must end in a decoded request or an InvalidBody with pointers, never anything else."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backstock.domain import bodies
from backstock.domain.errors import InvalidBody
from backstock.domain.jobs import KINDS, JobKind
from backstock.domain.resources import RESOURCES, Attribute, Resource

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
IDS = ["$custom:::$default:::A", "$custom:::$default:::B/1", "$custom:::$default:::A:::C"]
BAD_IDS = ["$custom:::$default:::N\x00", "$other:::$default:::A", "bad", "", 7]


# No NUL and no lone surrogate: neither is a valid value (no UTF-8 holds a lone surrogate).
CLEAN_TEXT = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=10
)


def good_value(attribute: Attribute) -> st.SearchStrategy[Any]:
    """Values the descriptions accept, for each kind of attribute."""
    return {
        "text": CLEAN_TEXT,
        "number": st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6)),
        "policy": st.sampled_from([0, 1, 2]),
        "boolean": st.booleans(),
        "strings": st.lists(CLEAN_TEXT, max_size=3),
        "metadata": st.dictionaries(CLEAN_TEXT, st.one_of(CLEAN_TEXT, st.integers()), max_size=3),
        "identity": st.sampled_from(["A", "B/1", "A:::C", "x" * 512]),
        "integration": st.just("$custom"),
        "catalog": st.just("$default"),
    }[attribute.kind]


BAD_VALUES = st.one_of(
    json_values, st.just("a\x00b"), st.just("x" * 513), st.just(["a\x00"]), st.just({"n": {"x": 1}})
)


def _accepted(res: Resource, action: str) -> list[Attribute]:
    if action == "create":
        return [a for a in res.attributes if a.create != "absent"]
    return [a for a in res.attributes if a.update]


@st.composite
def attributes(draw: st.DrawFn, res: Resource, action: str) -> dict[str, Any]:
    """Valid attributes for the action: the required ones, and some optional ones (null too)."""
    result: dict[str, Any] = {}
    for attribute in _accepted(res, action):
        if action == "create" and attribute.create == "required":
            result[attribute.name] = draw(good_value(attribute))
        elif draw(st.integers(0, 2)) == 0:
            result[attribute.name] = draw(st.one_of(good_value(attribute), st.none()))
    return result


@st.composite
def relationships(draw: st.DrawFn, res: Resource, action: str) -> dict[str, Any] | None:
    """Valid relationships for the action (None: leave the member out)."""
    relations = [
        r for r in res.relations
        if (r.create != "absent" if action == "create" else r.update)
    ]  # fmt: skip
    found: dict[str, Any] = {}
    for relation in relations:
        required = action == "create" and relation.create == "required"
        if not required and draw(st.booleans()):
            continue

        def link(target: str = relation.target) -> dict[str, Any]:
            return {"type": target, "id": draw(st.sampled_from(IDS))}

        if relation.legacy_name and draw(st.booleans()):
            found[relation.legacy_name] = {"data": [link()]}
        elif relation.many:
            found[relation.name] = {"data": [link() for _ in range(draw(st.integers(0, 2)))]}
        else:
            found[relation.name] = {"data": link()}
    return found or None


@st.composite
def resource_object(draw: st.DrawFn, res: Resource, action: str) -> Any:
    """A valid resource object for the action, mutated half the time."""
    item: dict[str, Any] = {"type": res.type}
    if action != "create":
        item["id"] = draw(st.sampled_from(IDS))
    if action != "delete":
        item["attributes"] = draw(attributes(res, action))
        given = draw(relationships(res, action))
        if given is not None:
            item["relationships"] = given
    return draw(mutated(item, res))


@st.composite
def mutated(draw: st.DrawFn, item: dict[str, Any], res: Resource) -> Any:
    how = draw(
        st.sampled_from(
            ["none", "none", "none", "drop", "value", "unknown", "type", "id", "link", "any"]
        )
    )
    item = json.loads(json.dumps(item))
    if how == "drop":
        item.pop(draw(st.sampled_from(sorted(item))))
    elif how == "value" and item.get("attributes"):
        item["attributes"][draw(st.sampled_from(sorted(item["attributes"])))] = draw(BAD_VALUES)
    elif how == "unknown":
        target = item.get("attributes", item)
        target[draw(st.sampled_from(["unknown_attr", "created", "id", "external_id"]))] = 1
    elif how == "type":
        item["type"] = draw(st.sampled_from(["catalog-x", "catalog-item", 7]))
    elif how == "id":
        item["id"] = draw(st.sampled_from(BAD_IDS))
    elif how == "link":
        item.setdefault("relationships", {})[
            draw(st.sampled_from([r.name for r in res.relations] + ["other"]))
        ] = draw(
            st.sampled_from(
                [
                    {},
                    {"data": None},
                    {"data": [{"type": "catalog-x", "id": IDS[0]}]},
                    {"data": {"id": "bad"}},
                ]
            )
        )
    elif how == "any":
        return draw(json_values)
    return item


@st.composite
def job_documents(draw: st.DrawFn, kind: JobKind) -> Any:
    count = draw(st.sampled_from([1, 1, 2, 3, 0]))
    entries = [draw(resource_object(kind.resource, kind.action)) for _ in range(count)]
    shaped: Any = entries if draw(st.booleans()) else {"data": entries}
    doc: Any = {"data": {"type": kind.type, "attributes": {kind.resource.plural: shaped}}}
    if draw(st.integers(0, 9)) == 0:
        doc["data"]["type"] = draw(st.text(max_size=5))
    if draw(st.integers(0, 14)) == 0:
        doc["extra"] = 1
    if draw(st.integers(0, 14)) == 0:
        return draw(json_values)
    return doc


def _refusal(decode: Any) -> list[Any] | None:
    """The problems of a refused body (all with pointers), or None when it is accepted."""
    try:
        decode()
    except InvalidBody as exc:
        assert exc.status == 400 and exc.problems
        assert all(
            p.pointer is not None and (p.pointer == "" or p.pointer.startswith("/"))
            for p in exc.problems
        )
        return exc.problems
    return None


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_fast_and_slow_paths_agree_on_every_kind_of_job(kind: JobKind) -> None:
    accepted = []

    @FUZZ
    @given(job_documents(kind))
    def check(doc: Any) -> None:
        refused = _refusal(
            lambda: bodies.decode_job(kind.resource, kind.action, json.dumps(doc).encode())
        )
        walk = bodies._job_problems(doc, kind.resource, kind.action)
        if refused is None:
            accepted.append(doc)
            assert walk == [], f"accepted, but the walk finds {walk}: {doc!r}"
        else:
            # Refused: the walk names the problems (a post-decode check's refusal too: ids,
            # metadata, NUL, which the walk covers), so the walk is never silent on a refusal.
            assert walk, f"refused but the walk found nothing: {doc!r}"

    for _ in range(3):  # 100 random documents rarely all miss the accept path; 300 never do
        check()
        if accepted:
            break
    assert accepted, "the documents never reached the accept path"


@pytest.mark.parametrize("action", ["create", "update"])
@pytest.mark.parametrize("res", list(RESOURCES.values()), ids=list(RESOURCES))
def test_fast_and_slow_paths_agree_on_every_resource(res: Resource, action: str) -> None:
    accepted = []

    @FUZZ
    @given(resource_object(res, action))
    def check(data: Any) -> None:
        doc = {"data": data}
        body = json.dumps(doc).encode()
        if action == "create":
            refused = _refusal(lambda: bodies.decode_create(res, body))
        else:
            refused = _refusal(lambda: bodies.decode_update(res, body, "A"))  # type: ignore[arg-type]
        walk = bodies._document_problems(doc, res, action, "A" if action == "update" else None)  # type: ignore[arg-type]
        if refused is None:
            accepted.append(doc)
            assert walk == [], f"accepted, but the walk finds {walk}: {doc!r}"
        else:
            assert walk, f"refused but the walk found nothing: {doc!r}"

    for _ in range(3):  # 100 random documents rarely all miss the accept path; 300 never do
        check()
        if accepted:
            break
    assert accepted, "the documents never reached the accept path"


def _valid_update_body(count: int) -> bytes:
    variants = [
        {
            "type": "catalog-variant",
            "id": f"$custom:::$default:::V{n}",
            "attributes": {"price": n, "title": "t"},
        }
        for n in range(count)
    ]
    return orjson.dumps(
        {
            "data": {
                "type": "catalog-variant-bulk-update-job",
                "attributes": {"variants": {"data": variants}},
            }
        }
    )


def test_any_bytes_end_in_a_job_or_a_400() -> None:
    """Bytes near valid bodies (a valid one, cut short, with a byte changed or inserted), so
    that a good share reach the accept path, and any bytes at all."""
    outcomes = {"accepted": 0, "refused": 0}

    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.tuples(
                st.integers(1, 5),
                st.sampled_from(["keep", "cut", "flip", "insert"]),
                st.integers(0, 10_000),
                st.binary(min_size=1, max_size=2),
            ),
            st.binary(max_size=200),
        )
    )
    def check(case: Any) -> None:
        if isinstance(case, bytes):
            body = case
        else:
            count, how, at, extra = case
            body = _valid_update_body(count)
            at %= len(body)
            body = {
                "keep": body,
                "cut": body[:at],
                "flip": body[:at] + extra[:1] + body[at + 1 :],
                "insert": body[:at] + extra + body[at:],
            }[how]
        try:
            request = bodies.decode_job(
                KINDS["catalog-variant-bulk-update-job"].resource, "update", body
            )
        except InvalidBody as exc:
            assert exc.problems
            outcomes["refused"] += 1
        else:
            assert 1 <= len(request.external_ids) <= bodies.MAX_ENTRIES
            outcomes["accepted"] += 1

    check()
    assert outcomes["accepted"] >= 30 and outcomes["refused"] >= 30, outcomes


def test_accepted_payload_round_trips_in_order() -> None:
    doc = {"data": {"type": "catalog-variant-bulk-update-job", "attributes": {"variants": [
        {"type": "catalog-variant", "id": "$custom:::$default:::A", "attributes": {"price": 1, "title": None}},
        {"type": "catalog-variant", "id": "$custom:::$default:::A:::B", "attributes": {"sku": "x"}},
    ]}}}  # fmt: skip
    variant = RESOURCES["catalog-variant"]
    request = bodies.decode_job(variant, "update", orjson.dumps(doc))
    assert request.shape == "array" and request.external_ids == ["A", "A:::B"]
    loaded = bodies.load_payload(request.payload)
    assert loaded == [("A", {"price": 1.0, "title": None}, {}), ("A:::B", {"sku": "x"}, {})]


def test_every_problem_is_reported_with_its_pointer() -> None:
    doc = {"data": {"type": "catalog-variant-bulk-update-job", "attributes": {"variants": {"data": [
        {"type": "catalog-variant", "id": "$custom:::$default:::A", "attributes": {"price": "1"}},
        {"type": "catalog-variant", "id": "$custom:::$default:::B", "attributes": {}},
        {"type": "catalog-variant", "id": "$custom:::$other:::C", "attributes": {"colour": "red"}},
    ]}}}}  # fmt: skip
    problems = _refusal(
        lambda: bodies.decode_job(RESOURCES["catalog-variant"], "update", orjson.dumps(doc))
    )
    assert problems is not None
    base = "/data/attributes/variants/data"
    assert sorted(p.pointer or "" for p in problems) == [
        f"{base}/0/attributes/price", f"{base}/2/attributes/colour", f"{base}/2/id",
    ]  # fmt: skip
