"""``backstock load FILE``: load a catalog (items, variants or categories) from CSV or JSON Lines
through the bulk job API, over HTTP only, so it works against any Klaviyo-compatible endpoint
(``docs/loader.md``).

A load runs these steps, in this order:

1. **Read** (``read_records``) the rows, and name each column by the header convention
   (``plan_columns``): an attribute, ``custom_metadata.KEY``, or a relation (``item``,
   ``categories``, ``items``); each row becomes a ``Row`` of typed values (``build_row``).
2. **Chunk** (``make_chunks``) consecutive rows into jobs of at most 100 and under 4 MB; a chunk
   is named by its line range and a hash of its rows, which is what the state file records.
3. **Validate** (``validate``): each chunk's job body goes through the server's own decoder
   (``domain.bodies.decode_job``); problem pointers are mapped back to line numbers. Nothing is
   sent while a row is invalid (unless ``--skip-invalid``).
4. **Send** (``Loader``, ``Client``): one persistent connection; ``Retry-After`` on 429/503 and
   ``RateLimit-Remaining``/``RateLimit-Reset`` obeyed; each job polled until complete; the state
   file written atomically once a job is accepted and once it is complete, so a rerun resumes.
5. **Report**: the failed rows, with ``error_code`` and ``error_detail``, to a file in the
   input's format (fed back in, it retries them), and a summary.

Besides the CLI's shared app and consoles (``cli.common``), this module uses only the pure
``backstock.domain``: never services, storage or http. It talks HTTP, nothing else.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import http.client
import io
import math
import os
import re
import signal
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

import orjson
import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from backstock.cli.common import app, err, out
from backstock.domain import bodies
from backstock.domain.errors import InvalidBody
from backstock.domain.ids import PREFIX, compound_id
from backstock.domain.resources import CATEGORY, ITEM, VARIANT, Attribute, Relation, Resource

Format = Literal["csv", "jsonl"]
Mode = Literal["create", "update", "upsert", "delete"]
Action = bodies.Action

RESOURCES_BY_NOUN = {"item": ITEM, "variant": VARIANT, "category": CATEGORY}
MODES: tuple[Mode, ...] = ("create", "update", "upsert", "delete")
EXTENSIONS: dict[str, Format] = {
    ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonlines": "jsonl",
}  # fmt: skip
REVISION = "2026-10-15"
JSONAPI = "application/vnd.api+json"
DEFAULT_URL = "http://127.0.0.1:8000"
MAX_ROWS = bodies.MAX_ENTRIES
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_BODY_BYTES = MAX_REQUEST_BYTES - 16 * 1024
"""A chunk's body stays this far under the 4 MB a request may hold (an upsert's update of the
same rows is a little larger than their create)."""
ERROR_COLUMNS = ("error_code", "error_detail")
"""What the failed-rows file adds to each row; ignored when a file is read, so that the failed
file can be loaded again as it is."""
METADATA = "custom_metadata"
CASTS = ("string", "number", "boolean", "json")
CONFLICTS = frozenset({"conflict", "duplicate"})
"""Error codes of a create that met an existing resource: an upsert updates those rows."""
STATE_VERSION = 1
MAX_OPEN_JOBS = 100
"""Jobs accepted and not yet seen complete, at most (the server allows 500 per account)."""
IDLE_SECONDS = 4.0
"""A connection idle longer is replaced before a request (servers close idle ones)."""
ATTEMPTS = 8
"""Tries of one request through network errors and 5xx (with backoff up to 30 s)."""
UNAVAILABLE_ATTEMPTS = 40
"""Tries of one request through 503s (each waits its ``Retry-After``)."""
POLL_SECONDS = (0.2, 2.0)
"""Polling a job: first after this, then less often, up to this."""

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


class InputError(Exception):
    """The input, the mapping or the options cannot be used at all (exit 2)."""


class LoadFailed(Exception):
    """The load cannot go on (exit 1); the state is saved and a rerun resumes."""


class Interrupted(Exception):
    """SIGINT: stop at the next safe point (exit 130)."""


# ---- reading: records and the header convention ------------------------------------------------


@dataclass(slots=True)
class Record:
    """One row as read: its first line and its values by column (CSV: strings; JSON Lines: JSON
    values)."""

    line: int
    values: dict[str, Any]
    problem: str | None = None
    """Why the row could not be read at all (a broken JSON line, too many cells)."""


@dataclass(frozen=True, slots=True)
class Column:
    """What a column of the input sets."""

    source: str
    role: Literal["attribute", "metadata", "relation", "ignored"]
    name: str = ""
    """The attribute, the relation, or the key in ``custom_metadata``."""
    cast: str = "string"
    """For ``custom_metadata.KEY:cast``: how a text cell becomes the value."""


def detect_format(path: Path, given: str | None) -> Format:
    if given is not None:
        if given not in ("csv", "jsonl"):
            raise InputError(f"--format must be csv or jsonl, not '{given}'")
        return "csv" if given == "csv" else "jsonl"
    found = EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise InputError(
            f"Cannot tell the format of '{path.name}' from its extension: pass --format"
        )
    return found


def read_records(path: Path, fmt: Format) -> tuple[list[str], list[Record]]:
    """The columns (in order of first appearance) and the rows; blank lines are skipped."""
    try:
        return _read_csv(path) if fmt == "csv" else _read_jsonl(path)
    except OSError as exc:
        raise InputError(f"Cannot read '{path}': {exc.strerror or exc}") from exc


def _read_csv(path: Path) -> tuple[list[str], list[Record]]:
    csv.field_size_limit(max(csv.field_size_limit(), 2 * MAX_REQUEST_BYTES))
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                return [], []
            seen: set[str] = set()
            for name in header:
                if name in seen:
                    raise InputError(f"The header of '{path.name}' names column '{name}' twice")
                seen.add(name)
            records: list[Record] = []
            start = reader.line_num + 1
            for cells in reader:
                line, start = start, reader.line_num + 1
                if not any(cell.strip() for cell in cells):
                    continue
                values = {name: cells[i] if i < len(cells) else "" for i, name in enumerate(header)}
                problem = None
                if len(cells) > len(header):
                    problem = f"{len(cells)} cells, but the header names {len(header)} columns"
                records.append(Record(line, values, problem))
        except UnicodeDecodeError as exc:
            raise InputError(f"'{path.name}' is not UTF-8 (near line {start}): {exc}") from exc
        except csv.Error as exc:
            raise InputError(f"'{path.name}' line {reader.line_num}: {exc}") from exc
    return header, records


def _read_jsonl(path: Path) -> tuple[list[str], list[Record]]:
    columns: dict[str, None] = {}
    records: list[Record] = []
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                text = raw.decode(errors="replace").strip()
                records.append(Record(line, {}, f"not valid JSON ({exc}): {text[:200]}"))
                continue
            if not isinstance(value, dict):
                records.append(Record(line, {}, "not a JSON object"))
                continue
            columns.update(dict.fromkeys(value))
            records.append(Record(line, value))
    return list(columns), records


def load_mapping(path: Path | None) -> dict[str, str | None]:
    """``{"source column": "attribute" | null}``; null leaves the column out."""
    if path is None:
        return {}
    try:
        found = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InputError(f"Cannot read the mapping file '{path}': {exc}") from exc
    if not isinstance(found, dict) or not all(
        isinstance(value, str | None) for value in found.values()
    ):
        raise InputError(
            f"The mapping file '{path}' must be a JSON object of "
            '{"source column": "attribute" or null}'
        )
    return found


def _writable_relations(res: Resource) -> dict[str, Relation]:
    return {r.name: r for r in res.relations if r.create != "absent" or r.update}


def plan_column(res: Resource, source: str, mapping: dict[str, str | None]) -> Column | None:
    """What ``source`` sets, after ``mapping``; None when it names nothing of ``res``."""
    if (
        not source.strip()
        or source in ERROR_COLUMNS
        or (source in mapping and mapping[source] is None)
    ):
        return Column(source, "ignored")
    target = (mapping.get(source) or source).strip()
    if target in res.by_name:
        return Column(source, "attribute", target)
    if target.startswith(f"{METADATA}.") and METADATA in res.by_name:
        key, cast = target[len(METADATA) + 1 :], "string"
        head, colon, tail = key.rpartition(":")
        if colon and tail in CASTS:
            key, cast = head, tail
        return Column(source, "metadata", key, cast) if key else None
    if target in _writable_relations(res):
        return Column(source, "relation", target)
    return None


def plan_columns(
    res: Resource, columns: list[str], mapping: dict[str, str | None]
) -> dict[str, Column]:
    """Every column's meaning; an unknown column is an ``InputError`` (a typo would otherwise
    drop a whole column silently)."""
    plan: dict[str, Column] = {}
    unknown: list[str] = []
    for source in columns:
        column = plan_column(res, source, mapping)
        if column is None:
            unknown.append(source)
        else:
            plan[source] = column
    if unknown:
        names = ", ".join(f"'{name}'" for name in unknown)
        raise InputError(
            f"Column(s) {names} name no attribute of a catalog {res.noun} (attributes: "
            f"{', '.join(a.name for a in res.attributes)}; also {METADATA}.KEY"
            f"{''.join(', ' + name for name in _writable_relations(res))}). Rename them with "
            '--mapping, or map them to null to leave them out: {"column": null}'
        )
    return plan


# ---- rows: typed values -------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    line: int
    values: dict[str, Any]
    """As read: what the failed-rows file writes back."""
    external_id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    links: dict[str, list[str]] = field(default_factory=dict)
    """Related external ids by relation."""
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)


def _empty(value: Any) -> bool:
    return isinstance(value, str) and not value.strip()


def to_number(text: str) -> int | float:
    text = text.strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"'{text}' is not a number")
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"'{text}' is out of range")
    return number


def to_boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"'{text}' is not true or false")


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None


def to_strings(text: str) -> Any:
    """A JSON array, or ``|``-separated values."""
    if text.strip().startswith("["):
        return _json(text)
    return [part.strip() for part in text.split("|") if part.strip()]


def convert(attribute: Attribute, value: Any) -> Any:
    """A cell as the attribute's kind wants it. Non-text values (JSON Lines) pass as they are:
    the server's rules check them in ``validate``."""
    if not isinstance(value, str):
        return value
    kind = attribute.kind
    if kind == "number":
        return to_number(value)
    if kind == "policy":
        if value.strip() not in ("0", "1", "2"):
            raise ValueError(f"'{value}' is not one of 0, 1, 2")
        return int(value)
    if kind == "boolean":
        return to_boolean(value)
    if kind == "strings":
        return to_strings(value)
    if kind == "metadata":
        found = _json(value)
        if not isinstance(found, dict):
            raise ValueError("not a JSON object")
        return found
    return value


