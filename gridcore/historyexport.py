"""`grid history export`: the history as JSON Lines, CSV or Parquet, for pandas and polars.

JSON Lines is the history entry itself, one per line (nested, lossless). CSV and Parquet are
flat: one column per field below, lists joined with FLAT_LIST_SEP in CSV and kept as lists in
Parquet. Parquet needs pyarrow, which the grid does not install.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import IO, Any

from gridcore.records import FinishedEntry, Usage

FORMATS = ("jsonl", "csv", "parquet")

FLAT_LIST_SEP = ";"
"""Joins the items of a list field (tags, GPUs, labels) in a CSV cell."""

ENTRY_COLUMNS = ("job_id", "attempt", "outcome", "name", "command", "submitter", "queue", "group", "tags", "node",
                 "slot", "gpus", "submitted", "start", "end", "duration", "exit_code", "signal", "reason",
                 "reason_kind")
REQUEST_COLUMNS = ("cpus", "gpus", "memory", "labels", "node")
USAGE_COLUMNS = tuple(Usage.model_fields)
COLUMNS = (*ENTRY_COLUMNS, "user", *(f"requested_{c}" for c in REQUEST_COLUMNS), *(f"usage_{c}" for c in USAGE_COLUMNS))
"""The flat columns of CSV and Parquet, in order."""

LIST_COLUMNS = ("tags", "gpus", "requested_labels")


class ExportError(Exception):
    """The export cannot be written as asked (a format that needs a missing library, a bad target)."""


def flat(e: FinishedEntry) -> dict[str, Any]:
    """One entry as a flat row of COLUMNS (absent figures: None)."""
    row: dict[str, Any] = {c: getattr(e, c) for c in ENTRY_COLUMNS}
    row["user"] = e.user
    row.update({f"requested_{c}": getattr(e.requested, c) for c in REQUEST_COLUMNS})
    row.update({f"usage_{c}": getattr(e.usage, c) if e.usage is not None else None for c in USAGE_COLUMNS})
    return {c: list(row[c]) if c in LIST_COLUMNS else row[c] for c in COLUMNS}


def write_jsonl(entries: Iterable[FinishedEntry], out: IO[str]) -> int:
    n = 0
    for e in entries:
        out.write(e.encode() + "\n")
        n += 1
    return n


def write_csv(entries: Iterable[FinishedEntry], out: IO[str]) -> int:
    w = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    n = 0
    for e in entries:
        row = flat(e)
        w.writerow({c: _cell(row[c], c) for c in COLUMNS})
        n += 1
    return n


def _cell(v: Any, column: str) -> Any:
    if column in LIST_COLUMNS:
        return FLAT_LIST_SEP.join(str(x) for x in v)
    return "" if v is None else v


def parquet_module() -> Any:
    """pyarrow's parquet module; ExportError saying how to get it when it is not installed."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError("--format parquet needs pyarrow, which is not installed here: `pip install pyarrow` "
                          "in the grid's environment, or export --format csv or jsonl") from None
    return pq


def write_parquet(entries: Iterable[FinishedEntry], path: str) -> int:
    pq = parquet_module()
    import pyarrow as pa

    rows = [flat(e) for e in entries]
    table = pa.Table.from_pylist(rows, schema=_schema(pa))
    pq.write_table(table, path)
    return len(rows)


def _schema(pa: Any) -> Any:
    floats = {"submitted", "start", "end", "duration", "requested_cpus", "usage_wall", "usage_cpu_user",
              "usage_cpu_system", "usage_gpu_utilization"}
    ints = {"slot", "exit_code", "signal", "requested_gpus", "requested_memory", "usage_memory_peak", "usage_io_read",
            "usage_io_write", "usage_gpu_memory_peak", "usage_samples"}
    fields = []
    for c in COLUMNS:
        if c in LIST_COLUMNS:
            t = pa.list_(pa.string())
        elif c in floats:
            t = pa.float64()
        elif c in ints:
            t = pa.int64()
        else:
            t = pa.string()
        fields.append(pa.field(c, t))
    return pa.schema(fields)


def write(entries: Iterable[FinishedEntry], fmt: str, out: IO[str] | None, path: str | None) -> int:
    """Write the export in `fmt` to `path` (or the text stream `out`); how many attempts."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        parquet_module()
        if path is None:
            raise ExportError("--format parquet writes a binary file: give --output FILE")
        return write_parquet(entries, path)
    if path is not None:
        with open(path, "w", encoding="utf-8", newline="") as f:
            return write_jsonl(entries, f) if fmt == "jsonl" else write_csv(entries, f)
    if out is None:
        raise ExportError("nowhere to write the export: give --output FILE")
    return write_jsonl(entries, out) if fmt == "jsonl" else write_csv(entries, out)
