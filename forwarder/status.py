"""Exit statuses, and the one place that maps an outcome to one (the README lists them)."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Exit statuses; the README lists them. 0 means everything delivered and acknowledged."""

    OK = 0
    FAILURE = 1
    USAGE = 2  # also every configuration error (DESIGN.md section 7)
    HEC_FATAL = 4  # token or channel refused by HEC; data went to the backsplash
    INCOMPLETE = 5  # some events were backsplashed or dropped as unparsable input
    BACKSPLASH_FAILED = 6  # events could be neither delivered nor stored: see the log
    INTERRUPTED = 130