def _metadata_value(column: Column, value: Any) -> Any:
    if not isinstance(value, str) or column.cast == "string":
        return value
    if column.cast == "number":
        return to_number(value)
    if column.cast == "boolean":
        return to_boolean(value)
    return _json(value)


def _related(relation: Relation, value: Any) -> list[str]:
    """External ids from ``A|B``, a JSON array, or compound ids."""
    if isinstance(value, str):
        given: list[Any] = [part.strip() for part in value.split("|") if part.strip()]
    elif isinstance(value, list):
        given = value
    else:
        raise ValueError("must be an id, ids separated by |, or an array of ids")
    if not all(isinstance(one, str) and one for one in given):
        raise ValueError("must name ids as non-empty strings")
    ids = [one.removeprefix(PREFIX) for one in given]
    if not relation.many and len(ids) != 1:
        raise ValueError(
            f"must name exactly one catalog {relation.target.removeprefix('catalog-')}"
        )
    return ids


def build_row(res: Resource, record: Record, plan: dict[str, Column]) -> Row:
    """A row's typed values; what cannot be converted is a problem of the row."""
    row = Row(record.line, record.values)
    if record.problem is not None:
        row.problem(record.problem)
        return row
    metadata: dict[str, Any] = {}
    for source, value in record.values.items():
        column = plan.get(source)
        if column is None or column.role == "ignored" or _empty(value):
            continue
        try:
            if column.role == "attribute":
                row.attributes[column.name] = convert(res.by_name[column.name], value)
            elif column.role == "metadata":
                metadata[column.name] = _metadata_value(column, value)
            elif value is not None:
                row.links[column.name] = _related(res.relation(column.name), value)
        except ValueError as exc:
            row.problem(f"column '{source}': {exc}")
    if metadata:
        whole = row.attributes.get(METADATA)
        if whole is None:
            row.attributes[METADATA] = metadata
        elif isinstance(whole, dict):
            row.attributes[METADATA] = whole | metadata
    external = row.attributes.get("external_id")
    if isinstance(external, str) and external:
        row.external_id = external
    else:
        row.problem("'external_id' is required (a non-empty string)")
    return row


