"""Lead intake without a database: reading (encodings, delimiters, XLSX), column mapping, row validation."""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import astuple
from pathlib import Path

import pytest
from openpyxl import Workbook

from leadpilot.crm.errors import Invalid
from leadpilot.intake import importer
from leadpilot.intake.importer import created_payload, validate_chunk, validated_chunks, write_error_report
from leadpilot.intake.mapping import (
    FIELDS,
    SYNONYMS,
    Mapping,
    MappingFile,
    build_mapping,
    fold,
    load_mapping_file,
    mapping_as_dict,
)
from leadpilot.intake.reader import detect_delimiter, detect_encoding, read_csv_text, read_table
from leadpilot.intake.validate import CleanRow, RowError, clean_row, clean_values, fingerprint, parse_amount

CHINESE_HEADERS = ["公司", "联系人", "手机", "邮箱", "产品线", "来源", "城市", "预算"]
CHINESE_ROWS = [
    ["链家地产", "张伟", "13812345678", "zw@example.cn", "房产", "网站", "北京", "￥50万"],
    ["瓜子二手车", "王芳", "139-1234-5678", "", "二手车", "广告", "广州", "1,200"],
]


def _csv(headers: list[str], rows: list[list[str]], delimiter: str = ",") -> str:
    def cell(value: str) -> str:
        return f'"{value}"' if delimiter in value or "," in value else value

    return "\n".join(delimiter.join(cell(c) for c in line) for line in [headers, *rows]) + "\n"


# --- reading ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("encoding", "detected"), [("utf-8", "utf-8"), ("utf-8-sig", "utf-8-sig"), ("gbk", "gb18030")])
def test_read_csv_in_each_encoding(tmp_path: Path, encoding: str, detected: str) -> None:
    path = tmp_path / "leads.csv"
    path.write_bytes(_csv(CHINESE_HEADERS, CHINESE_ROWS).encode(encoding))
    table = read_table(path)
    assert table.encoding == detected
    assert table.headers == CHINESE_HEADERS  # no BOM left on the first header
    assert list(table.rows) == [(2, CHINESE_ROWS[0]), (3, CHINESE_ROWS[1])]
    assert table.total_rows == 2


@pytest.mark.parametrize(("delimiter", "name"), [(";", "semicolon"), ("\t", "tab"), ("|", "pipe"), (",", "comma")])
def test_read_csv_with_each_delimiter(tmp_path: Path, delimiter: str, name: str) -> None:
    path = tmp_path / f"{name}.csv"
    path.write_text(_csv(CHINESE_HEADERS, CHINESE_ROWS, delimiter), encoding="utf-8")
    table = read_table(path)
    assert table.delimiter == delimiter
    rows = list(table.rows)
    assert rows[1][1][7] == "1,200"  # a quoted comma stays inside its cell
    assert [cells for _, cells in rows] == CHINESE_ROWS


def test_detect_delimiter_prefers_the_consistent_one() -> None:
    sample = 'a;b;c\n"1,5";x;y\n2;"p,q,r";z\n'
    assert detect_delimiter(sample) == ";"
    assert detect_delimiter("") == ","
    assert detect_delimiter("only one column\nvalue\n") == ","


def test_detect_encoding() -> None:
    text = "公司,手机\n链家,138\n"
    assert detect_encoding(text.encode("utf-8")) == "utf-8"
    assert detect_encoding(b"\xef\xbb\xbf" + text.encode("utf-8")) == "utf-8-sig"
    assert detect_encoding(text.encode("gbk")) == "gb18030"
    assert detect_encoding(text.encode("utf-16")) == "utf-16"
    assert detect_encoding(text.encode("gbk"), "gbk") == "gbk"


def test_detect_encoding_errors_are_specific() -> None:
    with pytest.raises(Invalid, match="not valid utf-8") as declared:
        detect_encoding("公司".encode("gbk"), "utf-8")
    assert declared.value.field == "encoding"
    with pytest.raises(Invalid, match="cannot tell the file's encoding") as unknown:
        detect_encoding(b"company,phone\n\x80\x80\xff\n")
    assert unknown.value.field == "encoding"
    with pytest.raises(Invalid, match="not valid no-such-codec"):
        detect_encoding(b"abc", "no-such-codec")


def test_row_numbers_count_the_header_and_blank_lines(tmp_path: Path) -> None:
    table = read_csv_text("Company,Phone\nA,1\n\n,\nB,2\n")
    assert list(table.rows) == [(2, ["A", "1"]), (5, ["B", "2"])]


