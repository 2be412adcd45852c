"""A job's prompts read from a file in Cloud Storage (JSONL or CSV), streamed: one SourceLine per
line, never the whole file in memory, resumable from any line's `end`.

The fields and rules are the CLI's for a file (imagefleet/inputs.py) and each item is checked by
the API's own `ItemRequest`, so a line is refused with the message a request body's 400 gives.
A line without a key is named as the CLI's file would be: `item-%05d` of its position among the
file's non-blank lines (refused lines count too, so fixing one renames nothing after it).

CSV: line 1 is the header. A quoted cell may hold line breaks (as spreadsheets write them); such
a row is one SourceLine numbered by its last line (as Python's csv reports it), and it may not
pass LINE_LIMIT bytes in all: a quote never closed refuses the lines it swallowed up to that
limit, then reading goes on at the next line.
"""
from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from pydantic import ValidationError

from core.models import ItemSpec
from schemas import ItemRequest, error_fields

FIELDS = ("prompt", "key", "aspect_ratio", "domain", "quality")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
# The longest line (a CSV row: all its lines) kept in memory; a longer one is refused and skipped
# without being held. A 4,000-character prompt written with JSON \u escapes is 24 KB.
LINE_LIMIT = 64 * 1024
_BOM = b"\xef\xbb\xbf"
# Line ends as the CLI counts them (imagefleet/inputs.py): \r\n, \r or \n. None of these bytes
# occurs inside a UTF-8 sequence, so splitting bytes before decoding is safe.
_BREAK = re.compile(rb"\r\n|\r|\n")


class SourceFormatError(ValueError):
    """The file as a whole cannot be read (a CSV header without a prompt column, ...)."""


@dataclass(frozen=True)
class SourceLine:
    number: int  # 1-based line number in the file (CSV: the header is line 1)
    end: int  # byte offset just past this line: resume reading here
    item: ItemSpec | None  # None when the line is refused (or blank: item None, error None)
    error: str | None = None  # why it is refused, e.g. "prompt: Field required"
    index: int = 0  # the item's position among non-blank lines (a blank line: the next item's)

    @property
    def blank(self) -> bool:
        return self.item is None and self.error is None

    @property
    def next_index(self) -> int:
        """`first_index` to resume after this line."""
        return self.index if self.blank else self.index + 1


def source_format(name: str) -> str:
    """"jsonl" or "csv", from the object name's extension."""
    fmt = FORMATS.get(PurePosixPath(name).suffix.lower())
    if fmt is None:
        raise ValueError(f"{name!r}: a source file's name must end in .jsonl, .ndjson or .csv")
    return fmt


def read_lines(chunks: Iterable[bytes], fmt: str, *, start: int = 0, first_number: int = 1,
               header: list[str] | None = None, max_prompt_chars: int = 4000,
               first_index: int = 0) -> Iterator[SourceLine]:
    """The lines of a source whose bytes from offset `start` on are `chunks` (split anywhere).
    To resume after a line: start=line.end, first_number=line.number + 1,
    first_index=line.next_index, and for CSV the header read_header gave.
    Raises SourceFormatError for a CSV whose header is unusable."""
    lines = _physical_lines(chunks, start, first_number)
    context = {"max_prompt_chars": max_prompt_chars}
    if fmt == "jsonl":
        return _jsonl(lines, first_index, context)
    if fmt != "csv":
        raise ValueError(f"unknown source format {fmt!r}")
    if header is None:
        if start != 0:
            raise ValueError("resuming a CSV source needs its header (read_header)")
        header, _ = _header(lines)
    return _csv(lines, header, first_index, context)


def read_header(chunks: Iterable[bytes]) -> tuple[list[str], int]:
    """A CSV source's columns (lower case) and the byte offset just past its header line."""
    return _header(_physical_lines(chunks, 0, 1))


# --- lines -------------------------------------------------------------------------------------


def _physical_lines(chunks: Iterable[bytes], start: int, number: int) -> Iterator[tuple[int, int, bytes | None]]:
    """(number, end, bytes with their line end), or None for bytes past LINE_LIMIT (dropped)."""
    pending, offset, skipping = b"", start, False
    for chunk in chunks:
        if not chunk:
            continue
        buf = pending + chunk if pending else chunk
        pos = 0
        # pending holds no line end but perhaps a last \r: scan from there on only.
        for match in _BREAK.finditer(buf, max(len(pending) - 1, 0)):
            if match.end() == len(buf) and buf[-1:] == b"\r":
                break  # maybe the first half of a \r\n: wait for the next chunk
            yield number, offset + match.end(), None if skipping else _first(buf[pos:match.end()], offset + pos)
            number, pos, skipping = number + 1, match.end(), False
        pending, offset = buf[pos:], offset + pos
        if len(pending) > LINE_LIMIT:  # drop it; keep a last \r that may pair with a \n to come
            keep = 1 if pending.endswith(b"\r") else 0
            offset += len(pending) - keep
            pending, skipping = pending[len(pending) - keep:], True
    if pending or skipping:
        yield number, offset + len(pending), None if skipping else _first(pending, offset)


def _first(line: bytes, offset: int) -> bytes | None:
    if offset == 0 and line.startswith(_BOM):
        line = line[len(_BOM):]
    return None if len(line) > LINE_LIMIT else line


def _text(data: bytes | None) -> tuple[str | None, str | None]:
    """The line as text, or why not."""
    if data is None:
        return None, f"the line is longer than {LINE_LIMIT} bytes"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte {exc.start + 1} of the line)"


