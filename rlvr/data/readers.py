"""Streaming row readers for Parquet and JSONL, one registry keyed by file suffix.

Design: a reader yields batches of ``(row_number, row)`` pairs, row numbers
1-based, so a file of any size is read in bounded memory and every malformed
row can be named by its number.  A row that cannot be parsed is yielded as an
:class:`Unparsable` (a string saying why) instead of raising, so the loader
decides between skipping and failing.

Parquet is read with ``pyarrow.parquet.ParquetFile.iter_batches``: the schema
is typed, so values arrive as written.

JSONL is parsed line by line with the standard ``json`` module, in batches of
lines.  We do not use ``pyarrow.json`` here, on purpose: it parses a whole
block at once, so one bad line fails the block without naming the row, and it
infers column types across rows, which silently changes values (a string
"2020-01-01" becomes a timestamp; an int in a column that also holds floats
becomes a float).  The row number of a JSONL row is its line number; blank
lines are skipped but still counted, so the number matches an editor's.  Lines
are split as bytes and decoded one by one, so a line of invalid UTF-8 is one
bad row like any other, not a crash of the whole file at a byte offset.

A file that is not what its suffix says (a binary ``.jsonl``, a ``.parquet``
without Parquet's magic bytes) fails as one :class:`DataError` naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rlvr.data.adapters import DataError

Batch = list[tuple[int, Any]]  # (1-based row number, dict or Unparsable)


class Unparsable(str):
    """Stands for a row that could not be parsed; the string says why."""


SNIFF_BYTES = 8192  # a NUL byte this early means a binary file, not JSON text


def read_jsonl(path: Path, batch_rows: int = 4096) -> Iterator[Batch]:
    batch: Batch = []
    with open(path, "rb") as handle:
        if b"\0" in handle.peek(SNIFF_BYTES)[:SNIFF_BYTES]:
            raise DataError(f"{path}: not a JSONL text file (binary content: NUL bytes near the start)")
        for line_number, raw in enumerate(handle, start=1):
            if line_number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is not part of row 1
            if not raw.strip():
                continue
            batch.append((line_number, _parse_json_line(raw)))
            if len(batch) >= batch_rows:
                yield batch
                batch = []
    if batch:
        yield batch


def _parse_json_line(raw: bytes) -> Any:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Unparsable(f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        return Unparsable(f"invalid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(value, dict):
        return Unparsable(f"expected a JSON object, got {type(value).__name__}")
    return value


def read_parquet(path: Path, batch_rows: int = 4096) -> Iterator[Batch]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
    start = 1
    batches = parquet.iter_batches(batch_size=batch_rows)
    while True:
        try:
            record_batch = next(batches, None)
        except (pa.ArrowException, OSError) as exc:  # a corrupt row group: no row of it can be named
            raise DataError(f"{path}: corrupt Parquet data after row {start - 1} ({_first_line(exc)})") from None
        if record_batch is None:
            return
        rows = record_batch.to_pylist()
        yield list(enumerate(rows, start=start))
        start += len(rows)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def column_names(path: Path) -> tuple[str, ...] | None:
    """Top-level column names of a Parquet file's schema; None where there is no schema
    (JSONL, or a file that is absent, unreadable or of an unknown type: the reader reports those)."""
    if path.suffix.lower() != ".parquet" or not path.is_file():
        return None
    try:
        return tuple(pq.read_schema(path).names)
    except (pa.ArrowException, OSError):
        return None


READERS: dict[str, Callable[..., Iterator[Batch]]] = {
    ".jsonl": read_jsonl,
    ".parquet": read_parquet,
}


def reader_for(path: Path) -> Callable[..., Iterator[Batch]]:
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise DataError(f"{path}: unsupported file type '{suffix}'; supported: {', '.join(READERS)}")
    return READERS[suffix]
