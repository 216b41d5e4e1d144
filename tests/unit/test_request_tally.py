"""Requests are tallied in memory and added to the metrics later (``telemetry._Requests``):
within ``FLUSH_SECONDS`` on the event loop that served them, at once without one, before every
scrape; none lost between threads, none counted twice by a forked child."""

from __future__ import annotations

import asyncio
import os
import threading

from prometheus_client import REGISTRY

from backstock import telemetry


def _count(operation: str, status: str = "200") -> float:
    labels = {"operation": operation, "status": status}
    return REGISTRY.get_sample_value("backstock_requests_total", labels) or 0.0


def _latency(operation: str, suffix: str, **labels: str) -> float:
    name = f"backstock_request_seconds_{suffix}"
    return REGISTRY.get_sample_value(name, {"operation": operation, **labels}) or 0.0


def test_on_an_event_loop_requests_are_counted_within_the_flush_interval() -> None:
    async def serve() -> tuple[float, float, float]:
        telemetry.observe_request("tally_loop", 200, 0.003)
        telemetry.observe_request("tally_loop", 200, 0.3)
        telemetry.observe_request("tally_loop", 404, 7.0)
        at_once = _count("tally_loop")
        await asyncio.sleep(telemetry.FLUSH_SECONDS + 0.2)
        return at_once, _count("tally_loop"), _count("tally_loop", "404")

    at_once, later, not_found = asyncio.run(serve())
    assert (at_once, later, not_found) == (0, 2, 1)
    # the histogram's buckets are cumulative: 3 ms is under 5 ms, 300 ms under 500 ms
    assert _latency("tally_loop", "bucket", le="0.0025") == 0
    assert _latency("tally_loop", "bucket", le="0.005") == 1
    assert _latency("tally_loop", "bucket", le="0.5") == 2
    assert _latency("tally_loop", "bucket", le="5.0") == 2
    assert _latency("tally_loop", "bucket", le="+Inf") == 3
    assert _latency("tally_loop", "count") == 3
    assert abs(_latency("tally_loop", "sum") - 7.303) < 1e-9


def test_a_scrape_counts_what_is_pending_at_once() -> None:
    async def serve() -> bytes:
        telemetry.observe_request("tally_scrape", 200, 0.001)
        return telemetry.exposition([])[0]

    text = asyncio.run(serve()).decode()
    assert 'backstock_requests_total{operation="tally_scrape",status="200"} 1.0' in text


def test_without_an_event_loop_a_request_is_counted_at_once() -> None:
    telemetry.observe_request("tally_direct", 201, 0.001)
    assert _count("tally_direct", "201") == 1


def test_event_loops_on_several_threads_lose_no_request() -> None:
    def serve() -> None:
        async def requests() -> None:
            for n in range(2000):
                telemetry.observe_request("tally_threads", 200, 0.001)
                if n % 100 == 0:
                    await asyncio.sleep(0)  # let the other threads' flushes interleave

        asyncio.run(requests())

    threads = [threading.Thread(target=serve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    telemetry.flush_requests()  # a loop may have ended before its flush was due
    assert _count("tally_threads") == 8000


def test_a_forked_child_does_not_count_its_parents_pending_requests() -> None:
    async def serve() -> int:
        telemetry.observe_request("tally_fork", 200, 0.001)  # pending: the loop runs
        child = os.fork()
        if child == 0:  # only what the child itself serves may reach its metrics
            telemetry.flush_requests()
            os._exit(0 if _count("tally_fork") == 0 else 3)
        _, status = os.waitpid(child, 0)
        return os.waitstatus_to_exitcode(status)

    assert asyncio.run(serve()) == 0
    telemetry.flush_requests()
    assert _count("tally_fork") == 1
