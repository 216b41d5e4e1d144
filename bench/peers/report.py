"""The tables of ``bench.peers``: each server and operation (median of the rounds), and
Backstock's ratios to WireMock and to Prism."""

from __future__ import annotations

import statistics
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(stderr=True, highlight=False)
MOCKS = {"wiremock": "WireMock", "prism": "Prism"}
MEDIANS = ("rps", "p50_ms", "p99_ms", "server_cpu_ms", "db_cpu_ms", "response_bytes", "wrk_cpu",
           "jobs_applied_per_s")  # fmt: skip


def loadavg(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def progress(run: dict[str, Any], what: str) -> None:
    cpu = run["server_cpu_ms"] + (run["db_cpu_ms"] or 0)
    errors = f", {run['bad']} non-2xx" if run["bad"] else ""
    errors += f", {run['socket_errors']} socket errors" if run["socket_errors"] else ""
    applied = run["jobs_applied_per_s"]
    jobs = "" if applied is None else f"  applied {applied:,.0f} jobs/s"
    console.print(
        f"    {run['label']:<28} {run['operation']:<5} {what:<8} {run['rps']:>7,.0f} req/s  "
        f"p50 {run['p50_ms']:6.1f}  p99 {run['p99_ms']:7.1f} ms  CPU {cpu:6.3f} ms/req  "
        f"RSS {run['rss_peak_bytes'] / 2**20:4.0f} MB  load {run['loadavg_1m_before']:.2f}"
        f"{jobs}{errors}",
        soft_wrap=True,
    )


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per server and operation: the median of its measured rounds (peak RSS: the
    highest of the rounds), with every non-2xx response and socket error, warm-ups included."""
    keys = list(dict.fromkeys((r["server"], r["operation"]) for r in runs))
    rows = []
    for server, op in keys:
        every = [r for r in runs if (r["server"], r["operation"]) == (server, op)]
        measured = [r for r in every if r["round"] is not None]
        row: dict[str, Any] = {
            "server": server, "label": every[0]["label"], "family": every[0]["family"],
            "operation": op, "rounds": len(measured),
            "non_2xx": sum(r["bad"] for r in every),
            "socket_errors": sum(r["socket_errors"] for r in every),
        }  # fmt: skip
        if measured:
            for name in MEDIANS:
                values = [r[name] for r in measured if r[name] is not None]
                row[name] = statistics.median(values) if values else None
            row["rps_min"] = min(r["rps"] for r in measured)
            row["rps_max"] = max(r["rps"] for r in measured)
            row["cpu_ms"] = row["server_cpu_ms"] + (row["db_cpu_ms"] or 0)
            row["rss_peak_mb"] = max(r["rss_peak_bytes"] for r in measured) / 2**20
            row["pss_peak_mb"] = max(r["pss_peak_bytes"] for r in measured) / 2**20
            row["jobs_open_after"] = measured[-1]["jobs_open_after"]
        rows.append(row)
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Backstock / mock for each Backstock row and operation (req/s: above 1 is faster than
    the mock; latency, CPU and memory: above 1 costs more than the mock)."""
    found = {(r["family"], r["operation"]): r for r in rows if r["family"] in MOCKS}
    by_server = {(r["server"], r["operation"]): r for r in rows}
    out = []
    for row in rows:
        if row["family"] not in ("backstock", "floor") or "rps" not in row:
            continue
        entry: dict[str, Any] = {"server": row["server"], "label": row["label"],
                                 "operation": row["operation"]}  # fmt: skip
        for mock in MOCKS:
            peer = found.get((mock, row["operation"]))
            for metric in ("rps", "p50_ms", "p99_ms", "cpu_ms", "rss_peak_mb"):
                ours, theirs = row.get(metric), (peer or {}).get(metric)
                entry[f"{metric}_vs_{mock}"] = ours / theirs if ours and theirs else None
        # Backstock against the floor of the same database and process count.
        floor = by_server.get((row["server"].replace("backstock-", "floor-"), row["operation"]))
        ours, theirs = row.get("rps"), (floor or {}).get("rps")
        entry["rps_vs_floor"] = ours / theirs if ours and theirs and floor is not row else None
        out.append(entry)
    return out


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_results(results: dict[str, Any]) -> None:
    out = Console(highlight=False, width=max(Console().width, 200))
    facts, settings = results["machine"], results["settings"]
    out.print(
        f"\n[bold]Machine[/bold]: {facts['nproc']} cores ({facts['cpu']}), {facts['memory_gb']} "
        f"GB, Linux {facts['kernel']}; Python {facts['python']}, granian {facts['granian']}, "
        f"SQLite {facts['sqlite']}, PostgreSQL {facts.get('postgresql', '-')}, {facts['wrk']}; "
        f"WireMock {facts['wiremock']} on {facts['java']}; Prism {facts['prism']} on node "
        f"{facts['node']}"
    )
    out.print(
        f"[bold]Load[/bold] (shared machine): load average {loadavg(facts['loadavg_start'])} at "
        f"start, {loadavg(facts['loadavg_end'])} at end; cores busy before/after the run: "
        f"{facts['busy_cores_start']}/{facts['busy_cores_end']}"
    )
    run = f"{settings['seconds_per_run']:g} s per server and operation"
    warmup = f"{settings['warmup_seconds_per_operation']:g} s of warm-up per operation"
    load = f"wrk 1 thread x {settings['connections']} connections"
    out.print(
        f"[bold]Setup[/bold]: {settings['rounds']} interleaved round(s) x {run}, after {warmup}; "
        f"{load}; body {settings['body_bytes']:,} bytes (100 variants); Backstock: "
        f"{settings['backstock_env']}"
        + (
            f"; PostgreSQL databases vacuumed before {n} turn(s) (autovacuum is off)"
            if (n := settings.get("vacuums_standing_in_for_autovacuum"))
            else ""
        )
    )
    table = Table(title=f"Servers (median of {settings['rounds']} round(s); peak RSS: highest "
                        "round, summed over the server's processes)")  # fmt: skip
    columns = ("server", "op", "req/s", "req/s range", "p50 ms", "p99 ms", "CPU ms/req",
               "of it DB", "peak RSS MB", "PSS MB", "resp bytes", "jobs applied/s", "non-2xx",
               "sock err", "wrk CPU")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("server", "op") else "right")
    for r in results["summary"]:
        if "rps" not in r:
            table.add_row(r["label"], r["operation"], *["-"] * 10, str(r["non_2xx"]),
                          str(r["socket_errors"]), "-")  # fmt: skip
            continue
        table.add_row(
            r["label"], r["operation"], _n(r["rps"]), f"{r['rps_min']:,.0f}-{r['rps_max']:,.0f}",
            _n(r["p50_ms"], 2), _n(r["p99_ms"], 2), _n(r["cpu_ms"], 3), _n(r["db_cpu_ms"], 3),
            _n(r["rss_peak_mb"]), _n(r["pss_peak_mb"]), _n(r["response_bytes"]),
            _n(r["jobs_applied_per_s"]), str(r["non_2xx"]), str(r["socket_errors"]),
            f"{r['wrk_cpu']:.0%}",
        )  # fmt: skip
    out.print(table)
    table = Table(title="Backstock and the floors / mock (req/s: above 1.00x is faster than the "
                        "mock; p99, CPU per request incl. DB, RSS: above 1.00x costs more); "
                        "req/s / floor: Backstock against the floor of its database and process "
                        "count")  # fmt: skip
    for column in ("server", "op", "req/s / floor", "req/s / WireMock", "req/s / Prism",
                   "p99 / WireMock", "p99 / Prism", "CPU / WireMock", "CPU / Prism",
                   "RSS / WireMock", "RSS / Prism"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("server", "op") else "right")
    for e in ratios(results["summary"]):
        table.add_row(
            e["label"], e["operation"], _x(e.get("rps_vs_floor")), _x(e["rps_vs_wiremock"]),
            _x(e["rps_vs_prism"]),
            _x(e["p99_ms_vs_wiremock"]), _x(e["p99_ms_vs_prism"]), _x(e["cpu_ms_vs_wiremock"]),
            _x(e["cpu_ms_vs_prism"]), _x(e["rss_peak_mb_vs_wiremock"]),
            _x(e["rss_peak_mb_vs_prism"]),
        )  # fmt: skip
    out.print(table)
    backlog = results.get("backstock_jobs_at_end") or {}
    if backlog:
        out.print("[bold]Backstock's jobs at the end[/bold] (its worker applies the spawned jobs "
                  "while the server runs): " + "; ".join(
                      f"{name}: " + ", ".join(f"{n:,} {status}" for status, n in sorted(c.items()))
                      for name, c in backlog.items()))  # fmt: skip
    out.print(f"Total {results['seconds_total']:.0f} s; Backstock at {results.get('git')}.")
    for failure in results["failures"]:
        out.print(f"[red]FAILED[/red]: {failure}")
