"""Idempotent, batched lead import with de-duplication and a per-row error report.

Each batch commits in one transaction: accounts, contacts, leads, their events (lead_created /
lead_merged), the fingerprints of applied rows, and an audit entry. A re-run skips every row whose
fingerprint is already recorded, so running a file twice, or again after a crash half-way, ends in
the same state as one clean run.

De-duplication: a row matching an existing lead by phone, by e-mail, or by company + product line
is merged into it: empty fields are filled, nothing is overwritten, and a lead_merged event records
what was filled and what conflicted. A lead without a contact (or account) gets one from the row.

The work is split so that no step waits on another for long: worker processes validate and normalise
rows and send them back as plain tuples (the main process validates a chunk itself whenever it would
otherwise wait for them); the main process plans each batch in memory against an index of the store
(``_Known``), with ids reserved ahead of time, into ready-made row tuples; a writer thread inserts them
with multi-row statements and applies the merges into stored leads, one UPDATE per set of filled
columns, while the main process plans the next batch.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import json
import marshal
import math
import multiprocessing
import os
import pickle
import queue
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from json import encoder as json_encoder
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, select, update
from sqlalchemy.orm import Session

from leadpilot.crm.access import SYSTEM, Actor
from leadpilot.crm.audit import audit
from leadpilot.crm.errors import Invalid
from leadpilot.crm.events import EventType, append_events_bulk, bus
from leadpilot.crm.models import Account, Contact, Event, ImportedRow, ImportRun, Lead, Stage
from leadpilot.db.base import utcnow
from leadpilot.db.bulk import bind_value, bulk_job_connection, insert_tuples, refresh_statistics, reserve_ids
from leadpilot.db.engine import make_engine
from leadpilot.intake.mapping import Mapping, MappingFile, build_mapping, load_mapping_file, mapping_as_dict
from leadpilot.intake.reader import CsvIndex, CsvPiece, read_table
from leadpilot.intake.reader import Table as FileTable
from leadpilot.intake.validate import CLEAN_FIELDS, CleanValues, RowError, clean_values, fingerprint

Progress = Callable[[int, int], None]
# Plain strings: reading an Enum's .value costs more than it looks in a loop over 100,000 rows.
NEW_STAGE = Stage.NEW.value
LEAD_CREATED = EventType.LEAD_CREATED.value
LEAD_MERGED = EventType.LEAD_MERGED.value
MAX_STORED_ERRORS = 10_000
# A large import changes the data's shape enough that the query planner needs fresh statistics.
ANALYZE_AFTER_CREATED = 1_000
# Ids per IN (...) list when reading the stored leads that rows merge into.
READ_CHUNK = 500
# Rows per piece of validation work, and pieces queued per worker process: small pieces let the importing
# process, when it validates one itself, soon get back to feeding the writer.
PIECE_ROWS = 1000
PIECES_QUEUED = 8
HELP_CHECK_SECONDS = 0.01
# Batches a writer process may have in hand (one being written, one waiting).
WRITER_BATCHES_AHEAD = 2
# How often a validation worker checks that the importing process is still there.
PARENT_CHECK_SECONDS = 1.0
# How long a thread may hold Python's interpreter lock while another waits for it, during an import (the
# default is 5 ms). The writer thread needs the lock back after each statement, and would otherwise wait
# up to the whole interval for the planning thread each time: about 25 times per batch.
IMPORT_SWITCH_INTERVAL = 0.0005

# Positions in a clean row (validate.CleanValues: CleanRow's fields in order).
_AT = {name: i for i, name in enumerate(CLEAN_FIELDS)}
ROW, COMPANY, COMPANY_KEY, CONTACT_NAME = _AT["row"], _AT["company"], _AT["company_key"], _AT["contact_name"]
PHONE, EMAIL, PRODUCT_LINE, SOURCE = _AT["phone"], _AT["email"], _AT["product_line"], _AT["source"]
REGION, BUDGET, INDUSTRY, COMPANY_SIZE = _AT["region"], _AT["budget"], _AT["industry"], _AT["company_size"]
TITLE, NOTES, EXTERNAL_ID, CONSENT = _AT["title"], _AT["notes"], _AT["external_id"], _AT["consent"]
DO_NOT_CALL, COMPANY_LINE = _AT["do_not_call"], _AT["company_line"]
# What a merge may fill, as {position in the row: stored column}, per record. In a lead_merged event the
# names are the columns: a lead's as they are, a contact's and an account's with a prefix.
LEAD_FILL = {_AT[n]: n for n in ("title", "product_line", "source", "region", "budget", "notes", "external_id")}
CONTACT_FILL = {CONTACT_NAME: "name", PHONE: "phone", EMAIL: "email"}
ACCOUNT_FILL = {INDUSTRY: "industry", REGION: "region", COMPANY_SIZE: "size"}
FILL_GROUPS = (("", LEAD_FILL), ("contact.", CONTACT_FILL), ("account.", ACCOUNT_FILL))
# The columns of the row tuples a batch inserts, in tuple order.
ACCOUNT_COLUMNS = ("id", "name", "name_key", "industry", "region", "size", "created_at", "updated_at")
CONTACT_COLUMNS = ("id", "account_id", "name", "phone", "email", "consent", "do_not_call", "created_at", "updated_at")
LEAD_COLUMNS = (
    *("id", "account_id", "contact_id", "title", "product_line", "source", "region", "budget", "notes"),
    *("external_id", "stage", "stage_changed_at", "version", "created_at", "updated_at"),
)
EVENT_COLUMNS = ("id", "type", "lead_id", "actor_id", "occurred_at", "recorded_at", "payload")
IMPORTED_COLUMNS = ("fingerprint", "lead_id", "run_id")

# A valid row as the validation workers send it: (values, fingerprint, lead_created payload as JSON text).
Clean = tuple[CleanValues, bytes, str]
Validated = tuple[int, list[Clean], list[RowError]]
_json_str = json_encoder.encode_basestring_ascii  # how json.dumps writes a str (ensure_ascii, as stored)


@dataclass
class ImportSummary:
    """What an import did; ``to_json`` is what ``leadpilot import leads --json`` prints."""

    run_id: int
    file: str
    total_rows: int = 0
    created: int = 0
    merged: int = 0
    unchanged: int = 0
    rejected: int = 0
    seconds: float = 0.0
    errors: list[RowError] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)
    unmapped_headers: list[str] = field(default_factory=list)
    encoding: str | None = None
    delimiter: str | None = None

    @property
    def rows_per_second(self) -> float:
        return self.total_rows / self.seconds if self.seconds else 0.0

    def to_json(self, max_errors: int = 1000) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "file": self.file,
            "total_rows": self.total_rows,
            "created": self.created,
            "merged": self.merged,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "mapping": self.mapping,
            "unmapped_headers": self.unmapped_headers,
            "encoding": self.encoding,
            "delimiter": self.delimiter,
            "errors": [e.__dict__ for e in self.errors[:max_errors]],
            "errors_truncated": len(self.errors) > max_errors,
        }


def created_payload(values: CleanValues, run_id: int) -> str:
    """The lead_created payload of a row as JSON text, byte for byte what ``json.dumps`` makes of the dict
    ``{"via": "import", "run_id", "row", "source", "product_line"}`` (built without it: one per row)."""
    source = _json_str(values[SOURCE] or "import")
    product_line = "null" if values[PRODUCT_LINE] is None else _json_str(values[PRODUCT_LINE])
    return (
        f'{{"via": "import", "run_id": {run_id}, "row": {values[ROW]}, '
        f'"source": {source}, "product_line": {product_line}}}'
    )


def merged_payload(run_id: int, row: int, matched_by: str, filled: list[str], conflicts: list[str]) -> str:
    """The lead_merged payload as JSON text."""
    return json.dumps(
        {
            "run_id": run_id,
            "row": row,
            "matched_by": matched_by,
            "filled": sorted(filled),
            "conflicts": sorted(conflicts),
        }
    )


@dataclass
class _Known:
    """In-memory index of the store for de-duplication, kept current as batches are planned."""

    by_phone: dict[str, int] = field(default_factory=dict)
    by_email: dict[str, int] = field(default_factory=dict)
    by_company_line: dict[tuple[str, str], int] = field(default_factory=dict)
    accounts: dict[str, int] = field(default_factory=dict)
    fingerprints: set[bytes] = field(default_factory=set)
    # Leads with no account / no contact: a merge links one (planned here, so ids are known up front).
    without_account: set[int] = field(default_factory=set)
    without_contact: set[int] = field(default_factory=set)

    def match(self, row: CleanValues) -> tuple[int | None, str]:
        phone = row[PHONE]
        if phone and phone in self.by_phone:
            return self.by_phone[phone], "phone"
        email = row[EMAIL]
        if email and email in self.by_email:
            return self.by_email[email], "email"
        key = row[COMPANY_LINE]
        if key and key in self.by_company_line:
            return self.by_company_line[key], "company+product_line"
        return None, ""

    def remember(self, lead_id: int, row: CleanValues) -> None:
        phone, email, key = row[PHONE], row[EMAIL], row[COMPANY_LINE]
        if phone and phone not in self.by_phone:
            self.by_phone[phone] = lead_id
        if email and email not in self.by_email:
            self.by_email[email] = lead_id
        if key and key not in self.by_company_line:
            self.by_company_line[key] = lead_id


def _load_known(session: Session) -> _Known:
    known = _Known()
    stmt = (
        select(Lead.id, Lead.account_id, Lead.contact_id, Contact.phone, Contact.email, Account.name_key)
        .add_columns(Lead.product_line)
        .outerjoin(Contact, Contact.id == Lead.contact_id)
        .outerjoin(Account, Account.id == Lead.account_id)
        .order_by(Lead.id)
    )
    for lead_id, account_id, contact_id, phone, email, name_key, product_line in session.execute(stmt):
        if phone:
            known.by_phone.setdefault(phone, lead_id)
        if email:
            known.by_email.setdefault(email, lead_id)
        if name_key:
            known.by_company_line.setdefault((name_key, (product_line or "").strip().lower()), lead_id)
        if account_id is None:
            known.without_account.add(lead_id)
        if contact_id is None:
            known.without_contact.add(lead_id)
    for account_id, name_key in session.execute(select(Account.id, Account.name_key).order_by(Account.id)):
        known.accounts.setdefault(name_key, account_id)
    known.fingerprints = set(session.scalars(select(ImportedRow.fingerprint)))
    return known


def _default_title(row: CleanValues) -> str:
    who = row[COMPANY] or row[CONTACT_NAME] or ""
    return f"{who} · {row[PRODUCT_LINE]}" if row[PRODUCT_LINE] else who


def _is_empty(value: Any) -> bool:
    return value is None or value == ""


class _IdPool:
    """Ids reserved for one table, handed out in order.

    SQLite: everything the import may need is reserved up front, with one UPDATE of sqlite_sequence
    (reserving later would wait for the writer's open transaction). PostgreSQL: ``block`` ids at a time,
    when needed (each costs a nextval, so a re-run, which creates nothing, reserves none).
    """

    def __init__(self, engine: Engine, model: type, expected: int, block: int) -> None:
        self.engine, self.table = engine, model.__table__  # type: ignore[attr-defined]
        self.block = max(block, 1)
        self.ids = reserve_ids(engine, self.table, expected) if engine.dialect.name == "sqlite" else []
        self.used = 0

    def _reserve(self, count: int) -> None:
        # Also where an SQLite import whose row count was an estimate (an XLSX file's stated size can be
        # wrong) gets more.
        self.ids.extend(reserve_ids(self.engine, self.table, max(count, self.block)))

    def take(self, count: int) -> list[int]:
        short = self.used + count - len(self.ids)
        if short > 0:
            self._reserve(short)
        taken = self.ids[self.used : self.used + count]
        self.used += count
        return taken

    def next(self) -> int:
        if self.used >= len(self.ids):
            self._reserve(1)
        self.used += 1
        return self.ids[self.used - 1]


@dataclass
class _StoredMerge:
    """A row to merge into a lead stored before this batch, with the ids the planner decided for it."""

    row: CleanValues
    matched_by: str
    event_id: int
    link_account_id: int | None  # the lead has no account: link it to this one
    new_contact_id: int | None  # the lead has no contact: give it a new one with this id


@dataclass
class _Batch:
    """One batch, fully planned with real ids, for the writer: row tuples in foreign-key order, then merges."""

    now: datetime
    accounts: list[tuple[Any, ...]]
    contacts: list[tuple[Any, ...]]
    leads: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]
    imported: list[tuple[Any, ...]]
    merges: dict[int, list[_StoredMerge]]
    created_ids: list[int]


class _Planner:
    """Classifies clean rows (new, merge, already imported) and builds the batch's rows; no database access."""

    def __init__(self, known: _Known, pools: dict[str, _IdPool], run_id: int, actor: Actor, engine: Engine) -> None:
        self.known, self.pools, self.run_id, self.actor_id = known, pools, run_id, actor.id
        self.dialect = engine.dialect

    def plan(self, rows: list[Clean], summary: ImportSummary) -> _Batch | None:
        known = self.known
        fingerprints = known.fingerprints
        new_rows = [item for item in rows if item[1] not in fingerprints]
        summary.unchanged += len(rows) - len(new_rows)
        if not new_rows:
            return None
        now = utcnow()
        # Timestamps as the driver takes them (on SQLite a string), converted once per batch.
        stamp = bind_value(self.dialect, Lead.__table__.c.created_at, now)
        actor_id, run_id = self.actor_id, self.run_id
        lead_ids = self.pools["leads"].take(len(new_rows))
        event_ids = self.pools["events"].take(len(new_rows))
        accounts, account_pool = known.accounts, self.pools["accounts"]
        # Accounts this batch creates, {id: the lead whose row gives its name and fields} or the row itself.
        new_accounts: dict[int, int | CleanValues] = {}
        pending: dict[int, CleanValues] = {}  # leads created in this batch, with their (merged) row
        merges: dict[int, list[_StoredMerge]] = {}
        events: list[tuple[Any, ...]] = []
        imported: list[tuple[Any, ...]] = []
        created = merged = 0
        for (row, fp, payload), event_id in zip(new_rows, event_ids, strict=True):
            if fp in fingerprints:  # the same row twice in one batch
                summary.unchanged += 1
                continue
            fingerprints.add(fp)
            lead_id, matched_by = known.match(row)
            if lead_id is None:
                lead_id = lead_ids[created]
                created += 1
                pending[lead_id] = row
                key = row[COMPANY_KEY]
                if key and key not in accounts:
                    accounts[key] = account_id = account_pool.next()
                    new_accounts[account_id] = lead_id
                events.append((event_id, LEAD_CREATED, lead_id, actor_id, stamp, stamp, payload))
            elif lead_id in pending:
                pending[lead_id], filled, conflicts = _merge_into_new(pending[lead_id], row)
                detail = merged_payload(run_id, row[ROW], matched_by, filled, conflicts)
                events.append((event_id, LEAD_MERGED, lead_id, actor_id, stamp, stamp, detail))
                merged += 1
            else:
                merge = self._stored_merge(lead_id, row, matched_by, event_id, new_accounts)
                merges.setdefault(lead_id, []).append(merge)
                merged += 1
            known.remember(lead_id, row)
            imported.append((fp, lead_id, run_id))
        summary.created += created
        summary.merged += merged
        lead_rows, contact_rows = self._new_lead_rows(pending, new_accounts, stamp)
        account_rows: list[tuple[Any, ...]] = []
        for account_id, source in new_accounts.items():
            if isinstance(source, int):  # made for a lead of this batch: it takes that lead's (merged) row
                r = pending[source]
                account_rows.append(
                    (account_id, r[COMPANY], r[COMPANY_KEY], r[INDUSTRY], r[REGION], r[COMPANY_SIZE], stamp, stamp)
                )
            else:  # made to link a stored lead: just the name, the merge fills the rest from the row
                account_rows.append((account_id, source[COMPANY], source[COMPANY_KEY], None, None, None, stamp, stamp))
        return _Batch(now, account_rows, contact_rows, lead_rows, events, imported, merges, list(pending))

    def _stored_merge(
        self,
        lead_id: int,
        row: CleanValues,
        matched_by: str,
        event_id: int,
        new_accounts: dict[int, int | CleanValues],
    ) -> _StoredMerge:
        """Plan a merge into a stored lead: which account to link it to and which contact id to give it."""
        known = self.known
        link_account_id = new_contact_id = None
        key = row[COMPANY_KEY]
        if key and lead_id in known.without_account:
            # The oldest account with the row's company name, else a new one with just the name: the merge
            # then fills its fields from the row, as for any account it links.
            link_account_id = known.accounts.get(key)
            if link_account_id is None:
                known.accounts[key] = link_account_id = self.pools["accounts"].next()
                new_accounts[link_account_id] = row
            known.without_account.discard(lead_id)
        if lead_id in known.without_contact and (row[PHONE] or row[EMAIL] or row[CONTACT_NAME]):
            new_contact_id = self.pools["contacts"].next()
            known.without_contact.discard(lead_id)
        return _StoredMerge(row, matched_by, event_id, link_account_id, new_contact_id)

    def _new_lead_rows(
        self, pending: dict[int, CleanValues], new_accounts: dict[int, int | CleanValues], stamp: Any
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        known = self.known
        accounts = known.accounts
        contact_ids = iter(self.pools["contacts"].take(len(pending)))  # a few stay unused: leads without one
        lead_rows: list[tuple[Any, ...]] = []
        contact_rows: list[tuple[Any, ...]] = []
        for lead_id, r in pending.items():
            key = r[COMPANY_KEY]
            account_id = accounts.get(key) if key else None
            if key and account_id is None:  # the company came from a row merged into it in this batch
                accounts[key] = account_id = self.pools["accounts"].next()
                new_accounts[account_id] = lead_id
            if account_id is None:
                known.without_account.add(lead_id)
            if r[PHONE] or r[EMAIL] or r[CONTACT_NAME]:
                contact_id: int | None = next(contact_ids)
                contact_rows.append(
                    (
                        contact_id,
                        account_id,
                        r[CONTACT_NAME] or "",
                        r[PHONE],
                        r[EMAIL],
                        r[CONSENT],
                        r[DO_NOT_CALL],
                        stamp,
                        stamp,
                    )
                )
            else:
                contact_id = None
                known.without_contact.add(lead_id)
            lead_rows.append(
                (
                    lead_id,
                    account_id,
                    contact_id,
                    r[TITLE] or _default_title(r),
                    r[PRODUCT_LINE],
                    r[SOURCE] or "import",
                    r[REGION],
                    r[BUDGET],
                    r[NOTES] or "",
                    r[EXTERNAL_ID],
                    NEW_STAGE,
                    stamp,
                    1,
                    stamp,
                    stamp,
                )
            )
        return lead_rows, contact_rows


def _merge_into_new(target: CleanValues, row: CleanValues) -> tuple[CleanValues, list[str], list[str]]:
    """Merge a row into a lead created earlier in the same batch; returns its new row, filled and conflicts.

    The defaults the lead is created with count as set, as they would if it were already stored: the
    outcome must not depend on whether two matching rows fall into the same batch. Each record is
    compared with the row as it was before this merge, as for a stored lead.
    """
    merged = list(target)
    merged[TITLE] = target[TITLE] or _default_title(target)
    merged[SOURCE] = target[SOURCE] or "import"
    filled: list[str] = []
    conflicts: list[str] = []
    updates: dict[int, Any] = {}
    if not target[COMPANY_KEY] and row[COMPANY_KEY]:
        updates.update({COMPANY: row[COMPANY], COMPANY_KEY: row[COMPANY_KEY], COMPANY_LINE: row[COMPANY_LINE]})
        filled.append("account")
    for prefix, names in FILL_GROUPS:
        for at, name in names.items():
            value = row[at]
            if _is_empty(value):
                continue
            current = merged[at]
            if _is_empty(current):
                updates[at] = value
                filled.append(prefix + name)
            elif current != value:
                conflicts.append(prefix + name)
    for at, value in updates.items():
        merged[at] = value
    return tuple(merged), filled, conflicts


def _fill_record(
    prefix: str,
    stored: dict[str, Any],
    row: CleanValues,
    names: dict[int, str],
    filled: list[str],
    conflicts: list[str],
) -> dict[str, Any]:
    """Fill a stored record's empty fields from the row, noting them (and conflicts) in the event's lists;
    returns what was filled ({column: value}) and updates ``stored`` with it."""
    values: dict[str, Any] = {}
    for at, name in names.items():
        value = row[at]
        if _is_empty(value):
            continue
        current = stored.get(name)
        if _is_empty(current):
            stored[name] = values[name] = value
            filled.append(prefix + name)
        elif current != value:
            conflicts.append(prefix + name)
    return values


def _rows_by_id(
    conn: Connection, table: Table, ids: Iterable[int], columns: Iterable[str]
) -> dict[int, dict[str, Any]]:
    wanted = sorted(set(ids))
    cols = [table.c.id, *(table.c[name] for name in columns)]
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(wanted), READ_CHUNK):
        for row in conn.execute(select(*cols).where(table.c.id.in_(wanted[start : start + READ_CHUNK]))):
            values = dict(row._mapping)
            found[values.pop("id")] = values
    return found


def _update_by_id(
    conn: Connection, table: Table, changes: dict[int, dict[str, Any]], now: datetime, bumps: Counter[int] | None
) -> None:
    """UPDATE many rows, one executemany per set of changed columns; sets updated_at (and bumps version)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row_id, values in changes.items():
        params = {"b_id": row_id, "b_now": now, **{f"b_{name}": value for name, value in values.items()}}
        if bumps is not None:
            params["b_bump"] = bumps[row_id]
        groups.setdefault(tuple(sorted(values)), []).append(params)
    for names, params_list in groups.items():
        values_clause: dict[str, Any] = {name: bindparam(f"b_{name}", type_=table.c[name].type) for name in names}
        values_clause["updated_at"] = bindparam("b_now", type_=table.c.updated_at.type)
        if bumps is not None:
            values_clause["version"] = table.c.version + bindparam("b_bump")
        conn.execute(update(table).where(table.c.id == bindparam("b_id")).values(values_clause), params_list)


def _merge_stored(session: Session, batch: _Batch, run_id: int, actor_id: int | None) -> list[tuple[Any, ...]]:
    """Fill empty fields of stored leads (and of their contact and account) from the rows merged into them.

    A lead without an account is linked to the account the planner chose; one without a contact gets a
    new contact from the row. Each lead, contact and account is read once and updated once, whatever
    the number of rows merged into it. Returns the lead_merged events.
    """
    if not batch.merges:
        return []
    conn = session.connection()
    now = batch.now
    stamp = bind_value(conn.dialect, Event.__table__.c.occurred_at, now)
    leads = _rows_by_id(conn, Lead.__table__, batch.merges, ("account_id", "contact_id", *LEAD_FILL.values()))  # type: ignore[arg-type]
    contacts = _rows_by_id(
        conn,
        Contact.__table__,  # type: ignore[arg-type]
        (lead["contact_id"] for lead in leads.values() if lead["contact_id"] is not None),
        ("account_id", *CONTACT_FILL.values()),
    )
    account_ids = [lead["account_id"] for lead in leads.values() if lead["account_id"] is not None]
    account_ids += [m.link_account_id for rows in batch.merges.values() for m in rows if m.link_account_id]
    accounts = _rows_by_id(conn, Account.__table__, account_ids, ACCOUNT_FILL.values())  # type: ignore[arg-type]
    lead_changes: dict[int, dict[str, Any]] = {}
    version_bumps: Counter[int] = Counter()
    contact_changes: dict[int, dict[str, Any]] = {}
    account_changes: dict[int, dict[str, Any]] = {}
    new_contacts: dict[int, tuple[str, bool]] = {}  # id: (consent, do_not_call) of the row that made it
    events: list[tuple[Any, ...]] = []
    for lead_id, rows in batch.merges.items():
        lead = leads.get(lead_id)
        if lead is None:
            continue  # deleted since the index was loaded; the row's fingerprint still marks it done
        for merge in rows:
            row = merge.row
            filled: list[str] = []
            conflicts: list[str] = []
            links: dict[str, int] = {}
            if lead["account_id"] is None and merge.link_account_id is not None:
                lead["account_id"] = links["account_id"] = merge.link_account_id
                filled.append("account")
                contact = contacts.get(lead["contact_id"]) if lead["contact_id"] is not None else None
                if contact is not None and contact["account_id"] is None:
                    contact["account_id"] = merge.link_account_id
                    contact_changes.setdefault(lead["contact_id"], {})["account_id"] = merge.link_account_id
            if lead["contact_id"] is None and merge.new_contact_id is not None:
                lead["contact_id"] = links["contact_id"] = merge.new_contact_id
                contacts[merge.new_contact_id] = {"account_id": lead["account_id"]} | dict.fromkeys(
                    CONTACT_FILL.values()
                )
                new_contacts[merge.new_contact_id] = (row[CONSENT], row[DO_NOT_CALL])
                filled.append("contact")
            lead_values = _fill_record("", lead, row, LEAD_FILL, filled, conflicts)
            if lead_values or links:
                lead_changes.setdefault(lead_id, {}).update(lead_values, **links)
                version_bumps[lead_id] += 1
            contact_id, account_id = lead["contact_id"], lead["account_id"]
            if contact_id is not None and contact_id in contacts:
                contact_values = _fill_record("contact.", contacts[contact_id], row, CONTACT_FILL, filled, conflicts)
                if contact_values and contact_id not in new_contacts:  # a new contact is inserted as it ends up
                    contact_changes.setdefault(contact_id, {}).update(contact_values)
            if account_id is not None and account_id in accounts:
                account_values = _fill_record("account.", accounts[account_id], row, ACCOUNT_FILL, filled, conflicts)
                if account_values:
                    account_changes.setdefault(account_id, {}).update(account_values)
            detail = merged_payload(run_id, row[ROW], merge.matched_by, filled, conflicts)
            events.append((merge.event_id, LEAD_MERGED, lead_id, actor_id, stamp, stamp, detail))
    contact_stamp = bind_value(conn.dialect, Contact.__table__.c.created_at, now)
    new_contact_rows = []
    for contact_id, (consent, do_not_call) in new_contacts.items():
        contact = contacts[contact_id]
        new_contact_rows.append(
            (
                contact_id,
                contact["account_id"],
                contact["name"] or "",
                contact["phone"],
                contact["email"],
                consent,
                do_not_call,
                contact_stamp,
                contact_stamp,
            )
        )
    insert_tuples(conn, Contact.__table__, CONTACT_COLUMNS, new_contact_rows)  # type: ignore[arg-type]
    _update_by_id(conn, Account.__table__, account_changes, now, None)  # type: ignore[arg-type]
    _update_by_id(conn, Contact.__table__, contact_changes, now, None)  # type: ignore[arg-type]
    _update_by_id(conn, Lead.__table__, lead_changes, now, version_bumps)  # type: ignore[arg-type]
    return events


def _write_events(session: Session, batch: _Batch, events: list[tuple[Any, ...]]) -> None:
    """Insert the batch's events; through the event log's own bulk append when they must be delivered."""
    if not events:
        return
    if bus.publishing or bus.subscribers:
        # Subscribers and the Redis outbox need the events as records: the log's own path does both.
        rows = [
            {"type": kind, "lead_id": lead_id, "actor_id": actor_id, "occurred_at": batch.now}
            | {"payload": json.loads(payload)}
            for _, kind, lead_id, actor_id, _, _, payload in events
        ]
        append_events_bulk(session, rows)
        return
    insert_tuples(session.connection(), Event.__table__, EVENT_COLUMNS, events)  # type: ignore[arg-type]


def _write_batch(session: Session, batch: _Batch, run_id: int, actor: Actor) -> None:
    """Apply a planned batch in the session's transaction (the writer side)."""
    conn = session.connection()
    insert_tuples(conn, Account.__table__, ACCOUNT_COLUMNS, batch.accounts)  # type: ignore[arg-type]
    insert_tuples(conn, Contact.__table__, CONTACT_COLUMNS, batch.contacts)  # type: ignore[arg-type]
    insert_tuples(conn, Lead.__table__, LEAD_COLUMNS, batch.leads)  # type: ignore[arg-type]
    merge_events = _merge_stored(session, batch, run_id, actor.id)
    _write_events(session, batch, batch.events + merge_events)
    insert_tuples(conn, ImportedRow.__table__, IMPORTED_COLUMNS, batch.imported)  # type: ignore[arg-type]
    if batch.created_ids or batch.merges:
        audit(
            session,
            actor,
            "import",
            "lead",
            None,
            {"run_id": run_id, "created": batch.created_ids, "merged": sorted(batch.merges)},
        )


class _Writer:
    """Writes planned batches on a thread of its own, one transaction each, in the order they are given.

    The database does most of its work without Python's lock (SQLite's inserts, a PostgreSQL round
    trip), so the main thread plans the next batch meanwhile. At most one batch waits: planning never
    runs far ahead of what is committed. A failed batch stops the writer; ``submit`` and ``close`` then
    raise its error in the main thread. The thread starts with the first batch, after the validation
    workers have been forked (fork is only safe while the process has a single thread).
    """

    def __init__(self, conn: Connection, run_id: int, actor: Actor) -> None:
        self.conn, self.run_id, self.actor = conn, run_id, actor
        self.batches: queue.Queue[_Batch | None] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.writing = False

    def _run(self) -> None:
        while (batch := self.batches.get()) is not None:
            if self.error is not None:
                continue  # drain: a failed batch ends the import, later ones are not written
            self.writing = True
            try:
                # One transaction per batch: a crash loses at most this batch, and a re-run redoes it.
                with Session(bind=self.conn, expire_on_commit=False) as session:
                    _write_batch(session, batch, self.run_id, self.actor)
                    session.commit()
            except BaseException as exc:  # handed to the main thread, which raises it
                self.error = exc
            finally:
                self.writing = False

    def idle(self) -> bool:
        """Whether the writer has nothing to do (no batch being written or waiting)."""
        return not self.writing and self.batches.empty()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, batch: _Batch) -> None:
        self._raise_error()
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="leadpilot-import-writer", daemon=True)
            self.thread.start()
        self.batches.put(batch)

    def close(self) -> None:
        """Wait until every submitted batch is written (or one failed), then raise its error if any."""
        if self.thread is not None:
            self.batches.put(None)
            self.thread.join()
        self._raise_error()


