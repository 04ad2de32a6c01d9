"""The one duration parser of dynctl (put --ttl, bucket set --ttl/--grace) and the
client's expiry arguments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from common.errors import Rejected
from common.limits import MAX_TTL_SECONDS
from dynctl.cli import parse_duration
from dynctl.client import expiry_fields


@pytest.mark.parametrize("text, seconds", [("0", 0), ("90", 90), ("90s", 90), ("5m", 300),
                                           ("2h", 7200), ("1d", 86400),
                                           ("3650d", MAX_TTL_SECONDS)])
def test_a_duration_is_whole_seconds_with_an_optional_unit(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "-5", "-5m", "1.5h", "5 m", "5M", "1w", "5ms",
                                  "1h30m", "١٢", "3651d", str(MAX_TTL_SECONDS + 1)])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_the_client_sends_a_ttl_or_an_expire_at_in_ms() -> None:
    assert expiry_fields(None, None) == {}
    assert expiry_fields(0, None) == {"ttl": 0}
    moment = datetime(2026, 12, 1, tzinfo=UTC)
    assert expiry_fields(None, moment) == {"expire_at": 1_796_083_200_000}
    east = moment.astimezone(timezone(timedelta(hours=2)))
    assert expiry_fields(None, east) == {"expire_at": 1_796_083_200_000}


@pytest.mark.parametrize("ttl, expire_at", [
    (5, datetime(2026, 12, 1, tzinfo=UTC)), (-1, None), (MAX_TTL_SECONDS + 1, None),
    (True, None), (1.5, None), (None, datetime(2026, 12, 1)),  # naive: which zone?
])
def test_the_client_refuses_a_bad_expiry_before_sending(ttl: object, expire_at: object) -> None:
    with pytest.raises(Rejected):
        expiry_fields(ttl, expire_at)  # type: ignore[arg-type]
