"""Lead import end to end, on SQLite and PostgreSQL: formats, errors, de-duplication, idempotency, the CLI."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openpyxl import Workbook
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from leadpilot.crm import customers, leads, schemas
from leadpilot.crm.access import SYSTEM
from leadpilot.crm.errors import Invalid
from leadpilot.crm.events import EventRecord, bus
from leadpilot.crm.models import (
    Account,
    AuditEntry,
    Contact,
    Event,
    ImportedRow,
    ImportRun,
    Lead,
)
from leadpilot.db.bulk import _statement_sizes, bulk_job_connection, insert_tuples
from leadpilot.db.engine import make_engine
from leadpilot.intake import importer
from leadpilot.intake.importer import ImportSummary, import_leads
from tests.conftest import _truncate_pg

HEADERS = ["Company", "Contact", "Phone", "Email", "Product line", "Source", "City", "Budget", "Notes", "Lead ID"]
CN_HEADERS = ["公司", "联系人", "手机", "邮箱", "产品线", "来源", "城市", "预算"]


def write_csv(
    path: Path, rows: list[list[str]], *, headers: list[str] = HEADERS, encoding: str = "utf-8", delimiter: str = ","
) -> Path:
    with path.open("w", newline="", encoding=encoding) as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(headers)
        writer.writerows(rows)
    return path


def lead_row(i: int, **values: str) -> list[str]:
    """A valid row, distinct for each i (phone +1 415 555 1000+i, e-mail p{i}@example.com)."""
    row = {
        "Company": f"Company {i}",
        "Contact": f"Person {i}",
        "Phone": f"+1 415 555 {1000 + i:04d}",
        "Email": f"p{i}@example.com",
        "Product line": "housing",
        "Source": "web",
        "City": "Boston",
        "Budget": "1000",
        "Notes": "",
        "Lead ID": f"L-{i}",
    }
    row.update(values)
    return [row[h] for h in HEADERS]


def count(engine: Engine, model: type[Any]) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def counts(engine: Engine) -> dict[str, int]:
    return {m.__tablename__: count(engine, m) for m in (Lead, Contact, Account, Event, ImportedRow, AuditEntry)}


def events_of(engine: Engine, kind: str) -> list[Event]:
    with Session(engine) as s:
        return list(s.scalars(select(Event).where(Event.type == kind).order_by(Event.id)))


def lead_by_ext(engine: Engine, external_id: str) -> dict[str, Any]:
    """A lead with its contact and account, as plain values."""
    with Session(engine) as s:
        lead = s.scalars(select(Lead).where(Lead.external_id == external_id)).one()
        contact = s.get(Contact, lead.contact_id) if lead.contact_id else None
        account = s.get(Account, lead.account_id) if lead.account_id else None
        return {
            "id": lead.id,
            "title": lead.title,
            "product_line": lead.product_line,
            "source": lead.source,
            "region": lead.region,
            "budget": lead.budget,
            "notes": lead.notes,
            "stage": lead.stage,
            "version": lead.version,
            "contact": None
            if contact is None
            else {
                "name": contact.name,
                "phone": contact.phone,
                "email": contact.email,
                "consent": contact.consent,
                "do_not_call": contact.do_not_call,
                "account_id": contact.account_id,
            },
            "account": None
            if account is None
            else {
                "id": account.id,
                "name": account.name,
                "industry": account.industry,
                "region": account.region,
                "size": account.size,
            },
        }


def snapshot(engine: Engine, *, with_version: bool = True) -> dict[str, Any]:
    """The database's content, ids replaced by what they point to (so two databases can be compared)."""
    with Session(engine) as s:
        accounts = {a.id: a for a in s.scalars(select(Account))}
        contacts = {c.id: c for c in s.scalars(select(Contact))}
        lead_rows = list(s.scalars(select(Lead)))

        def account_key(account_id: int | None) -> Any:
            a = accounts.get(account_id) if account_id else None
            return None if a is None else (a.name, a.name_key, a.industry, a.region, a.size)

        def contact_key(contact_id: int | None) -> Any:
            c = contacts.get(contact_id) if contact_id else None
            if c is None:
                return None
            return (c.name, c.phone, c.email, c.consent, c.do_not_call, account_key(c.account_id))

        lead_key = {
            lead.id: (
                lead.title,
                lead.product_line,
                lead.source,
                lead.region,
                lead.budget,
                lead.notes,
                lead.external_id,
                lead.stage,
                lead.owner_id,
                *((lead.version,) if with_version else ()),
                contact_key(lead.contact_id),
                account_key(lead.account_id),
            )
            for lead in lead_rows
        }
        events = Counter(
            (
                e.type,
                repr(lead_key.get(e.lead_id or -1)),
                json.dumps({k: v for k, v in e.payload.items() if k != "run_id"}, sort_keys=True),
            )
            for e in s.scalars(select(Event))
        )
        return {
            "leads": sorted(map(repr, lead_key.values())),
            "contacts": sorted(repr(contact_key(c)) for c in contacts),
            "accounts": sorted(repr(account_key(a)) for a in accounts),
            "events": events,
            "events_by_type": Counter(e[0] for e in events.elements()),
            "fingerprints": sorted(s.scalars(select(ImportedRow.fingerprint))),
        }


@pytest.fixture
def fresh(engine: Engine, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Engine]]:
    """Another empty database of the same kind as ``engine`` (to compare two imports of one file).

    SQLite: a new copy of the migrated template. PostgreSQL: the same database, emptied (its events
    table may be truncated; SQLite's refuses deletes, it is append-only).
    """
    made: list[Engine] = []

    def make() -> Engine:
        if engine.dialect.name == "postgresql":
            _truncate_pg(engine)
            return engine
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / f"other-{len(made)}.db"
        shutil.copy(template, path)
        made.append(make_engine(f"sqlite:///{path}"))
        return made[-1]

    yield make
    for eng in made:
        eng.dispose()


def totals(summary: ImportSummary) -> dict[str, int]:
    return {k: getattr(summary, k) for k in ("total_rows", "created", "merged", "unchanged", "rejected")}


# --- formats -------------------------------------------------------------------------------------

