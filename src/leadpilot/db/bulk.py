"""Fast bulk inserts: ids reserved up front, then multi-row statements per table (no ORM unit of work).

Reserving ids before inserting lets a job link rows (lead → contact → account, event → lead) without a
RETURNING round trip, and lets it prepare the next batch while the previous one is being written.
``bulk_insert`` takes dicts of Python values; ``insert_tuples`` takes tuples already in the driver's
terms (``bind_value``), for jobs that build hundreds of thousands of rows and want no per-value work here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from typing import Any

from sqlalchemy import JSON, ColumnElement, Connection, Engine, Table, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

# SQLite's default limit on bound parameters per statement (SQLITE_MAX_VARIABLE_NUMBER, 3.32+).
SQLITE_MAX_VARIABLES = 32_766
# SQLite page cache of a bulk job's connection, in KiB (the engine's default is 32 MiB): a batch's inserts
# then stay in memory until its commit instead of spilling half-written index pages to the WAL.
BULK_JOB_CACHE_KIB = 256 * 1024
# WAL size, in pages, at which a bulk job's commit copies the log into the database (SQLite's default is
# 1000, about 4 MB). A batch rewrites thousands of index pages, so with the default every commit would
# also checkpoint, copying pages that the next batch changes again; every tenth one does here.
BULK_JOB_CHECKPOINT_PAGES = 10_000
# PRAGMA temp_store's value for "in memory".
SQLITE_TEMP_STORE_MEMORY = 2


def allocate_ids(session: Session, table: Table, count: int) -> list[int]:
    """Reserve ``count`` new primary-key values of ``table`` in the session's transaction.

    PostgreSQL: values from the table's sequence. SQLite: the table is AUTOINCREMENT, so bumping its
    sqlite_sequence entry reserves the block; later inserts, ours or anyone's, get ids above it.
    """
    if count <= 0:
        return []
    name = table.name
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(
            text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
            {"t": name, "n": count},
        )
        return [r[0] for r in rows]
    if not table.dialect_options["sqlite"].get("autoincrement"):
        raise ValueError(f"table {name} must be sqlite_autoincrement=True to reserve ids")
    seq = session.execute(text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": name}).scalar()
    top = session.execute(text(f'SELECT COALESCE(MAX(id), 0) FROM "{name}"')).scalar_one()  # noqa: S608
    start = max(seq or 0, top)
    if seq is None:
        session.execute(
            text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :s)"), {"t": name, "s": start + count}
        )
    else:
        session.execute(text("UPDATE sqlite_sequence SET seq = :s WHERE name = :t"), {"t": name, "s": start + count})
    return list(range(start + 1, start + 1 + count))


def reserve_ids(engine: Engine, table: Table, count: int) -> list[int]:
    """Reserve ids in a short transaction of their own (a bulk job fills them in later batches)."""
    with Session(engine) as session:
        ids = allocate_ids(session, table, count)
        session.commit()
    return ids


def bulk_insert(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert many rows (all with the keys of the first) with one executemany; types processed as usual."""
    if not rows:
        return
    conn = session.connection()
    dialect = conn.dialect
    if dialect.name == "postgresql":
        _copy_rows(conn, table, rows)
        return
    if dialect.name != "sqlite":
        conn.execute(table.insert(), list(rows))
        return
    # SQLite: values processed column by column (a constant column, such as a batch timestamp, once),
    # then the driver's executemany; Core's per-row parameter building costs more than SQLite's insert.
    names = list(rows[0])
    columns: list[list[Any]] = []
    for name in names:
        values = [row[name] for row in rows]
        processor = table.c[name].type._cached_bind_processor(dialect)
        if processor is not None:
            first = values[0]
            if all(v is first for v in values):
                values = [processor(first)] * len(values)
            else:
                values = list(map(processor, values))
        columns.append(values)
    quoted = ", ".join(f'"{name}"' for name in names)
    # Multi-row VALUES statements instead of executemany: one sqlite3_step per statement instead of per
    # row, so a writer thread gives up the GIL for a whole statement (no convoy with the planning thread).
    _sqlite_insert(conn, table.name, quoted, len(names), list(zip(*columns, strict=True)))


