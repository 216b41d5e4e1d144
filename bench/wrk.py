"""The load generator: wrk (C, one thread, keep-alive) driven by a Lua script that sets the
method, body and headers, checks every response's status and stops after a request budget.

wrk is installed with apt-get when missing. Its own CPU time is measured (``os.wait4``), so
every result says how busy the generator was: a generator near 100 % of a core is the limit,
not the server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.procs import cpu_seconds

MARK = "BENCH_RESULT "

_LUA = r"""
wrk.method = "%(method)s"
%(body)s
%(headers)s
local expected = %(expected)d
local budget = %(budget)d
count, good, bad, last_bad = 0, 0, 0, 0

function response(status, headers, body)
  count = count + 1
  if status == expected then good = good + 1 else bad = bad + 1; last_bad = status end
  if count >= budget then wrk.thread:stop() end
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

function done(summary, latency, requests)
  local g, b, lb = 0, 0, 0
  for _, t in ipairs(threads) do
    g = g + t:get("good"); b = b + t:get("bad")
    if t:get("last_bad") ~= 0 then lb = t:get("last_bad") end
  end
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests":%%d,"duration_us":%%d,"bytes":%%d,"good":%%d,"bad":%%d,"last_bad":%%d,' ..
    '"connect_errors":%%d,"read_errors":%%d,"write_errors":%%d,"timeouts":%%d,' ..
    '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"mean_us":%%.1f,"max_us":%%d}\n',
    summary.requests, summary.duration, summary.bytes, g, b, lb,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    rps: float
    good: int
    bad: int
    last_bad: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    mb_per_s: float
    wrk_cpu: float
    """Fraction of one core the generator used."""
    server_cpu_ms: float | None = None
    """Server CPU (all its processes and threads) per request, in milliseconds."""
    db_cpu_ms: float | None = None
    """PostgreSQL server CPU per request, in milliseconds (PostgreSQL runs only)."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def ensure_wrk() -> str:
    """The path of wrk, installing Debian's package when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print("wrk is not installed: apt-get install -y wrk ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for args in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        done = subprocess.run([*prefix, *args], env=env, capture_output=True, check=False)
        if done.returncode != 0:
            raise SystemExit(
                f"Could not install wrk ({' '.join(args)} failed):\n{done.stderr.decode()[-2000:]}"
                "\nInstall it by hand (apt-get install wrk) and run again."
            )
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("apt-get installed wrk but it is not on PATH")
    return found


def wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "-v"], capture_output=True, check=False)
    text = (done.stdout + done.stderr).decode().strip().splitlines()
    return text[0] if text else "wrk"


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal for ASCII


def write_script(
    path: Path,
    method: str,
    headers: Mapping[str, str],
    body_file: Path | None,
    expected: int,
    budget: int,
) -> Path:
    body = ""
    if body_file is not None:
        body = (
            f"local f = assert(io.open({_lua_string(str(body_file))}, 'rb'))\n"
            "wrk.body = f:read('*a')\nf:close()"
        )
    lines = [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    script = _LUA % {
        "method": method,
        "body": body,
        "headers": "\n".join(lines),
        "expected": expected,
        "budget": budget,
        "mark": MARK,
    }
    path.write_text(script)
    return path


def run(
    wrk: str,
    url: str,
    script: Path,
    seconds: float,
    connections: int,
    server_pids: list[int] | None = None,
    db_pids: list[int] | None = None,
) -> LoadResult:
    """Run wrk for ``seconds`` (or until the script's request budget) and read its summary."""
    command = [
        wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
        "-s", str(script), url,
    ]  # fmt: skip
    server_before = cpu_seconds(server_pids) if server_pids else 0.0
    db_before = cpu_seconds(db_pids) if db_pids else 0.0
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    out = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.monotonic() - started
    server_cpu = cpu_seconds(server_pids) - server_before if server_pids else None
    db_cpu = cpu_seconds(db_pids) - db_before if db_pids else None
    line = next((ln for ln in out.splitlines() if ln.startswith(MARK)), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{out}")
    data = json.loads(line[len(MARK) :])
    seconds_run = data["duration_us"] / 1e6
    requests = data["requests"]
    per_request = 1000 / max(requests, 1)
    return LoadResult(
        requests=requests,
        seconds=seconds_run,
        rps=requests / seconds_run,
        good=data["good"],
        bad=data["bad"],
        last_bad=data["last_bad"],
        socket_errors=data["connect_errors"]
        + data["read_errors"]
        + data["write_errors"]
        + data["timeouts"],
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        mean_ms=data["mean_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        mb_per_s=data["bytes"] / seconds_run / 1e6,
        wrk_cpu=(usage.ru_utime + usage.ru_stime) / elapsed,
        server_cpu_ms=None if server_cpu is None else server_cpu * per_request,
        db_cpu_ms=None if db_cpu is None else db_cpu * per_request,
    )
