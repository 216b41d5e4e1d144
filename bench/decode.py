"""How long decoding a bulk body holds the thread that does it, by size and by shape: the
measurement behind ``domain.bodies.COSTLY_BYTES`` / ``COSTLY_CONTAINERS`` (bodies above either
are decoded off the event loop) and ``WALK_VALUES`` (refused bodies above it are not rebuilt as
Python objects to name every problem).

    .venv/bin/python -m bench.decode

Prints, for each body, its size, its containers, the median time of ``decode_job`` (a valid
body: the typed decode and the payload; a refused one: the decode, then the problems), and
whether ``costly()`` sends it off the loop. The ratio column is the time over the 100-variant
job of the seeds' size (~40 KB), the body Backstock sees most.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from collections.abc import Callable

import orjson

from backstock.domain import bodies
from backstock.domain.errors import InvalidBody
from backstock.domain.resources import ITEM, VARIANT, Resource
from bench.payload import PREFIX, bulk_body, external_id, job_updates


def _timed(work: Callable[[], object], budget: float = 0.5) -> float:
    """The median seconds of ``work`` over repeated runs within about ``budget`` seconds."""
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline or len(samples) < 5:
        started = time.perf_counter()
        with contextlib.suppress(InvalidBody):  # a refused body: its 400 is the work
            work()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _bodies() -> list[tuple[str, bytes]]:
    rng = random.Random(1)
    ids = [external_id(rng) for _ in range(1000)]
    found = [("100 variants (the usual job)", bulk_body(job_updates(rng, ids)))]
    for links in (10, 40):  # many small objects in a valid body: each item's categories
        found.append((f"100 items, {links} categories each", _items_body(ids, links)))
    for kilobytes in (256, 1024, 4000):  # metadata grows the same 100 variants
        updates = job_updates(rng, ids)
        filler = "x" * (kilobytes * 1024 // 100 // 4)
        for _, changes in updates:
            changes["custom_metadata"] = {f"k{n}": filler for n in range(4)}
        found.append((f"100 variants, {kilobytes} KB", bulk_body(updates)))
    for count in (1_000, 4_096, 24_000, 50_000, 1_000_000):  # refused: lists for a document
        found.append((f"hostile: {count:,} empty lists", orjson.dumps([[]] * count)))
    for count in (2_500, 24_000):  # refused: too many entries, each one a valid variant's
        entries = [{"type": "catalog-variant", "id": PREFIX + ids[n % 1000]} for n in range(count)]
        found.append((f"hostile: {count:,} variants", _document(VARIANT, "update", entries)))
    return found


def _document(res: Resource, action: str, entries: list[dict[str, object]]) -> bytes:
    data = {"type": f"{res.type}-bulk-{action}-job",
            "attributes": {res.plural: {"data": entries}}}  # fmt: skip
    return orjson.dumps({"data": data})


def _items_body(ids: list[str], links: int) -> bytes:
    """A bulk update of 100 items, each naming ``links`` categories (its complete set)."""
    entries = [
        {"type": "catalog-item", "id": PREFIX + external, "attributes": {"title": "T"},
         "relationships": {"categories": {"data": [
             {"type": "catalog-category", "id": PREFIX + f"c{n}"} for n in range(links)]}}}
        for external in ids[:100]
    ]  # fmt: skip
    return _document(ITEM, "update", entries)


def main() -> None:
    rows = []
    for name, body in _bodies():
        res = ITEM if name.startswith("100 items") else VARIANT
        seconds = _timed(lambda body=body, res=res: bodies.decode_job(res, "update", body))
        containers = body.count(b"[") + body.count(b"{")
        rows.append((name, len(body), containers, seconds, bodies.costly(body)))
    usual = rows[0][3]
    print(f"{'body':36} {'bytes':>10} {'containers':>11} {'decode':>10} {'ratio':>7}  off the loop")
    for name, size, containers, seconds, costly in rows:
        print(
            f"{name:36} {size:>10,} {containers:>11,} {seconds * 1000:>8.3f} ms "
            f"{seconds / usual:>6.1f}x  {'yes' if costly else 'no'}"
        )
    print(
        f"thresholds: COSTLY_BYTES={bodies.COSTLY_BYTES:,}, "
        f"COSTLY_CONTAINERS={bodies.COSTLY_CONTAINERS:,}, WALK_VALUES={bodies.WALK_VALUES:,}"
    )


if __name__ == "__main__":
    main()