class _ProcessWriter:
    """Writes planned batches in a process of its own, one transaction each, in the order they are given.

    Same contract as ``_Writer``, but the writing (binding every value, SQLite's inserts, the commits)
    runs outside this process, so it no longer shares Python's interpreter lock with the reading,
    planning and dispatching done here: on a machine with few cores that lock, not the cores, limited a
    threaded writer. Batches travel pickled through a pipe, sent by a thread of this process so that
    planning goes on meanwhile; at most ``WRITER_BATCHES_AHEAD`` are written or waiting at once. The
    process opens its own engine on the same URL and ends with the import, at its first failed batch
    (whose error is raised here), or when this process dies (its end of the pipe closes).
    """

    def __init__(self, url: str, run_id: int, actor: Actor, context: Any) -> None:
        batches_in, self.batches_out = context.Pipe(duplex=False)
        self.replies_in, replies_out = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_write_batches_in_process,
            args=(url, run_id, actor, batches_in, self.batches_out, replies_out),
            name="leadpilot-import-writer",
            daemon=True,
        )
        self.process.start()
        batches_in.close()  # this process only sends batches and reads replies
        replies_out.close()
        self.to_send: queue.Queue[_Batch | None] = queue.Queue()
        # Started with the first batch, after the validation workers have been forked (see ``_Writer``).
        self.sender: threading.Thread | None = None
        self.outstanding = 0
        self.error: BaseException | None = None

    def _send(self) -> None:
        try:
            while (batch := self.to_send.get()) is not None:
                self.batches_out.send_bytes(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
            self.batches_out.send_bytes(b"")  # the end
        except OSError:
            pass  # the writer is gone; the next reply read says why
        finally:
            self.batches_out.close()

    def _collect(self, *, wait: bool) -> None:
        """Take the writer's replies (one per batch), waiting for one when ``wait``; keeps the first error."""
        while self.outstanding and (wait or self.replies_in.poll()):
            wait = False
            try:
                reply = self.replies_in.recv()
            except EOFError:  # died without a word (killed, out of memory)
                self.process.join()
                reply = RuntimeError(f"the import's writer process stopped (exit code {self.process.exitcode})")
                self.outstanding = 1
            self.outstanding -= 1
            if reply is not None and self.error is None:
                self.error = reply
            if self.error is not None:
                self.outstanding = 0  # a failed batch ends the writer: nothing more comes back

    def idle(self) -> bool:
        """Whether the writer has nothing to do (no batch being written or waiting)."""
        self._collect(wait=False)
        return self.outstanding == 0

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, batch: _Batch) -> None:
        self._collect(wait=self.outstanding >= WRITER_BATCHES_AHEAD)
        self._raise_error()
        if self.sender is None:
            self.sender = threading.Thread(target=self._send, name="leadpilot-import-sender", daemon=True)
            self.sender.start()
        self.to_send.put(batch)
        self.outstanding += 1

    def close(self) -> None:
        """Wait until every submitted batch is written (or one failed), then raise its error if any."""
        while self.outstanding:
            self._collect(wait=True)
        if self.sender is None:
            self.batches_out.send_bytes(b"")  # nothing was sent: just the end
            self.batches_out.close()
        else:
            self.to_send.put(None)
            self.sender.join()
        self.process.join()
        self.replies_in.close()
        self._raise_error()