# --- items -------------------------------------------------------------------------------------


def _item(values: dict, index: int, context: dict) -> tuple[ItemSpec | None, str | None]:
    """The API's ItemRequest rules. As in the CLI's files, an optional field that is null or
    blank is left out rather than refused."""
    values = {k: v for k, v in values.items() if k == "prompt" or not _absent(v)}
    try:
        request = ItemRequest.model_validate(values, context=context)
    except ValidationError as exc:
        return None, "; ".join(f"{f['field']}: {f['problem']}" for f in error_fields(exc))
    return _spec(request, index), None


def _spec(request: ItemRequest, index: int) -> ItemSpec:
    # `or None`: a blank domain is stripped to "", and a blank optional field is left out.
    return ItemSpec(key=request.key or f"item-{index:05d}", prompt=request.prompt,
                    aspect_ratio=request.aspect_ratio, domain=request.domain or None, quality=request.quality)


def _absent(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _jsonl(lines: Iterator[tuple[int, int, bytes | None]], index: int, context: dict) -> Iterator[SourceLine]:
    for number, end, data in lines:
        text, error = _text(data)
        if text is not None and not text.strip():
            yield SourceLine(number, end, None, None, index)
            continue
        item = None
        if text is not None:
            item, error = _json_item(text, index, context)
        yield SourceLine(number, end, item, error, index)
        index += 1


def _json_item(text: str, index: int, context: dict) -> tuple[ItemSpec | None, str | None]:
    """Parsed and checked in one pass by pydantic (twice as fast as json.loads then validating);
    a line that fails it is read again by _json_value, for the CLI's leniencies (null or blank
    optional fields, a bare string) and the exact message. Both refuse the same JSON."""
    try:
        return _spec(ItemRequest.model_validate_json(text, context=context), index), None
    except ValidationError:
        return _json_value(text, index, context)


def _json_value(text: str, index: int, context: dict) -> tuple[ItemSpec | None, str | None]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} (column {exc.colno})"
    except RecursionError:
        return None, "not valid JSON: nested too deep"
    if isinstance(value, str):
        value = {"prompt": value}  # a line that is just a JSON string is a prompt, as in the CLI
    if not isinstance(value, dict):
        return None, f"expected a JSON object with a \"prompt\", got {type(value).__name__}"
    return _item(value, index, context)


# --- CSV ---------------------------------------------------------------------------------------


def _header(lines: Iterator[tuple[int, int, bytes | None]]) -> tuple[list[str], int]:
    first = next(lines, None)
    if first is None:
        raise SourceFormatError("line 1: the file is empty; a CSV source starts with a header row")
    _, end, data = first
    text, error = _text(data)
    if text is None:
        raise SourceFormatError(f"line 1: {error}")
    if _quote_open(text):
        raise SourceFormatError("line 1: the header row must be one line (a quote is never closed)")
    row = next(csv.reader([text]), [])
    columns = [cell.strip().lower() for cell in row]
    if "prompt" not in columns:
        raise SourceFormatError(f"line 1: the header row has no \"prompt\" column (columns: {', '.join(FIELDS)})")
    unknown = [c for c in columns if c and c not in FIELDS]
    if unknown:
        raise SourceFormatError(f"line 1: unknown column {unknown[0][:40]!r} (columns: {', '.join(FIELDS)})")
    return columns, end


def _quote_open(text: str) -> bool:
    """True when a quoted cell goes on past the end of `text` (the row continues on the next line)."""
    if '"' not in text:
        return False
    try:
        for _ in csv.reader([text], strict=True):
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


def _csv(lines: Iterator[tuple[int, int, bytes | None]], columns: list[str], index: int,
         context: dict) -> Iterator[SourceLine]:
    row_text, row_from = "", 0  # a row whose quoted cell is still open, and its first line
    number = end = 0
    for number, end, data in lines:
        text, error = _text(data)
        if text is None:
            yield SourceLine(number, end, None, _from(row_from, error), index)
            row_text, row_from, index = "", 0, index + 1
            continue
        text = row_text + text
        if _quote_open(text):
            if len(text.encode()) > LINE_LIMIT:
                yield SourceLine(number, end, None, _from(row_from or number, f"a quoted cell is still open after "
                                                          f"{LINE_LIMIT} bytes"), index)
                row_text, row_from, index = "", 0, index + 1
            else:
                row_text, row_from = text, row_from or number
            continue
        row_text, row_from = "", 0
        line = _csv_line(number, end, text, columns, index, context)
        yield line
        index = line.next_index
    if row_from:
        yield SourceLine(number, end, None, _from(row_from, "a quoted cell is never closed"), index)


def _from(row_from: int, error: str | None) -> str:
    return f"{error} (the row starts on line {row_from})" if row_from else str(error)


def _csv_line(number: int, end: int, text: str, columns: list[str], index: int, context: dict) -> SourceLine:
    try:
        row = next(csv.reader([text]), [])
    except csv.Error as exc:
        return SourceLine(number, end, None, f"not a CSV row: {exc}", index)
    if not any(cell.strip() for cell in row):
        return SourceLine(number, end, None, None, index)
    if len(row) > len(columns):
        return SourceLine(number, end, None, f"{len(row)} cells, but the header has {len(columns)} columns "
                                             "(quote a prompt that holds a comma)", index)
    values = {col: cell for col, cell in zip(columns, row, strict=False) if col and cell.strip()}
    item, error = _item(values, index, context)
    return SourceLine(number, end, item, error, index)
