from datetime import UTC, datetime, timedelta

import pytest

from keystore.times import parse_duration, relative

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("45m", 2700), ("12h", 43200), ("30d", 2592000), (" 2w ", 1209600)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "d", "0d", "-1d", "1y", "1.5h", "9999999d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(days=3, hours=1), "in 3 days"),
        (timedelta(days=1), "in 1 day"),
        (-timedelta(hours=5), "5 hours ago"),
        (-timedelta(minutes=1), "1 minute ago"),
        (timedelta(seconds=10), "in a moment"),
        (-timedelta(seconds=10), "just now"),
    ],
)
def test_relative(delta: timedelta, text: str) -> None:
    assert relative(NOW + delta, NOW) == text


def test_relative_never() -> None:
    assert relative(None, NOW) == "never"
