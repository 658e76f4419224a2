"""Fixtures for the security tests."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def node() -> str:
    """A node name no other agent on this machine uses (agents refuse to share one)."""
    return f"sec-{uuid.uuid4().hex[:8]}"
