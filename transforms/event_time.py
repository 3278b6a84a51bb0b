"""Event time read from the message (``time_field`` / ``time_regex`` with ``time_format``).

A parser turns the value found in a message (a JSON value, or the text a regular expression
caught) into HEC ``time`` text: epoch seconds with a millisecond fraction, as the CloudWatch
times are written (``"1700000000.123"``), or None when the value is not a time. Formats:

- ``iso8601``: ``2026-12-03T01:02:03.456Z``, any offset; without one, UTC;
- ``epoch``, ``epoch_ms``, ``epoch_us``: a number (or numeric text) in seconds,
  milliseconds or microseconds;
- any other text is an ``strptime`` pattern (``%d/%b/%Y:%H:%M:%S %z``); without a zone, UTC;
- None (the default): ISO 8601, else an epoch number whose unit is read from its size (up to
  1e11 seconds, up to 1e14 milliseconds, else microseconds; as flow logs' ``start``).

Pure; parsers are built once per route (``time_parser``) and cache ISO texts per second.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from itertools import repeat
from operator import add, getitem
from typing import cast

from transforms.options import TIME_FORMATS

#: Seconds of 9999-12-31T23:59:59Z: later values are not times.
_MAX_SECONDS = 253_402_300_799
_SECONDS_BELOW = 1e11  # as vpc_flow.epoch_seconds: larger values are milliseconds
_MILLIS_BELOW = 1e14  # ... and larger still, microseconds
_DIVISORS = {"epoch": 1, "epoch_ms": 1_000, "epoch_us": 1_000_000}
_ISO_SECOND = 19  # len("2026-12-03T01:02:03")
_CACHE_SIZE = 4096

TimeParser = Callable[[object], str | None]


def time_text(seconds: float) -> str | None:
    """HEC ``time`` text for epoch seconds (millisecond precision), None out of range."""
    if not math.isfinite(seconds) or not 0 <= seconds <= _MAX_SECONDS:
        return None
    millis = round(seconds * 1000)
    return f"{millis // 1000}.{millis % 1000:03d}"


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and 0 < len(value) <= 32:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _epoch(divisor: int | None) -> TimeParser:
    def parse(value: object) -> str | None:
        number = _number(value)
        if number is None:
            return None
        if divisor is not None:
            return time_text(number / divisor)
        if abs(number) < _SECONDS_BELOW:
            return time_text(number)
        return time_text(number / (1_000 if abs(number) < _MILLIS_BELOW else 1_000_000))

    return parse


def _aware_seconds(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@lru_cache(maxsize=_CACHE_SIZE)
def _iso_second(head: str, zone: str) -> float | None:
    """Epoch seconds of ``YYYY-MM-DDTHH:MM:SS`` in a zone (``Z``, ``+01:00``, ``""``)."""
    try:
        return _aware_seconds(datetime.fromisoformat(head + zone))
    except (ValueError, OverflowError, OSError):
        return None


def _iso(value: object) -> str | None:
    """ISO 8601 text to HEC time; the whole-second part of a text is parsed once and cached."""
    if not isinstance(value, str) or len(value) < _ISO_SECOND or len(value) > 64:
        return None
    rest = value[_ISO_SECOND:]
    fraction = ""
    if rest[:1] in (".", ","):
        digits = len(rest) - len(rest[1:].lstrip("0123456789")) - 1
        fraction, rest = rest[1 : 1 + digits], rest[1 + digits :]
        if not fraction:
            return None
    if rest and rest != "Z" and rest[:1] not in ("+", "-"):
        return _iso_slow(value)
    seconds = _iso_second(value[:_ISO_SECOND], rest)
    if seconds is None:
        return _iso_slow(value)
    return time_text(seconds + (int(fraction) / 10 ** len(fraction) if fraction else 0.0))


_HEAD = slice(0, _ISO_SECOND)
_FRACTION = slice(_ISO_SECOND, _ISO_SECOND + 4)  # ".fff"
_HEADS: dict[str, str | None] = {}  # "YYYY-MM-DDTHH:MM:SS" -> epoch seconds text (UTC)
_HEADS_MAX = 65536


def _utc_head(head: str) -> str | None:
    seconds = _iso_second(head, "Z")
    if seconds is None or not 0 <= seconds <= _MAX_SECONDS:
        return None
    return str(int(seconds))


def iso_batch(values: list[object]) -> list[str | None] | None:
    """HEC times of a batch of ``YYYY-MM-DDTHH:MM:SS.fffZ`` texts (what most JSON loggers
    write) in a few C-level passes, each whole second parsed once; None when any value has
    another shape (the caller then parses one by one, with the same result)."""
    count = len(values)
    if not count or set(map(type, values)) != {str} or set(map(len, values)) != {24}:  # type: ignore[arg-type]
        return None
    texts: list[str] = values  # type: ignore[assignment]  # all str, checked above
    joined = "".join(texts)  # every value 24 characters: column k is joined[k::24]
    millis = joined[20::24] + joined[21::24] + joined[22::24]
    if (
        joined[19::24] != "." * count
        or joined[23::24] != "Z" * count
        or not millis.isdigit()
        or not millis.isascii()
    ):
        return None
    heads: list[str] = list(map(getitem, texts, repeat(_HEAD)))  # C-level: no frame per value
    if len(_HEADS) > _HEADS_MAX:
        _HEADS.clear()
    for head in set(heads).difference(_HEADS):
        _HEADS[head] = _utc_head(head)
    seconds = list(map(_HEADS.__getitem__, heads))
    if None in seconds:
        return None
    # "<seconds>" + ".fff": the same text as f"{second}.{text[20:23]}", in C-level passes.
    return list(map(add, cast("list[str]", seconds), map(getitem, texts, repeat(_FRACTION))))


def _iso_slow(value: str) -> str | None:
    try:
        return time_text(_aware_seconds(datetime.fromisoformat(value)))
    except (ValueError, OverflowError, OSError):
        return None


def _strptime(pattern: str) -> TimeParser:
    def parse(value: object) -> str | None:
        if not isinstance(value, str) or len(value) > 256:
            return None
        try:
            return time_text(_aware_seconds(datetime.strptime(value, pattern)))
        except (ValueError, OverflowError, OSError):
            return None

    return parse


def _default(value: object) -> str | None:
    return _iso(value) or _epoch(None)(value)


def batch_parser(time_format: str | None) -> Callable[[list[object]], list[str | None] | None]:
    """A batch-wide fast path for a ``time_format`` (None when it has none): ``iso_batch``
    for ISO 8601 and the default."""
    return iso_batch if time_format in (None, "iso8601") else (lambda values: None)


def time_parser(time_format: str | None) -> TimeParser:
    """The parser for a ``time_format`` (see the module docstring).

    Raises:
        ValueError: an ``strptime`` pattern that does not parse its own output.
    """
    if time_format is None:
        return _default
    if time_format == "iso8601":
        return _iso
    if time_format in _DIVISORS:
        return _epoch(_DIVISORS[time_format])
    check_strptime(time_format)
    return _strptime(time_format)


def check_strptime(pattern: str) -> None:
    """Check that an ``strptime`` pattern reads back a time it wrote.

    Raises:
        ValueError: it has no ``%`` directive, or it cannot parse its own output.
    """
    if "%" not in pattern:
        raise ValueError(
            f"expected one of {', '.join(TIME_FORMATS)} or an strptime pattern with % directives"
        )
    sample = datetime(2001, 2, 3, 4, 5, 6, 7000, tzinfo=UTC)
    try:
        datetime.strptime(sample.strftime(pattern), pattern)
    except ValueError as exc:
        raise ValueError(f"not a usable strptime pattern: {exc}") from None
