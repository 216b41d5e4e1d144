"""How long decoding a bulk body holds the thread that does it, by size and by shape: the
measurement behind ``domain.bodies.COSTLY_BYTES`` (bodies above it are decoded off the event
loop) and ``WALK_VALUES`` (refused bodies above it are not rebuilt as Python objects to name
every problem).

    .venv/bin/python -m bench.decode

Prints, for each body, its size, its containers, the median time of ``decode_job`` (a valid
body: the typed decode and the payload; a refused one: the decode, then the problems), whether
``costly()`` sends it off the loop, and the longest the event loop went without a turn while
it was decoded (the median of 21 runs), inline and on a thread (decoding holds the GIL: a
thread lets the loop in only every switch interval, 5 ms). The ratio column is the time over
the 100-variant job of the seeds' size (~40 KB), the body Backstock sees most.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import sys
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


def _bodies() -> list[tuple[str, Resource, bytes]]:
    """Each body, named, with the resource its bulk update job is of."""
    rng = random.Random(1)
    ids = [external_id(rng) for _ in range(1000)]
    found = [("100 variants (the usual job)", VARIANT, bulk_body(job_updates(rng, ids)))]
    for links in (10, 40):  # many small objects in a valid body: each item's categories
        found.append((f"100 items, {links} categories each", ITEM, _items_body(ids, links)))
    for nul in (False, True):  # a relationship's "links" member, taken as it is (not decoded)
        name = "refused: NUL, 76,000 lists" if nul else "100 items, 76,000 lists in links"
        found.append((name, ITEM, _items_body(ids, 1, filler=[[]] * 760, nul=nul)))
    for kilobytes in (256, 1024, 4000):  # metadata grows the same 100 variants
        updates = job_updates(rng, ids)
        filler = "x" * (kilobytes * 1024 // 100 // 4)
        for _, changes in updates:
            changes["custom_metadata"] = {f"k{n}": filler for n in range(4)}
        found.append((f"100 variants, {kilobytes} KB", VARIANT, bulk_body(updates)))
    for count in (1_000, 4_096, 24_000, 50_000, 1_000_000):  # refused: lists for a document
        found.append((f"hostile: {count:,} empty lists", VARIANT, orjson.dumps([[]] * count)))
    for count in (2_500, 24_000):  # refused: too many entries, each one a valid variant's
        entries = [{"type": "catalog-variant", "id": PREFIX + ids[n % 1000]} for n in range(count)]
        body = _document(VARIANT, "update", entries)
        found.append((f"hostile: {count:,} variants", VARIANT, body))
    return found


def _document(res: Resource, action: str, entries: list[dict[str, object]]) -> bytes:
    data = {"type": f"{res.type}-bulk-{action}-job",
            "attributes": {res.plural: {"data": entries}}}  # fmt: skip
    return orjson.dumps({"data": data})


def _items_body(ids: list[str], links: int, filler: object = None, nul: bool = False) -> bytes:
    """A bulk update of 100 items, each naming ``links`` categories (its complete set), with
    ``filler`` as each relationship's ``links`` member, and a NUL in the first title."""
    entries = [
        {"type": "catalog-item", "id": PREFIX + external,
         "attributes": {"title": "T\x00" if nul and index == 0 else "T"},
         "relationships": {"categories": {"data": [
             {"type": "catalog-category", "id": PREFIX + f"c{n}"} for n in range(links)]}}}
        for index, external in enumerate(ids[:100])
    ]  # fmt: skip
    if filler is not None:
        for entry in entries:
            entry["relationships"]["categories"]["links"] = filler  # type: ignore[index]
    return _document(ITEM, "update", entries)


def _stalls(decode: Callable[[], object], threaded: bool, runs: int = 21) -> float:
    """The longest the event loop went without a turn while ``decode`` ran, inline or on a
    thread (``asyncio.to_thread``, as ``services.offload`` sends it): the median over
    ``runs`` runs, each the longest gap between two turns during it."""

    async def measure() -> float:
        longest = [0.0] * runs
        run = -1  # the run under way; -1: none yet
        stop = asyncio.Event()

        async def tick() -> None:  # a turn of the loop as often as it gets one
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0)
                now = time.perf_counter()
                if run >= 0:
                    longest[run] = max(longest[run], now - last)
                last = now

        ticking = asyncio.create_task(tick())
        await asyncio.sleep(0.01)
        for run in range(runs):  # noqa: B007 - tick() reads it
            with contextlib.suppress(InvalidBody):
                if threaded:
                    await asyncio.to_thread(decode)
                else:
                    decode()
            await asyncio.sleep(0)
        stop.set()
        await ticking
        return statistics.median(longest)

    return asyncio.run(measure())


def main() -> None:
    rows = []
    for name, res, body in _bodies():

        def decode(body: bytes = body, res: Resource = res) -> object:
            return bodies.decode_job(res, "update", body)

        seconds = _timed(decode)
        containers = body.count(b"[") + body.count(b"{")
        stalls = (_stalls(decode, threaded=False), _stalls(decode, threaded=True))
        rows.append((name, len(body), containers, seconds, bodies.costly(body), stalls))
    usual = rows[0][3]
    print(
        f"{'body':36} {'bytes':>10} {'containers':>11} {'decode':>10} {'ratio':>7}  "
        f"{'off the loop':12}  longest stall of the loop: inline, on a thread"
    )
    for name, size, containers, seconds, costly, (inline, threaded) in rows:
        print(
            f"{name:36} {size:>10,} {containers:>11,} {seconds * 1000:>8.3f} ms "
            f"{seconds / usual:>6.1f}x  {'yes' if costly else 'no':12}  "
            f"{inline * 1000:>6.2f} ms, {threaded * 1000:>6.2f} ms"
        )
    print(
        f"thresholds: COSTLY_BYTES={bodies.COSTLY_BYTES:,}, WALK_VALUES={bodies.WALK_VALUES:,}; "
        f"the interpreter's switch interval {sys.getswitchinterval() * 1000:g} ms"
    )


if __name__ == "__main__":
    main()
