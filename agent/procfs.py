"""Reading /proc files as raw bytes: one open, one read, one close, no Python file object.

A slot reads a few of them at every job (its children before and after, the node's OOM-kill
count); through `open()` each read built a text wrapper and a decoder and took two reads,
about twice the kernel's own cost of the file.
"""

from __future__ import annotations

import os

CHUNK = 64 * 1024
"""Bytes asked for per read: the files read here are far smaller, so one read takes all."""


def read(path: str) -> bytes:
    """The whole file at `path`; raises OSError as `open()` would (FileNotFoundError when gone)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, CHUNK)
        if len(data) < CHUNK:  # a short read of a /proc (seq_file) file is its end
            return data
        chunks = [data]
        while data:
            data = os.read(fd, CHUNK)
            chunks.append(data)
        return b"".join(chunks)
    finally:
        os.close(fd)
