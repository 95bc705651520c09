"""Listing helpers: whitelisted sorting and opaque keyset (cursor) pagination for any table."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Row, Select, func, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from leadpilot.crm.errors import Invalid

T = TypeVar("T")


@dataclass(frozen=True)
class SortKey:
    """A sortable column; nullable ones sort as ``null_as`` so keyset comparisons stay total."""

    column: InstrumentedAttribute[Any]
    null_as: Any = None

    @property
    def expr(self) -> ColumnElement[Any]:
        if self.null_as is None:
            return self.column  # type: ignore[return-value]
        return func.coalesce(self.column, self.null_as)

    def value_of(self, row: Any) -> Any:
        value = getattr(row, self.column.key)
        return self.null_as if value is None else value


def sort_keys(
    *columns: InstrumentedAttribute[Any], **nullable: tuple[InstrumentedAttribute[Any], Any]
) -> dict[str, SortKey]:
    """Sortable keys by name: plain columns, and nullable ones given as (column, value for NULL)."""
    keys = {c.key: SortKey(c) for c in columns}
    keys.update({name: SortKey(col, null_as) for name, (col, null_as) in nullable.items()})
    return keys


@dataclass
class Page(Generic[T]):
    """One page of results and the cursor of the next (None on the last page)."""

    items: list[T]
    next_cursor: str | None


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"dt": value.isoformat()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "dt" in value:
        return datetime.fromisoformat(value["dt"])
    return value


def encode_cursor(sort: str, values: Sequence[Any]) -> str:
    raw = json.dumps({"s": sort, "v": [_encode(v) for v in values]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        values = [_decode(v) for v in data["v"]]
        if data["s"] != sort or len(values) != 2:
            raise ValueError("cursor belongs to another sort order")
    except (ValueError, KeyError, TypeError, binascii.Error, json.JSONDecodeError) as exc:
        raise Invalid(f"cursor is not valid for sort {sort!r}; start again without a cursor", field="cursor") from exc
    return values


def _check_cursor_types(sort_key: SortKey, value: Any, last_id: Any, sort: str) -> None:
    """A forged cursor whose values do not fit the sort column is refused, not sent to the database."""
    expected = sort_key.column.type.python_type
    ok_id = isinstance(last_id, int) and not isinstance(last_id, bool) and 0 <= last_id < 2**63
    if expected is float:
        ok_value = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected is int:
        ok_value = isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63
    elif expected is datetime:
        ok_value = isinstance(value, datetime) and value.tzinfo is not None
    else:
        ok_value = isinstance(value, expected)
    if not (ok_id and ok_value):
        raise Invalid(f"cursor is not valid for sort {sort!r}; start again without a cursor", field="cursor")


def _keyset_page_statement(
    stmt: Select[Any], *, pk: Any, sortable: Mapping[str, SortKey], sort: str, cursor: str | None, limit: int
) -> tuple[Select[Any], SortKey]:
    """``stmt`` ordered by ``sort`` then id, after the cursor's position, limited to one row more than a page."""
    descending = sort.startswith("-")
    key = sort.lstrip("-")
    if key not in sortable:
        raise Invalid(f"cannot sort by {key!r}; choose one of {', '.join(sorted(sortable))}", field="sort")
    sort_key = sortable[key]
    column = sort_key.expr
    if cursor:
        last_value, last_id = decode_cursor(cursor, sort)
        _check_cursor_types(sort_key, last_value, last_id, sort)
        # A row-value comparison, not "a < x OR (a = x AND id < y)": SQLite and PostgreSQL both turn it into
        # one range on a (column, id) index, where the OR form tempts SQLite into a multi-index OR and a sort.
        position = tuple_(column, pk)
        after = position < (last_value, last_id) if descending else position > (last_value, last_id)
        stmt = stmt.where(after)
    order = (column.desc(), pk.desc()) if descending else (column.asc(), pk.asc())
    return stmt.order_by(*order).limit(limit + 1), sort_key


def _page(rows: list[Any], sort_key: SortKey, sort: str, limit: int) -> Page[Any]:
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(sort, [sort_key.value_of(last), last.id])
    return Page(rows, next_cursor)


def paginate(
    session: Session,
    stmt: Select[Any],
    *,
    model: type,
    sortable: Mapping[str, SortKey],
    sort: str,
    cursor: str | None,
    limit: int,
) -> Page[Any]:
    """ORM objects of ``stmt`` ordered by ``sort`` (a key of ``sortable``, ``-`` prefix for descending) then id."""
    pk = model.id  # type: ignore[attr-defined]
    stmt, sort_key = _keyset_page_statement(stmt, pk=pk, sortable=sortable, sort=sort, cursor=cursor, limit=limit)
    return _page(list(session.scalars(stmt).all()), sort_key, sort, limit)


def paginate_rows(
    session: Session,
    stmt: Select[Any],
    *,
    pk: Any,
    sortable: Mapping[str, SortKey],
    sort: str,
    cursor: str | None,
    limit: int,
) -> Page[Row[Any]]:
    """Like ``paginate`` for a select of columns: plain rows (named like the columns), no ORM objects.

    Executed on the session's connection, so no identity map, no instance state and no ORM result
    processing: for a page of 50 wide rows that is most of the cost of a list request.
    """
    stmt, sort_key = _keyset_page_statement(stmt, pk=pk, sortable=sortable, sort=sort, cursor=cursor, limit=limit)
    return _page(list(session.connection().execute(stmt).all()), sort_key, sort, limit)