CN_ROWS = [
    ["链家地产", "张伟", "13812345678", "ZW@Example.cn", "房产", "网站", "北京", "￥50万"],
    ["瓜子二手车有限公司", "王芳", "139 1234 5678", "", "二手车", "广告", "广州", "1.5k"],
    ["前程人才", "李娜", "12345", "", "招聘", "广告", "成都", ""],
]


def check_chinese_import(engine: Engine, summary: ImportSummary) -> None:
    assert totals(summary) == {"total_rows": 3, "created": 2, "merged": 0, "unchanged": 0, "rejected": 1}
    assert [(e.row, e.field, e.value) for e in summary.errors] == [(4, "phone", "12345")]
    assert summary.mapping["company"] == "公司" and summary.mapping["budget"] == "预算"
    with Session(engine) as s:
        rows = s.execute(
            select(
                Lead.product_line,
                Lead.source,
                Lead.region,
                Lead.budget,
                Contact.name,
                Contact.phone,
                Contact.email,
                Account.name,
            )
            .join(Contact, Contact.id == Lead.contact_id)
            .join(Account, Account.id == Lead.account_id)
            .order_by(Lead.id)
        ).all()
    assert [tuple(r) for r in rows] == [
        ("房产", "网站", "北京", 500_000, "张伟", "+8613812345678", "zw@example.cn", "链家地产"),
        ("二手车", "广告", "广州", 1_500, "王芳", "+8613912345678", None, "瓜子二手车有限公司"),
    ]
    assert count(engine, Lead) == 2 and count(engine, Contact) == 2 and count(engine, Account) == 2


@pytest.mark.parametrize(("encoding", "detected"), [("utf-8", "utf-8"), ("utf-8-sig", "utf-8-sig"), ("gbk", "gb18030")])
def test_csv_encodings_with_chinese_headers(engine: Engine, tmp_path: Path, encoding: str, detected: str) -> None:
    path = write_csv(tmp_path / "leads.csv", CN_ROWS, headers=CN_HEADERS, encoding=encoding)
    summary = import_leads(engine, path, default_region="CN", workers=0)
    assert summary.encoding == detected
    assert summary.delimiter == ","
    check_chinese_import(engine, summary)


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_csv_delimiters(engine: Engine, tmp_path: Path, delimiter: str) -> None:
    rows = [lead_row(1, Budget="1,500", Notes="likes commas, and; semicolons"), lead_row(2)]
    path = write_csv(tmp_path / "leads.csv", rows, delimiter=delimiter)
    summary = import_leads(engine, path, workers=0)
    assert summary.delimiter == delimiter
    assert totals(summary)["created"] == 2 and summary.errors == []
    lead = lead_by_ext(engine, "L-1")
    assert lead["budget"] == 1500 and lead["notes"] == "likes commas, and; semicolons"


def test_xlsx_with_numeric_phone_cells(engine: Engine, tmp_path: Path) -> None:
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(CN_HEADERS)
    sheet.append(["链家地产", "张伟", 13812345678.0, "ZW@Example.cn", "房产", "网站", "北京", "￥50万"])
    sheet.append(["瓜子二手车有限公司", "王芳", 13912345678, None, "二手车", "广告", "广州", 1500.0])
    sheet.append(["前程人才", "李娜", 12345.0, None, "招聘", "广告", "成都", None])
    path = tmp_path / "leads.xlsx"
    workbook.save(path)
    summary = import_leads(engine, path, default_region="CN", workers=0)
    assert summary.encoding is None and summary.delimiter is None
    check_chinese_import(engine, summary)


def test_xlsx_with_a_wrong_stated_size_imports_every_row(engine: Engine, tmp_path: Path) -> None:
    """The row count is only an estimate for XLSX (here 0): ids are reserved as needed."""
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(HEADERS)
    for i in range(30):
        sheet.append(lead_row(i))
    good = tmp_path / "good.xlsx"
    workbook.save(good)
    bad = tmp_path / "bad.xlsx"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as out:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.startswith("xl/worksheets/"):
                data = re.sub(rb'<dimension ref="[^"]*"\s*/>', b'<dimension ref="A1"/>', data)
            out.writestr(item, data)
    summary = import_leads(engine, bad, batch_size=10, workers=0)
    assert totals(summary) == {"total_rows": 30, "created": 30, "merged": 0, "unchanged": 0, "rejected": 0}
    assert count(engine, Lead) == 30 and len(events_of(engine, "lead_created")) == 30


def test_mapping_file_override(engine: Engine, tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        "columns:\n  company: Firm\n  phone: Handy\n  product_line: Name\n"
        "defaults:\n  source: trade_show\n  industry: retail\ndefault_region: CN\n",
        encoding="utf-8",
    )
    path = write_csv(
        tmp_path / "odd.csv",
        [["Acme", "138 1234 5678", "cars", "", "x"], ["Beta", "139 1234 5678", "housing", "web", "y"]],
        headers=["Firm", "Handy", "Name", "Source", "Colour"],
    )
    summary = import_leads(engine, path, mapping_file=mapping, workers=0)
    assert summary.mapping == {"company": "Firm", "phone": "Handy", "product_line": "Name", "source": "Source"}
    assert summary.unmapped_headers == ["Colour"]
    assert totals(summary)["created"] == 2
    with Session(engine) as s:
        got = s.execute(
            select(Account.name, Account.industry, Lead.product_line, Lead.source, Contact.phone)
            .join(Lead, Lead.account_id == Account.id)
            .join(Contact, Contact.id == Lead.contact_id)
            .order_by(Account.name)
        ).all()
    assert [tuple(r) for r in got] == [
        ("Acme", "retail", "cars", "trade_show", "+8613812345678"),
        ("Beta", "retail", "housing", "web", "+8613912345678"),
    ]


