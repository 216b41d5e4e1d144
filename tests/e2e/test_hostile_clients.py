"""Hostile clients against a real ``backstock serve``: slow senders get a quick 4xx (or are
dropped) without holding up anyone else, and floods of hostile bodies leave memory bounded."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import orjson
import pytest

from tests.support import Cluster, bulk_body

pytestmark = pytest.mark.e2e

JOBS = "/api/catalog-variant-bulk-update-jobs"
MiB = 1024 * 1024


@pytest.fixture
def served(make_cluster: Callable[..., Cluster]) -> tuple[Cluster, str]:
    cluster = make_cluster(
        database_url="sqlite:///hostile.db",
        body_timeout_seconds="1",
        header_timeout_seconds="1",
        run_worker="false",
    )
    cluster.cli("migrate")
    key = cluster.new_key()
    cluster.serve()
    return cluster, key


def _connect(cluster: Cluster) -> socket.socket:
    host, port = cluster.base_url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=10)
    conn.settimeout(10)
    return conn


def _read_response(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received


def _head(key: str, length: int) -> bytes:
    return (
        f"POST {JOBS} HTTP/1.1\r\nHost: test\r\nAuthorization: Klaviyo-API-Key {key}\r\n"
        f"revision: 2026-10-15\r\nContent-Type: application/vnd.api+json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _job_count(cluster: Cluster, key: str) -> int:
    with cluster.client(key) as client:
        response = client.get(JOBS)
    assert response.status_code == 200, response.text
    return len(response.json()["data"])


def test_a_slow_body_gets_408_soon_and_others_are_served_meanwhile(
    served: tuple[Cluster, str],
) -> None:
    cluster, key = served
    body = orjson.dumps(bulk_body([("V1", {"price": 1.0})]))
    slow = [_connect(cluster) for _ in range(20)]
    started = time.monotonic()
    for conn in slow:
        conn.sendall(_head(key, len(body)) + body[:10])

    # While twenty senders dawdle, another client's requests are answered at once.
    with cluster.client(key) as client:
        for _ in range(5):
            quick = time.monotonic()
            assert client.post(JOBS, content=body).status_code == 202
            assert time.monotonic() - quick < 0.5

    answers = []
    for conn in slow:
        with conn:
            for byte in body[10:20]:  # a byte every 50 ms: it would take ~30 s in all
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    break  # the server has answered and closed already
                time.sleep(0.05)
            answers.append(_read_response(conn))
    elapsed = time.monotonic() - started

    for answer in answers:
        head, _, document = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        [error] = orjson.loads(document)["errors"]
        assert error["code"] == "request_timeout"
        assert "1 seconds" in error["detail"]
    assert elapsed < 10  # 20 answers, each due 1 s after its sender started
    assert _job_count(cluster, key) == 5  # only the quick client's jobs


def test_a_client_that_trickles_its_headers_is_dropped(served: tuple[Cluster, str]) -> None:
    cluster, key = served
    trickling = [_connect(cluster) for _ in range(50)]
    started = time.monotonic()
    for conn in trickling:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: te")

    with cluster.client(key) as client:
        assert client.get("/healthz").status_code == 200

    for conn in trickling:
        with conn:
            assert not _read_response(conn).startswith(b"HTTP/1.1 200")
    assert time.monotonic() - started < 5  # dropped after the 1 s header timeout


def _rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and every process below it."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1])
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += _rss_kib(int(child))
    return total


def _hostile_bodies() -> list[tuple[str, bytes]]:
    one_string = b'{"data": {"type": "catalog-variant-bulk-update-job", "attributes": "'
    one_string += b"x" * (4 * MiB - len(one_string) - 4) + b'"}}'
    variants = [(f"V{i}", {"title": "t" * (40 * 1024), "price": "free"}) for i in range(100)]
    return [
        ("4 MiB of one string", one_string),
        ("100 errors in 4 MB of variants", orjson.dumps(bulk_body(variants))),
        ("4 MiB + 1", b" " * (4 * MiB + 1)),
        ("deep nesting", b"[" * 100_000 + b"]" * 100_000),
        ("a million small numbers", b"[" + b"1," * 1_000_000 + b"1]"),
        ("huge integers", b'{"data": [' + b",".join([b"9" * 4000] * 500) + b"]}"),
        ("NaN and Infinity", b'{"data": {"price": NaN, "inventory_quantity": Infinity}}'),
        ("duplicate keys", b'{"data": 1, "data": 2, "data": {"type": 3}}' * 1000),
    ]


def test_hostile_bodies_get_a_4xx_quickly_and_memory_stays_bounded(
    served: tuple[Cluster, str],
) -> None:
    cluster, key = served
    bodies = _hostile_bodies()
    server = cluster.processes[0].pid

    def send(body: bytes) -> tuple[int, float]:
        with cluster.client(key) as client:
            started = time.monotonic()
            response = client.post(JOBS, content=body)
            return response.status_code, time.monotonic() - started

    rounds = []
    with ThreadPoolExecutor(8) as pool:
        for _ in range(4):
            results = list(pool.map(send, [body for _, body in bodies] * 4))
            rounds.append(_rss_kib(server))
            for (name, _), (status, seconds) in zip(bodies * 4, results, strict=True):
                assert 400 <= status < 500, name
                assert seconds < 5, name

    # The first round grows the heap to its working size; later rounds must not add to it.
    print(f"RSS by round, KiB: {rounds}")
    growth = rounds[-1] - rounds[0]
    assert growth < 30 * 1024, f"RSS by round, KiB: {rounds}"
    assert rounds[-1] < 600 * 1024, f"RSS by round, KiB: {rounds}"
    assert _job_count(cluster, key) == 0
    with httpx.Client(base_url=cluster.base_url) as client:
        assert client.get("/healthz").status_code == 200
