"""Read a CSV or XLSX file into a header and rows, detecting encoding (UTF-8, UTF-8-BOM, GBK) and delimiter."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from leadpilot.crm.errors import Invalid

DELIMITERS = ",;\t|"
XLSX_SUFFIXES = {".xlsx", ".xlsm"}
# Records between the text offsets noted while counting a CSV file (the default grain of its pieces).
GRAIN_RECORDS = 1000


@dataclass(frozen=True)
class CsvPiece:
    """Whole records of a CSV file's text, the first numbered ``first_number``: a validation worker parses them
    itself, so the importing process never splits them into cells."""

    text: str
    first_number: int
    delimiter: str
    records: int  # records in ``text``, blank lines included

    def rows(self) -> list[tuple[int, list[str]]]:
        """The piece's non-blank rows as (spreadsheet row number, cells), as ``Table.rows`` gives them."""
        reader = csv.reader(io.StringIO(self.text), delimiter=self.delimiter)
        return list(numbered_rows(reader, self.first_number))


@dataclass(frozen=True)
class CsvIndex:
    """Where a CSV file's records lie in its text: ``ends[k]`` is the offset just past record ``k * grain``
    (0-based, the header not counted; ``ends[0]`` is just past the header), and the last is the text's end."""

    text: str
    delimiter: str
    grain: int
    ends: list[int]
    records: int

    def piece(self, first: int, count: int) -> CsvPiece:
        """Records ``first`` to ``first + count - 1``; ``first`` and the end are multiples of the grain, or
        the end is the last record."""
        if first % self.grain or ((first + count) % self.grain and first + count < self.records):
            raise ValueError(f"records {first}..{first + count} are not cut at the grain of {self.grain}")
        stop = min(-(-(first + count) // self.grain), len(self.ends) - 1)
        text = self.text[self.ends[first // self.grain] : self.ends[stop]]
        return CsvPiece(text, 2 + first, self.delimiter, min(count, self.records - first))


def numbered_rows(records: Iterable[list[str]], first_number: int) -> Iterator[tuple[int, list[str]]]:
    """Records numbered from ``first_number``, blank ones skipped (but counted)."""
    for number, cells in enumerate(records, start=first_number):
        if "".join(cells).strip():  # skip blank lines (one C-level join beats a generator per row)
            yield number, cells


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
    # CSV only: the text and where its records lie, to hand out the same records as ``rows`` in pieces.
    csv: CsvIndex | None = None


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


def read_csv_text(text: str, *, delimiter: str | None = None, grain: int = GRAIN_RECORDS) -> Table:
    """Parse CSV text (after decoding); ``grain``: records between the offsets noted in ``Table.csv``."""
    delimiter = delimiter or detect_delimiter(text[:20_000])
    buffer = io.StringIO(text)
    counter = csv.reader(buffer, delimiter=delimiter)
    # Counting the records also notes where every grain-th one ends (the reader takes one line at a time,
    # so the buffer's position is just past the last record read).
    ends: list[int] = []
    total = 0
    try:
        if next(counter, None) is not None:
            ends.append(buffer.tell())
            while counted := sum(1 for _ in islice(counter, grain)):
                total += counted
                ends.append(buffer.tell())
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
    index = CsvIndex(text, delimiter, grain, ends, total)
    return Table(headers, numbered_rows(reader, 2), total, delimiter=delimiter, csv=index)


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


def read_table(
    path: Path, *, encoding: str | None = None, delimiter: str | None = None, grain: int = GRAIN_RECORDS
) -> Table:
    """Read a CSV or XLSX file by its suffix (``grain``: see ``read_csv_text``)."""
    if not path.exists():
        raise Invalid(f"file {path} does not exist", field="file")
    if path.suffix.lower() in XLSX_SUFFIXES:
        return read_xlsx(path)
    raw = path.read_bytes()
    enc = detect_encoding(raw, encoding)
    table = read_csv_text(raw.decode(enc), delimiter=delimiter, grain=grain)
    table.encoding = enc
    return table