# ---- bodies --------------------------------------------------------------------------------------


def _linkage(relation: Relation, ids: list[str]) -> Any:
    linkages = [{"type": relation.target, "id": compound_id(one)} for one in ids]
    return linkages if relation.many else linkages[0]


def entry(res: Resource, row: Row, action: Action) -> dict[str, Any]:
    """The row as one resource object of a job of ``action``."""
    assert row.external_id is not None
    if action == "delete":
        return {"type": res.type, "id": compound_id(row.external_id)}
    obj: dict[str, Any] = {"type": res.type}
    if action == "create":
        obj["attributes"] = {
            name: value
            for name, value in row.attributes.items()
            if res.by_name[name].create != "absent"
        }
        relations = [r for r in res.relations if r.create != "absent"]
    else:
        obj["id"] = compound_id(row.external_id)
        obj["attributes"] = {
            name: value for name, value in row.attributes.items() if res.by_name[name].update
        }
        relations = [r for r in res.relations if r.update]
    relationships = {
        r.name: {"data": _linkage(r, row.links[r.name])} for r in relations if r.name in row.links
    }
    if relationships:
        obj["relationships"] = relationships
    return obj


def job_path(res: Resource, action: Action) -> str:
    return f"/api/{bodies.job_type(res, action)}s"


def job_body(res: Resource, action: Action, rows: list[Row]) -> bytes:
    entries = [entry(res, row, action) for row in rows]
    return orjson.dumps({
        "data": {
            "type": bodies.job_type(res, action),
            "attributes": {res.plural: {"data": entries}},
        }
    })  # fmt: skip


def actions_of(mode: Mode) -> tuple[Action, ...]:
    """What a mode's jobs do: upsert's update is of the rows its create found existing."""
    if mode == "upsert":
        return ("create", "update")
    return (mode,)