def bind_value(dialect: Dialect, column: ColumnElement[Any], value: Any) -> Any:
    """``value`` as the driver is given it for ``column`` (a timestamp becomes text on SQLite, for example)."""
    processor = column.type._cached_bind_processor(dialect)
    return value if processor is None else processor(value)


def insert_tuples(conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Insert rows given as tuples in ``columns`` order, with values as the driver takes them.

    Nothing is converted here: use ``bind_value`` for typed values such as timestamps, and JSON text for
    JSON columns. SQLite: multi-row INSERT statements; PostgreSQL: COPY.
    """
    if not rows:
        return
    dialect = conn.dialect.name
    names = ", ".join(f'"{name}"' for name in columns)
    if dialect == "postgresql":
        driver: Any = conn.connection.driver_connection
        with driver.cursor() as cursor, cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(row)
        return
    if dialect != "sqlite":
        raise NotImplementedError(f"insert_tuples supports SQLite and PostgreSQL, not {dialect}")
    _sqlite_insert(conn, table.name, names, len(columns), rows)


def _statement_sizes(rows: int, per_statement: int) -> Iterator[int]:
    """Rows per INSERT statement: full statements, then the rest as descending powers of two.

    Each distinct row count is another statement for SQLite to compile (a multi-row VALUES takes about as
    long to compile as to run); with these sizes, every batch reuses the driver's cached statements.
    """
    full, rest = divmod(rows, per_statement)
    yield from [per_statement] * full
    size = 1 << max(rest.bit_length() - 1, 0)
    while rest:
        if size <= rest:
            yield size
            rest -= size
        size >>= 1


def _sqlite_insert(conn: Connection, table: str, names: str, width: int, rows: Sequence[Sequence[Any]]) -> None:
    """Multi-row INSERT statements of ``width`` values a row, as few and as reusable as the limits allow."""
    one_row = "(" + ", ".join("?" * width) + ")"
    start = 0
    for size in _statement_sizes(len(rows), max(1, SQLITE_MAX_VARIABLES // width)):
        sql = f'INSERT INTO "{table}" ({names}) VALUES ' + ", ".join([one_row] * size)  # noqa: S608
        conn.exec_driver_sql(sql, tuple(chain.from_iterable(rows[start : start + size])))
        start += size


@contextmanager
def bulk_job_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for a bulk job's transactions (one per batch).

    On SQLite, while the job lasts, it has a larger page cache and checkpoints the WAL less often; both are
    set back when it ends, before the connection returns to the pool. Journal mode (WAL) and synchronous
    stay as on every connection, so a committed batch is as durable as any other commit, and readers see
    each batch as soon as it commits.
    """
    with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            yield conn
            return
        # The driver's own connection runs PRAGMAs outside a transaction (SQLAlchemy's would begin one).
        driver: Any = conn.connection.driver_connection
        settings = {
            "cache_size": -BULK_JOB_CACHE_KIB,
            "wal_autocheckpoint": BULK_JOB_CHECKPOINT_PAGES,
            # A multi-row INSERT keeps a statement journal (the pages it changed, to undo just that statement
            # on a constraint error); in memory instead of a temporary file, that costs no system calls.
            "temp_store": SQLITE_TEMP_STORE_MEMORY,
        }
        previous = {name: int(driver.execute(f"PRAGMA {name}").fetchone()[0]) for name in settings}
        try:
            for name, value in settings.items():
                driver.execute(f"PRAGMA {name}={value}")
            yield conn
        finally:
            for name, value in previous.items():
                driver.execute(f"PRAGMA {name}={value}")


def _copy_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """PostgreSQL: COPY ... FROM STDIN in the session's transaction (several times faster than INSERTs)."""
    names = list(rows[0])
    as_json = {n for n in names if isinstance(table.c[n].type, JSON)}
    columns = ", ".join(f'"{n}"' for n in names)
    driver: Any = conn.connection.driver_connection
    with driver.cursor() as cursor, cursor.copy(f'COPY "{table.name}" ({columns}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row(
                [
                    json.dumps(row[n], ensure_ascii=False) if n in as_json and row[n] is not None else row[n]
                    for n in names
                ]
            )


def refresh_statistics(engine: Engine) -> None:
    """ANALYZE after a bulk job, so the query planner picks the right index for the new data.

    Without statistics SQLite assumes any equality index is selective and may sort a third of the
    leads table for a filtered page; with them the same page takes about a millisecond.
    """
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
