"""Idempotent, batched lead import with de-duplication and a per-row error report.

Each batch commits in one transaction: accounts, contacts, leads, their events (lead_created /
lead_merged), the fingerprints of applied rows, and an audit entry. A re-run skips every row whose
fingerprint is already recorded, so running a file twice, or again after a crash half-way, ends in
the same state as one clean run.

De-duplication: a row matching an existing lead by phone, by e-mail, or by company + product line
is merged into it: empty fields are filled, nothing is overwritten, and a lead_merged event records
what was filled and what conflicted. A lead without a contact (or account) gets one from the row.
"""

from __future__ import annotations

import csv
import hashlib
import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from leadpilot.crm.access import SYSTEM, Actor
from leadpilot.crm.audit import audit
from leadpilot.crm.errors import Invalid
from leadpilot.crm.events import EventType, append_events_bulk
from leadpilot.crm.models import Account, Contact, ImportedRow, ImportRun, Lead, Stage
from leadpilot.db.base import utcnow
from leadpilot.db.bulk import allocate_ids, bulk_insert, refresh_statistics, reserve_ids
from leadpilot.intake.mapping import Mapping, MappingFile, build_mapping, load_mapping_file, mapping_as_dict
from leadpilot.intake.reader import read_table
from leadpilot.intake.validate import CleanRow, RowError, clean_row

Progress = Callable[[int, int], None]
# Plain strings: reading an Enum's .value costs more than it looks in a loop over 100,000 rows.
NEW_STAGE = Stage.NEW.value
LEAD_CREATED = EventType.LEAD_CREATED.value
LEAD_MERGED = EventType.LEAD_MERGED.value
MAX_STORED_ERRORS = 10_000
# A large import changes the data's shape enough that the query planner needs fresh statistics.
ANALYZE_AFTER_CREATED = 1_000
# What a merge may fill, as {row attribute: stored column}, per record. In a lead_merged event the
# names are the columns: a lead's as they are, a contact's and an account's with a prefix.
LEAD_FILL = {n: n for n in ("title", "product_line", "source", "region", "budget", "notes", "external_id")}
CONTACT_FILL = {"contact_name": "name", "phone": "phone", "email": "email"}
ACCOUNT_FILL = {"industry": "industry", "region": "region", "company_size": "size"}
FILL_GROUPS = (("", LEAD_FILL), ("contact.", CONTACT_FILL), ("account.", ACCOUNT_FILL))


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
        key = row.company_line
        if key and key in self.by_company_line:
            return self.by_company_line[key], "company+product_line"
        return None, None

    def remember(self, lead_id: int, row: CleanRow) -> None:
        if row.phone and row.phone not in self.by_phone:
            self.by_phone[row.phone] = lead_id
        if row.email and row.email not in self.by_email:
            self.by_email[row.email] = lead_id
        key = row.company_line
        if key and key not in self.by_company_line:
            self.by_company_line[key] = lead_id


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
    lead_id: int
    merged_rows: list[tuple[CleanRow, str, dict[str, Any]]] = field(default_factory=list)


