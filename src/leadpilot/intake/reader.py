"""Read a CSV or XLSX file into a header and rows, detecting encoding (UTF-8, UTF-8-BOM, GBK) and delimiter."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from leadpilot.crm.errors import Invalid

DELIMITERS = ",;\t|"
XLSX_SUFFIXES = {".xlsx", ".xlsm"}


@dataclass
class Table:
    """A file's header and data rows; ``rows`` yields (spreadsheet row number, cells).

    ``total_rows`` counts the data rows for progress; for XLSX it is the size the file states.
    """

    headers: list[str]
    rows: Iterator[tuple[int, list[str]]]
    total_rows: int
    encoding: str | None = None
    delimiter: str | None = None


def detect_encoding(raw: bytes, declared: str | None = None) -> str:
    """The text encoding: a declared one, a UTF-8 BOM, valid UTF-8, else GBK (as GB18030, its superset)."""
    if declared:
        try:
            raw.decode(declared)
        except (UnicodeDecodeError, LookupError) as exc:
            raise Invalid(f"file is not valid {declared}: {exc}", field="encoding") from exc
        return declared
    if raw.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    try:
        raw.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        raw.decode("gb18030")
        return "gb18030"
    except UnicodeDecodeError as exc:
        raise Invalid(
            f"cannot tell the file's encoding (not UTF-8 or GBK; bad byte at offset {exc.start}); "
            "save it as UTF-8 or give the encoding in the mapping file",
            field="encoding",
        ) from exc


def detect_delimiter(sample: str) -> str:
    """The most plausible delimiter among , ; tab | from the first lines."""
    lines = [line for line in sample.splitlines()[:20] if line.strip()]
    if not lines:
        return ","
    best, best_score = ",", -1.0
    for delim in DELIMITERS:
        counts = [line.count(delim) for line in lines]
        if counts[0] == 0:
            continue
        # Same count on every line is the strongest signal; more columns break ties.
        consistent = sum(1 for c in counts if c == counts[0]) / len(counts)
        score = consistent * 100 + counts[0]
        if score > best_score:
            best, best_score = delim, score
    return best


def _clean_header(cell: object) -> str:
    return "" if cell is None else str(cell).strip().lstrip("\ufeff")


def read_csv_text(text: str, *, delimiter: str | None = None) -> Table:
    """Parse CSV text (after decoding)."""
    delimiter = delimiter or detect_delimiter(text[:20_000])
    counter = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        total = sum(1 for _ in counter) - 1
    except csv.Error as exc:  # e.g. a field over the csv module's size limit: an unclosed quote, mostly
        raise Invalid(
            f"cannot read the file as CSV near line {counter.line_num}: {exc} (is a quote left unclosed?)",
            field="file",
        ) from exc
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        headers = [_clean_header(h) for h in next(reader)]
    except StopIteration:
        raise Invalid("the file is empty: no header row", field="file") from None

    def rows() -> Iterator[tuple[int, list[str]]]:
        for number, cells in enumerate(reader, start=2):
            if "".join(cells).strip():  # skip blank lines (one C-level join beats a generator per row)
                yield number, cells

    return Table(headers, rows(), max(total, 0), delimiter=delimiter)


def read_xlsx(path: Path) -> Table:
    """Read the first sheet of an Excel workbook."""
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many types for a damaged file
        raise Invalid(f"cannot open {path.name} as an Excel workbook: {exc}", field="file") from exc
    sheet = workbook.worksheets[0]
    # The size the file states is only an estimate (for progress): some writers store a wrong one
    # ("A1"), and read-only openpyxl would then stop reading there and drop the rest of the rows.
    total = max((sheet.max_row or 1) - 1, 0)
    if hasattr(sheet, "reset_dimensions"):
        sheet.reset_dimensions()
    it = sheet.iter_rows(values_only=True)
    try:
        headers = [_clean_header(h) for h in next(it)]
    except StopIteration:
        raise Invalid("the sheet is empty: no header row", field="file") from None

    def rows() -> Iterator[tuple[int, list[str]]]:
        for number, values in enumerate(it, start=2):
            cells = ["" if v is None else _cell_text(v) for v in values]
            if any(c.strip() for c in cells):
                yield number, cells
        workbook.close()

    return Table(headers, rows(), total)


def _cell_text(value: object) -> str:
    # Excel stores phone numbers and ids as floats: 13812345678.0 must not become "13812345678.0".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_table(path: Path, *, encoding: str | None = None, delimiter: str | None = None) -> Table:
    """Read a CSV or XLSX file by its suffix."""
    if not path.exists():
        raise Invalid(f"file {path} does not exist", field="file")
    if path.suffix.lower() in XLSX_SUFFIXES:
        return read_xlsx(path)
    raw = path.read_bytes()
    enc = detect_encoding(raw, encoding)
    table = read_csv_text(raw.decode(enc), delimiter=delimiter)
    table.encoding = enc
    return table