def _write_batches_in_process(
    url: str, run_id: int, actor: Actor, batches: Any, batches_out: Any, replies: Any
) -> None:
    """The writer process: each batch in a transaction of its own; a reply per batch (None, or its error).

    It ends at the end of the batches, at its first failed batch, or when the importing process is gone
    (the pipe then reports its end: a killed import leaves no writer behind; the batch being written is
    rolled back, and a re-run redoes it).
    """
    batches_out.close()  # this process's copy of the sending end: else the pipe could never report its end
    gc.disable()  # as in the importing process: the batches make no reference cycles
    engine = make_engine(url)
    try:
        with bulk_job_connection(engine) as conn:
            while True:
                try:
                    data = batches.recv_bytes()
                except EOFError:
                    return
                if not data:
                    return
                try:
                    with Session(bind=conn, expire_on_commit=False) as session:
                        _write_batch(session, pickle.loads(data), run_id, actor)
                        session.commit()
                except BaseException as exc:  # sent to the importing process, which raises it
                    replies.send(_sendable(exc))
                    return
                replies.send(None)
    finally:
        engine.dispose()


def _exit_with_parent() -> None:
    """In a validation worker: end the process once its parent is gone (a killed import's workers would
    otherwise wait for work for ever). The parent is the importing process, or the fork server that
    started the worker, which ends with it."""
    parent_pid = os.getppid()

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="leadpilot-import-parent-watch", daemon=True).start()


