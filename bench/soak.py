"""Soak run: several accounts sending bulk jobs at twice their rate limit for a bounded time.

Checks what a long run must keep true: the excess is refused with 429, nothing else fails,
every accepted job completes with ``completed + failed == total``, and neither the p99 latency
of accepted requests nor the server's memory grows from the first window to the last.

    make soak                                    # 5 minutes (SQLite)
    .venv/bin/python -m bench.soak --seconds 30  # what the test suite runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
from sqlalchemy import create_engine, func, select

from backstock.bootstrap import build_services, run
from backstock.domain.keys import from_authorization
from backstock.domain.resources import ITEM, VARIANT
from backstock.settings import Settings
from backstock.storage import migrate
from backstock.storage.schema import jobs
from bench.procs import PYTHON, Server, free_port, pss_bytes

VARIANTS = 20
UPDATES_PER_JOB = 10
SCOPES = ("catalogs:read", "catalogs:write")


@dataclass
class Window:
    start_s: float
    accepted: int
    throttled: int
    p99_ms: float
    server_pss_mb: float


@dataclass
class SoakResult:
    seconds: float
    accounts: int
    rate_per_account: float
    limit_per_second: int
    sent: int = 0
    accepted: int = 0
    throttled: int = 0
    other: dict[str, int] = field(default_factory=dict)
    jobs_complete: int = 0
    jobs_incomplete: int = 0
    counts_wrong: int = 0
    drain_seconds: float = 0.0
    windows: list[Window] = field(default_factory=list)

    def problems(self) -> list[str]:
        """What a healthy run must not show; empty when all is well."""
        found = []
        if self.other:
            found.append(f"unexpected statuses: {self.other}")
        if self.throttled == 0:
            found.append("no request was throttled at twice the limit")
        if self.jobs_incomplete or self.counts_wrong:
            found.append(f"{self.jobs_incomplete} jobs incomplete, {self.counts_wrong} miscounted")
        if self.jobs_complete != self.accepted:
            found.append(f"{self.accepted} accepted but {self.jobs_complete} jobs complete")
        if len(self.windows) >= 3:
            # Growth that lasts (a backlog, a leak), not one noisy window on a shared machine:
            # both of the last two windows well above the first.
            first, last, ending = self.windows[0], self.windows[-1], self.windows[-2:]
            late = min(window.p99_ms for window in ending)
            if late > max(3 * first.p99_ms, first.p99_ms + 50):
                found.append(f"p99 grew from {first.p99_ms:.1f} to {late:.1f} ms and stayed")
            if last.server_pss_mb > first.server_pss_mb * 1.25 + 10:
                found.append(
                    f"memory grew from {first.server_pss_mb:.0f} to {last.server_pss_mb:.0f} MB"
                )
        return found


@dataclass
class _Sample:
    at: float
    status: int
    latency_ms: float


def _prepare(workdir: Path, count: int) -> tuple[str, list[str]]:
    """A migrated SQLite file with ``count`` accounts, each with an item and its variants."""
    url = f"sqlite:///{workdir / 'soak.db'}"
    migrate.upgrade(url)
    services = build_services(Settings(database_url=url))

    async def make() -> list[str]:
        keys = []
        for n in range(count):
            key = await services.accounts.create_key(f"soak-{n}", SCOPES)
            header = f"Klaviyo-API-Key {key.key}"
            who = await services.accounts.authenticate(from_authorization(header))
            await services.catalog.create(who, ITEM, orjson.dumps(_item()))
            for v in range(VARIANTS):
                await services.catalog.create(who, VARIANT, orjson.dumps(_variant(v)))
            keys.append(key.key)
        return keys

    try:
        keys = run(services, make)
    finally:
        services.close()
    return url, keys


def _item() -> dict[str, Any]:
    attributes = {"external_id": "I", "title": "I", "description": "d", "url": "https://x/i"}
    return {"data": {"type": "catalog-item", "attributes": attributes}}


def _variant(n: int) -> dict[str, Any]:
    attributes = {
        "external_id": f"V{n}", "title": f"V{n}", "description": "d", "sku": f"S{n}",
        "inventory_quantity": 1, "price": 1.0, "url": "https://x/v",
    }  # fmt: skip
    item = {"data": {"type": "catalog-item", "id": "$custom:::$default:::I"}}
    return {
        "data": {
            "type": "catalog-variant",
            "attributes": attributes,
            "relationships": {"item": item},
        }
    }


def _job_body(n: int) -> bytes:
    variants = [
        {"type": "catalog-variant", "id": f"$custom:::$default:::V{(n + k) % VARIANTS}",
         "attributes": {"price": float(n), "inventory_quantity": k}}
        for k in range(UPDATES_PER_JOB)
    ]  # fmt: skip
    body = {
        "data": {
            "type": "catalog-variant-bulk-update-job",
            "attributes": {"variants": {"data": variants}},
        }
    }
    return orjson.dumps(body)


class _Account(threading.Thread):
    """Sends jobs at a fixed rate and reads back the last accepted one."""

    def __init__(self, base_url: str, key: str, rate: float, until: float, started: float) -> None:
        super().__init__(daemon=True)
        self.base_url, self.key, self.rate, self.until, self.started = (
            base_url,
            key,
            rate,
            until,
            started,
        )
        self.samples: list[_Sample] = []
        self.accepted: list[str] = []

    def run(self) -> None:
        headers = {
            "Authorization": f"Klaviyo-API-Key {self.key}", "revision": "2026-10-15",
            "Content-Type": "application/vnd.api+json",
        }  # fmt: skip
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=30) as http:
            n = 0
            next_at = time.monotonic()
            while (now := time.monotonic()) < self.until:
                if now < next_at:
                    time.sleep(next_at - now)
                next_at += 1 / self.rate
                begun = time.monotonic()
                response = http.post("/api/catalog-variant-bulk-update-jobs", content=_job_body(n))
                self.samples.append(
                    _Sample(
                        begun - self.started,
                        response.status_code,
                        (time.monotonic() - begun) * 1000,
                    )
                )
                if response.status_code == 202:
                    job_id = response.json()["data"]["id"]
                    self.accepted.append(job_id)
                    read = http.get(f"/api/catalog-variant-bulk-update-jobs/{job_id}")
                    if read.status_code != 200:
                        self.samples.append(_Sample(begun - self.started, read.status_code, 0.0))
                n += 1


def run_soak(
    seconds: float, accounts_count: int = 4, limit_per_second: int = 10, workdir: Path | None = None
) -> SoakResult:
    """Run the soak against ``backstock serve`` (its worker process, rate limits on)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="backstock-soak-"))
    url, keys = _prepare(workdir, accounts_count)
    rate = 2.0 * limit_per_second
    result = SoakResult(seconds, accounts_count, rate, limit_per_second)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BACKSTOCK_")},
        "BACKSTOCK_DATABASE_URL": url, "BACKSTOCK_RATE_LIMITS": "on",
        "BACKSTOCK_WRITE_LIMITS": f"{limit_per_second}/second;{limit_per_second * 60}/minute",
        "BACKSTOCK_LOG_LEVEL": "warning",
    }  # fmt: skip
    command = [PYTHON, "-m", "backstock", "serve", "--port", str(port)]
    server = Server("backstock-soak", command, env, workdir / "serve.log", port).start()
    try:
        memory: list[tuple[float, float]] = []
        started = time.monotonic()
        until = started + seconds
        clients = [_Account(f"http://127.0.0.1:{port}", key, rate, until, started) for key in keys]
        for client in clients:
            client.start()
        while time.monotonic() < until:
            memory.append((time.monotonic() - started, pss_bytes(server.tree()) / 1e6))
            time.sleep(1.0)
        for client in clients:
            client.join(60)
        _tally(result, clients, memory)
        _drain(result, url, [job for c in clients for job in c.accepted])
    finally:
        server.stop()
    return result


