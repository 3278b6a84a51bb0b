"""Per-route shaping rules, compiled once: drop, sample, redact, time from the message, JSON.

``compile_shaper`` turns a destination's ``Shaping`` (and its non-flow ``event_format``) into
a ``Shaper``; ``Shaper.apply`` takes a batch's messages, event ids and CloudWatch timestamps
and returns what is left to send (``Shaped``). In order:

1. JSON messages (text starting with ``{`` or ``[`` that is one JSON value) are parsed once,
   when a rule needs them (``drop`` by field, ``sample_key`` naming a field, ``time_field``,
   ``redact_fields``, ``event_format`` json/auto);
2. ``drop`` rules remove events (counted ``filtered``), then ``sample`` keeps a share of the
   rest (counted ``sampled``), chosen by a hash of the event id (or of ``sample_key``), so a
   replay or resend samples the same events;
3. the time is read from the message (``time_field``/``time_regex``, ``transforms.event_time``);
   an event whose time cannot be read keeps the CloudWatch time and counts ``time_unparsed``;
4. ``redact_fields`` masks the values of the named keys at any depth of a JSON message (which is
   then re-serialized), and ``redact`` rules replace their pattern in the message text until
   it no longer changes (``_redactor``), and in the strings a JSON message spells with
   escapes. Nothing masked leaves in any form;
5. with ``event_format`` json (objects and arrays) or auto (objects), a JSON message is the
   event's value as written (re-checked only when a redaction changed it); every other
   message is a JSON string.

Flow-log lines take drop, sample and redact; their time stays ``start`` and their shape is the
flow format's. Each step works over the whole batch at once where it can.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from hashlib import blake2b
from itertools import accumulate, compress, count, repeat
from json.encoder import encode_basestring
from operator import add, eq, itemgetter, not_, or_
from typing import Literal, TypeVar, cast

from transforms.errors import RoutePatternError
from transforms.event_time import TimeParser, batch_parser, time_parser
from transforms.json_batch import MISSING as _MISSING
from transforms.json_batch import parse_json, parse_messages
from transforms.options import DropRule, FieldValue, RedactRule, Shaping

#: How non-flow messages are sent: ``None`` as strings; ``json`` JSON objects and arrays as
#: values; ``auto`` JSON objects as objects.
JsonMode = Literal["json", "auto"] | None

_T = TypeVar("_T")

MASK = "****"
_SCRUB_ROUNDS = 8  # re-replace at most this often before replacing the whole message
_SAMPLE_SCALE = float(2**64)

Condition = Callable[[list[str], list[object] | None], list[bool]]


def field_value(value: object, path: tuple[str, ...]) -> object:
    """The value at a dotted path (already split) of a parsed message, else ``_MISSING``."""
    for key in path:
        if not isinstance(value, dict):
            return _MISSING
        value = value.get(key, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


def field_values(objects: list[object], path: tuple[str, ...]) -> list[object]:
    """``field_value`` of each parsed message (one comprehension for one-key paths)."""
    if len(path) == 1:
        key = path[0]
        if set(map(type, objects)) == {dict}:  # every message an object: one C-level pass
            dicts = cast("list[dict[str, object]]", objects)
            return list(map(dict.get, dicts, repeat(key), repeat(_MISSING)))
        return [value.get(key, _MISSING) if type(value) is dict else _MISSING for value in objects]
    return [field_value(value, path) for value in objects]


def _equals(value: object, wanted: FieldValue) -> bool:
    """JSON equality: a string equals only a string, a boolean only a boolean."""
    if isinstance(wanted, bool) or isinstance(value, bool):
        return value is wanted
    if isinstance(wanted, str):
        return isinstance(value, str) and value == wanted
    return isinstance(value, int | float) and value == wanted


def compile_message_pattern(pattern: str) -> Callable[[str], object]:
    """``search`` for a regular expression prefixed with ``re:``, ``match`` for a glob.

    Raises:
        re.error: the regular expression does not compile.
    """
    import fnmatch  # noqa: PLC0415 - only rules with globs need it; stdlib, cheap

    if pattern.startswith("re:"):
        return re.compile(pattern[3:]).search
    return re.compile(fnmatch.translate(pattern), re.DOTALL).match


def _drop_condition(rule: DropRule) -> tuple[Condition, ...]:
    conditions: list[Condition] = []
    if rule.message is not None:
        search = compile_message_pattern(rule.message)

        def message_matches(messages: list[str], _: list[object] | None) -> list[bool]:
            return [search(message) is not None for message in messages]

        conditions.append(message_matches)
    if rule.field is not None:
        path = tuple(rule.field.split("."))
        wanted = rule.equals if rule.equals is not None else ""

        def field_equals(messages: list[str], objects: list[object] | None) -> list[bool]:
            if objects is None:
                return [False] * len(messages)
            values = field_values(objects, path)
            if isinstance(wanted, str):  # only a JSON string equals a str (JSON values' ==
                return list(map(eq, values, repeat(wanted)))  # with a str is a bool)
            return [_equals(value, wanted) for value in values]

        conditions.append(field_equals)
    return tuple(conditions)


def _batch_redactor(rule: RedactRule) -> Callable[[list[str]], list[str]]:
    """``_redactor`` over a batch: only the lines that may hold a match are scrubbed."""
    source = rule.pattern[3:] if rule.pattern.startswith("re:") else re.escape(rule.pattern)
    candidates = _candidates(source, re.compile(source))
    scrub = _redactor(rule)

    def redact(texts: list[str]) -> list[str]:
        lines = candidates(texts)
        if not lines:
            return texts
        out = list(texts)
        for line in lines:
            out[line] = scrub(out[line])
        return out

    return redact


def _redactor(rule: RedactRule) -> Callable[[str], str]:
    """The function that masks one rule's pattern in a text, leaving none of it behind.

    The text is replaced until it no longer changes, so a replacement that forms the pattern
    anew with what surrounds it is replaced too, while a replacement the pattern matches
    (``password=\\S+`` -> ``password=****``) stays. A text still changing after
    ``_SCRUB_ROUNDS`` rounds is replaced whole.
    """
    source = rule.pattern[3:] if rule.pattern.startswith("re:") else re.escape(rule.pattern)
    compiled = re.compile(source)
    replace = rule.replace
    template = replace.replace("\\", "\\\\")  # the replacement is literal text
    subn = compiled.subn

    def scrub(text: str) -> str:
        text, count = subn(template, text)
        if not count:
            return text
        for _ in range(_SCRUB_ROUNDS):
            again = subn(template, text)[0]
            if again == text:
                return text
            text = again
        return replace if subn(template, replace)[0] == replace else ""

    return scrub


#: What makes a regular expression's match depend on the text around it (anchors, word
#: boundaries, lookarounds). Without any of these, a match in one line is a match in the
#: lines joined, so a batch can be searched at once (``_candidates``).
_CONTEXT_TOKENS = ("^", "$", "\\A", "\\Z", "\\b", "\\B", "(?=", "(?!", "(?<")


def _candidates(source: str, compiled: re.Pattern[str]) -> Callable[[list[str]], list[int]]:
    """The lines of a batch that may hold a match: all of them when the pattern depends on
    context, else those one search of the joined batch finds a match in (every match is
    inside or across the lines it covers, so no line with a match of its own is missed)."""
    if any(token in source for token in _CONTEXT_TOKENS):
        return lambda texts: list(range(len(texts)))
    finditer = compiled.finditer

    def candidates(texts: list[str]) -> list[int]:
        joined = "\n".join(texts)
        found = [(match.start(), match.end()) for match in finditer(joined)]
        if not found:
            return []
        ends = list(map(add, accumulate(map(len, texts)), count(1)))  # past each line's "\n"
        lines: set[int] = set()
        for start, end in found:
            first = bisect_right(ends, start)
            last = bisect_right(ends, max(start, end - 1))
            lines.update(range(first, min(last, len(texts) - 1) + 1))
        return sorted(lines)

    return candidates


def _mask_fields(value: object, names: frozenset[str]) -> bool:
    """Mask the values of keys named in ``names`` (lower case) at any depth; whether any was."""
    masked = False
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                if isinstance(key, str) and key.lower() in names:
                    node[key] = MASK
                    masked = True
                elif isinstance(item, dict | list):
                    stack.append(item)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, dict | list))
    return masked


def sample_fraction(key: str) -> float:
    """Where a key falls in [0, 1): the same key always falls in the same place."""
    digest = blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SAMPLE_SCALE


def dedup_key(event_id: str | None, source: str | None, time: str | None, message: str) -> str:
    """An event's dedup key: its CloudWatch id, else a stable hash of source, time, message."""
    if event_id is not None:
        return event_id
    text = f"{source or ''}\x1f{time or ''}\x1f{message}"
    return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@dataclass(slots=True)
