"""The errors the client API raises for things a user can act on."""

from __future__ import annotations


class GridError(Exception):
    """An operation failed for a reason the user can act on; the message says which."""


class JobNotFound(GridError):
    """No job with this id on the grid (never submitted, or expired)."""


class Unplaceable(GridError):
    """No node of the grid could ever run the request (too many GPUs, an unknown label...)."""
