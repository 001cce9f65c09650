"""Hash lists without pictures: what partners share and Meta's tools write.

Two line formats are read, and may be mixed:

- python-threatexchange's local format: ``pdq <64 hex digits>`` (the signal's
  name, then its hash; anything after the hash on the line is taken as its name);
- the CSV that Meta's C++ ``pdq-photo-hasher`` prints: ``hash,quality,filename``;

and a bare hex hash per line. A list holds one signal's hashes: PDQ (64 hex
digits) unless another is named, with its own number of digits. Blank lines
and lines starting with ``#`` are passed over, and so is a CSV header row
(``hash,quality,filename``) as the first line that holds anything. A line
that is none of these is reported with its number, never fatal.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import ManifestError
from .records import HashValue

#: what the hash column of a CSV header is called (Meta's hasher, spreadsheets)
HEADER_HASH_NAMES = frozenset({"hash", "pdq", "pdq_hash", "pdqhash", "hash_value"})
#: The signal of a list unless the caller names another, and its hex digits.
DEFAULT_SIGNAL = "pdq"
PDQ_DIGITS = 64
#: The qualities a line may give: PDQ's, as Meta's hasher prints them.
QUALITY_RANGE = range(0, 101)


@lru_cache(maxsize=8)
def _hex(digits: int) -> re.Pattern[str]:
    return re.compile(rf"^[0-9a-fA-F]{{{digits}}}$")


@dataclass(frozen=True)
class HashLine:
    """One line of a hash list: its hash, quality and name, or why it is unreadable."""

    line_no: int
    signal: str
    value: bytes | None       # None: the line could not be read (see ``error``)
    quality: int | None
    name: str | None
    error: str | None = None

    @property
    def hash(self) -> HashValue | None:
        """The line's hash as a value of its signal (None for an unreadable line)."""
        return None if self.value is None else HashValue(self.signal, self.value, self.quality)


def read_hash_list(path: str | Path, *, signal: str = DEFAULT_SIGNAL,
                   digits: int = PDQ_DIGITS) -> Iterator[HashLine]:
    """Each hash line of a list of ``signal`` hashes (``digits`` hex digits
    each), numbered as in the file (comments, blank lines and a leading CSV
    header are passed over)."""
    path = Path(path)
    try:  # utf-8-sig: a list saved by a spreadsheet starts with a byte-order mark
        fh = path.open(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise ManifestError(f"cannot read hash list {path}: {exc.strerror or exc}") from None
    first = True
    with fh:
        for line_no, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if first:
                first = False
                if is_header(line, digits):
                    continue
            yield parse_line(line, line_no, signal=signal, digits=digits)


def is_header(line: str, digits: int = PDQ_DIGITS) -> bool:
    """Whether a line is a CSV header (``hash,quality,filename``), not a bad hash.

    Only a list's first line is asked: a header further down is a mistake
    worth reporting.
    """
    cells = [c.strip().lower() for c in line.split(",")]
    return (len(cells) >= 2 and cells[0] in HEADER_HASH_NAMES
            and not any(_hex(digits).match(c) for c in cells))


def parse_line(line: str, line_no: int = 0, *, signal: str = DEFAULT_SIGNAL,
               digits: int = PDQ_DIGITS) -> HashLine:
    """One line of a list of ``signal`` hashes of ``digits`` hex digits."""
    hex_hash = _hex(digits)
    parts = line.split(None, 2)
    if len(parts) >= 2 and parts[0].lower() == signal and hex_hash.match(parts[1]):
        name = parts[2].strip() if len(parts) > 2 else None
        return HashLine(line_no, signal, bytes.fromhex(parts[1]), None, name)
    cells = line.split(",", 2)
    if hex_hash.match(cells[0].strip()):
        quality = None
        if len(cells) > 1 and cells[1].strip():
            quality = _quality(cells[1].strip())
            if quality is None:
                return HashLine(line_no, signal, None, None, None,
                                f"line {line_no}: quality {cells[1].strip()[:20]!r} "
                                f"is not a whole number from {QUALITY_RANGE[0]} to "
                                f"{QUALITY_RANGE[-1]}")
        name = cells[2].strip() if len(cells) > 2 and cells[2].strip() else None
        return HashLine(line_no, signal, bytes.fromhex(cells[0].strip()), quality, name)
    return HashLine(line_no, signal, None, None, None,
                    f"line {line_no}: neither '{signal} HEX' nor 'hash,quality,filename' "
                    f"({line[:60]!r})")


def _quality(text: str) -> int | None:
    """A quality cell as a number in :data:`QUALITY_RANGE`, or None. Bounded here
    because the catalog stores it: a 20-digit "quality" would stop the import."""
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value in QUALITY_RANGE else None
