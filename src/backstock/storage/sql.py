"""How every statement runs: written once (SQL text with ``:name`` parameters, or SQLAlchemy
Core where queries are composed), compiled by SQLAlchemy once per dialect, and handed straight to
the driver (sqlite3, or psycopg's asyncio connections) with its parameters.

``Conn`` is the one interface storage code runs statements through. Its methods are coroutines
on both databases: on PostgreSQL they await the network; on SQLite they return at once (sqlite3
is synchronous), which lets ``Database`` run a SQLite unit of work on its writer thread by
driving the coroutine to completion (``run_to_completion``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Coroutine, Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import msgspec
import psycopg
from psycopg.pq import ExecStatus
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ClauseElement,
    Text,
    TextClause,
    bindparam,
    cast,
    column,
    func,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.selectable import TableValuedAlias

Dialect_ = Literal["sqlite", "postgresql"]
Row = tuple[Any, ...]
Params = Mapping[str, Any]
T = TypeVar("T")
_ENCODE = msgspec.json.Encoder().encode
_TUPLES_OK = ExecStatus.TUPLES_OK

_DIALECTS: dict[str, Dialect] = {
    "sqlite": sqlite.dialect(paramstyle="named"),
    "postgresql": postgresql.psycopg.dialect(),  # type: ignore[no-untyped-call]  # %(name)s
}


class Statement:
    """A named statement: its SQL for each database, compiled on first use (with the values
    of any constants SQLAlchemy turned into parameters)."""

    __slots__ = ("_compiled", "name", "postgresql", "sqlite")

    def __init__(
        self, name: str, sql: str | ClauseElement, postgresql: str | ClauseElement | None = None
    ) -> None:
        self.name = name
        self.sqlite = text(sql) if isinstance(sql, str) else sql
        alternative = postgresql if postgresql is not None else sql
        self.postgresql = text(alternative) if isinstance(alternative, str) else alternative
        self._compiled: dict[str, tuple[str, dict[str, Any]]] = {}

    def sql(self, dialect: str) -> tuple[str, dict[str, Any]]:
        compiled = self._compiled.get(dialect)
        if compiled is None:
            clause = self.sqlite if dialect == "sqlite" else self.postgresql
            compiled = self._compiled[dialect] = compile_clause(clause, dialect)
        return compiled

    def __repr__(self) -> str:
        return f"Statement({self.name!r})"


def compile_clause(clause: ClauseElement, dialect: str) -> tuple[str, dict[str, Any]]:
    """The SQL, and the values of the parameters SQLAlchemy made of constants."""
    compiled = clause.compile(
        dialect=_DIALECTS[dialect], compile_kwargs={"render_postcompile": True}
    )
    constants = {name: value for name, value in compiled.params.items() if value is not None}
    return str(compiled), constants


def _bind(sql: tuple[str, dict[str, Any]], params: Params | None) -> tuple[str, Params]:
    text_, constants = sql
    if constants:
        return text_, {**constants, **(params or {})}
    return text_, params or {}


_COMPOSED: dict[tuple[Hashable, str], tuple[str, dict[str, Any]]] = {}


def composed(
    key: Hashable, dialect: str, build: Callable[[], ClauseElement]
) -> tuple[str, dict[str, Any]]:
    """The SQL of a composed query (a list with its filters and page), compiled once per
    shape: ``key`` names everything ``build`` varies on, never a value (values are bound)."""
    sql = _COMPOSED.get((key, dialect))
    if sql is None:
        if len(_COMPOSED) > 4096:  # shapes are few; this only bounds a pathological client
            _COMPOSED.clear()
        sql = _COMPOSED[(key, dialect)] = compile_clause(build(), dialect)
    return sql


def asked(text: str) -> str:
    """An id as a read asks for it: one holding NUL matches no stored id (none holds one, and
    PostgreSQL refuses the parameter, which would fail every read asked together with it), so
    it is asked as "", which no id is either."""
    return "" if "\x00" in text else text


def rows_table(name: str, parameter: str, columns: Mapping[str, Any]) -> TableValuedAlias:
    """PostgreSQL: the parameter ``parameter``, a JSON array of one object per row
    (``rows_json``), as the table ``name`` of these columns (name: type), for a statement over
    many rows at once. JSON, where arrays are dumped by psycopg in Python: a worker's batch as one
    statement (one per resource, each with its own result, took 44 % of its CPU); 16 polls
    read together, none found, 0.82M instructions of the client a statement, where the asks as
    four text arrays took 1.85M (bench/README.md, "Polls read together")."""
    fields = [column(field, type_) for field, type_ in columns.items()]
    table = func.json_to_recordset(cast(bindparam(parameter), JSON)).table_valued(*fields)
    return table.render_derived(name, with_types=True)


def rows_json(values: Sequence[Mapping[str, Any]]) -> str:
    """The JSON parameter of a ``rows_table``."""
    return _ENCODE(values).decode()


def asks_table(name: str, columns: Sequence[str], flags: Sequence[str] = ()) -> TableValuedAlias:
    """The asks of a read together (``Database.read_together``), on PostgreSQL: the parameter
    ``asks`` (``asks_json``) as a table of these text columns (and boolean ``flags``), its rows
    numbered from 1 in ``n``."""
    types = {"n": BigInteger} | dict.fromkeys(columns, Text) | dict.fromkeys(flags, Boolean)
    return rows_table(name, "asks", types)


def asks_json(table: TableValuedAlias, values: Iterable[Sequence[Any]]) -> str:
    """The ``asks`` parameter of the ``asks_table`` ``table``: each ask's values, in the
    order of its columns after ``n``."""
    columns = table.c.keys()[1:]
    return rows_json(
        [{"n": n, **dict(zip(columns, ask, strict=True))} for n, ask in enumerate(values, 1)]
    )


class Conn:
    """A connection as storage code sees it: run named statements, get tuples back.

    On PostgreSQL a write unit runs in psycopg's pipeline mode (``pipeline``): a statement is
    sent at once and its result read only when asked for, so ``BEGIN`` goes with the unit's
    first query, and a ``later`` write with the next statement whose result is read (or with
    the ``COMMIT``): one round trip for both. Every other method reads its result, and raises
    the error of anything sent before it."""

    __slots__ = ("dialect", "driver", "pipeline")

    def __init__(self, dialect: Dialect_, driver: Any, pipeline: Any = None) -> None:
        self.dialect = dialect
        self.driver = driver
        self.pipeline = pipeline

    @property
    def postgres(self) -> bool:
        return self.dialect == "postgresql"

    def array(self, values: Iterable[Any]) -> Any:
        """Strings or integers as one parameter: a JSON array for SQLite (read with
        ``json_each``), an array for PostgreSQL (read with ``= ANY``)."""
        values = list(values)
        return values if self.postgres else _ENCODE(values).decode()

    async def query(self, compiled: tuple[str, dict[str, Any]], params: Params) -> list[Row]:
        """A composed query's rows (``composed`` compiles it)."""
        sql, bound = _bind(compiled, params)
        if self.dialect == "sqlite":
            return self.driver.execute(sql, bound).fetchall()  # type: ignore[no-any-return]
        cursor = await self.driver.execute(sql, bound)
        return await cursor.fetchall()  # type: ignore[no-any-return]

    async def one(self, statement: Statement, params: Params | None = None) -> Row | None:
        rows = await self.all(statement, params)
        return rows[0] if rows else None

    async def all(self, statement: Statement, params: Params | None = None) -> list[Row]:
        sql, bound = _bind(statement.sql(self.dialect), params)
        if self.dialect == "sqlite":
            return self.driver.execute(sql, bound).fetchall()  # type: ignore[no-any-return]
        cursor = await self.driver.execute(sql, bound)
        if self.pipeline is not None:  # its result, and those of what was sent before it
            await self.pipeline.sync()
        # Whether it returned rows, from the result's status: ``cursor.description`` would
        # build a Column for each column first (a seventh of a PostgreSQL poll's CPU).
        result = cursor.pgresult
        if result is None or result.status != _TUPLES_OK:
            return []
        return await cursor.fetchall()  # type: ignore[no-any-return]

    async def run(self, statement: Statement, params: Params | None = None) -> int:
        """Run a write; the number of rows it changed."""
        sql, bound = _bind(statement.sql(self.dialect), params)
        if self.dialect == "sqlite":
            return int(self.driver.execute(sql, bound).rowcount)
        cursor = await self.driver.execute(sql, bound)
        if self.pipeline is not None:  # the count comes with the result
            await self.pipeline.sync()
        return int(cursor.rowcount)

    async def later(self, statement: Statement, params: Params | None = None) -> None:
        """Run a write whose outcome nothing reads: in a PostgreSQL write unit, its result (and
        error) is read with the next statement's, or at the commit."""
        sql, bound = _bind(statement.sql(self.dialect), params)
        if self.dialect == "sqlite":
            self.driver.execute(sql, bound)
        else:
            await self.driver.execute(sql, bound)

    async def many(self, statement: Statement, rows: Sequence[Params]) -> int:
        """Run a write once per row (statements without constants: see ``Statement``). On
        SQLite, the number of rows changed in all; on PostgreSQL -1: in a write unit's pipeline
        the results are read later (a count there is a statement's ``RETURNING``)."""
        if not rows:
            return 0
        sql, _ = statement.sql(self.dialect)
        if self.dialect == "sqlite":
            return int(self.driver.executemany(sql, rows).rowcount)
        async with self.driver.cursor() as cursor:
            await cursor.executemany(sql, rows)
        return -1


def run_to_completion(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (storage work on a SQLite ``Conn``) without an
    event loop; a coroutine that does suspend is a bug and raises."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("SQLite work awaited something that suspends")


def driver_errors() -> tuple[type[BaseException], ...]:
    return (sqlite3.Error, psycopg.Error)


__all__ = [
    "Conn",
    "Row",
    "Statement",
    "TextClause",
    "compile_clause",
    "composed",
    "run_to_completion",
]
