"""date_format: rewrite K human-readable dates in ISO 8601.

    source: "Wed, Mar 3, 2021; 7/17/1969"  ->  target: "2021-03-03 1969-07-17"   (length = 2 dates)

`length` is the number of dates K.  Each date is drawn uniformly from
1900-01-01..2099-12-31 and written in one of the formats of `FORMATS`, chosen
uniformly at random; the dates are joined by "; ".  The target is the same dates
as YYYY-MM-DD joined by single spaces.

Month and weekday names and the locale's own date patterns come from Babel (CLDR
data).  Option `locale` (default "en", i.e. US English) selects another locale,
e.g. "en_GB", "de", "ko" or "ja"; it is recorded in CLDR's spelling ("en-us" and
"EN_us" become "en_US").  CLDR releases change some patterns (Korean
`y. M. d.` became `y/M/d` between Babel 2.14 and 2.19), so the CLDR version
is part of the task's identity (`data_versions`, with a fingerprint of how
this Babel writes the locale's dates, which a change in Babel's own code would
also move): a dataset or result made with
another CLDR is never read or merged as this one.  Conventions that make every source date
unambiguous:
  * numeric formats use the locale's own day/month order (en: month first,
    3/17/2021; en_GB and de: day first, 17/03/2021 and 17.3.2021);
  * every format writes the year with all its digits (no two-digit years: the
    range spans two centuries); a locale whose patterns would abbreviate the
    year is refused.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re

import numpy as np
from babel import Locale, UnknownLocaleError
from babel.core import get_cldr_version
from babel.dates import format_date, match_skeleton

from study.tasks import register_task
from study.tasks.base import Task

FIRST_DATE = dt.date(1900, 1, 1)
LAST_DATE = dt.date(2099, 12, 31)
SEPARATOR = "; "

# Each format is ("skeleton", X): the locale's own pattern for CLDR skeleton X;
# ("standard", X): the locale's medium/long/full date format; ("pattern", X): a
# fixed LDML pattern whose names and digits still come from the locale;
# ("padded", X): the locale's pattern for skeleton X with day and month
# written with two digits.
FORMATS: tuple[tuple[str, str], ...] = (
    ("skeleton", "yMd"),  # en: 3/3/2021         de: 3.3.2021
    ("padded", "yMd"),  # en: 03/03/2021       de: 03.03.2021
    ("standard", "medium"),  # en: Mar 3, 2021
    ("standard", "long"),  # en: March 3, 2021
    ("standard", "full"),  # en: Wednesday, March 3, 2021
    ("skeleton", "yMMMEd"),  # en: Wed, Mar 3, 2021
    ("skeleton", "yMEd"),  # en: Wed, 3/3/2021
    ("pattern", "d MMMM y"),  # en: 3 March 2021
    ("pattern", "y MMMM d"),  # en: 2021 March 3
    ("pattern", "d MMM y"),  # en: 3 Mar 2021
    ("pattern", "EEEE d MMMM y"),  # en: Wednesday 3 March 2021
)

_LITERAL = re.compile(r"'[^']*'")


def _widen_day_month(pattern: str) -> str:
    """Writes single-letter d and M fields as dd and MM (outside quoted literals)."""
    parts = re.split(r"('[^']*')", pattern)
    return "".join(p if p.startswith("'") else re.sub(r"(?<![dM])([dM])(?![dM])", r"\1\1", p) for p in parts)


# glibc's script modifiers (ll_CC@latin) and the CLDR script each one names
GLIBC_SCRIPTS = {"latin": "Latn", "cyrillic": "Cyrl", "devanagari": "Deva", "arabic": "Arab"}


def canonical_locale(name: str) -> str:
    """`name` in CLDR's spelling: "en-us", "EN_us" -> "en_US"; "sr_RS" -> "sr_Cyrl_RS" (CLDR's
    default script for Serbian in Serbia).

    Raises ValueError (one line) for an unknown locale, and for one whose meaning Babel would
    silently change: an encoding ("en_US.UTF-8"), a modifier ("sr_RS@latin", glibc's Serbian in
    Latin script, which Babel reads as Cyrillic; "th_TH@calendar=buddhist": dates are written in
    the Gregorian calendar with the locale's default digits whatever the modifier says), or a
    script or variant CLDR does not have (dropped without a word). The message names the locale
    that would be used instead and, for a glibc script modifier, the CLDR spelling that means it."""
    if not isinstance(name, str):
        raise ValueError(f"task 'date_format': locale must be a string, got {name!r}")
    base, at, modifier = name.replace("-", "_").partition("@")
    base, dot, encoding = base.partition(".")
    try:
        locale = Locale.parse(base)
    except (UnknownLocaleError, ValueError, TypeError) as exc:
        raise ValueError(f"task 'date_format': unknown locale {name!r} ({exc})") from None
    used = str(locale)
    if dot:
        raise ValueError(
            f"task 'date_format': locale {name!r}: an encoding is not part of a CLDR locale; write {used!r}"
        )
    if at:
        script = GLIBC_SCRIPTS.get(modifier.lower())
        meant = (
            f"; for the {modifier} script write {str(Locale(locale.language, locale.territory, script=script))!r}"
            if script
            else ""
        )
        raise ValueError(
            f"task 'date_format': locale {name!r}: the modifier '@{modifier}' is not honoured (dates would be "
            f"written as {used!r}){meant}"
        )
    for part in base.split("_")[1:]:
        if len(part) == 4 and part.isalpha() and part.title() != locale.script:
            raise ValueError(
                f"task 'date_format': locale {name!r}: CLDR has no script {part!r} for it (dates would be written as {used!r})"
            )
        if len(part) > 4 and part.upper() != (locale.variant or "").upper():
            raise ValueError(
                f"task 'date_format': locale {name!r}: CLDR has no variant {part!r} for it (dates would be written as {used!r})"
            )
    return used


@functools.lru_cache(maxsize=None)
def _resolve_patterns(locale_name: str) -> tuple[str, ...]:
    """The LDML pattern of every entry of FORMATS for one locale (validated: full years only)."""
    try:
        locale = Locale.parse(locale_name)
    except (UnknownLocaleError, ValueError, TypeError) as exc:
        raise ValueError(f"task 'date_format': unknown locale {locale_name!r} ({exc})") from None
    patterns = []
    for kind, spec in FORMATS:
        if kind == "standard":
            pattern = locale.date_formats[spec].pattern
        elif kind in ("skeleton", "padded"):
            pattern = locale.datetime_skeletons[match_skeleton(spec, locale.datetime_skeletons)].pattern
            if kind == "padded":
                pattern = _widen_day_month(pattern)
        else:
            pattern = spec
        year_fields = re.findall(r"y+", _LITERAL.sub("", pattern))
        if not year_fields or any(len(f) == 2 for f in year_fields):
            raise ValueError(
                f"task 'date_format': locale {locale_name!r} writes format {spec!r} as {pattern!r}, "
                "which has no full year; choose another locale"
            )
        patterns.append(pattern)
    return tuple(patterns)


@functools.lru_cache(maxsize=None)
def _leap_year_rendering(locale_name: str) -> tuple[str, str]:
    """(every character any format can produce, a fingerprint of how the locale writes dates):
    every day of a leap year in every format; the alphabet adds the separator and all digits,
    the fingerprint is 12 hex digits of the SHA-256 of all those strings."""
    patterns = _resolve_patterns(locale_name)
    chars = set(SEPARATOR) | set("0123456789")
    digest = hashlib.sha256()
    day = dt.date(2020, 1, 1)
    while day.year == 2020:
        for pattern in patterns:
            text = format_date(day, pattern, locale=locale_name)
            chars.update(text)
            digest.update(text.encode() + b"\x00")
        day += dt.timedelta(days=1)
    return "".join(sorted(chars)), digest.hexdigest()[:12]


def _source_alphabet(locale_name: str) -> str:
    """Every character any format can produce (`_leap_year_rendering`)."""
    return _leap_year_rendering(locale_name)[0]


@register_task
class DateFormatTask(Task):
    name = "date_format"
    version = 1
    description = "Rewrite K dates written in assorted human formats as ISO 8601 (YYYY-MM-DD)."
    length_unit = "dates"
    output_unit_width = 11  # YYYY-MM-DD and the space before the next date
    min_length = 1

    def __init__(self, locale: str = "en") -> None:
        locale = canonical_locale(locale)
        super().__init__(locale=locale)
        self.locale = locale
        self.patterns = _resolve_patterns(locale)
        self.cldr = str(get_cldr_version())  # the CLDR release Babel ships, e.g. "47"
        self.rendering = _leap_year_rendering(locale)[1]  # how this Babel writes the locale's dates

    @property
    def data_versions(self) -> dict[str, str]:
        """The CLDR release, and a fingerprint of every day of a leap year in every format, which
        also catches a change in Babel's own formatting code under the same CLDR."""
        return {"cldr": self.cldr, "rendering": self.rendering}

    @property
    def input_alphabet(self) -> str:
        return _source_alphabet(self.locale)

    @property
    def output_alphabet(self) -> str:
        return "0123456789- "

    @property
    def formats(self) -> tuple[str, ...]:
        """Each entry of `FORMATS` as "kind:spec", e.g. "skeleton:yMd"."""
        return tuple(f"{kind}:{spec}" for kind, spec in FORMATS)

    def formats_in(self, source: str, target: str) -> set[str]:
        """The formats that alone write one of the example's dates as the source does."""
        found = set()
        for part, iso in zip(source.split(SEPARATOR), target.split(" ")):
            date = dt.date.fromisoformat(iso)
            writers = [name for i, name in enumerate(self.formats) if self.format(date, i) == part]
            if len(writers) == 1:
                found.add(writers[0])
        return found

    def format(self, date: dt.date, format_index: int) -> str:
        """One date written in format `FORMATS[format_index]` of this task's locale."""
        return format_date(date, self.patterns[format_index], locale=self.locale)

    def sample(self, rng: np.random.Generator, n: int, length: int) -> tuple[list[str], list[str]]:
        self.check_length(length)
        first, last = FIRST_DATE.toordinal(), LAST_DATE.toordinal()
        ordinals = rng.integers(first, last + 1, size=(n, length))
        styles = rng.integers(0, len(self.patterns), size=(n, length))
        sources, targets = [], []
        for row_dates, row_styles in zip(ordinals, styles):
            dates = [dt.date.fromordinal(int(o)) for o in row_dates]
            sources.append(SEPARATOR.join(self.format(d, int(s)) for d, s in zip(dates, row_styles)))
            targets.append(" ".join(d.isoformat() for d in dates))
        return sources, targets
