"""``backstock load`` as a user runs it, against a real ``backstock serve`` with rate limits on:
10,000 variants (and their 100 items) loaded, interrupted with SIGINT (and killed) part-way and
resumed, every row applied exactly once; failed rows written to a file that loads again; upsert and
delete; throttling waited out, even when another client takes the whole budget (429s)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.support import BACKSTOCK, Cluster, item_body, sql

pytestmark = pytest.mark.e2e

ITEMS = 100
VARIANTS = 10_000
GHOSTS = {17: "G1", 2_500: "G2", 5_001: "G3", 7_777: "G4", 9_999: "G5"}
"""Variants of an item that does not exist yet, inserted after these rows: they fail."""
VARIANT_HEADER = [
    "external_id", "item", "title", "description", "sku", "inventory_quantity", "price", "url",
    "images", "custom_metadata.size", "custom_metadata.weight:number",
]  # fmt: skip


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def variant_row(n: int) -> list[Any]:
    return [
        f"V{n}", f"I{n % ITEMS}", f"Variant {n}", "d", f"SKU-{n}", n % 7, f"{n}.25",
        "https://shop/v", "https://img/1.png|https://img/2.png", "M", "1.5",
    ]  # fmt: skip


def ghost_row(external: str) -> list[Any]:
    return [
        external,
        "GHOST",
        external,
        "d",
        f"SKU-{external}",
        1,
        "2",
        "https://shop/g",
        "",
        "",
        "",
    ]


def loader_env(cluster: Cluster, key: str) -> dict[str, str]:
    return cluster.env | {"BACKSTOCK_URL": cluster.base_url, "BACKSTOCK_API_KEY": key}


def load(cluster: Cluster, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BACKSTOCK, "load", *args],
        env=loader_env(cluster, key), cwd=cluster.workdir, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def start_load(cluster: Cluster, key: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*BACKSTOCK, "load", *args],
        env=loader_env(cluster, key), cwd=cluster.workdir, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def load_interrupted(
    cluster: Cluster, key: str, state: Path, *args: str, after: int, signum: int = signal.SIGINT
) -> subprocess.CompletedProcess[str]:
    """Start a load and signal it once its state records ``after`` chunks."""
    process = start_load(cluster, key, *args)
    deadline = time.monotonic() + 30
    while len(chunks_of(state)) < after:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=30)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def chunks_of(state: Path) -> dict[str, Any]:
    if not state.exists():
        return {}
    found: dict[str, Any] = json.loads(state.read_text())["chunks"]  # replaced whole: never torn
    return found


def database(cluster: Cluster) -> str:
    return f"sqlite:///{cluster.workdir / 'backstock.db'}"


def jobs_by_kind(cluster: Cluster) -> dict[str, int]:
    with sql(database(cluster)) as conn:
        rows = conn.execute(text("SELECT kind, COUNT(*) FROM jobs GROUP BY kind")).all()
    return {kind.removeprefix("catalog-").removesuffix("-job"): count for kind, count in rows}


def variants(cluster: Cluster) -> dict[str, Any]:
    query = """SELECT v.external_id, v.title, v.sku, v.price, v.inventory_quantity, v.images,
                      v.custom_metadata, v.update_count, i.external_id AS item
                 FROM catalog_variants v JOIN catalog_items i ON i.pk = v.item_pk"""
    with sql(database(cluster)) as conn:
        return {row.external_id: row for row in conn.execute(text(query))}


def test_ten_thousand_variants_interrupted_and_resumed_apply_exactly_once(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(rate_limits="on", write_limits="20/second;200/minute")
    cluster.serve()
    key = cluster.new_key()
    work = cluster.workdir

    items = write_csv(
        work / "items.csv", ["external_id", "title", "description", "url", "price"],
        [[f"I{n}", f"Item {n}", "d", "https://shop/i", n] for n in range(ITEMS)],
    )  # fmt: skip
    done = load(cluster, key, str(items), "--type", "item")
    assert done.returncode == 0, done.stderr
    assert "100 rows, 1 jobs, 100 applied, 0 failed" in done.stdout

    rows: list[list[Any]] = []
    for n in range(VARIANTS):
        rows.append(variant_row(n))
        if n in GHOSTS:
            rows.append(ghost_row(GHOSTS[n]))
    source = write_csv(work / "variants.csv", VARIANT_HEADER, rows)
    state = work / "variants.csv.state.json"
    chunks = (len(rows) + 99) // 100

    # Interrupted part-way: it stops cleanly, says where, and keeps what it sent.
    stopped = load_interrupted(cluster, key, state, str(source), "--type", "variant", after=30)
    assert stopped.returncode == 130, stopped.stderr
    assert "Stopped:" in stopped.stderr and "Run the same command again" in stopped.stderr
    sent_before = len(chunks_of(state))
    assert 30 <= sent_before < chunks

    # Resumed: only the rest is sent; the ghosts fail and go to the failed-rows file.
    resumed = load(cluster, key, str(source), "--type", "variant")
    assert resumed.returncode == 1, resumed.stderr
    # 20/second: the loader paces itself on RateLimit-Remaining, and shows it waiting.
    assert "waiting 1 s: rate limit" in stopped.stderr + resumed.stderr
    assert (
        f"{len(rows)} rows, {chunks} jobs, {VARIANTS} applied, {len(GHOSTS)} failed"
        in resumed.stdout
    )
    assert jobs_by_kind(cluster) == {"item-bulk-create": 1, "variant-bulk-create": chunks}
    found = variants(cluster)
    assert len(found) == VARIANTS
    for n in range(VARIANTS):
        row = found[f"V{n}"]
        assert (row.item, row.title, row.sku, row.price, row.inventory_quantity) == (
            f"I{n % ITEMS}", f"Variant {n}", f"SKU-{n}", n + 0.25, n % 7,
        )  # fmt: skip
        assert json.loads(row.images) == ["https://img/1.png", "https://img/2.png"]
        assert json.loads(row.custom_metadata) == {"size": "M", "weight": 1.5}
        assert row.update_count == 0
    failed = work / "variants.failed.csv"
    with failed.open(newline="") as handle:
        failures = list(csv.DictReader(handle))
    assert [f["external_id"] for f in failures] == list(GHOSTS.values())
    assert {f["error_code"] for f in failures} == {"not_found"}
    assert all("GHOST" in f["error_detail"] for f in failures)

    # The missing item created, the failed file loads as it is.
    with cluster.client(key) as http:
        assert http.post("/api/catalog-items", json=item_body("GHOST")).status_code == 201
    retried = load(cluster, key, str(failed), "--type", "variant")
    assert retried.returncode == 0, retried.stderr
    assert f"{len(GHOSTS)} applied, 0 failed" in retried.stdout
    assert len(variants(cluster)) == VARIANTS + len(GHOSTS)

    # An update of every variant, interrupted and resumed: each applied exactly once.
    prices = write_csv(
        work / "prices.csv", ["external_id", "price", "custom_metadata.size"],
        [[f"V{n}", f"{n}.75", "L"] for n in range(VARIANTS)],
    )  # fmt: skip
    stopped = load_interrupted(
        cluster, key, work / "prices.csv.state.json", str(prices), "--type", "variant",
        "--mode", "update", after=20,
    )  # fmt: skip
    assert stopped.returncode == 130, stopped.stderr
    # Then killed outright, as a crash would (a request may be in flight): the next run looks
    # for the jobs such a request may have made before it sends anything.
    killed = load_interrupted(
        cluster, key, work / "prices.csv.state.json", str(prices), "--type", "variant",
        "--mode", "update", after=50, signum=signal.SIGKILL,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    resumed = load(cluster, key, str(prices), "--type", "variant", "--mode", "update")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{VARIANTS} rows, 100 jobs, {VARIANTS} applied, 0 failed" in resumed.stdout
    assert jobs_by_kind(cluster)["variant-bulk-update"] == 100
    found = variants(cluster)
    for n in range(VARIANTS):
        row = found[f"V{n}"]
        assert (row.price, row.update_count) == (n + 0.75, 1)
        assert json.loads(row.custom_metadata) == {"size": "L"}  # the whole object is replaced
    assert {found[g].update_count for g in GHOSTS.values()} == {0}


def test_upsert_delete_and_throttling_by_another_client(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(rate_limits="on", write_limits="3/second;1000/minute")
    cluster.serve()
    key = cluster.new_key()
    work = cluster.workdir
    header = ["external_id", "title", "description", "url", "categories"]
    first = write_csv(
        work / "first.csv", header, [[f"A{n}", "old", "d", "https://shop/a", ""] for n in range(4)]
    )
    assert load(cluster, key, str(first), "--type", "item").returncode == 0

    # Upsert: the create finds A0..A3 existing (conflict) and an update job follows for them.
    upsert = work / "upsert.jsonl"
    entries = [
        {"external_id": f"A{n}", "title": "new", "description": "d2", "url": "https://shop/a",
         "custom_metadata.n": n}
        for n in range(8)
    ]  # fmt: skip
    upsert.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    done = load(cluster, key, str(upsert), "--type", "item", "--mode", "upsert")
    assert done.returncode == 0, done.stderr
    assert "8 rows, 2 jobs, 8 applied, 0 failed" in done.stdout
    with sql(database(cluster)) as conn:
        rows = conn.execute(
            text("SELECT external_id, title, custom_metadata, update_count FROM catalog_items")
        ).all()
    assert sorted((r.external_id, r.title, r.update_count) for r in rows) == [
        (f"A{n}", "new", 1 if n < 4 else 0) for n in range(8)
    ]
    assert {json.loads(r.custom_metadata)["n"] for r in rows} == set(range(8))
    assert jobs_by_kind(cluster) == {"item-bulk-create": 2, "item-bulk-update": 1}
    again = load(cluster, key, str(upsert), "--type", "item", "--mode", "upsert")
    assert "8 rows, 2 jobs, 8 applied, 0 failed" in again.stdout  # done: nothing sent again
    assert jobs_by_kind(cluster) == {"item-bulk-create": 2, "item-bulk-update": 1}

    # Delete: A0..A2 go; NOPE does not exist and is a failed row.
    gone = write_csv(work / "gone.csv", ["external_id"], [["A0"], ["A1"], ["A2"], ["NOPE"]])
    deleted = load(cluster, key, str(gone), "--type", "item", "--mode", "delete")
    assert deleted.returncode == 1
    assert "4 rows, 1 jobs, 3 applied, 1 failed" in deleted.stdout
    assert (work / "gone.failed.csv").read_text().splitlines()[1].startswith("NOPE,not_found,")
    with sql(database(cluster)) as conn:
        left = conn.execute(text("SELECT external_id FROM catalog_items")).scalars().all()
    assert sorted(left) == [f"A{n}" for n in range(3, 8)]

    # Another client takes the whole 3/second of item creates while the loader starts: the
    # loader waits for the limit and sends each chunk exactly once.
    stop = threading.Event()

    def hog() -> None:
        with cluster.client(key) as http:
            while not stop.is_set():
                http.post("/api/catalog-item-bulk-create-jobs", content=b"{}")  # counted, 400
                stop.wait(0.05)

    more = write_csv(
        work / "more.csv", header, [[f"B{n}", "b", "d", "https://shop/b", ""] for n in range(5)]
    )
    thread = threading.Thread(target=hog)
    thread.start()
    try:
        process = start_load(cluster, key, str(more), "--type", "item", "--chunk-size", "1")
        deadline = time.monotonic() + 30
        while not (work / "more.csv.state.json").exists():  # written just before the first POST
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        time.sleep(2)
    finally:
        stop.set()
        thread.join()
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "5 rows, 5 jobs, 5 applied, 0 failed" in stdout
    # It waited for the limit: after a 429 (Retry-After), or, when it won a slot as the other
    # client's window turned, because RateLimit-Remaining said 0 (the 429 path alone:
    # tests/unit/test_load.py); either way each chunk was sent once (below).
    assert "rate limit" in stderr
    assert jobs_by_kind(cluster)["item-bulk-create"] == 2 + 5
