"""The bulk update body has two validators: msgspec's typed decoding (the fast path) and a walk
that reports every problem with its pointer (the slow path). They must agree on what is valid,
and any input must end in a BulkUpdate or an InvalidBody with pointers, never anything else."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backstock.domain import bulk
from backstock.domain.errors import InvalidBody

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
good_values: dict[str, st.SearchStrategy[Any]] = {
    "title": st.one_of(st.none(), st.text(max_size=10)),
    "sku": st.one_of(st.text(max_size=10), st.just("a\x00b")),
    "price": st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6)),
    "inventory_quantity": st.integers(0, 100),
    "inventory_policy": st.sampled_from([0, 1, 2]),
    "published": st.booleans(),
    "images": st.lists(st.text(max_size=5), max_size=3),
    "custom_metadata": st.dictionaries(
        st.text(max_size=5), st.one_of(st.text(max_size=5), st.integers()), max_size=3
    ),
}
attribute_names = st.sampled_from([*good_values, "url", "description", "unknown_attr"])


@st.composite
def attributes(draw: st.DrawFn) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in draw(st.lists(attribute_names, max_size=4, unique=True)):
        good = good_values.get(name, st.text(max_size=5))
        result[name] = draw(st.one_of(good, good, json_values))  # mostly valid, sometimes not
    return result


@st.composite
def variant(draw: st.DrawFn) -> Any:
    item: dict[str, Any] = {
        "type": draw(st.sampled_from(["catalog-variant", "catalog-variant", "catalog-item"])),
        "id": draw(
            st.sampled_from(
                [
                    "$custom:::$default:::A",
                    "$custom:::$default:::B/1",
                    "$custom:::$default:::N\x00",
                    "$other:::$default:::A",
                    "bad",
                    "",
                ]
            )
        ),
        "attributes": draw(attributes()),
    }
    if draw(st.integers(0, 9)) == 0:
        item.pop(draw(st.sampled_from(sorted(item))))
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    return item


@st.composite
def documents(draw: st.DrawFn) -> Any:
    variants = draw(st.lists(variant(), min_size=0, max_size=4))
    shaped: Any = variants if draw(st.booleans()) else {"data": variants}
    doc: Any = {
        "data": {"type": "catalog-variant-bulk-update-job", "attributes": {"variants": shaped}}
    }
    if draw(st.integers(0, 9)) == 0:
        doc["data"]["type"] = draw(st.text(max_size=5))
    if draw(st.integers(0, 14)) == 0:
        doc["extra"] = 1
    if draw(st.integers(0, 14)) == 0:
        return draw(json_values)
    return doc


def _accepts(doc: Any) -> bool:
    try:
        bulk.parse_bulk_update(json.dumps(doc).encode())
    except InvalidBody as exc:
        assert exc.status == 400 and exc.problems
        assert all(
            p.pointer is not None and (p.pointer == "" or p.pointer.startswith("/"))
            for p in exc.problems
        )
        return False
    return True


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_fast_and_slow_paths_agree(doc: Any) -> None:
    accepted = _accepts(doc)
    walk = bulk._document_problems(doc)
    if accepted:
        assert walk == []
    else:
        # Refused: either the walk names the problems, or a post-decode check did (ids,
        # metadata), which the walk also covers, so the walk is never silent on a refusal.
        assert walk, f"refused but the walk found nothing: {doc!r}"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_end_in_a_job_or_a_400(body: bytes) -> None:
    try:
        bulk.parse_bulk_update(body)
    except InvalidBody as exc:
        assert exc.problems


def test_accepted_payload_round_trips_in_order() -> None:
    doc = {"data": {"type": "catalog-variant-bulk-update-job", "attributes": {"variants": [
        {"type": "catalog-variant", "id": "$custom:::$default:::A", "attributes": {"price": 1, "title": None}},
        {"type": "catalog-variant", "id": "$custom:::$default:::A:::B", "attributes": {"sku": "x"}},
    ]}}}  # fmt: skip
    request = bulk.parse_bulk_update(orjson.dumps(doc))
    assert request.shape == "array" and request.external_ids == ["A", "A:::B"]
    loaded = [(ext, changes.as_dict()) for ext, changes in bulk.load_payload(request.payload)]
    assert loaded == [("A", {"price": 1.0, "title": None}), ("A:::B", {"sku": "x"})]


def test_every_problem_is_reported_with_its_pointer() -> None:
    doc = {"data": {"type": "catalog-variant-bulk-update-job", "attributes": {"variants": {"data": [
        {"type": "catalog-variant", "id": "$custom:::$default:::A", "attributes": {"price": "1"}},
        {"type": "catalog-variant", "id": "$custom:::$default:::B", "attributes": {}},
        {"type": "catalog-variant", "id": "$custom:::$other:::C", "attributes": {"colour": "red"}},
    ]}}}}  # fmt: skip
    try:
        bulk.parse_bulk_update(orjson.dumps(doc))
    except InvalidBody as exc:
        pointers = sorted(p.pointer or "" for p in exc.problems)
    else:
        raise AssertionError("accepted")
    base = "/data/attributes/variants/data"
    assert pointers == [f"{base}/0/attributes/price", f"{base}/2/attributes/colour", f"{base}/2/id"]