# ---- chunks --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Chunk:
    number: int
    rows: list[Row]
    key: str = ""
    """``first-last:hash``: its line range and a hash of its rows, as the state records it."""

    def __post_init__(self) -> None:
        digest = hashlib.sha256(
            orjson.dumps([row.values for row in self.rows], option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        self.key = f"{self.rows[0].line}-{self.rows[-1].line}:{digest[:16]}"

    def valid(self) -> list[Row]:
        return [row for row in self.rows if not row.problems]


def make_chunks(
    res: Resource, mode: Mode, rows: list[Row], size: int = MAX_ROWS, limit: int = MAX_BODY_BYTES
) -> list[Chunk]:
    """Consecutive rows, at most ``size`` and ``limit`` bytes of body per chunk (invalid rows
    count in the range, not in the bytes). A row that alone passes ``limit`` is a problem."""
    action = actions_of(mode)[0]
    envelope = len(job_body(res, action, [])) + 1
    chunks: list[Chunk] = []
    current: list[Row] = []
    used = envelope
    for row in rows:
        cost = 0
        if not row.problems:
            cost = len(orjson.dumps(entry(res, row, action))) + 1
            if envelope + cost > limit:
                row.problem(f"the row's request would pass the {limit} bytes a job may hold")
                cost = 0
        if current and (len(current) >= size or used + cost > limit):
            chunks.append(Chunk(len(chunks) + 1, current))
            current, used = [], envelope
        current.append(row)
        used += cost
    if current:
        chunks.append(Chunk(len(chunks) + 1, current))
    return chunks


def locate(pointer: str | None, res: Resource) -> tuple[int | None, str]:
    """``/data/attributes/variants/data/3/attributes/price`` → ``(3, "price")``: the entry of a
    job body a pointer is in, and the attribute or relation it names (if any)."""
    found = re.fullmatch(
        rf"/data/attributes/{re.escape(res.plural)}(?:/data)?/(\d+)(/.*)?", pointer or ""
    )
    if found is None:
        return None, ""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in (found.group(2) or "").split("/")]
    name = ""
    if len(parts) > 2 and parts[1] in ("attributes", "relationships"):
        name = parts[2]
    elif parts[-1] == "relationships" and res.parent is not None:
        name = res.parent.name
    return int(found.group(1)), name


def validate(res: Resource, mode: Mode, chunks: list[Chunk], plan: dict[str, Column]) -> None:
    """Check every chunk's job body with the server's own rules (``bodies.decode_job``); each
    problem becomes one of the row it points into."""
    sources = {c.name: c.source for c in plan.values() if c.role in ("attribute", "relation")}
    for chunk in chunks:
        for action in actions_of(mode):
            rows = chunk.valid()
            if not rows:
                break
            try:
                bodies.decode_job(res, action, job_body(res, action, rows))
            except InvalidBody as exc:
                for problem in exc.problems:
                    index, name = locate(problem.pointer, res)
                    where = f" (column '{sources[name]}')" if name in sources else ""
                    targets = rows if index is None or index >= len(rows) else [rows[index]]
                    for row in targets:
                        row.problem(problem.detail + where)


# ---- HTTP ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    """Lower-case names."""
    body: bytes

    def json(self) -> Any:
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None

    def errors(self) -> list[dict[str, Any]]:
        found = self.json()
        errors = found.get("errors") if isinstance(found, dict) else None
        return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []

    def detail(self) -> str:
        errors = self.errors()
        if errors:
            first = errors[0]
            return f"{first.get('code', 'error')}: {first.get('detail') or first.get('title')}"
        return self.body[:200].decode(errors="replace") or f"HTTP {self.status}"


class _Unsent(Exception):
    """A network error before the request went out (connecting)."""


class _Lost(Exception):
    """A network error after the request (maybe) went out."""


def _seconds(value: str | None) -> float | None:
    """Delta seconds, or an HTTP date (``Retry-After``)."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def rate_limit_state(headers: dict[str, str]) -> tuple[int | None, float | None]:
    """``(remaining, reset seconds)`` from ``RateLimit-Remaining``/``RateLimit-Reset`` (or a
    combined ``RateLimit: limit=…, remaining=…, reset=…`` header)."""
    remaining, reset = headers.get("ratelimit-remaining"), headers.get("ratelimit-reset")
    combined = headers.get("ratelimit", "")
    if remaining is None and (found := re.search(r"\bremaining=(\d+)", combined)):
        remaining = found.group(1)
    if reset is None and (found := re.search(r"\b(?:reset|t)=(\d+)", combined)):
        reset = found.group(1)
    try:
        left = int(remaining) if remaining is not None else None
    except ValueError:
        left = None
    return left, _seconds(reset)


class Client:
    """One persistent connection to the API that waits as the server asks: before a request
    whose operation has no ``RateLimit-Remaining`` left, on 429 and 503 (``Retry-After``), and
    through network errors and 5xx (backoff)."""

    def __init__(
        self, url: str, key: str, ui: Ui, stopped: Callable[[], bool], timeout: float = 60.0
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"--url must be http://HOST[:PORT] or https://…, not '{url}'")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {
            "Authorization": f"Klaviyo-API-Key {key}",
            "revision": REVISION,
            "Accept": JSONAPI,
            "User-Agent": "backstock-load",
        }
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._used_at = 0.0
        self._not_before: dict[str, float] = {}
        self.ui = ui
        self.stopped = stopped
        self.server_time: float | None = None
        """The server's clock (``Date``) at the first answer, as a POSIX time."""

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def ready_in(self, op: str) -> float:
        """Seconds before ``op`` may be sent without meeting a rate limit."""
        return max(0.0, self._not_before.get(op, 0.0) - time.monotonic())

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        op: str,
        headers: dict[str, str] | None = None,
        recover: Callable[[], Answer | None] | None = None,
    ) -> Answer:
        """``recover``: after a network error that may have let a ``POST`` through, asked
        before it is sent again; an answer it gives stands for the lost one."""
        sent = self._headers | (headers or {})
        if body is not None:
            sent["Content-Type"] = JSONAPI
        failures = unavailable = 0
        while True:
            self.sleep(self.ready_in(op), "rate limit")
            try:
                answer = self._exchange(method, path, body, sent)
            except (_Unsent, _Lost) as exc:
                failures += 1
                reason = f"{type(exc.__cause__).__name__}: {exc.__cause__}"
                self._backoff(failures, f"network error ({reason})")
                if isinstance(exc, _Lost) and recover is not None and (found := recover()):
                    return found
                continue
            self._note_limits(op, answer)
            if answer.status in (429, 503):
                unavailable += answer.status == 503
                if unavailable > UNAVAILABLE_ATTEMPTS:
                    raise LoadFailed(f"{method} {path}: the server stays unavailable")
                self._wait_as_told(op, answer)
                continue
            if answer.status in (500, 502, 504):
                failures += 1
                self._backoff(failures, f"server error {answer.status}", answer.detail())
                if method == "POST" and recover is not None and (found := recover()):
                    return found
                continue
            return answer

    def _backoff(self, failures: int, reason: str, detail: str = "") -> None:
        if failures >= ATTEMPTS:
            raise LoadFailed(f"{reason} {failures} times in a row{': ' + detail if detail else ''}")
        self.sleep(min(30.0, 0.5 * 2 ** (failures - 1)), reason)

    def _wait_as_told(self, op: str, answer: Answer) -> None:
        codes = {error.get("code") for error in answer.errors()}
        if answer.status == 503:
            reason = "server unavailable (503)"
        elif codes & {"too_many_jobs", "quota_exceeded"}:
            reason = "too many jobs open (429)"
        else:
            reason = "rate limit (429)"
        wait = _seconds(answer.headers.get("retry-after"))
        if wait is None:
            wait = rate_limit_state(answer.headers)[1]
        wait = min(900.0, wait if wait is not None else 1.0)
        self._not_before[op] = max(self._not_before.get(op, 0.0), time.monotonic() + wait)
        self.sleep(self.ready_in(op), reason)

    def _note_limits(self, op: str, answer: Answer) -> None:
        remaining, reset = rate_limit_state(answer.headers)
        if remaining is not None and remaining <= 0:
            pause = max(reset or 0.0, 0.05)
            self._not_before[op] = max(self._not_before.get(op, 0.0), time.monotonic() + pause)
        if self.server_time is None:
            self.server_time = _seconds_since_epoch(answer.headers.get("date"))

    def sleep(self, seconds: float, reason: str) -> None:
        """Wait, showing why (``reason``, if any); SIGINT cuts it short (``Interrupted``)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self.stopped():
                raise Interrupted
            if reason:
                self.ui.waiting(left, reason)
            time.sleep(min(0.1, left))
        if reason and seconds > 0:
            self.ui.waiting(0, "")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is not None and time.monotonic() - self._used_at > IDLE_SECONDS:
            self.close()
        if self._conn is None:
            conn: http.client.HTTPConnection
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout,
                    context=ssl.create_default_context(),
                )  # fmt: skip
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            try:
                conn.connect()
            except OSError as exc:
                conn.close()
                raise _Unsent from exc
            self._conn = conn
        return self._conn

    def _exchange(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> Answer:
        conn = self._connection()
        try:
            conn.request(method, self._prefix + path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise _Lost from exc
        self._used_at = time.monotonic()
        if response.will_close:
            self.close()
        found = {name.lower(): value for name, value in response.getheaders()}
        return Answer(response.status, found, data)


def _seconds_since_epoch(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _created_at(job: dict[str, Any]) -> float | None:
    created = (job.get("attributes") or {}).get("created_at")
    if not isinstance(created, str):
        return None
    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# ---- the state file ------------------------------------------------------------------------------


class State:
    """What a load has done, by chunk: ``{"chunks": {"2-101:hash": {"create": {"job": id,
    "status": "accepted" | "complete", "applied": n, "failed": [[line, code, detail]],
    "conflicts": [line]}}}}``. Written atomically (a temporary file, then a rename)."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self._saved_at = 0.0
        self._dirty = False

    @classmethod
    def open(cls, path: Path, header: dict[str, str], fresh: bool) -> State:
        data: Any
        if fresh or not path.exists():
            data = {
                "version": STATE_VERSION, **header, "load_id": uuid.uuid4().hex,
                "created": time.time(), "started": None, "clean": True, "chunks": {},
            }  # fmt: skip
            return cls(path, data)
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise InputError(f"Cannot read the state file '{path}': {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise InputError(f"'{path}' is not a state file of this loader")
        for name, value in header.items():
            if data.get(name) != value:
                raise InputError(
                    f"The state file '{path}' is of a load with {name} '{data.get(name)}', not "
                    f"'{value}': pass --fresh to start over, or --state for another file"
                )
        return cls(path, data)

    @property
    def chunks(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = self.data["chunks"]
        return found

    def stage(self, chunk: Chunk, action: Action) -> dict[str, Any] | None:
        return self.chunks.get(chunk.key, {}).get(action)

    def put(self, chunk: Chunk, action: Action, record: dict[str, Any]) -> None:
        self.chunks.setdefault(chunk.key, {})[action] = record
        self._dirty = True

    def job_ids(self) -> set[str]:
        return {stage["job"] for stages in self.chunks.values() for stage in stages.values()}

    def save(self, *, soon: bool = False) -> None:
        """Write now (``soon``: unless it was written less than a second ago)."""
        if soon and time.monotonic() - self._saved_at < 1.0:
            self._dirty = True
            return
        write_atomically(self.path, orjson.dumps(self.data, option=orjson.OPT_INDENT_2))
        self._saved_at = time.monotonic()
        self._dirty = False

    def flush(self) -> None:
        if self._dirty:
            self.save()


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


# ---- progress -----------------------------------------------------------------------------------


class _Progress(Progress):
    """The bar, and under it what the load is waiting for (if anything)."""

    status = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.status:
            yield Text(self.status, style="yellow")


class Ui:
    """A progress bar of rows sent, applied and failed, with the current wait; without a
    terminal, a line now and then instead."""

    def __init__(self, console: Console, total: int, label: str) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = _Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.completed}/{task.total} sent"),
            TextColumn("[green]{task.fields[applied]} applied"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=console,
            disable=not self.live,
        )
        self.task: TaskID = self.progress.add_task(label, total=total, applied=0, failed=0)
        self.total = total
        self._counts = (0, 0, 0)
        self._said: dict[str, float] = {}
        self._reported_at = time.monotonic()

    def __enter__(self) -> Ui:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def counts(self, sent: int, applied: int, failed: int) -> None:
        self._counts = (sent, applied, failed)
        self.progress.update(self.task, completed=sent, applied=applied, failed=failed)
        if not self.live and time.monotonic() - self._reported_at >= 5:
            self._reported_at = time.monotonic()
            self.say(self.line())

    def line(self) -> str:
        sent, applied, failed = self._counts
        return f"{sent}/{self.total} rows sent, {applied} applied, {failed} failed"

    def waiting(self, left: float, reason: str) -> None:
        self.progress.status = f"waiting {math.ceil(left)} s: {reason}" if reason else ""
        if reason and not self.live:
            # One line per wait, and per reason at most every 5 s.
            now = time.monotonic()
            if now - self._said.get(reason, -1e9) >= 5:
                self._said[reason] = now
                self.say(f"waiting {math.ceil(left)} s: {reason}")

    def say(self, text: str) -> None:
        self.console.print(escape(text), highlight=False)


# ---- the load ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Stage:
    """One job: a chunk's rows (those valid, or an upsert's conflicting ones) for ``action``."""

    chunk: Chunk
    action: Action
    rows: list[Row]

    def ids(self) -> tuple[str, ...]:
        return tuple(compound_id(row.external_id or "") for row in self.rows)


@dataclass(slots=True)
class Tally:
    rows: int = 0
    sent: int = 0
    applied: int = 0
    failed: int = 0
    jobs: int = 0
    unmatched: int = 0
    """Failures a job reported that no row could be matched to."""


class Loader:
    def __init__(
        self,
        res: Resource,
        mode: Mode,
        chunks: list[Chunk],
        client: Client,
        state: State,
        ui: Ui,
    ) -> None:
        self.res = res
        self.mode = mode
        self.chunks = chunks
        self.client = client
        self.state = state
        self.ui = ui
        self.tally = Tally(rows=sum(len(c.rows) for c in chunks))
        self.to_send: deque[Stage] = deque()
        self.pending: deque[tuple[Stage, str]] = deque()
        self.uncertain = False
        """A ``POST`` went out and its answer was lost: the state cannot say whether it was
        accepted (a resume then looks for its job before sending it again)."""
        self._head: tuple[int, int] = (0, 0)
        self._poll_at = 0.0
        self._interval = POLL_SECONDS[0]
        self._found: dict[Action, dict[tuple[str, ...], str]] = {}
        primary = actions_of(mode)[0]
        for chunk in chunks:
            rows = chunk.valid()
            if rows:
                self._schedule(Stage(chunk, primary, rows))

    # -- bookkeeping --

    def _schedule(self, stage: Stage, *, first: bool = False) -> None:
        record = self.state.stage(stage.chunk, stage.action)
        if record is None:
            (self.to_send.appendleft if first else self.to_send.append)(stage)
            return
        self._accepted(stage)
        if record["status"] == "complete":
            self._completed(stage, record)
        else:
            self.pending.append((stage, record["job"]))

    def _accepted(self, stage: Stage) -> None:
        self.tally.jobs += 1
        if stage.action == actions_of(self.mode)[0]:
            self.tally.sent += len(stage.rows)

    def _completed(self, stage: Stage, record: dict[str, Any]) -> None:
        self.tally.applied += record["applied"]
        self.tally.failed += len(record["failed"]) + record.get("unmatched", 0)
        self.tally.unmatched += record.get("unmatched", 0)
        conflicts = set(record.get("conflicts", ()))
        if conflicts:
            rows = [row for row in stage.rows if row.line in conflicts]
            self._schedule(Stage(stage.chunk, "update", rows), first=True)

    def _show(self) -> None:
        applied, failed = self._head
        self.ui.counts(self.tally.sent, self.tally.applied + applied, self.tally.failed + failed)

    def failures(self) -> list[tuple[Row, str, str]]:
        """Every failed row of the load so far (this run's and earlier runs'), by line."""
        found: dict[int, tuple[Row, str, str]] = {}
        for chunk in self.chunks:  # the state's other chunks are of an earlier input
            rows = {row.line: row for row in chunk.rows}
            for record in self.state.chunks.get(chunk.key, {}).values():
                for line, code, detail in record.get("failed", ()):
                    found[line] = (rows[line], code, detail)
        return [found[line] for line in sorted(found)]

    # -- the loop --

    def run(self) -> None:
        self._show()
        if not self.state.data["clean"] and self.to_send:
            self._adopt_lost_jobs()
        self.state.data["clean"] = False
        self.state.save()
        while self.to_send or self.pending:
            if self.client.stopped():
                raise Interrupted
            now = time.monotonic()
            if self.to_send and len(self.pending) < MAX_OPEN_JOBS:
                stage = self.to_send[0]
                if self.client.ready_in(self._post_op(stage.action)) <= 0:
                    self._send(self.to_send.popleft())
                    continue
            if self.pending and now >= self._poll_at:
                self._poll()
                continue
            self._idle()
        self.state.data["clean"] = True
        self.state.save()

    def _post_op(self, action: Action) -> str:
        return f"POST {job_path(self.res, action)}"

    def _idle(self) -> None:
        waits: list[tuple[float, str]] = []
        if self.to_send and len(self.pending) < MAX_OPEN_JOBS:
            waits.append(
                (self.client.ready_in(self._post_op(self.to_send[0].action)), "rate limit")
            )
        if self.pending:
            waits.append((self._poll_at - time.monotonic(), ""))
        delay, reason = min(waits)
        self.client.sleep(max(delay, 0.01), reason)

    def _send(self, stage: Stage) -> None:
        path = job_path(self.res, stage.action)
        token = f"{self.state.data['load_id']}:{stage.chunk.key}:{stage.action}"
        key = "backstock-load-" + hashlib.sha256(token.encode()).hexdigest()[:40]

        def recover() -> Answer | None:
            found = self._lost_job(stage)
            if found is None:
                return None
            document = {"data": {"id": found, "type": bodies.job_type(self.res, stage.action)}}
            return Answer(202, {}, orjson.dumps(document))

        self.uncertain = True  # until an answer arrives
        try:
            answer = self.client.request(
                "POST", path, job_body(self.res, stage.action, stage.rows),
                op=f"POST {path}", headers={"Idempotency-Key": key}, recover=recover,
            )  # fmt: skip
        except BaseException:
            self.to_send.appendleft(stage)  # still to send (or to find, if it went out)
            raise
        if self.state.data["started"] is None:
            self.state.data["started"] = self.client.server_time or time.time()
        if answer.status == 202:
            data = (answer.json() or {}).get("data") or {}
            job_id = data.get("id") or (data.get("attributes") or {}).get("job_id")
            if not isinstance(job_id, str) or not job_id:
                raise LoadFailed(f"POST {path} answered 202 without a job id")
            self._record_accepted(stage, job_id)
        elif answer.status in (400, 409, 413, 422):
            self._refused(stage, answer)
        else:
            self.uncertain = False
            self.to_send.appendleft(stage)
            raise LoadFailed(f"POST {path} answered {answer.status}: {answer.detail()}")
        self.uncertain = False  # recorded

    def _record_accepted(self, stage: Stage, job_id: str) -> None:
        self.state.put(stage.chunk, stage.action, {"job": job_id, "status": "accepted"})
        self.state.save()  # before anything else: a rerun must not send this chunk again
        self._accepted(stage)
        self.pending.append((stage, job_id))
        self._show()

    def _refused(self, stage: Stage, answer: Answer) -> None:
        """A job refused whole (400, 413, …): every row of it failed, with the error that
        points into it, or the first error."""
        errors = answer.errors() or [{"code": str(answer.status), "detail": answer.detail()}]
        general = errors[0]
        by_row: dict[int, dict[str, Any]] = {}
        for error in errors:
            index, _ = locate(_pointer(error), self.res)
            if index is not None and index < len(stage.rows):
                by_row.setdefault(index, error)
        failed = [
            [row.line, str(e.get("code", "error")), str(e.get("detail", ""))]
            for index, row in enumerate(stage.rows)
            for e in (by_row.get(index, general),)
        ]
        record = {"job": None, "status": "complete", "applied": 0, "failed": failed}
        self.state.put(stage.chunk, stage.action, record)
        self.state.save()
        self._completed(stage, record)
        self._show()

    def _poll(self) -> None:
        stage, job_id = self.pending[0]
        path = f"{job_path(self.res, stage.action)}/{quote(job_id, safe='')}"
        answer = self.client.request("GET", path, op=f"GET {job_path(self.res, stage.action)}/id")
        if answer.status == 404:
            detail = f"job {job_id} is gone (expired?): whether these rows applied is unknown"
            self._finish(stage, job_id, {"status": "complete", "errors": []}, detail)
            return
        if answer.status != 200:
            raise LoadFailed(f"GET {path} answered {answer.status}: {answer.detail()}")
        attributes = ((answer.json() or {}).get("data") or {}).get("attributes") or {}
        if attributes.get("status") in ("complete", "cancelled"):
            self._finish(stage, job_id, attributes)
            return
        self._head = (
            int(attributes.get("completed_count") or 0),
            int(attributes.get("failed_count") or 0),
        )
        self._show()
        self._poll_at = time.monotonic() + self._interval
        self._interval = min(POLL_SECONDS[1], self._interval * 1.5)

    def _finish(
        self, stage: Stage, job_id: str, attributes: dict[str, Any], lost: str | None = None
    ) -> None:
        self.pending.popleft()
        self._head = (0, 0)
        self._poll_at, self._interval = 0.0, POLL_SECONDS[0]
        outcome: dict[int, tuple[str, str]] = {}
        unmatched = 0
        for error in attributes.get("errors") or []:
            index, _ = locate(_pointer(error), self.res)
            if index is None or index >= len(stage.rows):
                unmatched += 1
                continue
            code, detail = str(error.get("code", "error")), str(error.get("detail", ""))
            outcome[stage.rows[index].line] = (code, detail)
        applied = int(attributes.get("completed_count") or 0)
        if lost is not None or attributes.get("status") == "cancelled":
            # Rows the job never reached (a job is applied in order) did not apply.
            reached = applied + int(attributes.get("failed_count") or 0)
            code, detail = ("lost", lost) if lost else ("cancelled", "the job was cancelled")
            for row in stage.rows[reached:]:
                outcome.setdefault(row.line, (code, detail))
        upsert = self.mode == "upsert" and stage.action == "create"
        conflicts = [line for line, (code, _) in outcome.items() if upsert and code in CONFLICTS]
        record = {
            "job": job_id, "status": "complete", "applied": applied,
            "failed": [[line, c, d] for line, (c, d) in outcome.items() if line not in conflicts],
            "conflicts": conflicts, "unmatched": unmatched,
        }  # fmt: skip
        self.state.put(stage.chunk, stage.action, record)
        self.state.save(soon=True)
        self._completed(stage, record)
        self._show()

    # -- jobs whose 202 was lost --

    def _lost_job(self, stage: Stage) -> str | None:
        """The job a lost ``POST`` of ``stage`` made, if the server's newest jobs show it: one
        this load does not know yet, created since it started, naming the same rows."""
        self._found.pop(stage.action, None)
        return self._unknown_jobs(stage.action).get(stage.ids())

    def _unknown_jobs(self, action: Action) -> dict[tuple[str, ...], str]:
        if action in self._found:
            return self._found[action]
        path = job_path(self.res, action)
        answer = self.client.request("GET", path, op=f"GET {path}")
        found: dict[tuple[str, ...], str] = {}
        jobs = (answer.json() or {}).get("data") if answer.status == 200 else None
        known = self.state.job_ids()
        started = self.state.data["started"] or self.state.data["created"]
        for job in jobs if isinstance(jobs, list) else []:
            created = _created_at(job)
            if job.get("id") in known or (created and started and created < started - 5):
                break  # newest first: from here on, jobs this load knows, or older ones
            linkage = ((job.get("relationships") or {}).get(self.res.plural) or {}).get("data")
            if isinstance(linkage, list):
                ids = tuple(str(one.get("id")) for one in linkage if isinstance(one, dict))
                found.setdefault(ids, str(job.get("id")))
        self._found[action] = found
        return found

    def _adopt_lost_jobs(self) -> None:
        """After a run that stopped with a ``POST`` unanswered (a crash, a second Ctrl-C),
        its job may exist: adopt it rather than send the rows again."""
        adopted = 0
        for stage in list(self.to_send):
            job_id = self._unknown_jobs(stage.action).pop(stage.ids(), None)
            if job_id is not None:
                self.to_send.remove(stage)
                self._record_accepted(stage, job_id)
                adopted += 1
        if adopted:
            self.ui.say(f"found {adopted} job(s) accepted before the last run stopped")
        self._found.clear()


def _pointer(error: dict[str, Any]) -> str | None:
    source = error.get("source")
    pointer = source.get("pointer") if isinstance(source, dict) else None
    return pointer if isinstance(pointer, str) else None


# ---- the failed-rows file ------------------------------------------------------------------------


def failed_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.failed{path.suffix}")


def write_failed(
    path: Path, fmt: Format, columns: list[str], failures: list[tuple[Row, str, str]]
) -> None:
    """The failed rows as they were read, with ``error_code`` and ``error_detail``; loading the
    file again retries them (the loader ignores those two columns)."""
    kept = [name for name in columns if name not in ERROR_COLUMNS]
    buffer = io.StringIO(newline="")
    if fmt == "csv":
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*kept, *ERROR_COLUMNS])
        for row, code, detail in failures:
            writer.writerow([*(row.values.get(name, "") for name in kept), code, detail])
        write_atomically(path, buffer.getvalue().encode())
        return
    lines = []
    for row, code, detail in failures:
        values = {k: v for k, v in row.values.items() if k not in ERROR_COLUMNS}
        lines.append(orjson.dumps(values | {"error_code": code, "error_detail": detail}))
    write_atomically(path, b"".join(line + b"\n" for line in lines))


