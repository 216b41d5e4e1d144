"""Real processes: ``backstock serve`` and ``backstock worker`` started as a user would."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import pytest

BACKSTOCK = [sys.executable, "-m", "backstock"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    """API and worker processes sharing one database."""

    env: dict[str, str]
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    base_url: str = ""
    launcher: list[str] = field(default_factory=list)
    """Put before every command: ``setpriv …`` to run as another user, ``nsenter …`` to run in
    another mount namespace."""

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [*self.launcher, *BACKSTOCK, *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode().strip()

    def new_key(self, account: str = "acme") -> str:
        """A key with both scopes, made with the CLI as an operator would."""
        scopes = ("--scope", "catalogs:read", "--scope", "catalogs:write")
        return self.cli("keys", "create", "--account", account, *scopes)

    def client(self, key: str, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Klaviyo-API-Key {key}", "revision": "2026-10-15"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def start(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        with (self.workdir / log).open("wb") as out:  # the child keeps its own descriptor
            process = subprocess.Popen(
                [*self.launcher, *BACKSTOCK, *args],
                env=self.env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the server forks workers
            )
        self.processes.append(process)
        return process

    def serve(self, *args: str) -> None:
        port = free_port()
        self.start("serve", "--port", str(port), *args, log=f"serve-{port}.log")
        self.base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (self.workdir / f"serve-{port}.log").read_text()
            time.sleep(0.1)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                signal_group(process, signal.SIGTERM)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(15)
            signal_group(process, signal.SIGKILL)  # whatever the group still holds


def signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the process and everything it forked (``serve`` forks its server workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL, as a crash would: the process and its children, at once."""
    signal_group(process, signal.SIGKILL)
    process.wait(10)


@pytest.fixture
def cluster_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSTOCK_")}
    env |= {"BACKSTOCK_RATE_LIMITS": "off", "BACKSTOCK_LOG_LEVEL": "warning"}
    return env


@pytest.fixture
def make_cluster(tmp_path: Path, cluster_env: dict[str, str]) -> Iterator[object]:
    made: list[Cluster] = []

    def make(**settings: str) -> Cluster:
        env = cluster_env | {f"BACKSTOCK_{k.upper()}": v for k, v in settings.items()}
        cluster = Cluster(env, tmp_path)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop_all()
