"""The outside attack of issue 13, finding by finding, against a real ``backstock serve``: one
test per finding (docs/security.md's threat table names each). Where a finding is about harm to
others, the test measures a *victim* while the attack runs: another account's job GET latency
(median and max) and the resident memory of the server's processes (idle, peak, after), and
prints the figures (``pytest -s``). Attacks are bounded in count and time, on loopback only.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import sqlite3
import stat
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx2 as httpx
import orjson
import pytest
from sqlalchemy import create_engine, func, select

from backstock.domain.bodies import load_payload
from backstock.storage.database import sqlalchemy_url
from backstock.storage.schema import accounts, catalog_variants, job_payloads, jobs
from tests.support import (
    BACKSTOCK,
    JSONAPI,
    REVISION,
    Cluster,
    bulk_body,
    cid,
    item_body,
    variant_body,
)

pytestmark = pytest.mark.e2e

JOBS = "/api/catalog-variant-bulk-update-jobs"
VARIANT_CREATES = "/api/catalog-variant-bulk-create-jobs"
ITEM_CREATES = "/api/catalog-item-bulk-create-jobs"
MiB = 1024 * 1024
EMPTY_LISTS = b"[" + b"[]," * 1_000_000 + b"[]]"
"""3 MB of nested empty lists: a million containers for a JSON parser to build."""


# ---- measuring a victim ---------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and every process below it (granian's main process and the
    worker it forks), in KiB; a process that just went away counts nothing."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _rss_kib(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


@dataclass
class Watch:
    """A victim account polling its job, and the server's memory sampled, while an attack runs."""

    client: httpx.Client
    job_path: str
    server_pid: int
    latencies: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _poll(self) -> None:
        """One GET every 25 ms, each timed from when it was due, not from when it could be
        sent: a victim held up for a second counts 40 slow answers, not one."""
        period = 0.025
        due = time.perf_counter()
        while not self._stop.is_set():
            pause = due - time.perf_counter()
            if pause > 0:
                self._stop.wait(pause)
            try:
                response = self.client.get(self.job_path)
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
            else:
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
            finished = time.perf_counter()
            while due <= finished:  # every GET that fell due meanwhile waited this long
                self.latencies.append(finished - due)
                due += period

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.rss.append(_rss_kib(self.server_pid))
            self._stop.wait(0.05)

    @contextmanager
    def running(self) -> Iterator[Watch]:
        threads = [threading.Thread(target=f, daemon=True) for f in (self._poll, self._sample)]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(30)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def max_ms(self) -> float:
        return max(self.latencies) * 1000


@contextmanager
def _victim(cluster: Cluster) -> Iterator[tuple[httpx.Client, str]]:
    """Another account, with a job of its own to poll."""
    with cluster.client(cluster.new_key("victim")) as client:
        response = client.post(JOBS, json=bulk_body([("VICTIM-V", {"price": 1.0})]))
        assert response.status_code == 202, response.text
        yield client, f"{JOBS}/{response.json()['data']['id']}"


def _idle_latency(client: httpx.Client, path: str, count: int = 40) -> list[float]:
    found = []
    for _ in range(count):
        started = time.perf_counter()
        assert client.get(path).status_code == 200
        found.append(time.perf_counter() - started)
        time.sleep(0.01)
    return found


def _settled_rss(pid: int, ceiling: int, seconds: float = 5.0) -> int:
    """The server's memory once it has dropped to ``ceiling`` KiB (or after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while (rss := _rss_kib(pid)) > ceiling and time.monotonic() < deadline:
        time.sleep(0.2)
    return rss


def _report(finding: str, **figures: Any) -> None:
    shown = ", ".join(
        f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    print(f"\nFIGURES {finding}: {shown}")


# ---- raw HTTP on loopback ---------------------------------------------------------------------------


def _address(cluster: Cluster) -> tuple[str, int]:
    host, port = cluster.base_url.removeprefix("http://").split(":")
    return host, int(port)


def _connect(cluster: Cluster, timeout: float = 10) -> socket.socket:
    conn = socket.create_connection(_address(cluster), timeout=timeout)
    conn.settimeout(timeout)
    return conn


def _read_all(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or resets it, or the
    socket's timeout passes)."""
    return _read_until_closed(conn)[0]


def _read_until_closed(conn: socket.socket) -> tuple[bytes, bool]:
    """What the server sends, and whether it then closed the connection (False: the
    socket's timeout passed first)."""
    received = b""
    try:
        while chunk := conn.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return received, False
    return received, True


def _head(path: str, length: int, key: str | None = None) -> bytes:
    """The head of a POST of ``length`` bytes to ``path`` (with ``key``, if given)."""
    authorization = f"Authorization: Klaviyo-API-Key {key}\r\n" if key else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{authorization}"
        f"revision: {REVISION}\r\nContent-Type: {JSONAPI}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _exchange(cluster: Cluster, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` as is; everything the server answers until it closes."""
    with _connect(cluster, timeout) as conn:
        conn.sendall(data)
        return _read_all(conn)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _document(answer: bytes) -> Any:
    return orjson.loads(answer.partition(b"\r\n\r\n")[2])


