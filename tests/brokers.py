"""bench/ imports the suite's brokers from here; they live in tests/support/brokers.py."""

from tests.support.brokers import Broker, available_kinds, free_port

__all__ = ["Broker", "available_kinds", "free_port"]