def test_empty_and_missing_files_are_reported(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(Invalid, match="empty"):
        read_table(empty)
    with pytest.raises(Invalid, match="does not exist"):
        read_table(tmp_path / "nope.csv")
    header_only = tmp_path / "header.csv"
    header_only.write_text("Company,Phone\n")
    table = read_table(header_only)
    assert (table.headers, list(table.rows), table.total_rows) == (["Company", "Phone"], [], 0)


def test_an_unreadable_csv_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    path.write_text('Company,Phone\n"Acme,+14155552671\n' + "x" * 200_000 + "\n")
    with pytest.raises(Invalid, match="near line") as exc:
        read_table(path)
    assert exc.value.field == "file"


def _xlsx(path: Path, rows: list[list[object]]) -> Path:
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    workbook.save(path)
    return path


def test_read_xlsx_turns_float_phones_into_digits(tmp_path: Path) -> None:
    path = _xlsx(
        tmp_path / "leads.xlsx",
        [
            ["Company", "Phone", "Budget", "Email"],
            ["链家地产", 13812345678.0, 50000.0, None],
            [None, None, None, None],
            ["Acme", 14155552671, 1.5, "a@b.com"],
        ],
    )
    table = read_table(path)
    assert table.headers == ["Company", "Phone", "Budget", "Email"]
    assert list(table.rows) == [
        (2, ["链家地产", "13812345678", "50000"]),  # trailing empty cells may be left off
        (4, ["Acme", "14155552671", "1.5", "a@b.com"]),
    ]
    assert table.total_rows == 3
    assert table.encoding is None


def test_read_xlsx_ignores_a_wrong_stated_size(tmp_path: Path) -> None:
    """Some writers store the size as "A1": every row must still be read."""
    good = _xlsx(tmp_path / "good.xlsx", [["Company", "Phone"], *[[f"C{i}", f"+1415555260{i}"] for i in range(5)]])
    bad = tmp_path / "bad.xlsx"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as out:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.startswith("xl/worksheets/"):
                data = re.sub(rb'<dimension ref="[^"]*"\s*/>', b'<dimension ref="A1"/>', data)
            out.writestr(item, data)
    rows = list(read_table(bad).rows)
    assert [number for number, _ in rows] == [2, 3, 4, 5, 6]
    assert rows[-1][1] == ["C4", "+14155552604"]


def test_a_broken_xlsx_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "leads.xlsx"
    path.write_text("Company,Phone\nA,1\n")
    with pytest.raises(Invalid, match=r"cannot open leads\.xlsx as an Excel workbook"):
        read_table(path)


# --- mapping -------------------------------------------------------------------------------------


def test_fold_ignores_case_spaces_and_punctuation() -> None:
    assert fold(" Phone_Number ") == fold("phone-number") == fold("PHONE NUMBER") == "phonenumber"
    assert fold("手机（号码）") == "手机号码"


@pytest.mark.parametrize(("field", "synonym"), [(f, s) for f, syns in SYNONYMS.items() for s in syns])
def test_every_synonym_maps_to_its_field(field: str, synonym: str) -> None:
    headers = [synonym.upper(), "Company", "Phone"] if field not in ("company", "phone") else [synonym, "x", "y"]
    other = {"company": "Email", "phone": "Contact"}.get(field)
    if other:
        headers[1] = other
    mapping = build_mapping(headers)
    assert mapping.columns[field] == 0


def test_chinese_headers_are_detected() -> None:
    mapping = build_mapping(CHINESE_HEADERS)
    assert mapping_as_dict(mapping, CHINESE_HEADERS) == {
        "budget": "预算",
        "company": "公司",
        "contact_name": "联系人",
        "email": "邮箱",
        "phone": "手机",
        "product_line": "产品线",
        "region": "城市",
        "source": "来源",
    }
    assert mapping.unmapped_headers == []


def test_english_headers_and_unmapped_ones() -> None:
    headers = ["Company Name", "Contact", "Mobile", "E-mail", "Product Line", "Favourite colour", "", "Lead ID"]
    mapping = build_mapping(headers)
    assert mapping.columns == {
        "company": 0,
        "contact_name": 1,
        "phone": 2,
        "email": 3,
        "product_line": 4,
        "external_id": 7,
    }
    assert mapping.unmapped_headers == ["Favourite colour"]


def test_first_of_two_headers_for_one_field_wins() -> None:
    mapping = build_mapping(["Company", "Phone", "Mobile"])
    assert mapping.columns["phone"] == 1
    assert mapping.unmapped_headers == ["Mobile"]


def test_missing_required_columns() -> None:
    with pytest.raises(Invalid, match="a company or contact name and a phone or e-mail") as no_contact:
        build_mapping(["Company", "City"])
    assert no_contact.value.field == "mapping"
    with pytest.raises(Invalid, match="Recognised: phone"):
        build_mapping(["Phone", "Favourite colour"])
    with pytest.raises(Invalid, match="Recognised: none"):
        build_mapping(["a", "b"])
    assert build_mapping(["联系人", "邮箱"]).columns == {"contact_name": 0, "email": 1}


def _mapping_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_mapping_file_overrides_detection(tmp_path: Path) -> None:
    path = _mapping_file(
        tmp_path,
        "columns:\n  company: Firm\n  phone: Mobile No.\n  contact_name: Phone\n"
        "defaults:\n  source: trade_show\n  budget: 1000\ndefault_region: cn\nencoding: gbk\ndelimiter: ';'\n",
    )
    override = load_mapping_file(path)
    assert override == MappingFile(
        columns={"company": "Firm", "phone": "Mobile No.", "contact_name": "Phone"},
        defaults={"source": "trade_show", "budget": "1000"},
        default_region="CN",
        encoding="gbk",
        delimiter=";",
    )
    headers = ["Phone", "Firm", "mobile no", "Company", "Email"]
    mapping = build_mapping(headers, override)
    # Explicit columns first (even a header that is a synonym of another field), then detection.
    assert mapping.columns == {"contact_name": 0, "company": 1, "phone": 2, "email": 4}
    assert mapping.unmapped_headers == ["Company"]
    assert mapping.defaults == {"source": "trade_show", "budget": "1000"}
    assert mapping.default_region == "CN"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("columns:\n  colour: Colour\n", r"columns.colour is not a lead field"),
        ("defaults:\n  colour: red\n", r"defaults.colour is not a lead field"),
        ("colums:\n  company: Firm\n", r"unknown key 'colums'"),
        ("- company\n- phone\n", r"must be a YAML mapping"),
        ("columns: [company]\n", r"'columns' must map field names"),
        ("delimiter: ';;'\n", r"delimiter must be one character"),
        ("default_region: China\n", r"default_region 'China' is not a two-letter region code"),
        ("columns: {company: [unclosed\n", r"cannot read mapping file"),
    ],
)
def test_mapping_file_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(Invalid, match=message) as exc:
        load_mapping_file(_mapping_file(tmp_path, text))
    assert exc.value.field == "mapping"