def _header(answer: bytes, name: str) -> str | None:
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Clients and connections of the test, closed after it (before its servers stop)."""
    with ExitStack() as made:
        yield made


# ---- finding 1: no key needed to stall the server ---------------------------------------------------


@pytest.fixture
def quiet_server(make_cluster: Callable[..., Cluster]) -> Cluster:
    """One API process on SQLite, no job worker, rate limits off (the harshest case: nothing
    throttles the attacker)."""
    cluster = make_cluster(database_url="sqlite:///attacks.db", run_worker="false")
    cluster.cli("migrate")
    return cluster


def _probe_unauthenticated(cluster: Cluster, body: bytes) -> tuple[float, bytes]:
    """Headers announcing ``body`` and its first 64 KiB, without a key: the time to the whole
    answer (the server closes the connection after it) and the answer."""
    with _connect(cluster) as conn:
        started = time.perf_counter()
        conn.sendall(_head("/api/catalog-items", len(body)) + body[:65536])
        answer = _read_all(conn)
        return time.perf_counter() - started, answer


def _flood_unauthenticated(cluster: Cluster, body: bytes, stop: threading.Event) -> list[int]:
    """Post ``body`` without a key, whole, again and again until ``stop``; the statuses seen
    (0: the connection was reset before the answer could be read)."""
    statuses = []
    head = _head("/api/catalog-items", len(body))
    while not stop.is_set():
        with _connect(cluster) as conn:
            with contextlib.suppress(OSError):  # answered and closed, the body unread
                conn.sendall(head + body)
            statuses.append(_status(_read_all(conn)))
    return statuses


def test_unauthenticated_hostile_bodies_are_refused_unread_and_harm_no_one(
    quiet_server: Cluster, stack: ExitStack
) -> None:
    cluster = quiet_server
    cluster.serve()
    server = cluster.processes[0].pid
    victim, job = stack.enter_context(_victim(cluster))
    idle = _idle_latency(victim, job)
    rss_idle = _rss_kib(server)

    probes = [_probe_unauthenticated(cluster, EMPTY_LISTS) for _ in range(10)]
    for _, answer in probes:
        assert _status(answer) == 401, answer[:300]
        assert _header(answer, "connection") == "close"
        assert _document(answer)["errors"][0]["code"] == "not_authenticated"
    probe_ms = [seconds * 1000 for seconds, _ in probes]
    assert max(probe_ms) < 100, probe_ms

    stop = threading.Event()
    results: list[list[int]] = [[], []]

    def attacker(index: int) -> None:
        results[index] = _flood_unauthenticated(cluster, EMPTY_LISTS, stop)

    attackers = [threading.Thread(target=attacker, args=(i,)) for i in range(2)]
    watch = Watch(victim, job, server)
    with watch.running():
        for thread in attackers:
            thread.start()
        during = []
        for _ in range(10):  # a fresh probe now and then, while the flood goes on
            time.sleep(0.5)
            seconds, answer = _probe_unauthenticated(cluster, EMPTY_LISTS)
            assert _status(answer) == 401, answer[:300]
            during.append(seconds * 1000)
        stop.set()
        for thread in attackers:
            thread.join(30)
    rss_after = _settled_rss(server, rss_idle + 20 * 1024)

    sent = len(results[0]) + len(results[1])
    answered = [s for r in results for s in r if s]
    _report(
        "1 unauthenticated 3 MB bodies",
        requests=sent, answered_401=answered.count(401),
        probe_idle_ms_max=max(probe_ms), probe_flood_ms_median=statistics.median(during),
        victim_idle_median_ms=statistics.median(idle) * 1000,
        victim_median_ms=watch.median_ms, victim_max_ms=watch.max_ms, polls=len(watch.latencies),
        rss_idle_mib=rss_idle / 1024, rss_peak_mib=max(watch.rss) / 1024,
        rss_after_mib=rss_after / 1024,
    )  # fmt: skip
    assert sent >= 20, results  # the flood did flood: at least 2 requests a second each
    assert set(answered) <= {401}, answered
    assert statistics.median(during) < 100, during
    assert not watch.failures, watch.failures[:5]
    assert watch.median_ms < 100, watch.latencies
    assert watch.max_ms < 1000, watch.latencies
    assert max(watch.rss) - rss_idle < 100 * 1024, watch.rss
    assert rss_after - rss_idle < 50 * 1024, (rss_idle, rss_after)


def test_a_keyed_hostile_body_is_decoded_without_holding_up_others(
    quiet_server: Cluster, stack: ExitStack
) -> None:
    cluster = quiet_server
    cluster.serve()
    server = cluster.processes[0].pid
    victim, job = stack.enter_context(_victim(cluster))
    idle = _idle_latency(victim, job)
    rss_idle = _rss_kib(server)
    key = cluster.new_key("attacker")
    stop = threading.Event()
    answers: list[tuple[int, float]] = []

    def attacker() -> None:
        with cluster.client(key) as client:
            while not stop.is_set():
                started = time.perf_counter()
                response = client.post(JOBS, content=EMPTY_LISTS, headers={"Content-Type": JSONAPI})
                answers.append((response.status_code, time.perf_counter() - started))

    attackers = [threading.Thread(target=attacker) for _ in range(2)]
    watch = Watch(victim, job, server)
    with watch.running():
        for thread in attackers:
            thread.start()
        time.sleep(5)
        stop.set()
        for thread in attackers:
            thread.join(30)
    rss_after = _settled_rss(server, rss_idle + 20 * 1024)

    _report(
        "1 keyed 3 MB hostile bodies",
        requests=len(answers),
        attacker_median_ms=statistics.median(s for _, s in answers) * 1000,
        victim_idle_median_ms=statistics.median(idle) * 1000,
        victim_median_ms=watch.median_ms, victim_max_ms=watch.max_ms, polls=len(watch.latencies),
        rss_idle_mib=rss_idle / 1024, rss_peak_mib=max(watch.rss) / 1024,
        rss_after_mib=rss_after / 1024,
    )  # fmt: skip
    assert answers
    assert {status for status, _ in answers} == {400}
    assert not watch.failures, watch.failures[:5]
    assert watch.max_ms < 10_000, sorted(watch.latencies)  # held up, never hung
    grown = (max(watch.rss) - rss_idle) / 1024
    assert watch.median_ms < 100, sorted(watch.latencies)  # what issue 13 asks
    assert grown < 100, grown


# ---- finding 2: memory from uploads -----------------------------------------------------------------


def test_stalled_unauthenticated_uploads_are_answered_at_once_and_never_buffered(
    quiet_server: Cluster, stack: ExitStack
) -> None:
    cluster = quiet_server
    cluster.serve()
    server = cluster.processes[0].pid
    victim, job = stack.enter_context(_victim(cluster))
    rss_idle = _rss_kib(server)
    body = EMPTY_LISTS[: 256 * 1024]
    conns = [stack.enter_context(_connect(cluster, timeout=2)) for _ in range(60)]

    watch = Watch(victim, job, server)
    with watch.running():
        started = time.perf_counter()
        for conn in conns:  # 4 MiB announced, 256 KiB sent, then nothing more
            conn.sendall(_head("/api/catalog-items", 4 * MiB) + body)
        answers = [_read_until_closed(conn) for conn in conns]
        elapsed = time.perf_counter() - started
        time.sleep(1)  # the stalled senders hold their sockets a while longer
    rss_peak = max(watch.rss)

    _report(
        "2 sixty stalled 4 MiB uploads without a key",
        all_answered_and_closed_ms=elapsed * 1000, victim_median_ms=watch.median_ms,
        victim_max_ms=watch.max_ms, rss_idle_mib=rss_idle / 1024, rss_peak_mib=rss_peak / 1024,
    )  # fmt: skip
    for answer, closed in answers:  # answered at once, and the connection closed
        assert _status(answer) == 401, answer[:300]
        assert _header(answer, "connection") == "close"
        assert closed
    assert elapsed < 5
    assert rss_peak - rss_idle < 100 * 1024, watch.rss
    assert not watch.failures, watch.failures[:5]
    assert watch.median_ms < 100, sorted(watch.latencies)


def _padded_job(size: int) -> bytes:
    """A valid one-variant bulk job of exactly ``size`` bytes (JSON allows trailing space)."""
    body = orjson.dumps(bulk_body([("V", {"price": 1.0})]))
    return body + b" " * (size - len(body))


def test_bodies_in_flight_are_capped_per_process(
    make_cluster: Callable[..., Cluster], stack: ExitStack
) -> None:
    cluster = make_cluster(
        database_url="sqlite:///attacks.db", run_worker="false",
        max_body_bytes_in_flight=str(3 * 4 * MiB), body_timeout_seconds="30",
    )  # fmt: skip
    cluster.cli("migrate")
    key = cluster.new_key()
    cluster.serve()
    server = cluster.processes[0].pid
    rss_idle = _rss_kib(server)
    body = _padded_job(4 * MiB)
    conns = [stack.enter_context(_connect(cluster, timeout=1)) for _ in range(10)]
    for conn in conns:  # ten 4 MiB uploads with a key, each stalled after 64 KiB
        conn.sendall(_head(JOBS, len(body), key) + body[:65536])
        time.sleep(0.05)

    held: list[tuple[socket.socket, bytes]] = []
    refused: list[tuple[socket.socket, bytes]] = []
    for conn in conns:
        answer, closed = _read_until_closed(conn)
        (refused if answer or closed else held).append((conn, answer))
    rss_held = _rss_kib(server)
    assert len(held) == 3, [answer[:100] for _, answer in refused]
    for _, answer in refused:  # refused before a byte of the body is read
        assert _status(answer) == 503, answer[:300]
        assert _header(answer, "retry-after") == "1"
        assert _header(answer, "connection") == "close"
        [error] = _document(answer)["errors"]
        assert error["code"] == "service_unavailable"
        assert "request bodies" in error["detail"]

    for conn, _ in held:  # the three admitted finish their bodies: each is accepted
        conn.settimeout(30)
        conn.sendall(body[65536:])
        head = conn.recv(65536)
        assert _status(head) == 202, head[:300]
    with cluster.client(key) as client:  # and the cap has room again
        response = client.post(JOBS, content=body, headers={"Content-Type": JSONAPI})
        assert response.status_code == 202, response.text
    _report(
        "2 bodies in flight capped at 12 MiB",
        admitted=len(held), refused_503=len(refused), rss_idle_mib=rss_idle / 1024,
        rss_with_three_held_mib=rss_held / 1024,
    )  # fmt: skip


# ---- finding 3: include=variants bounded ------------------------------------------------------------


def _database_url(cluster: Cluster) -> str:
    """The cluster's database as the test reaches it (a relative SQLite path is the server's,
    relative to its working directory)."""
    url = cluster.env["BACKSTOCK_DATABASE_URL"]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{cluster.workdir / url.removeprefix('sqlite:///')}"
    return url


def _sql_count(cluster: Cluster, statement: Any) -> int:
    engine = create_engine(sqlalchemy_url(_database_url(cluster)))
    try:
        with engine.connect() as conn:
            return int(conn.execute(statement).scalar_one())
    finally:
        engine.dispose()


def _wait_until_drained(cluster: Cluster, timeout: float) -> None:
    """Every job of every account complete (serve's worker process ran them all)."""
    open_jobs = (
        select(func.count()).select_from(jobs).where(jobs.c.status.in_(("queued", "processing")))
    )
    deadline = time.monotonic() + timeout
    while (left := _sql_count(cluster, open_jobs)) > 0:
        assert time.monotonic() < deadline, f"{left} jobs still open"
        time.sleep(0.2)


def _seed_variants(cluster: Cluster, key: str, items: int, per_item: int) -> None:
    """``items`` items with ``per_item`` variants each, by bulk create jobs of 100 (spawned
    from four connections at once), applied by the server's worker."""
    entries = [item_body(f"I{i}")["data"] for i in range(items)]
    job = {"data": {"type": "catalog-item-bulk-create-job", "attributes": {"items": entries}}}
    bodies = []
    for i in range(items):
        externals = [f"I{i}-V{n}" for n in range(per_item)]
        for start in range(0, per_item, 100):
            variants = [variant_body(e, f"I{i}")["data"] for e in externals[start : start + 100]]
            attributes = {"variants": {"data": variants}}
            bodies.append(
                {"data": {"type": "catalog-variant-bulk-create-job", "attributes": attributes}}
            )
    with cluster.client(key) as client:
        assert client.post(ITEM_CREATES, json=job).status_code == 202
        _wait_until_drained(cluster, 30)  # the items first: the variants name them

    def spawn(chunk: list[dict[str, Any]]) -> None:
        with cluster.client(key) as client:
            for body in chunk:
                response = client.post(VARIANT_CREATES, json=body)
                assert response.status_code == 202, response.text

    threads = [threading.Thread(target=spawn, args=(bodies[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    _wait_until_drained(cluster, 60)


def test_include_variants_is_capped_and_costs_double(
    make_cluster: Callable[..., Cluster], stack: ExitStack
) -> None:
    cluster = make_cluster(
        database_url="sqlite:///attacks.db", rate_limits="on",
        write_limits="1000/second;100000/minute",  # room to seed 20k variants quickly
        operation_limits="get_catalog_items=200/minute",  # one window: exact counts
    )  # fmt: skip
    cluster.cli("migrate")
    key = cluster.new_key("attacker")
    cluster.serve()
    server = cluster.processes[0].pid
    started = time.monotonic()
    _seed_variants(cluster, key, items=100, per_item=200)
    seeded_in = time.monotonic() - started
    assert _sql_count(cluster, select(func.count()).select_from(catalog_variants)) == 20_000
    with cluster.client(key) as client:  # every variant is there, 200 under each item
        first = client.get("/api/catalog-items/" + cid("I0").replace("$", "%24") + "/variants")
        assert first.status_code == 200, first.text
        assert len(first.json()["data"]) == 100 and "next" in first.json()["links"]
    victim, job = stack.enter_context(_victim(cluster))
    idle = _idle_latency(victim, job)
    rss_idle = _rss_kib(server)
    attacker = stack.enter_context(cluster.client(key))

    plain = attacker.get("/api/catalog-items")
    assert plain.status_code == 200
    remaining = int(plain.headers["RateLimit-Remaining"])
    answers: list[tuple[httpx.Response, float]] = []
    watch = Watch(victim, job, server)
    with watch.running():
        attack_started = time.monotonic()
        for n in range(26):  # 26 in 15 s, as the attack did
            due = attack_started + n * 14 / 25
            time.sleep(max(0.0, due - time.monotonic()))
            began = time.perf_counter()
            response = attacker.get("/api/catalog-items", params={"include": "variants"})
            answers.append((response, time.perf_counter() - began))
        attack_seconds = time.monotonic() - attack_started

    costs = []
    for response, _ in answers:
        assert response.status_code == 200, response.text
        document = response.json()
        assert len(document["data"]) == 100
        assert len(document["included"]) <= 100  # capped: MAX_INCLUDED, not 20,000
        left = int(response.headers["RateLimit-Remaining"])
        costs.append(remaining - left)
        remaining = left
    _report(
        "3 include=variants over 20k variants",
        seeded_s=seeded_in, attack_s=attack_seconds,
        included=len(answers[0][0].json()["included"]),
        bytes=len(answers[0][0].content),
        attacker_median_ms=statistics.median(s for _, s in answers) * 1000,
        victim_idle_median_ms=statistics.median(idle) * 1000,
        victim_median_ms=watch.median_ms, victim_max_ms=watch.max_ms,
        rss_idle_mib=rss_idle / 1024, rss_peak_mib=max(watch.rss) / 1024,
    )  # fmt: skip
    assert set(costs) == {2}, costs  # each include counts twice against the 200/minute
    assert not watch.failures, watch.failures[:5]
    assert watch.median_ms < 100, sorted(watch.latencies)
    assert max(watch.rss) - rss_idle < 100 * 1024, watch.rss


# ---- finding 4: bounded disk ------------------------------------------------------------------------


def _database_bytes(cluster: Cluster) -> int:
    """The SQLite file and its WAL after a checkpoint (what the database holds on disk)."""
    path = Path(_database_url(cluster).removeprefix("sqlite:///"))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _big_updates(externals: list[str]) -> bytes:
    """A bulk update of ~4 MB: a 40 KiB title for each of ``externals`` (100), random base64,
    so a payload kept compressed (SQLite) still takes ~3/4 of its bytes."""
    titles = {e: base64.b64encode(os.urandom(30 * 1024)).decode() for e in externals}
    body = orjson.dumps(bulk_body([(e, {"title": titles[e]}) for e in externals]))
    assert 4_000_000 < len(body) <= 4 * MiB
    return body


def _spawn_all(cluster: Cluster, key: str, bodies: list[bytes]) -> None:
    with cluster.client(key) as client:
        for body in bodies:
            response = client.post(JOBS, content=body, headers={"Content-Type": JSONAPI})
            assert response.status_code == 202, response.text


def _payloads_hold_only_failed_items(cluster: Cluster) -> tuple[int, int]:
    """Every complete job keeps exactly its failed items (none: no payload row); the number
    of complete jobs and the bytes their payloads hold."""
    engine = create_engine(sqlalchemy_url(_database_url(cluster)))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(jobs.c.failed_count, jobs.c.errors, job_payloads.c.payload)
                .select_from(jobs.outerjoin(job_payloads, job_payloads.c.job_pk == jobs.c.pk))
                .where(jobs.c.status == "complete")
            ).all()
    finally:
        engine.dispose()
    held = 0
    for failed, errors, payload in rows:
        if failed == 0:
            assert payload is None
            continue
        kept = load_payload(payload)  # [[external_id, {attributes}, {links}], ...]
        named = [e["detail"] for e in orjson.loads(errors)]
        assert len(kept) == failed == len(named)
        assert all(f"'{cid(item[0])}'" in detail for item, detail in zip(kept, named, strict=True))
        held += len(payload)
    return len(rows), held


def test_disk_holds_only_failed_items_of_completed_jobs(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(database_url="sqlite:///attacks.db")  # with its worker process
    cluster.cli("migrate")
    key = cluster.new_key("attacker")
    cluster.serve()
    existing = [f"V{n}" for n in range(99)]
    with cluster.client(key) as client:
        assert client.post("/api/catalog-items", json=item_body("P")).status_code == 201
        entries = [variant_body(e, "P")["data"] for e in existing]
        body = {"data": {"type": "catalog-variant-bulk-create-job",
                         "attributes": {"variants": {"data": entries}}}}  # fmt: skip
        assert client.post(VARIANT_CREATES, json=body).status_code == 202
    _wait_until_drained(cluster, 30)

    # 48 jobs of 4 MB, 99 of whose 100 updates apply: each keeps one item (~41 KB).
    before = _database_bytes(cluster)
    _spawn_all(cluster, key, [_big_updates([*existing, f"MISSING-{n}"]) for n in range(48)])
    _wait_until_drained(cluster, 90)
    mostly_applied = _database_bytes(cluster) - before
    _, held_mostly = _payloads_hold_only_failed_items(cluster)

    # 48 jobs of 4 MB whose variants are all missing: each keeps all of its items.
    before = _database_bytes(cluster)
    missing = [[f"GONE-{job}-{n}" for n in range(100)] for job in range(48)]
    _spawn_all(cluster, key, [_big_updates(names) for names in missing])
    _wait_until_drained(cluster, 90)
    all_failed = _database_bytes(cluster) - before
    complete, held_all = _payloads_hold_only_failed_items(cluster)

    _report(
        "4 disk after 48 x 4 MB jobs",
        mostly_applied_growth_mib=mostly_applied / MiB,
        mostly_applied_payload_bytes_kept_mib=held_mostly / MiB,
        all_failed_growth_mib=all_failed / MiB,
        all_payload_bytes_kept_mib=held_all / MiB, complete_jobs=complete,
    )  # fmt: skip
    assert complete == 1 + 48 + 48
    assert held_mostly < 48 * 50 * 1024  # one 41 KB item a job
    assert mostly_applied < 48 * MiB  # a fraction of the 192 MiB sent
    # Every item failed: every item is kept for a retry until the job expires, so the disk
    # grows by about what was sent, as the database keeps it (docs/security.md says so).
    assert held_all - held_mostly > 48 * 0.7 * 4_000_000


def test_queued_bytes_beyond_the_quota_are_refused(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(
        database_url="sqlite:///attacks.db", run_worker="false",
        max_queued_bytes=str(7 * MiB),
    )  # fmt: skip
    cluster.cli("migrate")
    attacker, other = cluster.new_key("attacker"), cluster.new_key("other")
    cluster.serve()
    body = _big_updates([f"V{n}" for n in range(100)])
    with cluster.client(attacker) as client:
        statuses = []
        for _ in range(4):
            response = client.post(JOBS, content=body, headers={"Content-Type": JSONAPI})
            statuses.append(response.status_code)
        # 2 x 4 MB queued (~3 MB each as kept, compressed); a third would pass 7 MiB
        assert statuses == [202, 202, 429, 429]
        [error] = response.json()["errors"]
        assert error["code"] == "quota_exceeded"
        assert "BACKSTOCK_MAX_QUEUED_BYTES" in error["detail"]
        assert response.headers["Retry-After"] == "5"
        small = client.post(JOBS, json=bulk_body([("V1", {"price": 1.0})]))
        assert small.status_code == 202  # a small job still fits
    with cluster.client(other) as client:  # the quota is the attacker's, not everyone's
        response = client.post(JOBS, content=body, headers={"Content-Type": JSONAPI})
        assert response.status_code == 202, response.text


# ---- finding 5: fairness ----------------------------------------------------------------------------


def _completed_jobs(cluster: Cluster, account: str) -> int:
    query = (
        select(func.count())
        .select_from(jobs.join(accounts, accounts.c.id == jobs.c.account_id))
        .where(accounts.c.name == account, jobs.c.status == "complete")
    )
    return _sql_count(cluster, query)


def _seed_account(cluster: Cluster, key: str, externals: list[str]) -> None:
    with cluster.client(key) as client:
        assert client.post("/api/catalog-items", json=item_body("P")).status_code == 201
        entries = [variant_body(e, "P")["data"] for e in externals]
        body = {"data": {"type": "catalog-variant-bulk-create-job",
                         "attributes": {"variants": {"data": entries}}}}  # fmt: skip
        job = client.post(VARIANT_CREATES, json=body)
        assert job.status_code == 202, job.text
        path = f"{VARIANT_CREATES}/{job.json()['data']['id']}"
        deadline = time.monotonic() + 30
        while client.get(path).json()["data"]["attributes"]["status"] != "complete":
            assert time.monotonic() < deadline
            time.sleep(0.05)


def _one_account_cannot_starve_another(cluster: Cluster, label: str) -> None:
    """Account A queues 150 jobs of 100 updates; then B spawns one: B's completes before 50
    of A's have."""
    key_a, key_b = cluster.new_key("A"), cluster.new_key("B")
    externals = [f"V{n}" for n in range(100)]
    _seed_account(cluster, key_a, externals)
    _seed_account(cluster, key_b, externals)
    update = orjson.dumps(bulk_body([(e, {"price": 2.0}) for e in externals]))

    def spawn(count: int) -> None:
        _spawn_all(cluster, key_a, [update] * count)

    started = time.monotonic()
    threads = [threading.Thread(target=spawn, args=(50,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    queued_in = time.monotonic() - started
    a_done_at_spawn = _completed_jobs(cluster, "A")
    with cluster.client(key_b) as client:
        spawned = time.monotonic()
        response = client.post(JOBS, content=update, headers={"Content-Type": JSONAPI})
        assert response.status_code == 202, response.text
        path = f"{JOBS}/{response.json()['data']['id']}"
        while (job := client.get(path).json()["data"]["attributes"])["status"] != "complete":
            assert time.monotonic() - spawned < 60, job
            time.sleep(0.02)
        b_seconds = time.monotonic() - spawned
    a_done = _completed_jobs(cluster, "A")
    _report(
        f"5 fairness ({label})",
        a_queued_150_in_s=queued_in, a_complete_when_b_spawned=a_done_at_spawn,
        a_complete_when_b_complete=a_done, b_spawn_to_complete_s=b_seconds,
    )  # fmt: skip
    assert job["completed_count"] == 100
    assert 150 - a_done_at_spawn >= 100  # A had a real backlog when B came
    assert a_done < 50, (a_done_at_spawn, a_done)
    assert a_done - a_done_at_spawn <= 5  # B waited for the job in hand, not A's queue


def test_one_account_cannot_starve_another_sqlite(make_cluster: Callable[..., Cluster]) -> None:
    # One update per transaction: a job takes 100 commits, so A's backlog lasts.
    cluster = make_cluster(database_url="sqlite:///attacks.db", worker_batch_size="1")
    cluster.cli("migrate")
    cluster.serve()  # with its worker process
    _one_account_cannot_starve_another(cluster, "SQLite, serve's worker process")


@pytest.mark.postgres
def test_one_account_cannot_starve_another_postgres(
    make_cluster: Callable[..., Cluster], pg_url: str
) -> None:
    cluster = make_cluster(database_url=pg_url, worker_batch_size="1")
    cluster.serve("--no-worker")
    cluster.start("worker", log="worker.log")
    _one_account_cannot_starve_another(cluster, "PostgreSQL, a backstock worker process")


# ---- finding 6: a broken or aborted body ------------------------------------------------------------


def _serve_log(cluster: Cluster) -> str:
    port = cluster.base_url.rsplit(":", 1)[1]
    return (cluster.workdir / f"serve-{port}.log").read_text()


def test_a_broken_or_aborted_body_is_a_400_and_one_log_line(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(
        database_url="sqlite:///attacks.db", run_worker="false", log_level="info"
    )
    cluster.cli("migrate")
    key = cluster.new_key()
    cluster.serve()
    head = _head(JOBS, 1000, key).replace(b"Content-Length: 1000\r\n", b"")
    chunked = head.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    answers = []

    # A Content-Length larger than what is sent, then the client stops sending.
    with _connect(cluster) as conn:
        conn.sendall(_head(JOBS, 1000, key) + b'{"data": {')
        conn.shutdown(socket.SHUT_WR)
        answers.append(_read_all(conn))
    # A chunked body with a chunk size that is not hexadecimal.
    answers.append(_exchange(cluster, chunked + b'5\r\n{"dat\r\nzz\r\nxx\r\n0\r\n\r\n'))
    # A chunked body cut off inside a chunk.
    with _connect(cluster) as conn:
        conn.sendall(chunked + b'400\r\n{"data": {')
        conn.shutdown(socket.SHUT_WR)
        answers.append(_read_all(conn))
    # A client that goes away mid-body without waiting for any answer.
    with _connect(cluster) as conn:
        conn.sendall(_head(JOBS, 1000, key) + b'{"data": {')
    time.sleep(0.5)

    for answer in answers:
        assert _status(answer) == 400, answer[:300]
        [error] = _document(answer)["errors"]
        assert error["detail"] == "The request body was cut short."
    with cluster.client(key) as client:  # nothing was accepted; the server serves on
        assert client.get(JOBS).json()["data"] == []
    log = _serve_log(cluster)
    reasons = [line for line in log.splitlines() if "went away before its body" in line]
    _report("6 broken bodies", answers_400=len(answers), log_lines=len(reasons))
    assert len(reasons) == 4, log
    assert all(" POST /api/catalog-variant-bulk-update-jobs: " in line for line in reasons)
    assert "Traceback" not in log
    assert " 500 " not in log
    assert "unhandled" not in log


# ---- finding 7: errors that are JSON:API, and the server's own -------------------------------------


def test_oversized_requests_get_json_api_errors_within_granians_limits(
    quiet_server: Cluster,
) -> None:
    cluster = quiet_server
    key = cluster.new_key()
    cluster.serve()
    auth = f"Authorization: Klaviyo-API-Key {key}\r\nrevision: {REVISION}\r\n"

    def get(target: str, extra: str = "") -> bytes:
        request = (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{extra}Connection: close\r\n\r\n"
        )
        return _exchange(cluster, request.encode())

    # Backstock's own limits (8 KiB of target, 16 KiB of headers) are far below granian's.
    long_url = get(f"{JOBS}/{'x' * 9000}")
    assert _status(long_url) == 414
    assert _header(long_url, "content-type") == JSONAPI
    assert _document(long_url)["errors"][0]["code"] == "uri_too_long"
    many_headers = get(JOBS, "".join(f"X-Filler-{i}: {'a' * 1000}\r\n" for i in range(20)))
    assert _status(many_headers) == 431
    assert _header(many_headers, "content-type") == JSONAPI
    assert _document(many_headers)["errors"][0]["code"] == "headers_too_large"

    # What granian refuses before the app sees it: an empty 400/414/431 (documented).
    own = {
        "raw quote in the target": (get(f'{JOBS}?filter=equals(status,"complete")'), 400),
        "bad Content-Length": (get(JOBS, "Content-Length: abc\r\n"), 400),
        "a 70 KB target": (get(f"{JOBS}/{'x' * 70_000}"), 414),
        "120 headers": (get(JOBS, "".join(f"X-H{i}: a\r\n" for i in range(120))), 431),
        "1 MB of headers": (get(JOBS, "".join(f"X-H{i}: {'a' * 20_000}\r\n" for i in range(50))), 431),
    }  # fmt: skip
    for name, (answer, status) in own.items():
        assert _status(answer) == status, (name, answer[:200])
        assert _header(answer, "content-length") == "0", (name, answer[:200])
        assert _header(answer, "content-type") is None, name

    # The README's filter, typed as a user would with curl, works.
    typed = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-G", f"{cluster.base_url}{JOBS}",
         "-H", f"Authorization: Klaviyo-API-Key {key}", "-H", f"revision: {REVISION}",
         "--data-urlencode", 'filter=equals(status,"complete")'],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert typed.stdout == b"200", typed
    _report("7 server limits", backstock_414_431="JSON:API", granian_own="empty 400/414/431")


def test_a_websocket_upgrade_is_refused(quiet_server: Cluster) -> None:
    cluster = quiet_server
    cluster.serve()
    request = (
        "GET /api/catalog-items HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with _connect(cluster, timeout=5) as conn:
        conn.sendall(request.encode())
        answer = conn.recv(65536)
    # The app closes the WebSocket with 1008 before accepting it; granian answers 403.
    assert _status(answer) == 403, answer
    assert _header(answer, "content-length") == "0"
    assert b"101 Switching Protocols" not in answer
    assert "Traceback" not in _serve_log(cluster)


# ---- finding 8: smaller findings --------------------------------------------------------------------


def test_a_cursor_is_opaque_and_means_nothing_to_another_account(quiet_server: Cluster) -> None:
    cluster = quiet_server
    key_a, key_b = cluster.new_key("A"), cluster.new_key("B")
    cluster.serve()
    items = "/api/catalog-items"
    with cluster.client(key_a) as a, cluster.client(key_b) as b:
        for n in range(3):
            assert a.post(items, json=item_body(f"A{n}")).status_code == 201
            assert b.post(items, json=item_body(f"B{n}")).status_code == 201
        first = a.get(items, params={"page[size]": "1"}).json()
        cursor = parse_qs(urlsplit(first["links"]["next"]).query)["page[cursor]"][0]
        # Opaque: the position is enciphered with A's own key, not a row number in plain.
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        assert len(raw) == 9 and int.from_bytes(raw[1:], "big") > 2**32

        page = a.get(items, params={"page[size]": "1", "page[cursor]": cursor}).json()
        assert [item["id"] for item in page["data"]] == [cid("A1")]  # A pages on with it
        answer = b.get(items, params={"page[size]": "100", "page[cursor]": cursor})
        assert answer.status_code in (200, 400), answer.text
        shown = [item["id"] for item in answer.json().get("data", [])]
        assert not [i for i in shown if not i.startswith(cid("B"))]  # never A's rows
    _report("8 cursors", b_with_a_cursor=answer.status_code, b_rows_shown=len(shown))


def test_links_do_not_copy_the_host_header_when_the_public_url_is_set(
    make_cluster: Callable[..., Cluster],
) -> None:
    evil = {"Host": "evil.example"}
    based = make_cluster(database_url="sqlite:///attacks.db", base_url="https://catalog.example")
    key = based.new_key()
    based.serve()
    with based.client(key) as client:
        links = client.get(JOBS, headers=evil).json()["links"]
    assert links["self"].startswith("https://catalog.example/api/"), links

    fenced = make_cluster(database_url="sqlite:///attacks.db", allowed_hosts="127.0.0.1")
    fenced.serve()
    with fenced.client(key) as client:
        refused = client.get(JOBS, headers=evil)
        assert refused.status_code == 400
        [error] = refused.json()["errors"]
        assert error["code"] == "untrusted_host"
        assert error["source"] == {"parameter": "Host"}
        own = client.get(JOBS).json()["links"]["self"]
        assert own.startswith(f"{fenced.base_url}/api/"), own

    # Beyond loopback without either setting, serve refuses to start (192.0.2.1 is a
    # documentation address: nothing could listen there anyway).
    open_env = {k: v for k, v in fenced.env.items() if k != "BACKSTOCK_ALLOWED_HOSTS"}
    started = subprocess.run(
        [*BACKSTOCK, "serve", "--host", "192.0.2.1", "--port", "8000"],
        env=open_env, cwd=fenced.workdir, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert started.returncode == 2, started
    message = started.stderr.decode()
    assert "BACKSTOCK_BASE_URL or BACKSTOCK_ALLOWED_HOSTS" in message, message


def test_the_sqlite_files_are_its_owners_only(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(database_url="sqlite:///fresh.db")
    cluster.launcher = ["sh", "-c", 'umask 000 && exec "$@"', "sh"]  # as permissive as it gets
    key = cluster.new_key()  # the CLI creates and migrates the file
    cluster.serve()
    with cluster.client(key) as client:
        assert client.post(JOBS, json=bulk_body([("V", {"price": 1.0})])).status_code == 202
    modes = {}
    for suffix in ("", "-wal", "-shm"):
        path = cluster.workdir / f"fresh.db{suffix}"
        modes[path.name] = oct(stat.S_IMODE(path.stat().st_mode))
    _report("8 file modes (umask 000)", **modes)
    assert set(modes.values()) == {"0o600"}, modes


def test_failed_authentications_are_throttled_per_address(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(
        database_url="sqlite:///attacks.db", rate_limits="on", auth_failure_limits="10/minute"
    )
    key = cluster.new_key()
    cluster.serve()
    guessed = f"pk_{key.removeprefix('pk_').split('_')[0]}_guessed-secret"
    with cluster.client(guessed) as guesser:
        statuses = [guesser.get(JOBS).status_code for _ in range(15)]
        refused = guesser.get(JOBS)
    assert statuses == [401] * 10 + [429] * 5, statuses
    [error] = refused.json()["errors"]
    assert error["code"] == "throttled"
    assert "failed authentications" in error["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    with cluster.client(key) as client:  # per address: the key's owner here waits too
        assert client.get(JOBS).status_code == 429
    _report("8 auth throttling", statuses=statuses)


def test_a_404_does_not_echo_a_long_id(quiet_server: Cluster) -> None:
    cluster = quiet_server
    key = cluster.new_key()
    cluster.serve()
    long_id = "z" * 30_000
    with cluster.client(key) as client:
        too_long = client.get(f"/api/catalog-variants/{long_id}")
        assert too_long.status_code == 414  # a 30 KB id cannot reach a route at all
        assert len(too_long.content) < 1000
        for path in (
            f"/api/catalog-variants/{'z' * 8000}",
            f"/api/catalog-variants/{quote(cid('z' * 7900), safe='')}",
            f"/api/catalog-items/{quote('$custom:::' + 'z' * 7900 + ':::A', safe='')}",
            f"{JOBS}/{'z' * 8000}",
        ):
            answer = client.get(path)
            assert answer.status_code == 404, answer.text[:300]
            [error] = answer.json()["errors"]
            assert len(error["detail"]) <= 250, error["detail"]
            assert len(answer.content) < 1000


def test_a_400_does_not_echo_a_long_id_from_the_body(quiet_server: Cluster) -> None:
    cluster = quiet_server
    key = cluster.new_key()
    cluster.serve()
    long_id = "y" * 30_000
    variant = variant_body("E", "I")
    variant["data"]["relationships"]["item"]["data"]["id"] = long_id
    with cluster.client(key) as client:
        answers = [
            client.post("/api/catalog-variants", json=variant),
            client.post(JOBS, json={"data": {"type": "catalog-variant-bulk-update-job",
                        "attributes": {"variants": {"data": [{"type": "catalog-variant",
                        "id": long_id, "attributes": {"price": 1.0}}]}}}}),
        ]  # fmt: skip
    sizes = [len(answer.content) for answer in answers]
    _report("8 body ids echoed", response_bytes=sizes)
    for answer in answers:
        assert answer.status_code == 400
        assert len(answer.content) < 2000, answer.text[:300]


def test_the_415_names_both_media_types_and_every_401_reads_alike(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(database_url="sqlite:///attacks.db", run_worker="false")
    key, revoked = cluster.new_key(), cluster.new_key("gone")
    cluster.cli("keys", "revoke", revoked.removeprefix("pk_").split("_")[0])
    cluster.serve()
    with cluster.client(key) as client:
        answer = client.post(
            "/api/catalog-items", content=b"x", headers={"Content-Type": "text/plain"}
        )
    assert answer.status_code == 415
    detail = answer.json()["errors"][0]["detail"]
    assert "application/vnd.api+json" in detail and "application/json" in detail

    forged = f"pk_{key.removeprefix('pk_').split('_')[0]}_not-the-secret"
    authorizations = {
        "none": None, "other scheme": "Bearer x", "unknown key": "Klaviyo-API-Key pk_000000000000_x",
        "wrong secret": f"Klaviyo-API-Key {forged}", "revoked": f"Klaviyo-API-Key {revoked}",
    }  # fmt: skip
    details = {}
    with httpx.Client(base_url=cluster.base_url) as client:
        for name, authorization in authorizations.items():
            headers = {"revision": REVISION} | (
                {"Authorization": authorization} if authorization else {}
            )
            refused = client.get(JOBS, headers=headers)
            assert refused.status_code == 401, name
            [error] = refused.json()["errors"]
            assert error["code"] == "not_authenticated", name
            assert error["title"] == "Missing or invalid API key.", name
            details[name] = error["detail"]
    assert "Authorization: Klaviyo-API-Key" in details["none"]
    assert details["unknown key"] == details["wrong secret"] == "The API key is not valid."
    assert details["revoked"] == "The API key has been revoked."
    _report("8 401 details", **details)


def test_keys_revoke_given_the_whole_key_never_prints_the_secret(quiet_server: Cluster) -> None:
    cluster = quiet_server
    key = cluster.new_key()
    cluster.serve()
    with cluster.client(key) as client:
        assert client.get(JOBS).status_code == 200
    secret = key.removeprefix("pk_").split("_", 1)[1]
    done = subprocess.run(
        [*BACKSTOCK, "keys", "revoke", key],
        env=cluster.env, cwd=cluster.workdir, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done
    printed = done.stdout.decode() + done.stderr.decode()
    assert key.removeprefix("pk_").split("_")[0] in printed  # the key id, to say which
    assert secret not in printed
    listed = cluster.cli("keys", "list", "--account", "acme")
    assert secret not in listed
    assert secret not in _serve_log(cluster)
    with cluster.client(key) as client:
        assert client.get(JOBS).status_code == 401
