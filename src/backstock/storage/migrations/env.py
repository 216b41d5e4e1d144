"""Alembic environment: the URL comes from the caller (``backstock migrate``), never a file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from backstock.storage.database import sqlalchemy_url
from backstock.storage.schema import metadata

config = context.config
url = sqlalchemy_url(config.get_main_option("sqlalchemy.url") or "")
connection = config.attributes.get("connection")


def _run(conn: object) -> None:
    context.configure(
        connection=conn,  # type: ignore[arg-type]
        target_metadata=metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:
    engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
