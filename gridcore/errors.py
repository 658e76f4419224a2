"""The errors the client API raises for things a user can act on."""

from __future__ import annotations

from gridcore.sanitize import clean


class GridError(Exception):
    """An operation failed for a reason the user can act on; the message says which."""


class JobNotFound(GridError):
    """No job with this id on the grid (never submitted, or expired)."""


class Unplaceable(GridError):
    """No node of the grid could ever run the request (too many GPUs, an unknown label...)."""


class AmbiguousId(GridError):
    """A short id that is the start of more than one job's id; the message lists them."""

    def __init__(self, prefix: str, matches: list[str]):
        self.prefix, self.matches = prefix, matches
        shown = ", ".join(clean(m, 64) for m in matches[:5]) + (", …" if len(matches) > 5 else "")
        super().__init__(f"{prefix!r} is the start of {len(matches)}{'+' if len(matches) > 5 else ''} job ids: {shown}; "
                         "give more characters")