# ---- the command ---------------------------------------------------------------------------------


@dataclass
class Stop:
    """SIGINT asks the load to stop at its next safe point; a second one stops it at once."""

    asked: bool = False
    ui: Ui | None = None

    def __call__(self) -> bool:
        return self.asked

    def handle(self, _signum: int, _frame: object) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        if self.ui is not None:  # no printing here: the console may be mid-write
            self.ui.progress.status = "stopping after the current request (Ctrl-C again: at once)"


@contextlib.contextmanager
def _sigint(stop: Stop) -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, stop.handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass(slots=True)
class Prepared:
    """A file read, chunked and validated: what a load sends, or a dry run reports."""

    res: Resource
    mode: Mode
    fmt: Format
    columns: list[str]
    rows: list[Row]
    chunks: list[Chunk]

    @property
    def invalid(self) -> list[Row]:
        return [row for row in self.rows if row.problems]


def prepare(
    file: Path,
    noun: str,
    mode: str,
    given_format: str | None = None,
    mapping_file: Path | None = None,
    chunk_size: int = MAX_ROWS,
) -> Prepared:
    """Read, map, convert, chunk and validate (no network); ``InputError`` when the file or an
    option cannot be used at all."""
    res = RESOURCES_BY_NOUN.get(noun)
    if res is None:
        raise InputError(f"--type must be one of {', '.join(RESOURCES_BY_NOUN)}, not '{noun}'")
    if mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, not '{mode}'")
    checked: Mode = mode
    fmt = detect_format(file, given_format)
    mapping = load_mapping(mapping_file)
    columns, records = read_records(file, fmt)
    plan = plan_columns(res, columns, mapping)
    rows = [build_row(res, record, plan) for record in records]
    chunks = make_chunks(res, checked, rows, chunk_size)
    validate(res, checked, chunks, plan)
    return Prepared(res, checked, fmt, columns, rows, chunks)


