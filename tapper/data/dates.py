"""The one date parser of tapper: every reader, builder and the HTTP API turn dates into day numbers here.

A day number is days since 1970-01-01 00:00 UTC (fractional, naive UTC). Accepted forms:

- ISO 8601 dates and datetimes ("2018-05-26", "2018-05-26T14:00:00+02:00"); a zone is converted to UTC;
- unix seconds, as a number or a numeric string (1472688000), at most 1e11 in size (a larger value is
  almost surely milliseconds and is refused rather than read as a date thousands of years away);
- Amazon's "MM D, YYYY" ("09 1, 2016");
- a bare year ("2011" or 2011, read as January 1st).

Supported range: 1000-01-01T00:00:00 to 9999-12-31T23:59:59 UTC, inclusive, after the zone is applied. A
date outside it ("0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00", -9e10 seconds) is a DateError,
never an OverflowError or a day that cannot be written back. None and "" mean "no date" and give None.
Anything else that is not a date raises DateError (a ValueError) whose message quotes the value.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1)
SECONDS_PER_DAY = 86400.0
MIN_MOMENT = datetime(1000, 1, 1)
MAX_MOMENT = datetime(9999, 12, 31, 23, 59, 59)
RANGE_TEXT = "1000-01-01 to 9999-12-31T23:59:59 (UTC)"
# Anything numeric beyond this many seconds (year ~5100) is almost surely a millisecond timestamp.
MAX_UNIX_SECONDS = 1e11
MAX_DATE_CHARS = 64  # longer strings are not dates; refusing them early keeps the regexes cheap

_AMAZON_DATE = re.compile(r"^\d{1,2} \d{1,2}, \d{4}$")  # Amazon's reviewTime, e.g. "09 1, 2016"
_YEAR = re.compile(r"^\d{4}$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class DateError(ValueError):
    """A value that is not a date tapper can use; the message says what was given and what is accepted."""


def _days(moment: datetime) -> float:
    return (moment - EPOCH).total_seconds() / SECONDS_PER_DAY


MIN_DAY = _days(MIN_MOMENT)
MAX_DAY = _days(MAX_MOMENT)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


def _in_range(day: float, original: Any) -> float:
    if not MIN_DAY <= day <= MAX_DAY:
        raise DateError(f"date {_shown(original)} is outside the supported range {RANGE_TEXT}")
    return day


def parse_date(value: Any) -> float | None:
    """The day number of `value` (see the module doc for the forms and the range), or None for no date."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise DateError(f"a boolean is not a date: {value!r}")
    if isinstance(value, int | float):
        return _from_number(value, value)
    if not isinstance(value, str):
        raise DateError(f"a {type(value).__name__} is not a date: {_shown(value)}")
    text = value.strip()
    if not text:
        return None
    if len(text) > MAX_DATE_CHARS:
        raise DateError(f"a text of {len(text)} characters is not a date (at most {MAX_DATE_CHARS})")
    if _YEAR.match(text):
        return _year(int(text), value)
    if _NUMBER.match(text):
        return _from_number(float(text), value)
    if _AMAZON_DATE.match(text):
        try:
            return _in_range(_days(datetime.strptime(text, "%m %d, %Y")), value)
        except ValueError as err:
            if isinstance(err, DateError):
                raise
            raise DateError(f"impossible date {_shown(value)} (as 'MM D, YYYY': {err})") from None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        expected = "ISO, unix seconds, 'MM D, YYYY' or a year"
        raise DateError(f"unrecognized date {_shown(value)} (expected {expected})") from None
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:  # the zone moves it past year 1 or 9999
            raise DateError(f"date {_shown(value)} is outside the supported range {RANGE_TEXT}") from None
    return _in_range(_days(parsed), value)


def _year(year: int, original: Any) -> float:
    if not MIN_MOMENT.year <= year <= MAX_MOMENT.year:
        raise DateError(f"date {_shown(original)} is outside the supported range {RANGE_TEXT}")
    return _days(datetime(year, 1, 1))


def _from_number(number: int | float, original: Any) -> float:
    try:
        seconds = float(number)
    except OverflowError:  # an int too large for a float
        raise DateError(f"timestamp {_shown(original)} is too large for unix seconds") from None
    if not math.isfinite(seconds):
        raise DateError(f"not a finite timestamp: {_shown(original)}")
    if seconds.is_integer() and 1000 <= seconds <= 9999:
        return _year(int(seconds), original)  # a bare year stored as a number
    if abs(seconds) > MAX_UNIX_SECONDS:
        raise DateError(f"timestamp {_shown(original)} is too large for unix seconds (milliseconds?)")
    return _in_range(seconds / SECONDS_PER_DAY, original)


def format_day(day: float) -> str:
    """The ISO form of a day number: "YYYY-MM-DD" for whole days, "YYYY-MM-DDTHH:MM:SS" otherwise.

    Raises DateError for a day outside the supported range (what parse_date returns always fits).
    """
    if not isinstance(day, int | float) or isinstance(day, bool) or not math.isfinite(day):
        raise DateError(f"not a day number: {_shown(day)}")
    if not MIN_DAY <= day <= MAX_DAY:
        raise DateError(f"day number {day!r} is outside the supported range {RANGE_TEXT}")
    moment = EPOCH + timedelta(days=day)
    return moment.date().isoformat() if float(day).is_integer() else moment.isoformat(timespec="seconds")
