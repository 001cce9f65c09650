"""Small pure helpers for text that came from a crawl: dates, encodings, lengths.

Crawled metadata is hostile. Dates arrive in any format (or as junk); strings
can carry lone surrogates (valid in JSON, not encodable as UTF-8), endless
lengths, or control characters that would rewrite an analyst's terminal.
All are made safe here, at the edge, so nothing downstream has to care.
Imports nothing from imgmatch.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

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


#: Longest metadata string kept; longer values are cut (and marked) to bound storage.
MAX_FIELD_CHARS = 8192


def clean_field(value: Any) -> Any:
    """A crawled metadata value made safe to store: text that encodes as UTF-8,
    cut (and marked) beyond MAX_FIELD_CHARS; numbers and None as they are;
    anything else as its JSON text."""
    if isinstance(value, str):
        value = safe_text(value)
        return value if len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS] + "…[cut]"
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return clean_field(json.dumps(value, ensure_ascii=False, default=str))


def utcnow() -> str:
    """Now, as the catalog writes times: 'YYYY-MM-DDTHH:MM:SSZ' in UTC."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def date_bound(value: str) -> str | None:
    """A report's ``since``/``until`` bound: a bare date stays a date (so
    ``until`` takes the whole day), longer text is a UTC time; None when it
    is neither."""
    parsed = parse_when(value)
    if parsed is None:
        return None
    return parsed[:10] if len(value.strip()) <= 10 else parsed


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


def printable(value: object, width: int | None = None, *, keep_end: bool = False) -> str:
    """Text for a terminal: control and bidi-override characters become '?',
    and text longer than ``width`` is cut with an ellipsis: at its end, or
    with ``keep_end`` in its middle, for paths and addresses, whose end (the
    file's name) is what tells them apart."""
    text = _CONTROL.sub("?", "" if value is None else str(value))
    if width is not None and len(text) > width:
        if keep_end and width >= 3:
            tail = (width - 1) * 2 // 3
            text = text[:width - 1 - tail] + "…" + text[len(text) - tail:]
        else:
            text = text[:width - 1] + "…"
    return text