def report_invalid(rows: list[Row], shown: int = 50) -> None:
    for row in rows[:shown]:
        err.print(f"[red]line {row.line}:[/red] {escape('; '.join(row.problems))}", highlight=False)
    if len(rows) > shown:
        err.print(f"… and {len(rows) - shown} more invalid row(s)", highlight=False)


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[red]{escape(message)}[/red]")
    return typer.Exit(code)


File = Annotated[
    Path,
    typer.Argument(
        help="CSV or JSON Lines file of items, variants or categories (docs/loader.md).",
        exists=True, dir_okay=False, readable=True,
    ),
]  # fmt: skip
Noun = Annotated[str, typer.Option("--type", help="What the rows are: item, variant or category.")]
ModeOption = Annotated[
    str,
    typer.Option(
        "--mode",
        help="create, update, upsert (create; rows that exist then get an update) or delete.",
    ),
]
FormatOption = Annotated[
    str | None, typer.Option("--format", help="csv or jsonl (default: from the extension).")
]
MappingOption = Annotated[
    Path | None,
    typer.Option(
        "--mapping",
        help='JSON file renaming columns: {"source column": "attribute"}; null leaves one out.',
        exists=True, dir_okay=False,
    ),
]  # fmt: skip
Url = Annotated[str, typer.Option("--url", envvar="BACKSTOCK_URL", help="Base URL of the API.")]
Key = Annotated[
    str | None,
    typer.Option(
        "--key", envvar="BACKSTOCK_API_KEY", show_default=False,
        help="Private API key (pk_…), with catalogs:read and catalogs:write.",
    ),
]  # fmt: skip
FailedOption = Annotated[
    Path | None,
    typer.Option(
        "--failed", help="Where the failed rows go (default: INPUT.failed.EXT, e.g. a.failed.csv)."
    ),
]
StateOption = Annotated[
    Path | None,
    typer.Option("--state", help="The state file that makes a rerun resume (INPUT.state.json)."),
]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run", help="Validate every row and send nothing (exit 1 if any is invalid)."
    ),
]
SkipInvalid = Annotated[
    bool,
    typer.Option(
        "--skip-invalid",
        help="Send the valid rows even if some are invalid (those go to the failed-rows file).",
    ),
]
Fresh = Annotated[
    bool, typer.Option("--fresh", help="Ignore an existing state file and load everything again.")
]
ChunkSize = Annotated[
    int, typer.Option("--chunk-size", min=1, max=MAX_ROWS, help="Rows per job, at most 100.")
]


