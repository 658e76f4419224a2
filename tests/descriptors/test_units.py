"""Sizes and durations as descriptors write them."""

import pytest

from gridcore.units import MAX_BYTES, format_size, parse_duration, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("16GB", 16 * 10**9),
    ("16gb", 16 * 10**9),
    (" 2 GB ", 2 * 10**9),
    ("1.5G", 1_500_000_000),
    ("512MiB", 512 * 2**20),
    ("16Gi", 16 * 2**30),
    ("1024", 1024),
    ("100B", 100),
    (".5K", 500),
])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["16 gigs", "", "GB", "1e9", "-5GB", "1.5.2G", "9" * 30, "16XB"])
def test_not_sizes(text):
    assert parse_size(text) is None


def test_size_limit():
    assert parse_size(f"{MAX_BYTES}") == MAX_BYTES
    assert parse_size(f"{MAX_BYTES + 1}") is None


@pytest.mark.parametrize(("text", "expected"), [
    ("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0), ("1d", 86400.0), ("1.5h", 5400.0),
    ("1h30m", 5400.0), ("1h 30m 15s", 5415.0), ("2 hours", 7200.0), ("100ms", 0.1),
    ("2:00:00", 7200.0), ("05:30", 330.0),
])
def test_durations(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "h", "2 fortnights", "1h1h", "30m2", "-5", "1:60", "1:75:00", "abc"])
def test_not_durations(text):
    assert parse_duration(text) is None


def test_format_size():
    assert format_size(24 * 10**9) == "24GB"
    assert format_size(1_500_000_000) == "1.5GB"
    assert format_size(999) == "999B"