def _tally(result: SoakResult, clients: list[_Account], memory: list[tuple[float, float]]) -> None:
    samples = sorted((s for c in clients for s in c.samples), key=lambda s: s.at)
    for sample in samples:
        result.sent += 1
        if sample.status == 202:
            result.accepted += 1
        elif sample.status == 429:
            result.throttled += 1
        elif sample.status != 200:
            result.other[str(sample.status)] = result.other.get(str(sample.status), 0) + 1
    width = max(result.seconds / 6, 5.0)
    start = 0.0
    while start < result.seconds:
        inside = [s for s in samples if start <= s.at < start + width]
        latencies = sorted(s.latency_ms for s in inside if s.status == 202)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
        pss = [mb for at, mb in memory if start <= at < start + width]
        result.windows.append(
            Window(
                start,
                len(latencies),
                sum(s.status == 429 for s in inside),
                p99,
                max(pss, default=0.0),
            )
        )
        start += width


def _drain(result: SoakResult, url: str, accepted: list[str], timeout: float = 120.0) -> None:
    """Wait for every accepted job to complete; count the ones that do not, or miscount."""
    engine = create_engine(url)
    began = time.monotonic()
    try:
        while True:
            with engine.connect() as conn:
                open_jobs = conn.execute(
                    select(func.count()).where(jobs.c.status != "complete")
                ).scalar_one()
            if open_jobs == 0 or time.monotonic() - began > timeout:
                break
            time.sleep(0.2)
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    jobs.c.id,
                    jobs.c.status,
                    jobs.c.completed_count,
                    jobs.c.failed_count,
                    jobs.c.total_count,
                )
            ).all()
    finally:
        engine.dispose()
    result.drain_seconds = time.monotonic() - began
    done = {row.id: row for row in rows if row.status == "complete"}
    result.jobs_complete = sum(job in done for job in accepted)
    result.jobs_incomplete = len(accepted) - result.jobs_complete
    result.counts_wrong = sum(
        row.completed_count + row.failed_count != row.total_count for row in done.values()
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--accounts", type=int, default=4)
    parser.add_argument("--limit", type=int, default=10, help="write limit per second per account")
    parser.add_argument("--output", type=Path, default=Path("bench/results/soak.json"))
    args = parser.parse_args()
    result = run_soak(args.seconds, args.accounts, args.limit)
    print(
        f"{result.seconds:.0f} s, {result.accounts} accounts at {result.rate_per_account:.0f} "
        f"jobs/s each (limit {result.limit_per_second}/s): sent {result.sent}, accepted "
        f"{result.accepted}, throttled {result.throttled}, other {result.other or 0}; jobs "
        f"complete {result.jobs_complete}, incomplete {result.jobs_incomplete}, miscounted "
        f"{result.counts_wrong}; drained in {result.drain_seconds:.1f} s"
    )
    for w in result.windows:
        print(
            f"  from {w.start_s:5.0f} s: accepted {w.accepted:5d}  throttled {w.throttled:5d}  "
            f"p99 {w.p99_ms:7.1f} ms  server PSS {w.server_pss_mb:6.1f} MB"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(asdict(result), indent=2))
    problems = result.problems()
    for problem in problems:
        print(f"PROBLEM: {problem}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
