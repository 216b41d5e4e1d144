"""What tests share besides fixtures: a client that speaks like Klaviyo's SDK, request bodies,
assertions on JSON:API documents, a live server for the SDK, and real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx2 as httpx
from sqlalchemy import create_engine

from backstock.bootstrap import run
from backstock.services.container import Services
from backstock.storage.database import sqlalchemy_url

T = TypeVar("T")
REVISION = "2026-10-15"
SEED_REVISION = "2023-02-22"
JSONAPI = "application/vnd.api+json"
BASE = "http://testserver"
READ = "catalogs:read"
WRITE = "catalogs:write"
BOTH_SCOPES = (READ, WRITE)
JOBS = "/api/catalog-variant-bulk-update-jobs"
JOB_TYPE = "catalog-variant-bulk-update-job"


# ---- services from synchronous test code ---------------------------------------------------------


def call(services: Services, work: Callable[[], Awaitable[T]]) -> T:
    """Run a service call to completion (as the CLI does)."""
    return run(services, work)


def make_key(
    services: Services, account: str = "acme", scopes: tuple[str, ...] = BOTH_SCOPES
) -> str:
    return call(services, lambda: services.accounts.create_key(account, scopes)).key


def key_id(key: str) -> str:
    """The id part of ``pk_<key id>_<secret>``."""
    return key.removeprefix("pk_").split("_", 1)[0]


@contextmanager
def sql(database_url: str) -> Iterator[Any]:
    """A SQLAlchemy connection to look at (or stage) rows the way an operator would."""
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


# ---- a client like Klaviyo's SDK -------------------------------------------------------------------


@dataclass
class Api:
    """A test client that speaks like Klaviyo's SDK: key, revision and media type preset."""

    client: Any
    key: str
    revision: str = REVISION
    headers: dict[str, str] = field(default_factory=dict)

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        base = {
            "Authorization": f"Klaviyo-API-Key {self.key}",
            "revision": self.revision,
            "Accept": JSONAPI,
            "Content-Type": JSONAPI,
        }
        return base | self.headers | (extra or {})

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(path, headers=self._headers(kw.pop("headers", None)), **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self._send("POST", path, body, kw)

    def patch(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self._send("PATCH", path, body, kw)

    def delete(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self._send("DELETE", path, body, kw)

    def _send(self, method: str, path: str, body: Any, kw: dict[str, Any]) -> Any:
        headers = self._headers(kw.pop("headers", None))
        if body is not None and "content" not in kw:
            kw["json"] = body
        return self.client.request(method, path, headers=headers, **kw)

    def as_key(self, key: str) -> Api:
        return Api(self.client, key, self.revision, dict(self.headers))


# ---- request bodies --------------------------------------------------------------------------------


def cid(external: str) -> str:
    return f"$custom:::$default:::{external}"


def enc(compound: str) -> str:
    """A compound id as Klaviyo's SDK puts it in a path: every reserved character encoded."""
    return quote(compound, safe="")


def variant_path(compound: str) -> str:
    return f"/api/catalog-variants/{enc(compound)}"


def item_path(compound: str) -> str:
    return f"/api/catalog-items/{enc(compound)}"


def category_path(compound: str) -> str:
    return f"/api/catalog-categories/{enc(compound)}"


def item_body(external: str, **attributes: Any) -> dict[str, Any]:
    base = {
        "external_id": external,
        "title": f"Item {external}",
        "description": "d",
        "url": "https://shop.example/i",
    }
    return {"data": {"type": "catalog-item", "attributes": base | attributes}}


def variant_body(external: str, item: str, **attributes: Any) -> dict[str, Any]:
    base = {
        "external_id": external, "title": f"Variant {external}", "description": "d",
        "sku": f"SKU-{external}", "inventory_quantity": 10, "price": 9.5,
        "url": "https://shop.example/v",
    }  # fmt: skip
    return {
        "data": {
            "type": "catalog-variant",
            "attributes": base | attributes,
            "relationships": {"item": {"data": {"type": "catalog-item", "id": cid(item)}}},
        }
    }


def category_body(external: str, **attributes: Any) -> dict[str, Any]:
    base = {"external_id": external, "name": f"Category {external}"}
    return {"data": {"type": "catalog-category", "attributes": base | attributes}}


def seed_catalog(api: Api, item: str = "ITEM", variants: int = 3) -> list[str]:
    assert api.post("/api/catalog-items", item_body(item)).status_code == 201
    externals = [f"{item}-V{i}" for i in range(variants)]
    for external in externals:
        response = api.post("/api/catalog-variants", variant_body(external, item))
        assert response.status_code == 201, response.text
    return externals


def bulk_body(updates: list[tuple[str, dict[str, Any]]], shape: str = "data") -> dict[str, Any]:
    variants = [{"type": "catalog-variant", "id": cid(e), "attributes": a} for e, a in updates]
    return {
        "data": {
            "type": JOB_TYPE,
            "attributes": {"variants": {"data": variants} if shape == "data" else variants},
        }
    }


def job_body(
    job_type: str, member: str, entries: list[dict[str, Any]], shape: str = "data"
) -> dict[str, Any]:
    """A bulk job of any kind: ``entries`` are the resource objects."""
    given = {"data": entries} if shape == "data" else entries
    return {"data": {"type": job_type, "attributes": {member: given}}}


def job_entry(kind: Any, external: str, item: str = "ITEM") -> dict[str, Any]:
    """One resource object of a job of ``kind`` (a ``JobKind``) naming ``external``: a whole
    resource to create (a variant of ``item``), a title or name to update, or an id to delete."""
    res = kind.resource
    if kind.action == "delete":
        return {"type": res.type, "id": cid(external)}
    if kind.action == "update":
        attributes = {"name": "renamed"} if res.noun == "category" else {"title": "renamed"}
        return {"type": res.type, "id": cid(external), "attributes": attributes}
    bodies = {"variant": variant_body, "item": item_body, "category": category_body}
    made: dict[str, Any] = (
        variant_body(external, item) if res.noun == "variant" else bodies[res.noun](external)
    )["data"]
    return made


# ---- jobs -----------------------------------------------------------------------------------------


def spawn(api: Api, updates: list[tuple[str, dict[str, Any]]], shape: str = "data") -> str:
    """Accept a variant bulk update job (202 asserted) and return its id."""
    response = api.post(JOBS, bulk_body(updates, shape))
    assert response.status_code == 202, response.text
    job_id: str = response.json()["data"]["id"]
    return job_id


def get_job(api: Api, job_id: str, **params: str) -> Any:
    return api.get(f"{JOBS}/{job_id}", params=params)


def listed_ids(api: Api, **params: str) -> list[str]:
    """The ids on the first page of the job list."""
    response = api.get(JOBS, params=params)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["data"]]


def wait_for_job(api: Api, job_id: str, timeout: float = 10.0, path: str = JOBS) -> dict[str, Any]:
    """Poll the job until it is complete; return its resource object."""
    deadline = time.monotonic() + timeout
    while True:
        response = api.get(f"{path}/{job_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        if data["attributes"]["status"] == "complete":
            return data
        assert time.monotonic() < deadline, f"job {job_id} not complete: {data}"
        time.sleep(0.01)


# ---- assertions on documents ---------------------------------------------------------------------


def errors_of(response: Any, status: int) -> list[dict[str, Any]]:
    """The JSON:API errors of ``response``, after checking its status and their members."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == JSONAPI
    errors: list[dict[str, Any]] = response.json()["errors"]
    assert errors
    for error in errors:
        assert {"id", "code", "title", "detail"} <= error.keys(), error
        assert all(isinstance(error[name], str) for name in ("id", "code", "title", "detail"))
    return errors


def pointers(response: Any, status: int = 400) -> list[str]:
    return [error["source"]["pointer"] for error in errors_of(response, status)]


def parameter(response: Any, status: int = 400) -> str:
    errors = errors_of(response, status)
    assert len(errors) == 1, errors
    name: str = errors[0]["source"]["parameter"]
    return name


def assert_error(
    response: Any,
    status: int,
    code: str | None = None,
    *,
    pointer: str | list[str] | None = None,
    parameter: str | None = None,
) -> list[dict[str, Any]]:
    """A JSON:API error document with this status; ``pointer``/``parameter`` are checked
    exactly against every error's ``source``."""
    errors = errors_of(response, status)
    for error in errors:
        for member in ("id", "code", "title", "detail"):
            assert error[member], error
    if code is not None:
        assert {error["code"] for error in errors} == {code}
    if pointer is not None:
        wanted = [pointer] if isinstance(pointer, str) else pointer
        assert sorted(e.get("source", {}).get("pointer") for e in errors) == sorted(wanted)
    if parameter is not None:
        assert [e.get("source", {}).get("parameter") for e in errors] == [parameter]
    return errors


def ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == JSONAPI
    body: dict[str, Any] = response.json()
    return body


def ids(response: Any) -> list[str]:
    return [resource["id"] for resource in ok(response)["data"]]


def all_variant_ids(api: Api) -> list[str]:
    return ids(api.get("/api/catalog-variants"))


def all_item_ids(api: Api) -> list[str]:
    return ids(api.get("/api/catalog-items"))


# ---- a real HTTP server, for Klaviyo's SDK -------------------------------------------------------


@dataclass
class LiveServer:
    url: str
    key_for: Callable[..., str]

    def sdk(self, key: str | None = None) -> Any:
        from klaviyo_api import KlaviyoAPI

        return KlaviyoAPI(key or self.key_for(), test_host=self.url, max_retries=1, max_delay=0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def served(app: Any, **options: Any) -> Iterator[str]:
    """``app`` under uvicorn in a thread on a free loopback port (``options``: uvicorn's own);
    yields its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# ---- real processes: ``backstock serve`` and ``backstock worker`` as a user starts them ----------

BACKSTOCK = [sys.executable, "-m", "backstock"]


def process_group(leader: subprocess.Popen[bytes]) -> list[int]:
    """The processes of ``leader``'s process group: ``serve`` and the server's workers."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat.rpartition(")")[2].split()[2]) == leader.pid:
                    pids.append(int(entry.name))
    return pids


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
        scopes = ("--scope", READ, "--scope", WRITE)
        return self.cli("keys", "create", "--account", account, *scopes)

    def client(self, key: str, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Klaviyo-API-Key {key}", "revision": REVISION}
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
            process.wait(10)


def signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the process and everything it forked (``serve`` forks its server workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL, as a crash would: the process and its children, at once."""
    signal_group(process, signal.SIGKILL)
    process.wait(10)


# ---- a webhook receiver -------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A real HTTP server on a loopback port that records each POST and answers ``status``
    (settable: a receiver that fails for a while). ``start`` again after ``stop`` reuses the
    port (a receiver that was down)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.status = 200
        self.received: list[Received] = []
        self.answered: list[int] = []
        self._server: Any = None

    def start(self) -> Receiver:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = receiver.status
                receiver.answered.append(status)
                if status == 200:
                    receiver.received.append(Received(dict(self.headers.items()), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait(self, count: int = 1, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} deliveries"
            time.sleep(0.02)
        return self.received


def account_name(services: Services, key: str) -> str:
    """The name of the account ``key`` belongs to (what the CLI addresses it by)."""
    from backstock.domain.keys import from_authorization

    who = run(
        services,
        lambda: services.accounts.authenticate(from_authorization(f"Klaviyo-API-Key {key}")),
    )
    records = run(services, services.accounts.list_accounts)
    return next(record.name for record in records if record.id == who.account_id)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The events of a ``text/event-stream`` body: (event name, JSON data) each."""
    import orjson

    found = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        found.append((fields["event"], orjson.loads(fields["data"])))
    return found
