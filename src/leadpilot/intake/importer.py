"""Idempotent, batched lead import with de-duplication and a per-row error report.

Each batch commits in one transaction: accounts, contacts, leads, their events (lead_created /
lead_merged), the fingerprints of applied rows, and an audit entry. A re-run skips every row whose
fingerprint is already recorded, so running a file twice, or again after a crash half-way, ends in
the same state as one clean run.

De-duplication: a row matching an existing lead by phone, by e-mail, or by company + product line
is merged into it: empty fields are filled, nothing is overwritten, and a lead_merged event records
what was filled and what conflicted.
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from leadpilot.crm.access import SYSTEM, Actor
from leadpilot.crm.audit import audit
from leadpilot.crm.events import EventType, append_events_bulk
from leadpilot.crm.models import Account, Contact, ImportedRow, ImportRun, Lead, Stage
from leadpilot.db.base import utcnow
from leadpilot.intake.mapping import Mapping, MappingFile, build_mapping, load_mapping_file, mapping_as_dict
from leadpilot.intake.reader import read_table
from leadpilot.intake.validate import CleanRow, RowError, clean_row

Progress = Callable[[int, int], None]
MAX_STORED_ERRORS = 10_000
LEAD_FILL = ("title", "source", "region", "budget", "notes", "external_id")
CONTACT_FILL = {"contact_name": "name", "phone": "phone", "email": "email"}
ACCOUNT_FILL = {"industry": "industry", "region": "region", "company_size": "size"}


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


@dataclass
class _Known:
    """In-memory de-duplication index of the store, kept current as batches commit."""

    by_phone: dict[str, int] = field(default_factory=dict)
    by_email: dict[str, int] = field(default_factory=dict)
    by_company_line: dict[tuple[str, str], int] = field(default_factory=dict)
    accounts: dict[str, int] = field(default_factory=dict)
    fingerprints: set[str] = field(default_factory=set)

    def match(self, row: CleanRow) -> tuple[int | None, str | None]:
        if row.phone and row.phone in self.by_phone:
            return self.by_phone[row.phone], "phone"
        if row.email and row.email in self.by_email:
            return self.by_email[row.email], "email"
        key = _company_line(row)
        if key and key in self.by_company_line:
            return self.by_company_line[key], "company+product_line"
        return None, None

    def remember(self, lead_id: int, row: CleanRow) -> None:
        if row.phone:
            self.by_phone.setdefault(row.phone, lead_id)
        if row.email:
            self.by_email.setdefault(row.email, lead_id)
        key = _company_line(row)
        if key:
            self.by_company_line.setdefault(key, lead_id)


def _company_line(row: CleanRow) -> tuple[str, str] | None:
    if not row.company_key:
        return None
    return row.company_key, (row.product_line or "").strip().lower()


def _load_known(session: Session) -> _Known:
    known = _Known()
    stmt = (
        select(Lead.id, Contact.phone, Contact.email, Account.name_key, Lead.product_line)
        .outerjoin(Contact, Contact.id == Lead.contact_id)
        .outerjoin(Account, Account.id == Lead.account_id)
        .order_by(Lead.id)
    )
    for lead_id, phone, email, name_key, product_line in session.execute(stmt):
        if phone:
            known.by_phone.setdefault(phone, lead_id)
        if email:
            known.by_email.setdefault(email, lead_id)
        if name_key:
            known.by_company_line.setdefault((name_key, (product_line or "").strip().lower()), lead_id)
    for account_id, name_key in session.execute(select(Account.id, Account.name_key).order_by(Account.id)):
        known.accounts.setdefault(name_key, account_id)
    known.fingerprints = set(session.scalars(select(ImportedRow.fingerprint)))
    return known


@dataclass
class _Pending:
    """A lead to be created in this batch, possibly with later rows of the batch merged into it."""

    row: CleanRow
    merged_rows: list[tuple[CleanRow, str, dict[str, Any]]] = field(default_factory=list)
    lead_id: int | None = None


def _fill(
    target: dict[str, Any], source: CleanRow, names: Iterable[str] | dict[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """Fill empty target fields from the row; returns (filled, conflicting field names)."""
    pairs = names.items() if isinstance(names, dict) else ((n, n) for n in names)
    filled: dict[str, Any] = {}
    conflicts: list[str] = []
    for src, dst in pairs:
        value = getattr(source, src)
        if value in (None, ""):
            continue
        current = target.get(dst)
        if current in (None, ""):
            target[dst] = value
            filled[dst] = value
        elif current != value:
            conflicts.append(dst)
    return filled, conflicts


def _pending_as_dict(row: CleanRow) -> dict[str, Any]:
    data = {n: getattr(row, n) for n in LEAD_FILL}
    data.update({dst: getattr(row, src) for src, dst in CONTACT_FILL.items()})
    data.update({dst: getattr(row, src) for src, dst in ACCOUNT_FILL.items()})
    return data


class _BatchWriter:
    """Applies one batch of clean rows in the caller's transaction."""

    def __init__(self, session: Session, known: _Known, run_id: int, actor: Actor) -> None:
        self.session, self.known, self.run_id, self.actor = session, known, run_id, actor

    def apply(self, rows: list[CleanRow], summary: ImportSummary) -> None:
        pending: list[_Pending] = []
        provisional: dict[int, _Pending] = {}  # negative ids for leads not yet inserted
        merges_db: dict[int, list[tuple[CleanRow, str]]] = {}
        fingerprints: list[tuple[str, CleanRow, int | _Pending]] = []
        for row in rows:
            fp = row.fingerprint()
            if fp in self.known.fingerprints:
                summary.unchanged += 1
                continue
            self.known.fingerprints.add(fp)
            lead_id, matched_by = self.known.match(row)
            if lead_id is None:
                item = _Pending(row)
                pending.append(item)
                pid = -len(pending)
                provisional[pid] = item
                self.known.remember(pid, row)
                fingerprints.append((fp, row, item))
            elif lead_id < 0:
                item = provisional[lead_id]
                fields = _pending_as_dict(item.row)
                filled: dict[str, Any] = {}
                conflicts: list[str] = []
                for names in (LEAD_FILL, CONTACT_FILL, ACCOUNT_FILL):
                    new_values, clashes = _fill(fields, row, names)
                    filled.update(new_values)
                    conflicts.extend(clashes)
                    for name in new_values:
                        setattr(item.row, _source_name(name), fields[name])
                detail = {"filled": sorted(filled), "conflicts": sorted(conflicts)}
                item.merged_rows.append((row, matched_by or "", detail))
                self.known.remember(lead_id, row)
                fingerprints.append((fp, row, item))
                summary.merged += 1
            else:
                merges_db.setdefault(lead_id, []).append((row, matched_by or ""))
                self.known.remember(lead_id, row)
                fingerprints.append((fp, row, lead_id))
                summary.merged += 1
        created_ids = self._insert_new(pending)
        merged_ids = self._merge_existing(merges_db)
        summary.created += len(pending)
        if not fingerprints:
            return
        self.session.execute(
            insert(ImportedRow),
            [
                {
                    "fingerprint": fp,
                    "lead_id": target.lead_id if isinstance(target, _Pending) else target,
                    "run_id": self.run_id,
                }
                for fp, _row, target in fingerprints
            ],
        )
        if created_ids or merged_ids:
            audit(
                self.session,
                self.actor,
                "import",
                "lead",
                None,
                {"run_id": self.run_id, "created": created_ids, "merged": merged_ids},
            )

    def _insert_new(self, pending: list[_Pending]) -> list[int]:
        if not pending:
            return []
        now = utcnow()
        session, known = self.session, self.known
        # Accounts: reuse an existing one with the same folded name, else create one per new name.
        new_accounts: dict[str, CleanRow] = {}
        for item in pending:
            key = item.row.company_key
            if key and key not in known.accounts and key not in new_accounts:
                new_accounts[key] = item.row
        if new_accounts:
            ids = session.scalars(
                insert(Account).returning(Account.id, sort_by_parameter_order=True),
                [
                    {
                        "name": r.company,
                        "name_key": k,
                        "industry": r.industry,
                        "region": r.region,
                        "size": r.company_size,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for k, r in new_accounts.items()
                ],
            ).all()
            known.accounts.update(zip(new_accounts, ids, strict=True))
        contact_rows = [item for item in pending if item.row.phone or item.row.email or item.row.contact_name]
        contact_ids: dict[int, int] = {}
        if contact_rows:
            ids = session.scalars(
                insert(Contact).returning(Contact.id, sort_by_parameter_order=True),
                [
                    {
                        "account_id": known.accounts.get(i.row.company_key or ""),
                        "name": i.row.contact_name or "",
                        "phone": i.row.phone,
                        "email": i.row.email,
                        "consent": i.row.consent,
                        "do_not_call": i.row.do_not_call,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in contact_rows
                ],
            ).all()
            contact_ids = {id(item): cid for item, cid in zip(contact_rows, ids, strict=True)}
        lead_ids = session.scalars(
            insert(Lead).returning(Lead.id, sort_by_parameter_order=True),
            [
                {
                    "title": i.row.title or _default_title(i.row),
                    "account_id": known.accounts.get(i.row.company_key or ""),
                    "contact_id": contact_ids.get(id(i)),
                    "product_line": i.row.product_line,
                    "source": i.row.source or "import",
                    "region": i.row.region,
                    "budget": i.row.budget,
                    "notes": i.row.notes or "",
                    "external_id": i.row.external_id,
                    "stage": Stage.NEW.value,
                    "stage_changed_at": now,
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in pending
            ],
        ).all()
        events: list[dict[str, Any]] = []
        for item, lead_id in zip(pending, lead_ids, strict=True):
            item.lead_id = lead_id
            known.remember(lead_id, item.row)
            events.append(
                {
                    "type": EventType.LEAD_CREATED.value,
                    "lead_id": lead_id,
                    "actor_id": self.actor.id,
                    "occurred_at": now,
                    "payload": {
                        "via": "import",
                        "run_id": self.run_id,
                        "row": item.row.row,
                        "source": item.row.source or "import",
                        "product_line": item.row.product_line,
                    },
                }
            )
            for row, matched_by, detail in item.merged_rows:
                events.append(
                    {
                        "type": EventType.LEAD_MERGED.value,
                        "lead_id": lead_id,
                        "actor_id": self.actor.id,
                        "occurred_at": now,
                        "payload": {"run_id": self.run_id, "row": row.row, "matched_by": matched_by, **detail},
                    }
                )
        # Provisional (negative) ids in the index now point at the real ids.
        for lookup in (known.by_phone, known.by_email, known.by_company_line):
            for lookup_key, value in list(lookup.items()):
                if value < 0:
                    lookup[lookup_key] = lead_ids[-value - 1]  # type: ignore[index]
        append_events_bulk(self.session, events)
        return list(lead_ids)

    def _merge_existing(self, merges: dict[int, list[tuple[CleanRow, str]]]) -> list[int]:
        if not merges:
            return []
        session = self.session
        now = utcnow()
        leads = {lead.id: lead for lead in session.scalars(select(Lead).where(Lead.id.in_(merges)))}
        contact_ids = [lead.contact_id for lead in leads.values() if lead.contact_id]
        contacts = {c.id: c for c in session.scalars(select(Contact).where(Contact.id.in_(contact_ids)))}
        account_ids = [lead.account_id for lead in leads.values() if lead.account_id]
        accounts = {a.id: a for a in session.scalars(select(Account).where(Account.id.in_(account_ids)))}
        events: list[dict[str, Any]] = []
        for lead_id, rows in merges.items():
            lead = leads.get(lead_id)
            if lead is None:
                continue  # deleted since the index was loaded; the row's fingerprint still marks it done
            contact = contacts.get(lead.contact_id or -1)
            account = accounts.get(lead.account_id or -1)
            lead_vals = {n: getattr(lead, n) for n in LEAD_FILL}
            contact_vals = {n: getattr(contact, n) for n in ("name", "phone", "email")} if contact else {}
            account_vals = {n: getattr(account, n) for n in ("industry", "region", "size")} if account else {}
            for row, matched_by in rows:
                filled_l, conf_l = _fill(lead_vals, row, LEAD_FILL)
                filled_c, conf_c = _fill(contact_vals, row, CONTACT_FILL) if contact else ({}, [])
                filled_a, conf_a = _fill(account_vals, row, ACCOUNT_FILL) if account else ({}, [])
                if filled_l:
                    session.execute(
                        update(Lead)
                        .where(Lead.id == lead_id)
                        .values(**filled_l, updated_at=now, version=Lead.version + 1)
                        .execution_options(synchronize_session=False)
                    )
                if filled_c and contact:
                    session.execute(update(Contact).where(Contact.id == contact.id).values(**filled_c, updated_at=now))
                if filled_a and account:
                    session.execute(update(Account).where(Account.id == account.id).values(**filled_a, updated_at=now))
                filled = sorted([*filled_l, *(f"contact.{k}" for k in filled_c), *(f"account.{k}" for k in filled_a)])
                events.append(
                    {
                        "type": EventType.LEAD_MERGED.value,
                        "lead_id": lead_id,
                        "actor_id": self.actor.id,
                        "occurred_at": now,
                        "payload": {
                            "run_id": self.run_id,
                            "row": row.row,
                            "matched_by": matched_by,
                            "filled": filled,
                            "conflicts": sorted([*conf_l, *conf_c, *conf_a]),
                        },
                    }
                )
        append_events_bulk(session, events)
        return sorted(merges)


def _source_name(dst: str) -> str:
    reverse = {v: k for k, v in {**CONTACT_FILL, **ACCOUNT_FILL}.items()}
    return reverse.get(dst, dst)


def _default_title(row: CleanRow) -> str:
    who = row.company or row.contact_name or ""
    return f"{who} · {row.product_line}" if row.product_line else who


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
    batch_size: int = 5000,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import leads from a CSV or XLSX file; valid rows are kept, invalid ones reported per row."""
    started = time.perf_counter()
    override: MappingFile | None = load_mapping_file(mapping_file) if mapping_file else None
    table = read_table(
        path, encoding=override.encoding if override else None, delimiter=override.delimiter if override else None
    )
    mapping: Mapping = build_mapping(table.headers, override)
    region = mapping.default_region or default_region
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
    batch: list[CleanRow] = []
    done = 0

    def flush() -> None:
        nonlocal batch
        if not batch:
            return
        with Session(engine, expire_on_commit=False) as session:
            _BatchWriter(session, known, run.id, actor).apply(batch, summary)
            session.commit()
        batch = []

    try:
        for number, cells in table.rows:
            summary.total_rows += 1
            result = clean_row(number, cells, mapping, region)
            if isinstance(result, list):
                summary.rejected += 1
                summary.errors.extend(result)
            else:
                batch.append(result)
            done += 1
            if len(batch) >= batch_size:
                flush()
            if progress and done % 1000 == 0:
                progress(done, table.total_rows)
        flush()
        status = "done"
    except BaseException:
        status = "failed"
        raise
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
    if progress:
        progress(done, table.total_rows)
    return summary


def write_error_report(errors: list[RowError], path: Path) -> None:
    """Write the per-row errors as CSV (row, field, reason, value), UTF-8 with BOM so Excel reads Chinese."""
    with path.open("w", newline="", encoding="utf-8-sig") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row", "field", "reason", "value"])
        for e in errors:
            writer.writerow([e.row, e.field, e.reason, e.value])
