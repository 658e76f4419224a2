"""What version of the grid this is: the package's, and the envelope format it writes and runs."""

from __future__ import annotations

from functools import cache
from importlib import metadata

from gridcore.records import ENVELOPE_VERSION

PACKAGE = "science-grid"
"""The distribution name the version is read from."""

__all__ = ["ENVELOPE_VERSION", "PACKAGE", "package_version"]


@cache  # parsing the metadata was most of an agent's heartbeat; and a running process is the
# version it started as, whatever was installed since
def package_version() -> str:
    """The installed package's version (what `grid nodes` shows per node), or "unknown"."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"