def test_mapping_file_column_not_in_the_file(tmp_path: Path) -> None:
    override = load_mapping_file(_mapping_file(tmp_path, "columns:\n  phone: Handy\n"))
    with pytest.raises(Invalid, match=r"column 'Handy' for 'phone' is not in the file; headers are: 'Company'"):
        build_mapping(["Company", "Mobile"], override)


def test_missing_mapping_file(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="cannot read mapping file"):
        load_mapping_file(tmp_path / "nope.yaml")


# --- validation ----------------------------------------------------------------------------------

ALL = Mapping(columns={name: i for i, name in enumerate(FIELDS)})


def _row(region: str = "US", **values: str) -> CleanRow | list[RowError]:
    base = {"company": "Acme Ltd", "phone": "+1 415 555 2671"}
    base.update(values)
    cells = [base.get(name, "") for name in FIELDS]
    return clean_row(7, cells, ALL, region)


def _clean(**values: str) -> CleanRow:
    result = _row(**values)
    assert isinstance(result, CleanRow), result
    return result


def _errors(**values: str) -> list[tuple[int, str]]:
    result = _row(**values)
    assert isinstance(result, list), result
    return [(e.row, e.field) for e in result]


def test_a_clean_row_is_normalised() -> None:
    row = _clean(
        company="  Acme Ltd ",
        contact_name="Bob",
        email=" Bob@Example.COM ",
        product_line="Housing",
        budget="¥50万",
        company_size="中型",
        consent="同意",
        do_not_call="是",
    )
    assert row.row == 7
    assert row.company == "Acme Ltd"
    assert row.company_key == "acme"
    assert row.company_line == ("acme", "housing")
    assert row.phone == "+14155552671"
    assert row.email == "bob@example.com"
    assert row.budget == 500_000
    assert row.company_size == "medium"
    assert row.consent == "granted"
    assert row.do_not_call is True


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("+1 (415) 555-2671", "US", "+14155552671"),
        ("415.555.2671", "US", "+14155552671"),
        ("13812345678", "CN", "+8613812345678"),
        ("+86 138-1234-5678", "US", "+8613812345678"),
        ("8613812345678", "CN", "+8613812345678"),
        ("010-12345678", "CN", "+861012345678"),
    ],
)
def test_phone_is_normalised_to_e164(raw: str, region: str, e164: str) -> None:
    result = _row(region=region, phone=raw)
    assert isinstance(result, CleanRow), result
    assert result.phone == e164