def test_mapping_file_naming_a_missing_header_writes_nothing(engine: Engine, tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("columns:\n  phone: Handy\n", encoding="utf-8")
    path = write_csv(tmp_path / "leads.csv", [lead_row(1)])
    with pytest.raises(Invalid, match="column 'Handy' for 'phone' is not in the file"):
        import_leads(engine, path, mapping_file=mapping, workers=0)
    mapping.write_text("columns:\n  colour: Company\n", encoding="utf-8")
    with pytest.raises(Invalid, match="colour is not a lead field"):
        import_leads(engine, path, mapping_file=mapping, workers=0)
    assert count(engine, Lead) == 0 and count(engine, ImportRun) == 0


def test_missing_required_columns_writes_nothing(engine: Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "leads.csv", [["Acme", "Boston"]], headers=["Company", "City"])
    with pytest.raises(Invalid, match="cannot find the needed columns") as exc:
        import_leads(engine, path, workers=0)
    assert exc.value.field == "mapping"
    assert count(engine, Lead) == 0 and count(engine, ImportRun) == 0


def test_an_undecodable_file_is_one_clear_error(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_bytes(b"Company,Phone\n" + b"\x80\xff\xfe,+14155550100\n")
    with pytest.raises(Invalid, match="cannot tell the file's encoding") as exc:
        import_leads(engine, path, workers=0)
    assert exc.value.field == "encoding"
    assert count(engine, Lead) == 0


def test_gbk_file_declared_as_utf8_in_the_mapping_is_reported(engine: Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "leads.csv", CN_ROWS, headers=CN_HEADERS, encoding="gbk")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("encoding: utf-8\n", encoding="utf-8")
    with pytest.raises(Invalid, match="file is not valid utf-8"):
        import_leads(engine, path, mapping_file=mapping, workers=0)
    mapping.write_text("encoding: gbk\ndefault_region: CN\n", encoding="utf-8")
    summary = import_leads(engine, path, mapping_file=mapping, workers=0)
    assert summary.encoding == "gbk"
    check_chinese_import(engine, summary)


# --- validation: per-row errors ------------------------------------------------------------------


def test_per_row_errors_and_no_half_written_rows(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    rows = [
        lead_row(1),  # row 2
        lead_row(2, Phone="12345"),  # row 3: bad phone
        lead_row(3, Email="not-an-email"),  # row 4
        lead_row(4, Budget="-5"),  # row 5
        lead_row(5, Budget="¥50万"),  # row 6: fine
        lead_row(6, Company="", Contact=""),  # row 7: nobody
        lead_row(7, Phone="", Email=""),  # row 8: no way to reach them
        lead_row(8, Phone="abc", Email="x@", Budget="1.5k"),  # row 9: two errors, one rejected row
    ]
    write_csv(path, rows)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n")  # row 10: blank, skipped but counted
        fh.write(",".join(lead_row(9, Budget="1.5k")) + "\n")  # row 11: fine
    summary = import_leads(engine, path, workers=0)
    assert totals(summary) == {"total_rows": 9, "created": 3, "merged": 0, "unchanged": 0, "rejected": 6}
    assert [(e.row, e.field) for e in summary.errors] == [
        (3, "phone"),
        (4, "email"),
        (5, "budget"),
        (7, "company"),
        (8, "phone"),
        (9, "phone"),
        (9, "email"),
    ]
    assert summary.errors[0].value == "12345" and "not a valid number" in summary.errors[0].reason
    assert summary.errors[4].reason == "required: a phone number or an e-mail address"
    # Only the valid rows were written, each completely.
    assert counts(engine)["leads"] == 3 and count(engine, Contact) == 3 and count(engine, Account) == 3
    with Session(engine) as s:
        assert sorted(s.scalars(select(Lead.external_id))) == ["L-1", "L-5", "L-9"]
        assert s.scalar(select(func.count()).select_from(Lead).where(Lead.contact_id.is_(None))) == 0
        assert s.scalar(select(func.count()).select_from(Lead).where(Lead.account_id.is_(None))) == 0
    assert lead_by_ext(engine, "L-5")["budget"] == 500_000
    assert lead_by_ext(engine, "L-9")["budget"] == 1_500
    with Session(engine) as s:
        run = s.get_one(ImportRun, summary.run_id)
        assert run.status == "done"
        assert run.errors[0] == {"row": 3, "field": "phone", "reason": summary.errors[0].reason, "value": "12345"}
        assert len(run.errors) == 7


def test_enum_and_flag_columns(engine: Engine, tmp_path: Path) -> None:
    headers = ["Company", "Phone", "Size", "Consent", "DNC", "Industry"]
    path = write_csv(
        tmp_path / "flags.csv",
        [
            ["A", "+1 415 555 0101", "中型", "同意", "是", "retail"],
            ["B", "+1 415 555 0102", "huge", "", "", ""],
            ["C", "+1 415 555 0103", "", "maybe", "", ""],
            ["D", "+1 415 555 0104", "", "", "perhaps", ""],
            ["E", "+1 415 555 0105", "Large", "denied", "no", ""],
        ],
        headers=headers,
    )
    summary = import_leads(engine, path, workers=0)
    assert [(e.row, e.field) for e in summary.errors] == [(3, "company_size"), (4, "consent"), (5, "do_not_call")]
    with Session(engine) as s:
        got = s.execute(
            select(Account.name, Account.size, Account.industry, Contact.consent, Contact.do_not_call)
            .join(Contact, Contact.account_id == Account.id)
            .order_by(Account.name)
        ).all()
    assert [tuple(r) for r in got] == [
        ("A", "medium", "retail", "granted", True),
        ("E", "large", None, "denied", False),
    ]


# --- de-duplication ------------------------------------------------------------------------------

ORIGINAL = lead_row(
    1,
    Company="Acme Ltd",
    Contact="Bob",
    Phone="+1 415 555 2671",
    Email="",
    City="",
    Budget="",
    Source="web",
    **{"Lead ID": "A-1"},
)
# Each matches ORIGINAL one way only, fills its empty fields and disagrees on others.
DUPLICATES = {
    "phone": lead_row(
        2,
        Company="",
        Contact="Robert",
        Phone="(415) 555-2671",
        Email="bob@acme.com",
        **{"Product line": "cars"},
        Source="fair",
        City="Boston",
        Budget="5k",
        Notes="second",
        **{"Lead ID": "A-2"},
    ),
    "email": lead_row(
        3,
        Company="Acme Ltd",
        Contact="Bob",
        Phone="+1 415 555 0199",
        Email="Bob@Acme.com",
        **{"Product line": "cars"},
        City="Boston",
        Budget="5k",
        Notes="second",
        **{"Lead ID": "A-3"},
    ),
    "company+product_line": lead_row(
        4,
        Company="ACME, Inc.",
        Contact="",
        Phone="+1 415 555 0199",
        Email="",
        City="Boston",
        Budget="5k",
        Notes="second",
        **{"Lead ID": "A-4"},
    ),
}
# The email case first needs the address on the stored lead.
WITH_EMAIL = lead_row(
    1,
    Company="Acme Ltd",
    Contact="Bob",
    Phone="+1 415 555 2671",
    Email="bob@acme.com",
    City="",
    Budget="",
    Source="web",
    **{"Lead ID": "A-1"},
)


def expected_merge(matched_by: str) -> tuple[list[str], list[str]]:
    """(filled, conflicts) of the lead_merged event for each duplicate."""
    return {
        "phone": (
            ["account.region", "budget", "contact.email", "notes", "region"],
            ["contact.name", "external_id", "product_line", "source"],
        ),
        "email": (
            ["account.region", "budget", "notes", "region"],
            ["contact.phone", "external_id", "product_line"],
        ),
        "company+product_line": (
            ["account.region", "budget", "notes", "region"],
            ["contact.phone", "external_id"],
        ),
    }[matched_by]


@pytest.mark.parametrize("where", ["same file", "already stored"])
@pytest.mark.parametrize("matched_by", list(DUPLICATES))
def test_duplicates_are_merged(engine: Engine, tmp_path: Path, matched_by: str, where: str) -> None:
    original = WITH_EMAIL if matched_by == "email" else ORIGINAL
    duplicate = DUPLICATES[matched_by]
    if where == "same file":
        summary = import_leads(engine, write_csv(tmp_path / "both.csv", [original, duplicate]), workers=0)
        assert totals(summary) == {"total_rows": 2, "created": 1, "merged": 1, "unchanged": 0, "rejected": 0}
        row_number = 3
    else:
        first = import_leads(engine, write_csv(tmp_path / "first.csv", [original]), workers=0)
        assert (first.created, first.merged) == (1, 0)
        summary = import_leads(engine, write_csv(tmp_path / "second.csv", [duplicate]), workers=0)
        assert totals(summary) == {"total_rows": 1, "created": 0, "merged": 1, "unchanged": 0, "rejected": 0}
        row_number = 2
    assert count(engine, Lead) == 1 and count(engine, Contact) == 1 and count(engine, Account) == 1
    lead = lead_by_ext(engine, "A-1")
    # Empty fields filled; nothing that was set is overwritten.
    assert (lead["product_line"], lead["source"], lead["region"], lead["budget"], lead["notes"]) == (
        "housing",
        "web",
        "Boston",
        5000,
        "second",
    )
    assert lead["contact"]["name"] == "Bob"
    assert lead["contact"]["phone"] == "+14155552671"
    assert lead["contact"]["email"] == (None if matched_by == "company+product_line" else "bob@acme.com")
    assert lead["account"]["name"] == "Acme Ltd" and lead["account"]["region"] == "Boston"
    merged = events_of(engine, "lead_merged")
    assert len(merged) == 1
    event = merged[0]
    assert event.lead_id == lead["id"]
    filled, conflicts = expected_merge(matched_by)
    assert event.payload["matched_by"] == matched_by
    assert event.payload["row"] == row_number
    assert event.payload["run_id"] == summary.run_id
    assert event.payload["filled"] == filled
    assert event.payload["conflicts"] == conflicts
    assert [e.lead_id for e in events_of(engine, "lead_created")] == [lead["id"]]


def test_match_order_is_phone_then_email_then_company(engine: Engine, tmp_path: Path) -> None:
    rows = [
        lead_row(1, Company="Acme", Phone="+1 415 555 0001", Email="a@acme.com"),
        lead_row(2, Company="Beta", Phone="+1 415 555 0002", Email="b@beta.com"),
        # Email of 1, phone of 2: phone wins.
        lead_row(3, Company="Gamma", Phone="+1 415 555 0002", Email="a@acme.com"),
        # Company + line of 1, email of 2: email wins.
        lead_row(4, Company="acme", Phone="+1 415 555 0004", Email="b@beta.com"),
        # Same company, another product line: a new lead under the same account.
        lead_row(5, Company="ACME", Phone="+1 415 555 0005", Email="", **{"Product line": "cars"}),
    ]
    summary = import_leads(engine, write_csv(tmp_path / "order.csv", rows), workers=0)
    assert (summary.created, summary.merged) == (3, 2)
    merged = {e.payload["row"]: (e.payload["matched_by"], e.lead_id) for e in events_of(engine, "lead_merged")}
    two = lead_by_ext(engine, "L-2")["id"]
    assert merged == {4: ("phone", two), 5: ("email", two)}
    assert lead_by_ext(engine, "L-5")["account"]["id"] == lead_by_ext(engine, "L-1")["account"]["id"]
    assert count(engine, Account) == 2


def test_merge_into_a_lead_made_in_the_app_without_contact(engine: Engine, tmp_path: Path) -> None:
    """A stored lead with an account but no contact gets one; the account's empty fields are filled."""
    with Session(engine) as s:
        account = customers.create_account(s, actor=SYSTEM, data=schemas.AccountCreate(name="Acme Ltd"))
        stored = leads.create_lead(
            s,
            actor=SYSTEM,
            data=schemas.LeadCreate(title="Acme deal", account_id=account.id, product_line="housing", source="api"),
        )
        s.commit()
        lead_id, account_id = stored.id, account.id
    row = lead_row(
        1,
        Company="ACME LTD.",
        Contact="Bob",
        Phone="+1 415 555 2671",
        Email="",
        City="Boston",
        Notes="from the fair",
        **{"Lead ID": "A-1"},
    )
    headers = [*HEADERS, "Industry", "Consent"]
    summary = import_leads(
        engine, write_csv(tmp_path / "leads.csv", [[*row, "retail", "granted"]], headers=headers), workers=0
    )
    assert (summary.created, summary.merged) == (0, 1)
    lead = lead_by_ext(engine, "A-1")
    assert lead["id"] == lead_id
    assert (lead["title"], lead["source"], lead["region"], lead["version"]) == ("Acme deal", "api", "Boston", 2)
    assert lead["contact"] == {
        "name": "Bob",
        "phone": "+14155552671",
        "email": None,
        "consent": "granted",
        "do_not_call": False,
        "account_id": account_id,
    }
    assert lead["account"] == {
        "id": account_id,
        "name": "Acme Ltd",
        "industry": "retail",
        "region": "Boston",
        "size": None,
    }
    (event,) = events_of(engine, "lead_merged")
    assert event.payload["matched_by"] == "company+product_line"
    assert event.payload["filled"] == [
        "account.industry",
        "account.region",
        "budget",
        "contact",
        "contact.name",
        "contact.phone",
        "external_id",
        "notes",
        "region",
    ]
    assert event.payload["conflicts"] == ["source"]
    # Matched again by phone next time.
    again = import_leads(engine, write_csv(tmp_path / "again.csv", [lead_row(2, Phone="(415) 555-2671")]), workers=0)
    assert (again.created, again.merged) == (0, 1)
    assert events_of(engine, "lead_merged")[-1].payload["matched_by"] == "phone"


def test_merge_links_a_stored_lead_without_account(engine: Engine, tmp_path: Path) -> None:
    first = write_csv(tmp_path / "first.csv", [lead_row(1, Company="", Contact="Bob", Phone="+1 415 555 2671")])
    import_leads(engine, first, workers=0)
    assert lead_by_ext(engine, "L-1")["account"] is None
    second = write_csv(tmp_path / "second.csv", [lead_row(2, Company="Acme", Phone="+1 415 555 2671")])
    summary = import_leads(engine, second, workers=0)
    assert (summary.created, summary.merged) == (0, 1)
    lead = lead_by_ext(engine, "L-1")
    assert lead["account"] is not None and lead["account"]["name"] == "Acme"
    assert lead["contact"]["account_id"] == lead["account"]["id"]
    assert "account" in events_of(engine, "lead_merged")[0].payload["filled"]
    # The new account is reused, and company + product line now matches the lead.
    third = write_csv(tmp_path / "third.csv", [lead_row(3, Company="acme", Phone="+1 415 555 0003", Email="")])
    summary = import_leads(engine, third, workers=0)
    assert (summary.created, summary.merged) == (0, 1)
    assert events_of(engine, "lead_merged")[-1].payload["matched_by"] == "company+product_line"
    assert count(engine, Account) == 1


def test_merges_into_leads_sharing_an_account_never_overwrite_it(engine: Engine, tmp_path: Path) -> None:
    """Two stored leads of one account: the first row fills its industry, the second finds it set."""
    headers = [*HEADERS, "Industry"]
    first = [
        [*lead_row(1, Company="Acme", **{"Product line": "housing"}), ""],
        [*lead_row(2, Company="Acme", **{"Product line": "cars"}), ""],
    ]
    import_leads(engine, write_csv(tmp_path / "first.csv", first, headers=headers), workers=0)
    assert lead_by_ext(engine, "L-1")["account"]["id"] == lead_by_ext(engine, "L-2")["account"]["id"]
    second = [
        [*lead_row(11, Phone="+1 415 555 1001", Company="Acme"), "retail"],
        [*lead_row(12, Phone="+1 415 555 1002", Company="Acme"), "banking"],
    ]
    summary = import_leads(engine, write_csv(tmp_path / "second.csv", second, headers=headers), workers=0)
    assert (summary.created, summary.merged) == (0, 2)
    assert lead_by_ext(engine, "L-1")["account"]["industry"] == "retail"
    by_row = {e.payload["row"]: e.payload for e in events_of(engine, "lead_merged")}
    assert "account.industry" in by_row[2]["filled"]
    assert "account.industry" in by_row[3]["conflicts"]


def test_lead_created_payload_describes_the_row_that_created_the_lead(
    engine: Engine, tmp_path: Path, fresh: Callable[[], Engine]
) -> None:
    """The same file in one batch or in two gives the same leads and events, payloads included."""
    rows = [
        lead_row(1, **{"Product line": ""}, Source=""),
        lead_row(2, Phone="+1 415 555 1001", **{"Product line": "cars"}, Source="fair"),
    ]
    path = write_csv(tmp_path / "pair.csv", rows)
    import_leads(engine, path, batch_size=10, workers=0)
    other = fresh()
    import_leads(other, path, batch_size=1, workers=0)
    # (Only the version differs: a merge into a stored lead counts as an edit, one before insert does not.)
    assert snapshot(other, with_version=False) == snapshot(engine, with_version=False)
    (created,) = events_of(engine, "lead_created")
    assert (created.payload["source"], created.payload["product_line"]) == ("import", None)
    lead = lead_by_ext(engine, "L-1")
    assert (lead["title"], lead["product_line"], lead["source"]) == ("Company 1", "cars", "import")


def dedup_rows() -> list[list[str]]:
    """Rows with duplicates of every kind, near and far apart, some invalid."""
    rows: list[list[str]] = []
    for i in range(40):
        rows.append(
            lead_row(
                i,
                Budget="" if i % 3 else "2k",
                Notes="" if i % 2 else f"note {i}",
                Email="" if i % 4 == 0 else f"p{i}@example.com",
                Source="" if i == 4 else "web",
            )
        )
    for i in range(0, 40, 4):
        rows.append(
            lead_row(
                100 + i,
                Phone=f"+1 415 555 {1000 + i:04d}",
                Email=f"dup{i}@example.com",
                Contact="Someone Else",
                Notes=f"again {i}",
                City="Denver",
                Budget="3k",
                Source="fair",
            )
        )
    for i in range(1, 40, 5):
        rows.append(lead_row(200 + i, Phone="", Email=f"P{i}@Example.com", Contact="", Company=f"Company {i}"))
    for i in range(2, 40, 6):
        rows.append(
            lead_row(
                300 + i,
                Phone="+1 415 555 9999" if i == 2 else f"+1 415 555 {8000 + i:04d}",
                Email="",
                Company=f"company {i} inc",
                Source="partner",
            )
        )
    rows.append(list(rows[1]))  # an identical copy of an earlier row
    rows.append(lead_row(400, Phone="555"))  # invalid
    rows.append(lead_row(401, Email="bad@"))  # invalid
    return rows


def test_result_does_not_depend_on_batch_size(engine: Engine, tmp_path: Path, fresh: Callable[[], Engine]) -> None:
    path = write_csv(tmp_path / "dups.csv", dedup_rows())
    one = import_leads(engine, path, batch_size=1000, workers=0)
    whole = snapshot(engine, with_version=False)
    other = fresh()
    small = import_leads(other, path, batch_size=3, workers=0)
    assert totals(small) == totals(one)
    assert snapshot(other, with_version=False) == whole
    assert one.created == 40 and one.merged == 10 + 8 + 7 and one.unchanged == 1 and one.rejected == 2
    assert one.total_rows == one.created + one.merged + one.unchanged + one.rejected == len(dedup_rows())


# --- idempotency and crash safety ----------------------------------------------------------------


def test_re_running_the_same_file_creates_nothing(engine: Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "dups.csv", dedup_rows())
    first = import_leads(engine, path, batch_size=7, workers=0)
    before, state = counts(engine), snapshot(engine)
    again = import_leads(engine, path, batch_size=7, workers=0)
    valid = first.total_rows - first.rejected
    assert totals(again) == {
        "total_rows": first.total_rows,
        "created": 0,
        "merged": 0,
        "unchanged": valid,
        "rejected": first.rejected,
    }
    assert [(e.row, e.field) for e in again.errors] == [(e.row, e.field) for e in first.errors]
    assert counts(engine) == before  # no new leads, contacts, accounts, events, audit entries
    assert snapshot(engine) == state
    assert count(engine, ImportRun) == 2
    # The same rows in another file (order and formatting changed) are recognised too.
    reordered = [*reversed(dedup_rows())]
    for row in reordered:
        row[2] = row[2].replace(" ", "-")
    third = import_leads(engine, write_csv(tmp_path / "other.csv", reordered), workers=0)
    assert (third.created, third.merged, third.unchanged) == (0, 0, valid)
    assert counts(engine) == before


class Crash(RuntimeError):
    pass


def test_a_run_killed_half_way_can_be_re_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh: Callable[[], Engine]
) -> None:
    path = write_csv(tmp_path / "dups.csv", dedup_rows())
    clean_db = fresh()
    clean = import_leads(clean_db, path, batch_size=10, workers=0)
    expected, expected_audit = snapshot(clean_db), count(clean_db, AuditEntry)
    db = fresh()

    # The second batch dies in the middle of its transaction: after its leads, before their events.
    real = importer._write_events
    calls = {"n": 0}

    def dying(session: Session, batch: Any, events: list[tuple[Any, ...]]) -> None:
        if any(event[1] == "lead_created" for event in events):
            calls["n"] += 1
            if calls["n"] == 2:
                raise Crash("killed")
        real(session, batch, events)

    monkeypatch.setattr(importer, "_write_events", dying)
    with pytest.raises(Crash):
        import_leads(db, path, batch_size=10, workers=0)
    monkeypatch.undo()
    # Only the first batch is there, complete: every lead has its contact, account and lead_created event.
    assert counts(db) == {
        "leads": 10,
        "contacts": 10,
        "accounts": 10,
        "events": 10,
        "imported_rows": 10,
        "audit_log": 1,
    }
    with Session(db) as s:
        assert s.scalar(select(func.count()).select_from(Lead).where(Lead.contact_id.is_(None))) == 0
        run = s.scalars(select(ImportRun)).one()
        assert run.status == "failed" and run.finished_at is not None
        assert run.counts["created"] >= 10

    rerun = import_leads(db, path, batch_size=10, workers=0)
    assert rerun.unchanged == 10 + clean.unchanged
    assert (rerun.created + 10, rerun.merged, rerun.rejected) == (clean.created, clean.merged, clean.rejected)
    assert snapshot(db) == expected
    assert count(db, AuditEntry) == expected_audit
    # And once more: nothing changes.
    final = import_leads(db, path, batch_size=10, workers=0)
    assert (final.created, final.merged) == (0, 0)
    assert snapshot(db) == expected


def test_a_batch_failing_in_the_writer_process_fails_the_import_and_can_be_re_run(
    tmp_path: Path, fresh: Callable[[], Engine]
) -> None:
    """The writer process's error reaches the importer; committed batches stay, the failed one is gone.

    The import runs in a fresh interpreter: a writer process is only forked from a single-threaded one,
    and this test session may have threads of other tests running.
    """
    path = write_csv(tmp_path / "dups.csv", dedup_rows())
    clean_db = fresh()
    import_leads(clean_db, path, batch_size=10, workers=0)
    expected = snapshot(clean_db, with_version=False)
    db = fresh()  # SQLite: another copy of the empty database; PostgreSQL: the same one, emptied
    url = db.url.render_as_string(hide_password=False)
    script = f"""
from pathlib import Path
from leadpilot.db.engine import make_engine
from leadpilot.intake import importer
writers = []
real_writer = importer._ProcessWriter
def counting_writer(*args, **kwargs):
    writers.append(real_writer(*args, **kwargs))
    return writers[-1]
importer._ProcessWriter = counting_writer
real = importer._write_events
calls = {{"n": 0}}
def dying(session, batch, events):  # runs in the writer process (forked after this patch)
    calls["n"] += 1
    if calls["n"] == 2:
        raise LookupError("killed in the writer process")
    real(session, batch, events)
importer._write_events = dying
try:
    importer.import_leads(make_engine({url!r}), Path({str(path)!r}), batch_size=10, workers=1)
except LookupError as exc:
    print("raised:", exc, "writers:", len(writers))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "raised: killed in the writer process writers: 1", done.stderr
    assert counts(db)["leads"] == 10  # the first batch, whole; nothing of the second
    with Session(db) as s:
        assert s.scalars(select(ImportRun)).one().status == "failed"
    import_leads(db, path, batch_size=10, workers=1)
    assert snapshot(db, with_version=False) == expected


def test_a_killed_import_leaves_no_writer_process_and_can_be_re_run(tmp_path: Path, sqlite_template: Path) -> None:
    """SIGKILL the importing process half-way: its writer and validation processes go too, and a re-run
    completes the job."""
    shutil.copy(sqlite_template, tmp_path / "killed.db")
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    rows = [lead_row(i) for i in range(6000)]
    path = write_csv(tmp_path / "big.csv", rows)
    pid_file = tmp_path / "writer.pid"
    script = f"""
import sys
from pathlib import Path
from leadpilot.db.engine import make_engine
from leadpilot.intake import importer
real = importer._ProcessWriter
def writer(*args, **kwargs):
    made = real(*args, **kwargs)
    Path({str(pid_file)!r}).write_text(str(made.process.pid))
    return made
importer._ProcessWriter = writer
real_start = importer._validation_worker_start
def worker_start():
    import os
    with open({str(pid_file)!r} + ".workers", "a") as fh:
        print(os.getpid(), file=fh)
    real_start()
importer._validation_worker_start = worker_start
real_write = importer._write_batch
def slow_write(*args, **kwargs):
    import time
    time.sleep(0.05)
    real_write(*args, **kwargs)
importer._write_batch = slow_write
importer.import_leads(make_engine({url!r}), Path({str(path)!r}), batch_size=200, workers=1)
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    engine = make_engine(url)
    try:
        deadline = time.monotonic() + 60
        while count(engine, ImportedRow) < 400 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the import ended before it could be killed"
        proc.kill()
        proc.wait()
        children = [int(pid_file.read_text())]
        children += [int(pid) for pid in Path(f"{pid_file}.workers").read_text().split()]
        assert len(children) == 2  # the writer and one validation worker
        deadline = time.monotonic() + 10
        while any(map(_alive, children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, children)), "the writer or a validation worker outlived the killed import"
        done = count(engine, ImportedRow)
        assert 400 <= done < 6000 and done % 200 == 0  # whole batches only
        rerun = import_leads(engine, path, batch_size=200, workers=1)
        assert rerun.unchanged == done and rerun.created == 6000 - done
        assert count(engine, Lead) == 6000
    finally:
        if proc.poll() is None:
            proc.kill()
        engine.dispose()


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, waiting for its parent to read its exit, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_workers_give_the_same_result(
    tmp_path: Path, fresh: Callable[[], Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = dedup_rows()
    assert len(rows) > 2 * 10  # so that worker processes are used
    path = write_csv(tmp_path / "dups.csv", rows)
    pools: list[int] = []
    real_pool = importer.ProcessPoolExecutor

    def counting_pool(*args: Any, **kwargs: Any) -> Any:
        pools.append(kwargs["max_workers"])
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(importer, "ProcessPoolExecutor", counting_pool)
    inline_db = fresh()
    inline = import_leads(inline_db, path, batch_size=10, workers=0)
    expected = snapshot(inline_db)
    assert pools == []
    pooled_db = fresh()
    pooled = import_leads(pooled_db, path, batch_size=10, workers=1)
    assert pools == [1]
    assert totals(pooled) == totals(inline)
    assert pooled.errors == inline.errors
    assert snapshot(pooled_db) == expected


def test_every_created_lead_has_an_event_and_the_run_is_recorded(engine: Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "dups.csv", dedup_rows())
    seen: list[tuple[int, int]] = []
    summary = import_leads(
        engine, path, batch_size=20, workers=0, progress=lambda done, total: seen.append((done, total))
    )
    assert seen == [(20, 68), (40, 68), (60, 68), (68, 68)]
    created = events_of(engine, "lead_created")
    with Session(engine) as s:
        lead_ids = sorted(s.scalars(select(Lead.id)))
        run = s.get_one(ImportRun, summary.run_id)
        assert run.status == "done" and run.finished_at is not None
        assert run.file_name == "dups.csv" and len(run.file_sha256) == 64
        assert run.counts == totals(summary)
        assert [e["row"] for e in run.errors] == [e.row for e in summary.errors]
        audit_rows = list(s.scalars(select(AuditEntry).where(AuditEntry.action == "import")))
    assert sorted(e.lead_id for e in created) == lead_ids
    assert len(created) == summary.created == 40
    assert all(e.payload["via"] == "import" and e.payload["run_id"] == summary.run_id for e in created)
    assert len(events_of(engine, "lead_merged")) == summary.merged
    assert sorted(i for a in audit_rows for i in a.detail["created"]) == lead_ids


def test_import_events_reach_subscribers_after_each_commit(engine: Engine, tmp_path: Path) -> None:
    received: list[list[EventRecord]] = []
    unsubscribe = bus.subscribe(received.append)
    try:
        summary = import_leads(engine, write_csv(tmp_path / "dups.csv", dedup_rows()), batch_size=20, workers=0)
    finally:
        unsubscribe()
    assert len(received) == 4  # one delivery per committed batch
    records = [r for batch in received for r in batch]
    with Session(engine) as s:
        stored = {e.id: (e.type, e.lead_id, e.payload) for e in s.scalars(select(Event))}
    assert {r.id: (r.type, r.lead_id, r.payload) for r in records} == stored
    assert Counter(r.type for r in records) == {"lead_created": summary.created, "lead_merged": summary.merged}


def test_bulk_job_connection_sets_sqlite_back(sqlite_engine: Engine) -> None:
    def pragmas(conn: Any) -> tuple[int, int, int]:
        driver = conn.connection.driver_connection
        names = ("cache_size", "wal_autocheckpoint", "temp_store")
        return tuple(driver.execute(f"PRAGMA {name}").fetchone()[0] for name in names)

    sqlite_engine.dispose()
    with sqlite_engine.connect() as conn:
        before = pragmas(conn)
    with bulk_job_connection(sqlite_engine) as conn:
        assert pragmas(conn) == (-256 * 1024, 10_000, 2)  # temp_store 2: statement journals in memory
        assert conn.connection.driver_connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with sqlite_engine.connect() as conn:  # the same pooled connection, as it was
        assert pragmas(conn) == before


@pytest.mark.parametrize("rows", [0, 1, 5, 632, 2184, 5000, 4999, 10_001])
def test_insert_statements_reuse_a_few_sizes(rows: int) -> None:
    sizes = list(_statement_sizes(rows, 2184))
    assert sum(sizes) == rows
    assert all(size == 2184 or (size < 2184 and size & (size - 1) == 0) for size in sizes)
    assert len(set(sizes)) == len(sizes) - sizes.count(2184) + min(sizes.count(2184), 1)  # each short size once


def test_insert_tuples_writes_every_row_in_order(engine: Engine) -> None:
    rows = [(f"fp{i}".encode(), i, 7) for i in range(1, 3000)]  # nine statements on SQLite (2048 + 512 + ...)
    with engine.begin() as conn:
        insert_tuples(conn, ImportedRow.__table__, ("fingerprint", "lead_id", "run_id"), rows)  # type: ignore[arg-type]
    with Session(engine) as s:
        columns = (ImportedRow.fingerprint, ImportedRow.lead_id, ImportedRow.run_id)
        assert [tuple(r) for r in s.execute(select(*columns).order_by(ImportedRow.id))] == rows


def test_the_sample_file(engine: Engine) -> None:
    sample = Path(importer.__file__).parent.parent / "demo" / "sample_leads.csv"
    summary = import_leads(engine, sample, workers=0)
    assert summary.total_rows == summary.created + summary.merged + summary.unchanged + summary.rejected
    assert summary.created > 0 and summary.rejected == len({e.row for e in summary.errors})
    assert count(engine, Lead) == summary.created
    again = import_leads(engine, sample, workers=0)
    assert (again.created, again.merged) == (0, 0)


# --- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from leadpilot.config import get_settings
    from leadpilot.db.engine import _cached_engine, get_engine

    monkeypatch.setenv("LEADPILOT_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("LEADPILOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LEADPILOT_IMPORT_WORKERS", "0")
    monkeypatch.delenv("LEADPILOT_IMPORT_BATCH_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env file
    get_settings.cache_clear()
    _cached_engine.cache_clear()
    yield
    get_engine().dispose()  # the CLI's own engine: close its connections
    get_settings.cache_clear()
    _cached_engine.cache_clear()


def test_cli_import_json_and_report(engine: Engine, tmp_path: Path, cli_env: None) -> None:
    from leadpilot.cli.main import app

    runner = CliRunner()
    init = runner.invoke(app, ["init", "--json"])
    assert init.exit_code == 0, init.output
    rows = [lead_row(1), lead_row(2, Phone="12345"), lead_row(3, Email="x@"), lead_row(4, Phone=lead_row(1)[2])]
    path = write_csv(tmp_path / "leads.csv", rows)
    report = tmp_path / "errors.csv"
    result = runner.invoke(app, ["import", "leads", str(path), "--json", "--report", str(report), "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["created"], data["merged"], data["rejected"], data["unchanged"]) == (1, 1, 2, 0)
    assert data["total_rows"] == 4 and data["encoding"] == "utf-8" and data["delimiter"] == ","
    assert [(e["row"], e["field"]) for e in data["errors"]] == [(3, "phone"), (4, "email")]
    with report.open(encoding="utf-8-sig", newline="") as fh:
        lines = list(csv.reader(fh))
    assert lines[0] == ["row", "field", "reason", "value"]
    assert [(r[0], r[1], r[3]) for r in lines[1:]] == [("3", "phone", "12345"), ("4", "email", "x@")]
    assert report.read_bytes().startswith(b"\xef\xbb\xbf")
    # Again: nothing new.
    again = runner.invoke(app, ["import", "leads", str(path), "--json"])
    assert again.exit_code == 0, again.output
    assert {k: json.loads(again.stdout)[k] for k in ("created", "merged", "unchanged", "rejected")} == {
        "created": 0,
        "merged": 0,
        "unchanged": 2,
        "rejected": 2,
    }
    assert count(engine, Lead) == 1


def test_cli_reports_a_bad_file_without_a_traceback(engine: Engine, tmp_path: Path, cli_env: None) -> None:
    from leadpilot.cli.main import app

    runner = CliRunner()
    assert runner.invoke(app, ["init"]).exit_code == 0
    path = write_csv(tmp_path / "leads.csv", [["Acme"]], headers=["Company"])
    result = runner.invoke(app, ["import", "leads", str(path), "--json"])
    assert result.exit_code == 1
    assert "cannot find the needed columns" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    human = runner.invoke(app, ["import", "leads", str(write_csv(tmp_path / "ok.csv", [lead_row(1)]))])
    assert human.exit_code == 0, human.output
    assert "1 created, 0 merged, 0 unchanged, 0 rejected of 1 rows" in human.output


@pytest.mark.parametrize("enabled", [True, False])
def test_import_pauses_the_cyclic_garbage_collector_and_restores_it(
    engine: Engine, tmp_path: Path, enabled: bool
) -> None:
    import gc
    import sys

    path = write_csv(tmp_path / "leads.csv", [lead_row(i) for i in range(30)])
    during: list[tuple[bool, float]] = []
    was, interval = gc.isenabled(), sys.getswitchinterval()
    (gc.enable if enabled else gc.disable)()
    try:
        summary = import_leads(
            engine,
            path,
            batch_size=10,
            workers=1,
            progress=lambda done, total: during.append((gc.isenabled(), sys.getswitchinterval())),
        )
        after = gc.isenabled(), sys.getswitchinterval()
    finally:
        (gc.enable if was else gc.disable)()
    assert summary.created == 30
    assert during == [(False, pytest.approx(importer.IMPORT_SWITCH_INTERVAL))] * 3
    assert after == (enabled, interval)


def test_packed_worker_results_are_the_rows_validated_in_process() -> None:
    mapping = importer.build_mapping(HEADERS, None)
    rows = [(n, lead_row(n, Budget="¥50万" if n % 2 else "1,000.5")) for n in range(2, 12)]
    rows.append((12, lead_row(12, Phone="12", Email="")))
    packed = importer._validate_packed(importer.marshal.dumps(rows), mapping, "US", 7)
    assert importer._unpacked(packed) == importer.validate_chunk(rows, mapping, "US", 7)
    seen, clean, errors = importer._unpacked(packed)
    assert seen == 11 and len(clean) == 10 and [e.row for e in errors] == [12]
    assert {values[importer.BUDGET] for values, _, _ in clean} == {500000.0, 1000.5}


def test_overlapping_imports_set_the_interpreter_back_when_the_last_one_ends() -> None:
    import gc
    import sys

    was, interval = gc.isenabled(), sys.getswitchinterval()
    gc.enable()
    try:
        first, second = importer.tuned_interpreter(), importer.tuned_interpreter()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)  # not nested: the first one ends while the second still runs
        assert not gc.isenabled() and sys.getswitchinterval() == pytest.approx(importer.IMPORT_SWITCH_INTERVAL)
        second.__exit__(None, None, None)
        assert gc.isenabled() and sys.getswitchinterval() == interval
    finally:
        (gc.enable if was else gc.disable)()
        sys.setswitchinterval(interval)