def _validation_worker_start() -> None:
    """A validation worker's set-up: no cyclic garbage collection (its results are acyclic tuples and
    strings), and an exit when the importing process goes."""
    gc.disable()
    _exit_with_parent()


def _sendable(exc: BaseException) -> BaseException:
    """The error itself when it survives pickling, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _process_writer_url(engine: Engine) -> str | None:
    """The URL a writer process can open for ``engine``'s database, or None when only a thread can write.

    Not for an in-memory SQLite database (another process cannot see it), nor while events are delivered
    in this process (its subscribers and Redis outbox are fed by the transaction that writes them).
    """
    if bus.publishing or bus.subscribers:
        return None
    if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
        return None
    if engine.dialect.name not in ("sqlite", "postgresql"):
        return None
    return engine.url.render_as_string(hide_password=False)


def validate_chunk(chunk: list[tuple[int, list[str]]], mapping: Mapping, region: str, run_id: int) -> Validated:
    """Validate a chunk of rows: (rows seen, clean rows, errors). Runs in a worker process."""
    clean: list[Clean] = []
    errors: list[RowError] = []
    for number, cells in chunk:
        result = clean_values(number, cells, mapping, region)
        if isinstance(result, list):
            errors.extend(result)
        else:
            clean.append((result, fingerprint(result), created_payload(result, run_id)))
    return len(chunk), clean, errors


def _validate_packed(packed: bytes, mapping: Mapping, region: str, run_id: int) -> tuple[int, bytes, list[RowError]]:
    """``validate_chunk`` for a worker process: rows in and clean rows out as ``marshal`` bytes.

    The rows and results are plain tuples of str, int, float, bool and None, which marshal writes and
    reads faster than pickle; the importing process, the busiest one, then spends less on each piece.
    """
    seen, clean, errors = validate_chunk(marshal.loads(packed), mapping, region, run_id)
    return seen, marshal.dumps(clean), errors


def _validate_csv_piece(
    piece: CsvPiece, mapping: Mapping, region: str, run_id: int
) -> tuple[int, bytes, list[RowError]]:
    """``_validate_packed`` for a piece of CSV text, which the worker splits into rows itself."""
    seen, clean, errors = validate_chunk(piece.rows(), mapping, region, run_id)
    return seen, marshal.dumps(clean), errors


def _unpacked(result: tuple[int, bytes, list[RowError]]) -> Validated:
    seen, packed, errors = result
    return seen, marshal.loads(packed), errors


def _chunks(rows: Iterable[tuple[int, list[str]]], size: int) -> Iterator[list[tuple[int, list[str]]]]:
    chunk: list[tuple[int, list[str]]] = []
    for item in rows:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# Work for a validation worker: rows, or a piece of a CSV file's text that the worker splits into rows.
Piece = list[tuple[int, list[str]]] | CsvPiece


def _pieces(rows: Iterable[tuple[int, list[str]]], chunk_size: int, piece_size: int) -> Iterator[tuple[Piece, bool]]:
    """The rows in chunks of ``chunk_size``, each cut in pieces of ``piece_size``: (piece, last of its chunk)."""
    for chunk in _chunks(rows, chunk_size):
        for start in range(0, len(chunk), piece_size):
            yield chunk[start : start + piece_size], start + piece_size >= len(chunk)


def _csv_pieces(index: CsvIndex, chunk_size: int, piece_size: int) -> Iterator[tuple[Piece, bool]]:
    """A CSV file's records cut as ``_pieces`` cuts rows (the index's grain must divide both sizes)."""
    for chunk_start in range(0, index.records, chunk_size):
        chunk_end = min(chunk_start + chunk_size, index.records)
        for start in range(chunk_start, chunk_end, piece_size):
            count = min(piece_size, chunk_end - start)
            yield index.piece(start, count), start + count >= chunk_end


def _validate_piece(piece: Piece, mapping: Mapping, region: str, run_id: int) -> Validated:
    rows = piece.rows() if isinstance(piece, CsvPiece) else piece
    return validate_chunk(rows, mapping, region, run_id)


def validated_chunks(
    rows: Iterable[tuple[int, list[str]]] | FileTable,
    mapping: Mapping,
    region: str,
    *,
    chunk_size: int,
    workers: int,
    run_id: int = 0,
    may_help: Callable[[], bool] = lambda: True,
) -> Iterator[Validated]:
    """Validate rows, yielding one result per chunk of ``chunk_size`` rows, in file order.

    With workers > 0 the rows are validated in pieces of up to ``PIECE_ROWS`` by worker processes, and
    by the calling process too: when the next piece from the workers is not ready and ``may_help()``
    says it has nothing better to do, it validates a later piece itself instead of waiting. (The
    importer says so while its writer is idle: on a machine with few cores, the writer, the workers
    and this process then take turns on them rather than crowd them.) Given a CSV file's table, the
    workers get pieces of its text and split them into rows themselves; chunks are then ``chunk_size``
    records long (blank lines included).
    """
    piece_size = min(chunk_size, PIECE_ROWS)
    if isinstance(rows, FileTable):
        index = rows.csv
        if workers > 0 and index is not None and not (chunk_size % index.grain or piece_size % index.grain):
            pieces = _csv_pieces(index, chunk_size, piece_size)
        else:
            pieces = _pieces(rows.rows, chunk_size, piece_size)
    else:
        pieces = _pieces(rows, chunk_size, piece_size)
    seen, clean, errors = 0, [], []
    for (piece_seen, piece_clean, piece_errors), last in _validated_pieces(
        pieces, mapping, region, workers, run_id, may_help
    ):
        seen += piece_seen
        clean.extend(piece_clean)
        errors.extend(piece_errors)
        if last:
            yield seen, clean, errors
            seen, clean, errors = 0, [], []


def _validated_pieces(
    pieces: Iterator[tuple[Piece, bool]],
    mapping: Mapping,
    region: str,
    workers: int,
    run_id: int,
    may_help: Callable[[], bool],
) -> Iterator[tuple[Validated, bool]]:
    if workers <= 0:
        for piece, last in pieces:
            yield _validate_piece(piece, mapping, region, run_id), last
        return
    # fork starts in milliseconds but is unsafe in a process with other threads; forkserver is safe.
    context = multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_validation_worker_start) as pool:
        # Pieces in file order: the workers' futures, and the results of those validated here.
        in_order: deque[tuple[Future[tuple[int, bytes, list[RowError]]] | Validated, bool]] = deque()
        submitted = 0  # futures in in_order
        more = True
        while True:
            while more and submitted < PIECES_QUEUED * workers:  # so that no worker runs dry
                to_submit = next(pieces, None)
                if to_submit is None:
                    more = False
                else:
                    piece, ends_chunk = to_submit
                    if isinstance(piece, CsvPiece):
                        future = pool.submit(_validate_csv_piece, piece, mapping, region, run_id)
                    else:
                        future = pool.submit(_validate_packed, marshal.dumps(piece), mapping, region, run_id)
                    in_order.append((future, ends_chunk))
                    submitted += 1
            if not in_order:
                return
            head, last = in_order[0]
            if isinstance(head, Future) and not head.done():
                if more and may_help():
                    to_validate = next(pieces, None)
                    if to_validate is None:
                        more = False
                    else:
                        piece, ends_chunk = to_validate
                        in_order.append((_validate_piece(piece, mapping, region, run_id), ends_chunk))
                else:
                    wait([head], timeout=HELP_CHECK_SECONDS)  # then look again: the writer may be idle by now
                continue
            in_order.popleft()
            if isinstance(head, Future):
                submitted -= 1
                yield _unpacked(head.result()), last
            else:
                yield head, last


class _Tuning:
    """The interpreter's settings from before the first of the imports now running changed them."""

    lock = threading.Lock()
    running = 0
    gc_enabled = True
    switch_interval = 0.005