@pytest.mark.parametrize("raw", ["12345", "abc", "138123456789", "+86 1234", "13812345678"])
def test_invalid_phone_is_a_row_error(raw: str) -> None:
    result = _row(phone=raw)  # 13812345678 is not a US number: the default region is US here
    assert isinstance(result, list)
    assert [(e.row, e.field, e.value) for e in result] == [(7, "phone", raw)]
    assert raw in result[0].reason


@pytest.mark.parametrize("raw", ["bob", "bob@", "bob@example", "a b@example.com", "bob@@example.com", "<a@b.com>"])
def test_invalid_email_is_a_row_error(raw: str) -> None:
    assert _errors(email=raw) == [(7, "email")]


@pytest.mark.parametrize(
    ("raw", "amount"),
    [
        ("¥50万", 500_000),
        ("￥50万元", 500_000),
        ("1.5k", 1_500),
        ("1.5K", 1_500),
        ("120,000", 120_000),
        ("3 000 元", 3_000),
        ("RMB 1000", 1_000),
        ("USD1,000.50", 1_000.5),
        ("2亿", 200_000_000),
        ("50w", 500_000),
        ("0", 0),
    ],
)
def test_budget_amounts(raw: str, amount: float) -> None:
    assert parse_amount(raw) == amount
    assert _clean(budget=raw).budget == amount


@pytest.mark.parametrize("raw", ["-5", "-¥5", "abc", "万", "nan", "inf", "1e400", "1e16", "5 apples"])
def test_bad_budget_is_a_row_error(raw: str) -> None:
    result = _row(budget=raw)
    assert isinstance(result, list)
    assert [(e.field, e.reason, e.value) for e in result] == [
        ("budget", "not a non-negative amount (at most 1e15)", raw)
    ]


@pytest.mark.parametrize(
    ("raw", "size"),
    [("micro", "micro"), ("Small", "small"), ("MEDIUM", "medium"), ("large", "large"), ("超大型", "enterprise")],
)
def test_company_size(raw: str, size: str) -> None:
    assert _clean(company_size=raw).company_size == size


def test_unknown_company_size_is_a_row_error() -> None:
    result = _row(company_size="huge")
    assert isinstance(result, list)
    assert [(e.field, e.value) for e in result] == [("company_size", "huge")]
    assert "micro" in result[0].reason


@pytest.mark.parametrize(
    ("raw", "consent"),
    [
        ("", "unknown"),
        ("granted", "granted"),
        ("Yes", "granted"),
        ("opt-in", "granted"),
        ("同意", "granted"),
        ("denied", "denied"),
        ("no", "denied"),
        ("不同意", "denied"),
        ("未知", "unknown"),
    ],
)
def test_consent(raw: str, consent: str) -> None:
    assert _clean(consent=raw).consent == consent


def test_unknown_consent_is_a_row_error() -> None:
    assert _errors(consent="maybe") == [(7, "consent")]


@pytest.mark.parametrize(("raw", "flag"), [("", False), ("yes", True), ("Y", True), ("1", True), ("是", True)])
def test_do_not_call(raw: str, flag: bool) -> None:
    assert _clean(do_not_call=raw).do_not_call is flag


@pytest.mark.parametrize("raw", ["no", "false", "0", "否"])
def test_do_not_call_false(raw: str) -> None:
    assert _clean(do_not_call=raw).do_not_call is False


def test_unknown_do_not_call_is_a_row_error() -> None:
    assert _errors(do_not_call="perhaps") == [(7, "do_not_call")]


def test_required_fields() -> None:
    assert _errors(company="", phone="") == [(7, "company"), (7, "phone")]
    assert _clean(company="", contact_name="Bob").contact_name == "Bob"
    assert _clean(phone="", email="a@b.com").phone is None


