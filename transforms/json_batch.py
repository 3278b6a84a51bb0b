"""JSON messages of a batch, parsed: one parse of the whole batch where that is provably the
same as parsing each message alone, else one parse per message.

Parsing a batch at once is cheaper than once per message (the decoder shares the key strings
across the batch and is called once); ``parse_messages`` tries two joined forms, cheapest
first, and each comes with a check that proves its elements are the messages' own values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import repeat

#: What a message that is no JSON object or array parses to (and a missing field's value).
MISSING = object()


_OPENERS = ("{", "[")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_scan: Callable[[str, int], tuple[object, int]] = json.JSONDecoder(
    parse_constant=_reject_constant
).scan_once  # type: ignore[attr-defined]  # set in JSONDecoder.__init__, not in the stubs
_decode = json.JSONDecoder(parse_constant=_reject_constant).decode


def parse_json(text: str) -> object:
    """The JSON object or array a message holds (surrounding whitespace allowed), else
    ``MISSING``. NaN and Infinity are not JSON; nesting too deep is not parsed."""
    if text[:1] not in _OPENERS:
        return MISSING
    try:
        value, end = _scan(text, 0)
    except (StopIteration, ValueError, RecursionError):
        return MISSING
    if end != len(text) and not text[end:].isspace():
        return MISSING
    return value


def parse_messages(texts: list[str]) -> list[object]:
    """``parse_json`` of each message, in one parse of the batch where that is provably the
    same (``parse_joined``, else ``parse_wrapped``), else one by one."""
    if not texts:
        return []
    if all(map(str.startswith, texts, repeat(_OPENERS))):  # the usual batch: one C-level pass
        looks, chosen = [], texts
    else:
        looks = [i for i, text in enumerate(texts) if text[:1] in _OPENERS]
        if not looks:
            return [MISSING] * len(texts)
        chosen = [texts[i] for i in looks]
    parsed = parse_joined(chosen)
    if parsed is None:
        parsed = parse_wrapped(chosen)
    if parsed is None:
        return list(map(parse_json, texts))
    if chosen is texts:
        return parsed
    out: list[object] = [MISSING] * len(texts)
    for i, value in zip(looks, parsed, strict=True):
        out[i] = value
    return out


#: A value closing, then a comma (spaces, tabs and carriage returns between): in a message
#: without line breaks, what a second top-level value needs. Two searches with a literal
#: first character are several times faster than one with a character class.
_BRACE_THEN_COMMA = re.compile(r"\}[ \t\r]*,").search
_BRACKET_THEN_COMMA = re.compile(r"\][ \t\r]*,").search


def parse_joined(texts: list[str]) -> list[object] | None:
    """Parse ``[m1\n,m2\n,...]`` at once, for messages that all start with ``{`` or ``[``;
    None when that might not be each message's own value (or a message is no JSON).

    Why a success with one element per message proves it. No message holds a line break
    (the joined text has one per separator), and a raw newline cannot be inside a JSON string
    (strict parsing), so every ``\n,`` separator is outside strings. Suppose the separators
    before message k are the array's own, so an element starts where message k starts, with
    ``{`` or ``[``. Where that value closes (``}`` or ``]``), the array parser needs
    whitespace and then ``,`` or ``]``: a ``]`` ends the array, and anything after it fails
    the parse; a ``,`` in the same message would be a ``_BRACE_THEN_COMMA`` or
    ``_BRACKET_THEN_COMMA`` (the whitespace between holds no line break), which no message
    holds, and neither search can match across a separator (it starts with the line break).
    So the value closes at the end of message k or of a later one, with the next separator
    the array's own again: each element is a run of whole messages. With as many elements as
    messages, every run is one message: element i is exactly message i (with its trailing
    whitespace, which must then be JSON whitespace: else the parse fails).
    """
    joined = "[" + "\n,".join(texts) + "]"
    if (
        joined.count("\n") != len(texts) - 1
        or _BRACE_THEN_COMMA(joined) is not None
        or _BRACKET_THEN_COMMA(joined) is not None
    ):
        return None
    try:
        elements = _decode(joined)
    except (ValueError, RecursionError):
        return None
    if not isinstance(elements, list) or len(elements) != len(texts):
        return None
    return elements


#: A sequence only a message holding two top-level JSON values can show ``parse_wrapped``.
_TWO_VALUES = re.compile(r"\][ \t\n\r]*,[ \t\n\r]*\[").search


def parse_wrapped(texts: list[str]) -> list[object] | None:
    """Parse ``[[m1],\\n[m2],\\n...]`` at once; None when that might not be each message's
    own value. Slower than ``parse_joined`` (a list per message) but it takes messages with
    a value closing before a comma (nested JSON: ``{"a":{"b":1},"c":2}``).

    Why a success proves it: a raw newline cannot be inside a JSON string (strict parsing),
    so each ``,\\n`` separator is outside strings; if the parser saw a top-level comma inside
    a message, the message would hold ``]``, ``,`` and ``[`` with only whitespace between
    (every element is checked to be a list), which ``_TWO_VALUES`` excludes. So every
    top-level comma is a separator, and with one element per message every separator is
    one: element i is exactly ``[`` + message i + ``]``, holding a single value.
    """
    if _TWO_VALUES("\x00".join(texts)) is not None:
        return None
    try:
        elements = _decode("[[" + "],\n[".join(texts) + "]]")
    except (ValueError, RecursionError):
        return None
    if (
        not isinstance(elements, list)
        or len(elements) != len(texts)
        or set(map(type, elements)) != {list}
        or set(map(len, elements)) != {1}
    ):
        return None
    return [element[0] for element in elements]