class Shaped:
    """What is left of a batch after the rules, and what they counted.

    ``times``: per event, the HEC time read from the message (None: keep the CloudWatch
    time); None when no time rule applies. ``bodies``: per event, the JSON text of its
    ``event`` value; None when every message goes as a plain string.
    """

    messages: list[str]
    ids: Sequence[str | None] | None
    timestamps: Sequence[int | None] | None
    times: list[str | None] | None = None
    bodies: list[str] | None = None
    filtered: int = 0
    sampled: int = 0
    time_unparsed: int = 0


class Shaper:
    """One destination's rules, compiled (see the module docstring)."""

    def __init__(self, shaping: Shaping, json_mode: JsonMode = None) -> None:
        self._drops = tuple(_drop_condition(rule) for rule in shaping.drop)
        self._sample = shaping.sample
        key = shaping.sample_key or "event_id"
        self._sample_path = tuple(key.split(".")) if key not in ("event_id", "message") else None
        self._sample_by_message = key == "message"
        self._time_path = tuple(shaping.time_field.split(".")) if shaping.time_field else None
        self._time_regex = re.compile(shaping.time_regex) if shaping.time_regex else None
        self._time_group: int | str = 0
        if self._time_regex is not None:
            groups = self._time_regex.groupindex
            self._time_group = "time" if "time" in groups else min(self._time_regex.groups, 1)
        self._parse_time: TimeParser = time_parser(shaping.time_format)
        self._parse_batch = batch_parser(shaping.time_format)
        self._redactors = tuple(_redactor(rule) for rule in shaping.redact)
        self._batch_redactors = tuple(_batch_redactor(rule) for rule in shaping.redact)
        self._redact_fields = frozenset(name.lower() for name in shaping.redact_fields)
        self._json_mode = json_mode
        self._objects_to_filter = any(rule.field is not None for rule in shaping.drop) or (
            self._sample is not None and self._sample_path is not None
        )

    def apply(
        self,
        messages: list[str],
        ids: Sequence[str | None] | None,
        timestamps: Sequence[int | None] | None,
        *,
        flow: bool = False,
        raw: bool = False,
    ) -> Shaped:
        """Apply the rules to a batch (``flow``: flow-log lines; ``raw``: the raw endpoint,
        where events have neither a time nor a JSON value of their own)."""
        objects: list[object] | None = None
        if self._objects_to_filter and not flow:
            objects = parse_messages(messages)
        shaped = Shaped(messages, ids, timestamps)
        keep = self._select(shaped, objects)
        if keep is not None:
            shaped.messages = _pick(messages, keep)
            shaped.ids = _pick(ids[:], keep) if ids is not None else None
            shaped.timestamps = _pick(timestamps, keep) if timestamps is not None else None
            objects = _pick(objects, keep) if objects is not None else None
        if flow:
            shaped.messages = self._redact(shaped.messages)
            return shaped
        wants_time = not raw and (self._time_path is not None or self._time_regex is not None)
        wants_json = not raw and self._json_mode is not None
        if objects is None and (
            self._redact_fields or wants_json or (wants_time and self._time_path is not None)
        ):
            objects = parse_messages(shaped.messages)
        if wants_time:
            shaped.times = self._times(shaped.messages, objects)
            shaped.time_unparsed = shaped.times.count(None)
        texts = shaped.messages
        if self._redact_fields and objects is not None:
            texts = self._mask(texts, objects)
        redacted = self._redact(texts)
        shaped.messages = redacted
        if wants_json and objects is not None:
            shaped.bodies = self._bodies(texts, redacted, objects)
        return shaped

    def _select(self, shaped: Shaped, objects: list[object] | None) -> list[int] | None:
        """The events kept by ``drop`` and ``sample`` (None: all), counting the others."""
        messages = shaped.messages
        keep: list[int] | None = None
        if self._drops:
            dropped: list[bool] | None = None
            for conditions in self._drops:
                hits = conditions[0](messages, objects)
                for condition in conditions[1:]:
                    hits = [
                        a and b for a, b in zip(hits, condition(messages, objects), strict=True)
                    ]
                dropped = hits if dropped is None else list(map(or_, dropped, hits))
            if dropped is not None and any(dropped):
                keep = list(compress(range(len(messages)), map(not_, dropped)))
                shaped.filtered = len(messages) - len(keep)
        if self._sample is not None:
            rate = self._sample
            candidates = keep if keep is not None else range(len(messages))
            kept = [
                i
                for i in candidates
                if sample_fraction(self._sample_key(shaped, objects, i)) < rate
            ]
            shaped.sampled = len(candidates) - len(kept)
            keep = kept
        return keep

    def _sample_key(self, shaped: Shaped, objects: list[object] | None, i: int) -> str:
        message = shaped.messages[i]
        if self._sample_path is not None:
            value = field_value(objects[i], self._sample_path) if objects is not None else _MISSING
            if value is not _MISSING:
                return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        elif not self._sample_by_message and shaped.ids is not None:
            event_id = shaped.ids[i]
            if event_id is not None:
                return event_id
        return message

    def _times(self, messages: list[str], objects: list[object] | None) -> list[str | None]:
        parse = self._parse_time
        if self._time_path is not None:
            values = field_values(cast_objects(objects, messages), self._time_path)
            fast = self._parse_batch(values)
            if fast is not None:
                return fast
            return [parse(value) if value is not _MISSING else None for value in values]
        regex = cast_regex(self._time_regex)
        group = self._time_group
        found = list(map(regex.search, messages))
        texts: list[object] = [
            match.group(group) if match is not None else _MISSING for match in found
        ]
        fast = self._parse_batch(texts)
        if fast is not None:
            return fast
        return [parse(text) if text is not _MISSING else None for text in texts]

    def _mask(self, texts: list[str], objects: list[object]) -> list[str]:
        names = self._redact_fields
        out = list(texts)
        for i, value in enumerate(objects):
            if isinstance(value, dict | list) and _mask_fields(value, names):
                out[i] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return out

    def _redact(self, texts: list[str]) -> list[str]:
        if not self._redactors:
            return texts
        for redact in self._batch_redactors:
            texts = redact(texts)
        if "\\" in "".join(texts):
            # A JSON message may spell masked text with escapes (\u0041): redact its decoded
            # strings too, so that nothing masked comes back when Splunk reads the JSON.
            texts = [self._redact_decoded(text) if "\\" in text else text for text in texts]
        return texts

    def _redact_decoded(self, text: str) -> str:
        value = parse_json(text)
        if value is _MISSING:
            return text
        try:
            cleaned = self._scrub_value(value)
        except RecursionError:
            return MASK
        if cleaned == value:
            return text
        return json.dumps(cleaned, separators=(",", ":"), ensure_ascii=False)

    def _scrub_value(self, value: object) -> object:
        if isinstance(value, str):
            for scrub in self._redactors:
                value = scrub(value)
            return value
        if isinstance(value, dict):
            return {self._scrub_value(key): self._scrub_value(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._scrub_value(item) for item in value]
        return value

    def _bodies(self, texts: list[str], redacted: list[str], objects: list[object]) -> list[str]:
        arrays = self._json_mode == "json"
        bodies = []
        for text, final, value in zip(texts, redacted, objects, strict=True):
            is_value = isinstance(value, dict) or (arrays and isinstance(value, list))
            if is_value and final is not text:
                is_value = final == text or parse_json(final) is not _MISSING
            bodies.append(final if is_value else encode_basestring(final))
        return bodies


def _pick(values: Sequence[_T], keep: list[int]) -> list[_T]:
    """The values at the positions ``keep`` (one C-level pass)."""
    if len(keep) < 2:
        return [values[i] for i in keep]
    return list(itemgetter(*keep)(values))


def cast_objects(objects: list[object] | None, messages: list[str]) -> list[object]:
    """The parsed messages, or ``_MISSING`` for each when none were parsed."""
    return objects if objects is not None else [_MISSING] * len(messages)


def cast_regex(regex: re.Pattern[str] | None) -> re.Pattern[str]:
    """A compiled time regex (only called when there is one)."""
    if regex is None:  # pragma: no cover - guarded by the caller
        raise RoutePatternError("no time_regex")
    return regex


#: Stands for each event's dedup key in the envelope until ``with_dedup_keys`` fills it in.
DEDUP_MARKER = "\x01dedup\x01"
_DEDUP_MARKER_JSON = json.dumps(DEDUP_MARKER)


def with_dedup_keys(
    texts: Sequence[str],
    ids: Sequence[str | None] | None,
    source: str | None,
    times: Sequence[str | None] | None,
    messages: list[str],
) -> list[str]:
    """Event objects whose envelope holds ``DEDUP_MARKER`` as a field value, with each
    event's ``dedup_key`` in its place.

    The marker's first occurrence in an object is the envelope's: only the time precedes it.
    """
    count = len(texts)
    ids = ids if ids is not None else [None] * count
    times = times if times is not None else [None] * count
    return [
        text.replace(_DEDUP_MARKER_JSON, json.dumps(dedup_key(event_id, source, time, message)), 1)
        for text, event_id, time, message in zip(texts, ids, times, messages, strict=True)
    ]


def compile_shaper(shaping: Shaping, json_mode: JsonMode = None) -> Shaper:
    """The compiled rules for a destination (cached: equal inputs share one ``Shaper``).

    ``equals = true`` and ``equals = 1`` are equal (and hash alike) as Python values but not
    as JSON values, so the types of the ``equals`` values are part of the cache key.

    Raises:
        RoutePatternError: a pattern or ``time_format`` is invalid (``config`` checks them at
            start-up, naming the rule and key).
    """
    return _compile_shaper(shaping, json_mode, tuple(type(rule.equals) for rule in shaping.drop))


@lru_cache(maxsize=256)
def _compile_shaper(shaping: Shaping, json_mode: JsonMode, _kinds: tuple[type, ...]) -> Shaper:
    try:
        return Shaper(shaping, json_mode)
    except re.error as exc:
        raise RoutePatternError(
            f"a shaping pattern is not a valid regular expression: {exc}"
        ) from None
    except ValueError as exc:
        raise RoutePatternError(f"time_format {shaping.time_format!r}: {exc}") from None