def test_every_error_of_a_row_is_reported() -> None:
    assert _errors(phone="123", email="nope", budget="-1", company_size="huge", consent="?", do_not_call="?") == [
        (7, "phone"),
        (7, "email"),
        (7, "budget"),
        (7, "company_size"),
        (7, "consent"),
        (7, "do_not_call"),
    ]


def test_too_long_values_are_row_errors() -> None:
    result = _row(company="x" * 301, notes="n" * 20_001, title="t" * 300)
    assert isinstance(result, list)
    assert [(e.field, e.reason) for e in result] == [
        ("company", "longer than 300 characters"),
        ("notes", "longer than 20000 characters"),
    ]


def test_short_rows_and_defaults() -> None:
    mapping = Mapping(columns={"company": 0, "phone": 1, "source": 2}, defaults={"source": "fair", "region": "Beijing"})
    row = clean_row(3, ["Acme", "+14155552671"], mapping, "US")
    assert isinstance(row, CleanRow)
    assert (row.source, row.region) == ("fair", "Beijing")
    row = clean_row(4, ["Acme", "+14155552671", "web"], mapping, "US")
    assert isinstance(row, CleanRow)
    assert row.source == "web"  # a default only fills an empty cell


def test_fingerprint_depends_on_normalised_values_not_row_number() -> None:
    a = _clean(phone="+1 (415) 555-2671", email="Bob@Example.com")
    b = clean_row(
        99,
        [{"company": "Acme Ltd", "phone": "415 555 2671", "email": "bob@example.com"}.get(n, "") for n in FIELDS],
        ALL,
        "US",
    )
    assert isinstance(b, CleanRow)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != _clean(phone="+1 (415) 555-2671", email="Bob@Example.com", notes="x").fingerprint()


def test_fingerprint_is_the_one_earlier_versions_stored() -> None:
    """A re-run must recognise rows imported by earlier releases: the hash input may never change."""
    row = _clean(
        contact_name="张伟",
        email="Bob@Example.com",
        budget="¥50万",
        do_not_call="yes",
        company_size="中型",
        notes='a "quoted", note',
    )
    # Stored as hex text before migration 0010, as the raw digest since: the same 32 bytes.
    assert row.fingerprint().hex() == "1056b6cbf70e3b94531c3bc6047aa6551c1d48e9ced4fe49075ad5bcab3b36b2"
    assert fingerprint(astuple(row)) == row.fingerprint()


def test_clean_values_is_the_clean_row_as_a_tuple() -> None:
    cells = [{"company": "Acme Ltd", "phone": "415 555 2671", "budget": "1.5k"}.get(n, "") for n in FIELDS]
    values = clean_values(5, cells, ALL, "US")
    assert isinstance(values, tuple)
    assert values == astuple(clean_row(5, cells, ALL, "US"))
    assert CleanRow(*values).budget == 1500
    assert clean_values(5, [""] * len(FIELDS), ALL, "US") == clean_row(5, [""] * len(FIELDS), ALL, "US")


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"source": "fair", "product_line": "housing"},
        {"source": '"quoted" \\ back\\slash', "product_line": "二手车 · 房产"},
        {"product_line": "tab\tnew\nline \u2028"},
    ],
)
def test_created_payload_is_what_json_dumps_writes(values: dict[str, str]) -> None:
    row = _clean(**values)
    expected = {
        "via": "import",
        "run_id": 12,
        "row": 7,
        "source": row.source or "import",
        "product_line": row.product_line,
    }
    assert created_payload(astuple(row), 12) == json.dumps(expected)


@pytest.mark.parametrize("helping", [True, False])
def test_validation_in_pieces_and_in_a_worker_gives_whole_chunks_in_file_order(
    monkeypatch: pytest.MonkeyPatch, helping: bool
) -> None:
    monkeypatch.setattr(importer, "PIECE_ROWS", 2)  # chunks of 5 rows are validated as 2 + 2 + 1
    cells = [
        [{"company": f"Firm {i}", "phone": "12" if i % 4 == 0 else f"+1 415 555 {1000 + i}"}.get(n, "") for n in FIELDS]
        for i in range(42)
    ]
    rows = list(enumerate(cells, start=2))
    expected = [validate_chunk(rows[start : start + 5], ALL, "US", 5) for start in range(0, len(rows), 5)]
    inline = list(validated_chunks(rows, ALL, "US", chunk_size=5, workers=0, run_id=5))
    pooled = list(validated_chunks(rows, ALL, "US", chunk_size=5, workers=1, run_id=5, may_help=lambda: helping))
    assert inline == pooled == expected
    assert [seen for seen, _, _ in inline] == [5] * 8 + [2]
    clean = [values for _, chunk, _ in inline for values, _, _ in chunk]
    assert [values[0] for values in clean] == [n for n, _ in rows if (n - 2) % 4]  # file order, bad rows out
    assert [e.row for _, _, errors in inline for e in errors] == [n for n, _ in rows if (n - 2) % 4 == 0]