def _fill(target: dict[str, Any], source: CleanRow, names: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Fill empty target fields from the row; returns (filled, conflicting field names)."""
    filled: dict[str, Any] = {}
    conflicts: list[str] = []
    for src, dst in names.items():
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


def _default_title(row: CleanRow) -> str:
    who = row.company or row.contact_name or ""
    return f"{who} · {row.product_line}" if row.product_line else who


class _IdPool:
    """Ids reserved for one table at the start of an import, handed out in order."""

    def __init__(self, engine: Engine, model: type, count: int) -> None:
        self.engine, self.table = engine, model.__table__  # type: ignore[attr-defined]
        self.ids = reserve_ids(engine, self.table, count)
        self.used = 0

    def take(self, count: int) -> list[int]:
        short = self.used + count - len(self.ids)
        if short > 0:
            # The row count was an estimate (an XLSX file's stated size can be wrong): reserve more.
            self.ids.extend(reserve_ids(self.engine, self.table, max(short, 1000)))
        taken = self.ids[self.used : self.used + count]
        self.used += count
        return taken


@dataclass
class _Plan:
    """One batch, fully prepared with real ids, for the writer: inserts in foreign-key order, then merges."""

    inserts: list[tuple[Any, list[dict[str, Any]]]]
    merges: dict[int, list[tuple[CleanRow, str]]]
    created_ids: list[int]


class _Planner:
    """Classifies clean rows (new, merge, already imported) and prepares insert rows; no database access."""

    def __init__(self, known: _Known, pools: dict[str, _IdPool], run_id: int, actor: Actor) -> None:
        self.known, self.pools, self.run_id, self.actor = known, pools, run_id, actor

    def plan(self, rows: list[tuple[CleanRow, str]], summary: ImportSummary) -> _Plan | None:
        known = self.known
        new_rows = [(row, fp) for row, fp in rows if fp not in known.fingerprints]
        summary.unchanged += len(rows) - len(new_rows)
        if not new_rows:
            return None
        lead_ids = iter(self.pools["leads"].take(len(new_rows)))
        pending: dict[int, _Pending] = {}
        merges: dict[int, list[tuple[CleanRow, str]]] = {}
        imported: list[dict[str, Any]] = []
        for row, fp in new_rows:
            if fp in known.fingerprints:  # the same row twice in one batch
                summary.unchanged += 1
                continue
            known.fingerprints.add(fp)
            lead_id, matched_by = known.match(row)
            if lead_id is None:
                lead_id = next(lead_ids)
                pending[lead_id] = _Pending(row, lead_id)
                summary.created += 1
            elif lead_id in pending:
                self._merge_pending(pending[lead_id], row, matched_by or "")
                summary.merged += 1
            else:
                merges.setdefault(lead_id, []).append((row, matched_by or ""))
                summary.merged += 1
            known.remember(lead_id, row)
            imported.append({"fingerprint": fp, "lead_id": lead_id, "run_id": self.run_id})
        inserts = self._new_lead_rows(list(pending.values()))
        inserts.append((ImportedRow, imported))
        return _Plan(inserts, merges, list(pending))

    def _merge_pending(self, item: _Pending, row: CleanRow, matched_by: str) -> None:
        """Merge a row into a lead created earlier in the same batch (its row is filled before insert)."""
        # The defaults the lead is created with count as set, as they would if it were already stored:
        # the outcome must not depend on whether two matching rows fall into the same batch.
        item.row.title = item.row.title or _default_title(item.row)
        item.row.source = item.row.source or "import"
        filled: list[str] = []
        conflicts: list[str] = []
        updates: dict[str, Any] = {}
        if not item.row.company_key and row.company_key:
            updates.update(company=row.company, company_key=row.company_key, company_line=row.company_line)
            filled.append("account")
        for prefix, names in FILL_GROUPS:
            # Each record compared with the row as it was before this merge, as for a stored lead.
            current = {dst: getattr(item.row, src) for src, dst in names.items()}
            new_values, clashes = _fill(current, row, names)
            filled.extend(prefix + dst for dst in new_values)
            conflicts.extend(prefix + dst for dst in clashes)
            updates.update({src: new_values[dst] for src, dst in names.items() if dst in new_values})
        for name, value in updates.items():
            setattr(item.row, name, value)
        item.merged_rows.append((row, matched_by, {"filled": sorted(filled), "conflicts": sorted(conflicts)}))

    def _new_lead_rows(self, pending: list[_Pending]) -> list[tuple[Any, list[dict[str, Any]]]]:
        if not pending:
            return []
        now = utcnow()
        known = self.known
        # Accounts: reuse an existing one with the same folded name, else create one per new name.
        new_accounts: dict[str, CleanRow] = {}
        for item in pending:
            key = item.row.company_key
            if key and key not in known.accounts and key not in new_accounts:
                new_accounts[key] = item.row
        account_rows: list[dict[str, Any]] = [
            {
                "id": account_id,
                "name": r.company,
                "name_key": k,
                "industry": r.industry,
                "region": r.region,
                "size": r.company_size,
                "created_at": now,
                "updated_at": now,
            }
            for account_id, (k, r) in zip(
                self.pools["accounts"].take(len(new_accounts)), new_accounts.items(), strict=True
            )
        ]
        for account in account_rows:
            known.accounts[account["name_key"]] = account["id"]
        with_contact = [i for i in pending if i.row.phone or i.row.email or i.row.contact_name]
        contact_ids = self.pools["contacts"].take(len(with_contact))
        contact_of = {item.lead_id: cid for item, cid in zip(with_contact, contact_ids, strict=True)}
        contact_rows = [
            {
                "id": contact_of[i.lead_id],
                "account_id": known.accounts.get(i.row.company_key or ""),
                "name": i.row.contact_name or "",
                "phone": i.row.phone,
                "email": i.row.email,
                "consent": i.row.consent,
                "do_not_call": i.row.do_not_call,
                "created_at": now,
                "updated_at": now,
            }
            for i in with_contact
        ]
        lead_rows = [
            {
                "id": i.lead_id,
                "title": i.row.title or _default_title(i.row),
                "account_id": known.accounts.get(i.row.company_key or ""),
                "contact_id": contact_of.get(i.lead_id),
                "product_line": i.row.product_line,
                "source": i.row.source or "import",
                "region": i.row.region,
                "budget": i.row.budget,
                "notes": i.row.notes or "",
                "external_id": i.row.external_id,
                "stage": NEW_STAGE,
                "stage_changed_at": now,
                "version": 1,
                "created_at": now,
                "updated_at": now,
            }
            for i in pending
        ]
        events: list[dict[str, Any]] = []
        actor_id, run_id = self.actor.id, self.run_id
        for item in pending:
            events.append(
                {
                    "type": LEAD_CREATED,
                    "lead_id": item.lead_id,
                    "actor_id": actor_id,
                    "occurred_at": now,
                    "payload": {
                        "via": "import",
                        "run_id": run_id,
                        "row": item.row.row,
                        "source": item.row.source or "import",
                        "product_line": item.row.product_line,
                    },
                }
            )
            for row, matched_by, detail in item.merged_rows:
                events.append(
                    {
                        "type": LEAD_MERGED,
                        "lead_id": item.lead_id,
                        "actor_id": actor_id,
                        "occurred_at": now,
                        "payload": {"run_id": run_id, "row": row.row, "matched_by": matched_by, **detail},
                    }
                )
        return [(Account, account_rows), (Contact, contact_rows), (Lead, lead_rows), ("events", events)]


def _write_plan(session: Session, plan: _Plan, run_id: int, actor: Actor) -> dict[str, int]:
    """Apply a prepared batch in the session's transaction (the writer side); returns accounts it added."""
    for target, rows in plan.inserts:
        if not rows:
            continue
        if target == "events":
            append_events_bulk(session, rows)
        else:
            bulk_insert(session, target.__table__, rows)
    merged_ids, new_accounts = _merge_existing(session, plan.merges, run_id, actor)
    if plan.created_ids or merged_ids:
        audit(
            session,
            actor,
            "import",
            "lead",
            None,
            {"run_id": run_id, "created": plan.created_ids, "merged": merged_ids},
        )
    return new_accounts


def _account_for(session: Session, row: CleanRow, now: Any, new_accounts: dict[str, int]) -> int:
    """The id of the account named in the row: the oldest with the same folded name, else a new one."""
    key = row.company_key or ""
    account_id = session.scalar(select(Account.id).where(Account.name_key == key).order_by(Account.id).limit(1))
    if account_id is None:
        account_id = allocate_ids(session, Account.__table__, 1)[0]  # type: ignore[arg-type]
        values = {"id": account_id, "name": row.company, "name_key": key, "created_at": now, "updated_at": now}
        bulk_insert(session, Account.__table__, [values])  # type: ignore[arg-type]
        new_accounts[key] = account_id
    return account_id


def _new_contact(session: Session, row: CleanRow, account_id: int | None, now: Any) -> int:
    """An empty contact for a stored lead that has none (the merge then fills it from the row)."""
    contact_id = allocate_ids(session, Contact.__table__, 1)[0]  # type: ignore[arg-type]
    values = {
        "id": contact_id,
        "account_id": account_id,
        "name": "",
        "phone": None,
        "email": None,
        "consent": row.consent,
        "do_not_call": row.do_not_call,
        "created_at": now,
        "updated_at": now,
    }
    bulk_insert(session, Contact.__table__, [values])  # type: ignore[arg-type]
    return contact_id


def _merge_existing(
    session: Session, merges: dict[int, list[tuple[CleanRow, str]]], run_id: int, actor: Actor
) -> tuple[list[int], dict[str, int]]:
    """Fill empty fields of already stored leads (and their contact and account) from matching rows.

    A stored lead without an account is linked to the row's company (an existing account of that name,
    else a new one); one without a contact gets a new contact from the row. Returns the merged lead ids
    and the accounts added ({folded name: id}).
    """
    new_accounts: dict[str, int] = {}
    if not merges:
        return [], new_accounts
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
        contact_id = contact.id if contact else None
        account_id = account.id if account else None
        stored: dict[str, dict[str, Any]] = {
            "": {n: getattr(lead, n) for n in LEAD_FILL.values()},
            "contact.": {n: getattr(contact, n) for n in CONTACT_FILL.values()} if contact else {},
            "account.": {n: getattr(account, n) for n in ACCOUNT_FILL.values()} if account else {},
        }
        for row, matched_by in rows:
            filled: list[str] = []
            conflicts: list[str] = []
            links: dict[str, int] = {}
            if account_id is None and row.company_key:
                account_id = links["account_id"] = _account_for(session, row, now, new_accounts)
                industry, region, size = session.execute(
                    select(Account.industry, Account.region, Account.size).where(Account.id == account_id)
                ).one()
                stored["account."] = {"industry": industry, "region": region, "size": size}
                filled.append("account")
                if contact_id is not None:
                    session.execute(
                        update(Contact)
                        .where(Contact.id == contact_id, Contact.account_id.is_(None))
                        .values(account_id=account_id, updated_at=now)
                    )
            if contact_id is None and (row.phone or row.email or row.contact_name):
                contact_id = links["contact_id"] = _new_contact(session, row, account_id, now)
                stored["contact."] = {n: None for n in CONTACT_FILL.values()}
                filled.append("contact")
            values: dict[str, dict[str, Any]] = {}
            for prefix, names in FILL_GROUPS:
                if prefix and not stored[prefix]:
                    continue  # no such record to fill
                values[prefix], clashes = _fill(stored[prefix], row, names)
                filled.extend(prefix + name for name in values[prefix])
                conflicts.extend(prefix + name for name in clashes)
            if values[""] or links:
                session.execute(
                    update(Lead)
                    .where(Lead.id == lead_id)
                    .values(**values[""], **links, updated_at=now, version=Lead.version + 1)
                    .execution_options(synchronize_session=False)
                )
            if values.get("contact.") and contact_id is not None:
                session.execute(
                    update(Contact).where(Contact.id == contact_id).values(**values["contact."], updated_at=now)
                )
            if values.get("account.") and account_id is not None:
                session.execute(
                    update(Account).where(Account.id == account_id).values(**values["account."], updated_at=now)
                )
            events.append(
                {
                    "type": LEAD_MERGED,
                    "lead_id": lead_id,
                    "actor_id": actor.id,
                    "occurred_at": now,
                    "payload": {
                        "run_id": run_id,
                        "row": row.row,
                        "matched_by": matched_by,
                        "filled": sorted(filled),
                        "conflicts": sorted(conflicts),
                    },
                }
            )
    append_events_bulk(session, events)
    return sorted(merges), new_accounts


Validated = tuple[int, list[tuple[CleanRow, str]], list[RowError]]


def validate_chunk(chunk: list[tuple[int, list[str]]], mapping: Mapping, region: str) -> Validated:
    """Validate a chunk of rows: (rows seen, clean rows with fingerprints, errors). Runs in a worker process."""
    clean: list[tuple[CleanRow, str]] = []
    errors: list[RowError] = []
    for number, cells in chunk:
        result = clean_row(number, cells, mapping, region)
        if isinstance(result, list):
            errors.extend(result)
        else:
            clean.append((result, result.fingerprint()))
    return len(chunk), clean, errors


def _chunks(rows: Iterable[tuple[int, list[str]]], size: int) -> Iterator[list[tuple[int, list[str]]]]:
    chunk: list[tuple[int, list[str]]] = []
    for item in rows:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def validated_chunks(
    rows: Iterable[tuple[int, list[str]]], mapping: Mapping, region: str, *, chunk_size: int, workers: int
) -> Iterator[Validated]:
    """Validate rows in order; with workers > 0, in worker processes while the caller writes to the database."""
    chunks = _chunks(rows, chunk_size)
    if workers <= 0:
        for chunk in chunks:
            yield validate_chunk(chunk, mapping, region)
        return
    # fork starts in milliseconds but is unsafe in a process with other threads; forkserver is safe.
    context = multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        in_flight: deque[Future[Validated]] = deque()
        for chunk in chunks:
            in_flight.append(pool.submit(validate_chunk, chunk, mapping, region))
            if len(in_flight) > workers:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()


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
    workers: int = 1,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import leads from a CSV or XLSX file; valid rows are kept, invalid ones reported per row."""
    started = time.perf_counter()
    override: MappingFile | None = load_mapping_file(mapping_file) if mapping_file else None
    table = read_table(
        path, encoding=override.encoding if override else None, delimiter=override.delimiter if override else None
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
        name: _IdPool(engine, model, room)
        for name, model in (("accounts", Account), ("contacts", Contact), ("leads", Lead))
    }
    planner = _Planner(known, pools, run.id, actor)
    try:
        for seen, clean, errors in validated_chunks(
            table.rows, mapping, region, chunk_size=batch_size, workers=use_workers
        ):
            summary.total_rows += seen
            summary.rejected += len({e.row for e in errors})
            summary.errors.extend(errors)
            plan = planner.plan(clean, summary)
            if plan is not None:
                # One transaction per batch: a crash loses at most this batch, and a re-run redoes it.
                with Session(engine, expire_on_commit=False) as session:
                    new_accounts = _write_plan(session, plan, run.id, actor)
                    session.commit()
                for key, account_id in new_accounts.items():
                    known.accounts.setdefault(key, account_id)
            done += seen
            if progress:
                progress(done, table.total_rows)
        if summary.created >= ANALYZE_AFTER_CREATED:
            refresh_statistics(engine)
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
    return summary


def write_error_report(errors: list[RowError], path: Path) -> None:
    """Write the per-row errors as CSV (row, field, reason, value), UTF-8 with BOM so Excel reads Chinese."""
    try:
        with path.open("w", newline="", encoding="utf-8-sig") as fh:
            writer = csv.writer(fh)
            writer.writerow(["row", "field", "reason", "value"])
            for e in errors:
                writer.writerow([e.row, e.field, e.reason, e.value])
    except OSError as exc:
        raise Invalid(f"cannot write the error report {path}: {exc.strerror or exc}", field="report") from exc