@contextmanager
def tuned_interpreter() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a bulk job, and restore it afterwards; shorten the
    interpreter's thread switch interval meanwhile (``IMPORT_SWITCH_INTERVAL``), and restore it too.

    An import allocates millions of tuples and strings that live for a batch or for the whole run (the
    index of the store); the collector would walk them again and again (a third of the importing
    process's CPU) and find nothing, as the job makes almost no reference cycles. Reference counting
    still frees everything else as usual; the few cycles (a session per batch) wait for the next
    collection after the job. With imports on several threads at once, the first one in changes the
    settings and the last one out sets them back.
    """
    with _Tuning.lock:
        if _Tuning.running == 0:
            _Tuning.gc_enabled, _Tuning.switch_interval = gc.isenabled(), sys.getswitchinterval()
            gc.disable()
            sys.setswitchinterval(min(_Tuning.switch_interval, IMPORT_SWITCH_INTERVAL))
        _Tuning.running += 1
    try:
        yield
    finally:
        with _Tuning.lock:
            _Tuning.running -= 1
            if _Tuning.running == 0:
                sys.setswitchinterval(_Tuning.switch_interval)
                if _Tuning.gc_enabled:
                    gc.enable()


@contextmanager
def _batch_writer(
    engine: Engine, run_id: int, actor: Actor, *, own_process: bool
) -> Iterator[_Writer | _ProcessWriter]:
    """The import's writer: a process of its own when asked and possible (see ``_process_writer_url``; it is
    forked, which is only safe while this process runs a single thread), else a thread on a bulk-job
    connection of ``engine``."""
    url = _process_writer_url(engine) if own_process and threading.active_count() == 1 else None
    if url is not None:
        yield _ProcessWriter(url, run_id, actor, multiprocessing.get_context("fork"))
        return
    with bulk_job_connection(engine) as conn:
        yield _Writer(conn, run_id, actor)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_leads(
    engine: Engine,
    path: Path,
    *,
    mapping_file: Path | None = None,
    actor: Actor = SYSTEM,
    default_region: str = "US",
    batch_size: int = 10_000,
    workers: int = 1,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import leads from a CSV or XLSX file; valid rows are kept, invalid ones reported per row."""
    with tuned_interpreter():
        return _import_leads(
            engine,
            path,
            mapping_file=mapping_file,
            actor=actor,
            default_region=default_region,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
        )