def test_import_docs_list_every_recognised_header() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "import.md").read_text(encoding="utf-8")
    missing = [f"{field}: {synonym}" for field, syns in SYNONYMS.items() for synonym in syns if synonym not in docs]
    assert missing == []
    for needed in ("LEADPILOT_IMPORT_BATCH_SIZE", "LEADPILOT_IMPORT_WORKERS", "lead_merged", "matched_by", "--report"):
        assert needed in docs


def test_error_report_file(tmp_path: Path) -> None:
    path = tmp_path / "errors.csv"
    write_error_report(
        [RowError(3, "phone", "phone '12' is not a valid number", "12"), RowError(9, "company", "x")], path
    )
    assert path.read_text(encoding="utf-8-sig").splitlines() == [
        "row,field,reason,value",
        "3,phone,phone '12' is not a valid number,12",
        "9,company,x,",
    ]
    with pytest.raises(Invalid, match="cannot write the error report") as exc:
        write_error_report([], tmp_path / "no-such-dir" / "errors.csv")
    assert exc.value.field == "report"


CSV_WITH_TRAPS = (
    "Company,Phone,Notes\r\n"
    'Acme,+1 415 555 2671,"two\nlines, and ""quotes"""\r\n'
    "\r\n"  # a blank line: counted as a record, never a row
    "Beta,+1 415 555 2672,plain\r\n"
    'Gamma,+1 415 555 2673,"ends in a newline\n"\r\n'
    "Delta,+1 415 555 2674,\r\n"
    "Epsilon,+1 415 555 2675,last without a line end"
)


@pytest.mark.parametrize("grain", [1, 2, 3, 1000])
def test_csv_pieces_hold_exactly_the_rows_the_reader_gives(grain: int) -> None:
    table = read_csv_text(CSV_WITH_TRAPS, grain=grain)
    assert table.csv is not None and table.csv.records == table.total_rows == 6
    expected = list(read_csv_text(CSV_WITH_TRAPS).rows)
    got = []
    for first in range(0, table.total_rows, grain):
        piece = table.csv.piece(first, grain)
        assert piece.first_number == 2 + first and piece.records == min(grain, 6 - first)
        got.extend(piece.rows())
    assert got == expected
    assert [number for number, _ in expected] == [2, 4, 5, 6, 7]  # row 3 is the blank line
    assert expected[0][1][2] == 'two\nlines, and "quotes"'


def test_csv_piece_must_be_cut_at_the_grain() -> None:
    index = read_csv_text(CSV_WITH_TRAPS, grain=2).csv
    assert index is not None
    with pytest.raises(ValueError, match="grain of 2"):
        index.piece(1, 2)
    with pytest.raises(ValueError, match="grain of 2"):
        index.piece(0, 3)
    assert [n for n, _ in index.piece(4, 5).rows()] == [6, 7]  # a cut past the last record is fine


@pytest.mark.parametrize("workers", [0, 1])
def test_validation_of_a_csv_table_in_pieces_matches_its_rows(workers: int) -> None:
    monkey_rows = [f"Firm {i},{'12' if i % 4 == 0 else f'+1 415 555 {1000 + i}'}" for i in range(23)]
    text = "Company,Phone\n" + "\n".join(monkey_rows) + "\n"
    mapping = build_mapping(["Company", "Phone"], None)
    by_rows = list(validated_chunks(read_csv_text(text).rows, mapping, "US", chunk_size=5, workers=0, run_id=3))
    table = read_csv_text(text, grain=5)
    by_pieces = list(validated_chunks(table, mapping, "US", chunk_size=5, workers=workers, run_id=3))
    assert by_pieces == by_rows
    assert [seen for seen, _, _ in by_rows] == [5, 5, 5, 5, 3]