@app.command("load")
def load(
    file: File,
    noun: Noun,
    mode: ModeOption = "create",
    given_format: FormatOption = None,
    mapping: MappingOption = None,
    url: Url = DEFAULT_URL,
    key: Key = None,
    failed: FailedOption = None,
    state: StateOption = None,
    dry_run: DryRun = False,
    skip_invalid: SkipInvalid = False,
    fresh: Fresh = False,
    chunk_size: ChunkSize = MAX_ROWS,
) -> None:
    """Load a catalog from CSV or JSON Lines through bulk jobs: validated first, rate limits
    obeyed, resumable (Ctrl-C, then the same command again), failed rows written to a file
    that can be loaded again. Exit 0: every row applied; 1: some did not; 130: interrupted."""
    began = time.monotonic()
    try:
        prepared = prepare(file, noun, mode, given_format, mapping, chunk_size)
    except InputError as exc:
        raise _fail(str(exc), 2) from None
    invalid = prepared.invalid
    report_invalid(invalid)
    res, checked = prepared.res, prepared.mode
    if dry_run:
        jobs = sum(1 for chunk in prepared.chunks if chunk.valid())
        out.print(
            f"{len(prepared.rows)} rows: {len(prepared.rows) - len(invalid)} valid, "
            f"{len(invalid)} invalid; {jobs} {res.noun} {checked} job(s) would be sent "
            "(dry run: nothing sent)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1 if invalid else 0)
    if invalid and not skip_invalid:
        raise _fail(
            f"{len(invalid)} invalid row(s): nothing sent. Fix them, or pass --skip-invalid to "
            "send the valid rows and write the invalid ones to the failed-rows file.",
            1,
        )
    if not key:
        raise _fail("No API key: pass --key or set BACKSTOCK_API_KEY", 2)
    failed_file = failed or failed_path(file)
    state_file = state or file.with_name(f"{file.name}.state.json")
    if failed_file.resolve() in (file.resolve(), state_file.resolve()):
        raise _fail("--failed must name another file than the input and the state", 2)
    try:
        saved = State.open(state_file, {"type": res.noun, "mode": checked, "url": url}, fresh)
        loader = _load(prepared, saved, url, key)
    except InputError as exc:
        raise _fail(str(exc), 2) from None
    failures = loader.failures()
    if invalid:
        failures = sorted(
            [*failures, *((row, "invalid", "; ".join(row.problems)) for row in invalid)],
            key=lambda found: found[0].line,
        )
    if failures:
        write_failed(failed_file, prepared.fmt, prepared.columns, failures)
    elif failed_file.exists():
        failed_file.unlink()  # an earlier run's: loading it again would repeat applied rows
    tally = loader.tally
    failed_count = tally.failed + len(invalid)
    out.print(
        f"{res.noun} {checked} of {file.name}: {tally.rows} rows, {tally.jobs} jobs, "
        f"{tally.applied} applied, {failed_count} failed"
        f"{f' ({len(invalid)} invalid)' if invalid else ''}, {time.monotonic() - began:.1f} s",
        highlight=False,
        soft_wrap=True,
    )
    if tally.unmatched:
        err.print(
            f"{tally.unmatched} failure(s) a job reported could not be matched to a row",
            highlight=False,
        )
    if failures:
        out.print(
            f"Failed rows: {escape(str(failed_file))} (with error_code and error_detail); "
            "load that file again, with the same options, to retry them.",
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(1 if failed_count else 0)


def _load(prepared: Prepared, saved: State, url: str, key: str) -> Loader:
    """Send what the state has not, and wait for every job; on SIGINT or a failure, save the
    state, say where the load stopped and exit (130 or 1)."""
    stop = Stop()
    total = sum(len(chunk.valid()) for chunk in prepared.chunks)
    ui = Ui(err, total, f"{prepared.res.noun} {prepared.mode}")
    stop.ui = ui
    client = Client(url, key, ui, stop)
    loader = Loader(prepared.res, prepared.mode, prepared.chunks, client, saved, ui)
    problem: str | None = None
    with _sigint(stop), ui:
        try:
            loader.run()
        except (Interrupted, KeyboardInterrupt):
            problem = "interrupted"
        except LoadFailed as exc:
            problem = str(exc)
        finally:
            client.close()
            if problem is not None:
                saved.data["clean"] = not loader.uncertain
            saved.flush()
    if problem is None:
        return loader
    where = (
        f"next to send: line {loader.to_send[0].chunk.rows[0].line}"
        if loader.to_send
        else "every chunk sent"
    )
    summary = (
        f"{loader.tally.sent} of {total} rows sent in {loader.tally.jobs} jobs "
        f"({len(loader.pending)} not complete yet; {where}); state saved in {saved.path}"
    )
    if problem == "interrupted":
        err.print(
            f"Stopped: {escape(summary)}. Run the same command again to resume.", highlight=False
        )
        raise typer.Exit(130)
    err.print(f"[red]{escape(problem)}[/red]")
    err.print(f"{escape(summary)}. Run the same command again to resume.", highlight=False)
    raise typer.Exit(1)
