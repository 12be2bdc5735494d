"""Times on the wire: Unix nanoseconds (int64) or RFC-3339 strings.

Task deadlines and result stats may come in either form; the node keeps
nanoseconds internally and writes stats as RFC-3339 UTC with 9 fractional
digits and `Z`, the form Dria's SDK parses.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

INT64_MAX = 2**63 - 1

# re.ASCII: `\d` is 0-9 only (else any script's digits, which int() and fromisoformat read as 0-9).
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,64}))?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def parse_rfc3339_ns(text: str) -> int:
    """Unix nanoseconds of an RFC-3339 time with an offset; ValueError names what is wrong."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("not an RFC-3339 time with an offset (2025-04-03T10:05:00.123456+00:00)")
    date, clock, fraction, offset = match.groups()
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        moment = datetime.fromisoformat(f"{date}T{clock}{offset}")
    except ValueError as exc:
        raise ValueError(f"not a valid RFC-3339 time: {exc}") from None
    micros = (moment - _EPOCH) // _MICROSECOND
    return micros * 1000 + int((fraction or "")[:9].ljust(9, "0"))  # RFC 3339 allows any digits: ns are kept


def format_rfc3339_ns(ns: int) -> str:
    """RFC-3339 UTC with 9 fractional digits and `Z`: `2025-04-03T10:00:00.123456789Z`."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    moment = _EPOCH + timedelta(seconds=seconds)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"


def ns_from_wire(value: Any) -> Any:
    """Before validation: an RFC-3339 string becomes nanoseconds; anything else is left
    for the (strict) int check. The range check (0..int64) follows in the field."""
    if isinstance(value, str):
        return parse_rfc3339_ns(value)
    return value