def _import_leads(
    engine: Engine,
    path: Path,
    *,
    mapping_file: Path | None,
    actor: Actor,
    default_region: str,
    batch_size: int,
    workers: int,
    progress: Progress | None,
) -> ImportSummary:
    started = time.perf_counter()
    override: MappingFile | None = load_mapping_file(mapping_file) if mapping_file else None
    table = read_table(
        path,
        encoding=override.encoding if override else None,
        delimiter=override.delimiter if override else None,
        grain=math.gcd(batch_size, min(batch_size, PIECE_ROWS)),  # so that pieces of CSV text cut as rows do
    )
    mapping: Mapping = build_mapping(table.headers, override)
    region = (mapping.default_region or default_region).upper()
    with Session(engine, expire_on_commit=False) as session:
        run = ImportRun(file_name=path.name, file_sha256=file_sha256(path), actor_id=actor.id, started_at=utcnow())
        session.add(run)
        session.commit()
        known = _load_known(session)
        session.commit()
    summary = ImportSummary(
        run_id=run.id,
        file=str(path),
        mapping=mapping_as_dict(mapping, table.headers),
        unmapped_headers=mapping.unmapped_headers,
        encoding=table.encoding,
        delimiter=table.delimiter,
    )
    done = 0
    # Worker processes pay off only when there is more than a batch or two to validate.
    use_workers = workers if table.total_rows > 2 * batch_size else 0
    # One id per row at most for each table a row can add to; unused ids are simply skipped.
    room = max(table.total_rows, 1)
    pools = {
        name: _IdPool(engine, model, room, batch_size)
        for name, model in (("accounts", Account), ("contacts", Contact), ("leads", Lead), ("events", Event))
    }
    planner = _Planner(known, pools, run.id, actor, engine)
    status = "failed"
    try:
        with _batch_writer(engine, run.id, actor, own_process=use_workers > 0) as writer:
            try:
                for seen, clean, errors in validated_chunks(
                    table,
                    mapping,
                    region,
                    chunk_size=batch_size,
                    workers=use_workers,
                    run_id=run.id,
                    may_help=writer.idle,
                ):
                    summary.total_rows += seen
                    summary.rejected += len({e.row for e in errors})
                    summary.errors.extend(errors)
                    batch = planner.plan(clean, summary)
                    if batch is not None:
                        writer.submit(batch)
                    done += seen
                    if progress:
                        progress(done, table.total_rows)
            finally:
                writer.close()
        if summary.created >= ANALYZE_AFTER_CREATED:
            refresh_statistics(engine)
        status = "done"
    finally:
        summary.seconds = time.perf_counter() - started
        with Session(engine) as session:
            session.execute(
                update(ImportRun)
                .where(ImportRun.id == run.id)
                .values(
                    finished_at=utcnow(),
                    status=status,
                    counts={
                        k: getattr(summary, k) for k in ("total_rows", "created", "merged", "unchanged", "rejected")
                    },
                    errors=[e.__dict__ for e in summary.errors[:MAX_STORED_ERRORS]],
                )
            )
            session.commit()
    return summary


def write_error_report(errors: list[RowError], path: Path) -> None:
    """Write the per-row errors as CSV (row, field, reason, value), UTF-8 with BOM so Excel reads Chinese."""
    try:
        with path.open("w", newline="", encoding="utf-8-sig") as fh:
            writer = csv.writer(fh, delimiter=",")
            writer.writerow(["row", "field", "reason", "value"])
            for e in errors:
                writer.writerow([e.row, e.field, e.reason, e.value])
    except OSError as exc:
        raise Invalid(f"cannot write the error report {path}: {exc.strerror or exc}", field="report") from exc
