"""Small pure helpers for text that came from a crawl: dates and encodings.

Crawled metadata is hostile. Dates arrive in any format (or as junk); strings
can carry lone surrogates (valid in JSON, not encodable as UTF-8). Both are
made safe here, at the edge, so nothing downstream has to care.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_SURROGATE = re.compile("[\ud800-\udfff]")
#: A UTC offset of less than a second, which Python 3.11's ``fromisoformat``
#: reads as no offset at all (an offset of 0:00:01 or more it reads right).
_SUBSECOND_OFFSET = re.compile(r"([+-])00:00:00\.(\d{1,6})$")


def parse_when(text: str) -> str | None:
    """ISO 8601 (or a bare date, or Unix seconds) -> 'YYYY-MM-DDTHH:MM:SSZ' in UTC.

    None for anything else: never raises, whatever the text.
    """
    text = text.strip()
    if not text or len(text) > 64:
        return None
    try:
        if text.isascii() and text.isdigit() and 9 <= len(text) <= 11:
            when = datetime.fromtimestamp(int(text), timezone.utc)
        else:
            candidate = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
            tiny = _SUBSECOND_OFFSET.search(candidate)
            if tiny:
                sign = -1 if tiny.group(1) == "-" else 1
                offset = timedelta(microseconds=sign * int(tiny.group(2).ljust(6, "0")))
                when = datetime.fromisoformat(candidate[:tiny.start()]).replace(
                    tzinfo=timezone(offset))
            else:
                when = datetime.fromisoformat(candidate)
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            when = when.astimezone(timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None
    return (f"{when.year:04d}-{when.month:02d}-{when.day:02d}T"
            f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}Z")


def safe_text(value: str) -> str:
    """The string with lone surrogates replaced (U+FFFD), so it encodes as UTF-8."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", value)
