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
lines are skipped but still counted, so the number matches an editor's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from rlvr.data.adapters import DataError

Batch = list[tuple[int, Any]]  # (1-based row number, dict or Unparsable)


class Unparsable(str):
    """Stands for a row that could not be parsed; the string says why."""


def read_jsonl(path: Path, batch_rows: int = 4096) -> Iterator[Batch]:
    batch: Batch = []
    with open(path, "r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            batch.append((line_number, _parse_json_line(line)))
            if len(batch) >= batch_rows:
                yield batch
                batch = []
    if batch:
        yield batch


def _parse_json_line(line: str) -> Any:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        return Unparsable(f"invalid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(value, dict):
        return Unparsable(f"expected a JSON object, got {type(value).__name__}")
    return value


def read_parquet(path: Path, batch_rows: int = 4096) -> Iterator[Batch]:
    start = 1
    for record_batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        rows = record_batch.to_pylist()
        yield list(enumerate(rows, start=start))
        start += len(rows)


READERS: dict[str, Callable[..., Iterator[Batch]]] = {
    ".jsonl": read_jsonl,
    ".parquet": read_parquet,
}


def reader_for(path: Path) -> Callable[..., Iterator[Batch]]:
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise DataError(f"{path}: unsupported file type '{suffix}'; supported: {', '.join(READERS)}")
    return READERS[suffix]
