"""RQ's job hash as the grid lets RQ read it: `data` and `exc_info` inflated within a bound.

RQ inflates both fields whole with `zlib.decompress`, so a 255 KB zlib bomb in `data` costs a
reader hundreds of megabytes before anything can refuse it. Here the compressed size is
checked first, then the field is inflated at most to its bound (`decompressobj(max_length)`),
and a field past either is a CorruptRecord. What passes is handed to RQ compressed again, so
RQ's own inflate sees exactly the bounded bytes (never a second, nested bomb); `data`, read at
every job's start, is handed over inflated instead (`bounded_data`), without RQ's inflate.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from gridcore.records.base import CorruptRecord

DATA_MAX = 2 * 1024 * 1024
"""Bytes a job's `data` (function name and the signed envelope, as JSON) may have, either form."""

EXC_INFO_MAX = 256 * 1024
"""Bytes RQ's `exc_info` of a job may have, either form."""

_BOUNDS = {b"data": DATA_MAX, b"exc_info": EXC_INFO_MAX, "data": DATA_MAX, "exc_info": EXC_INFO_MAX}


def inflate(raw: bytes, limit: int, key: str, field: str) -> bytes | None:
    """`raw` inflated if it is zlib data, None if it is not; CorruptRecord past `limit` bytes."""
    if len(raw) > limit:
        raise CorruptRecord(key, field, f"{len(raw)} bytes, more than the {limit} it may have")
    d = zlib.decompressobj()
    try:
        out = d.decompress(raw, limit + 1)
    except zlib.error:
        return None  # stored uncompressed: RQ reads it as it is
    if len(out) > limit or d.unconsumed_tail:
        raise CorruptRecord(key, field, f"inflates to more than the {limit} bytes it may have")
    return out


def bounded_fields(fields: Mapping, key: str) -> dict:
    """The job hash `fields` with `data` and `exc_info` checked against their bounds (CorruptRecord)."""
    out = dict(fields)
    for name, value in fields.items():
        limit = _BOUNDS.get(name)
        if limit is None or not isinstance(value, bytes):
            continue
        plain = inflate(value, limit, key, name.decode() if isinstance(name, bytes) else name)
        if plain is not None:
            out[name] = zlib.compress(plain, 1)
    return out


def bounded_data(fields: Mapping, key: str) -> tuple[dict, bytes | None]:
    """`bounded_fields`, but a zlib `data` is not compressed again for RQ to inflate: it comes
    back inflated, and RQ is given an empty `data` in its place (which RQ's inflate keeps as
    stored), for the reader to set. (fields for RQ, the inflated data or None)."""
    for name in (b"data", "data"):
        value = fields.get(name)
        if isinstance(value, bytes):
            plain = inflate(value, DATA_MAX, key, "data")
            if plain is not None:
                rest = bounded_fields({k: v for k, v in fields.items() if k != name}, key)
                rest[name] = b""
                return rest, plain
            break
    return bounded_fields(fields, key), None
