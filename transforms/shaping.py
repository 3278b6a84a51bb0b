"""Line shaping: a batch's messages in, the text of its HEC event objects (or raw lines) out.

The envelope (the constant part of every object, ``hec_event.envelope``) is serialized once per
batch by ``transforms.pipeline``; per event only the minimum is done here: the time and the
escaped message. Where every event of a batch has the same shape the result is an
``InterleavedTexts`` (constant pieces and per-event columns), so that the Firehose body is
written in one join over the columns, without a string per event.

Flow-log lines in raw mode are not parsed one by one: when a batch is
plain single-spaced ASCII with the right number of spaces on every line (what AWS writes), the
``start`` values come out of one C-level pass over the batch; any other batch takes the
per-line path, which gives the same bytes (``tests/unit/test_pipeline.py`` checks both against
``hec_event.to_hec_event``). In JSON mode such a batch is split into values and rejoined with
the constant pieces of its template in a few batch-wide passes (``_flow_json_batch``).

Each shaper takes the envelope ``env``, the compiled flow format where there is one, the
CloudWatch timestamps (None for lines of a file) and the messages.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from itertools import chain
from json.encoder import encode_basestring
from operator import itemgetter
from typing import cast

from transforms.errors import DecodeError
from transforms.records import InterleavedTexts
from transforms.vpc_flow import FlowFormat, epoch_seconds, is_flow_int

#: Characters JSON strings must escape, most likely first; a batch without any is copied as is.
_ESCAPED_BUT_NEWLINE = ('"', "\\", "\t", "\r", *map(chr, (*range(0, 9), 11, 12, *range(14, 32))))
_ESCAPED = ("\n", *_ESCAPED_BUT_NEWLINE)
_NEWLINE_FREE = ("\n", "\r")
_CHUNK = 1024  # lines per batch-wide pass (see _in_chunks)
_JSON_SLICE = 256  # lines per _flow_json_batch pass: its buffers are 4 times the lines'
_LEADING_ZERO = re.compile(" 0[0-9]").search  # (on " " + values: see _leading_zero)
_SECONDS_MAX_DIGITS = 11  # up to 1e11 a start/end is seconds (vpc_flow.epoch_seconds)
_MS_13_DIGITS_MIN = 1_000_000_000_000  # 13-digit millisecond timestamps: seconds are 10 digits
_MS_13_DIGITS_END = 10_000_000_000_000
_MARK = "\0"  # marks where a line starts in _flow_json_batch (never in an unescaped batch)
_MARK_SPACE = _MARK + " "
_SPACE_MARK_SPACE = " " + _MARK + " "
_PLAIN_VALUES = ["0"] * 256  # stand-ins for the values of a line with "-" values


def _cloudwatch_time(timestamp_ms: int | None) -> str | None:
    """HEC ``time`` text (seconds, millisecond fraction) for a CloudWatch timestamp.

    Raises:
        DecodeError: a timestamp too large for a float (not a real time).
    """
    if timestamp_ms is None:
        return None
    if _MS_13_DIGITS_MIN <= timestamp_ms < _MS_13_DIGITS_END:
        text = str(timestamp_ms)
        return f"{text[:-3]}.{text[-3:]}"
    try:
        return repr(timestamp_ms / 1000)
    except OverflowError:
        raise DecodeError("a logEvents timestamp is out of range for a time") from None


def _cloudwatch_times(timestamps: Sequence[int | None]) -> list[str | None]:
    """``_cloudwatch_time`` for each timestamp (C-level passes for the usual 13 digits)."""
    if timestamps and _usual_times(timestamps):
        return [f"{text[:-3]}.{text[-3:]}" for text in map(str, cast("Sequence[int]", timestamps))]
    return list(map(_cloudwatch_time, timestamps))


def _usual_times(timestamps: Sequence[int | None] | None) -> bool:
    """Whether ``_cloudwatch_times`` takes its C-level path for these (so cannot fail)."""
    if timestamps is None:
        return True
    if not timestamps or set(map(type, timestamps)) != {int}:
        return False
    ints = cast("Sequence[int]", timestamps)
    return min(ints) >= _MS_13_DIGITS_MIN and max(ints) < _MS_13_DIGITS_END


def _needs_escaping(text: str, escaped: tuple[str, ...] = _ESCAPED) -> bool:
    """Whether any character of ``text`` needs a JSON escape (memchr-speed scans)."""
    return any(map(text.__contains__, escaped))


def raw_lines(messages: list[str]) -> list[str]:
    """Raw-endpoint lines: each message without its trailing line break."""
    joined = "".join(messages)
    if not any(map(joined.__contains__, _NEWLINE_FREE)):
        return messages
    return [message.rstrip("\r\n") for message in messages]


def plain_events(
    env: str, timestamps: Sequence[int | None] | None, messages: list[str]
) -> Sequence[str]:
    """Event objects whose event is the message string."""
    if _needs_escaping("".join(messages)):
        bodies, quote = list(map(encode_basestring, messages)), ""
    else:
        bodies, quote = messages, '"'
    if not bodies:
        return []
    if timestamps is None:
        return InterleavedTexts((f"{{{env}{quote}", f"{quote}}}"), [bodies])
    times = _cloudwatch_times(timestamps)
    if None not in times:
        return InterleavedTexts(
            ('{"time":', f",{env}{quote}", f"{quote}}}"),
            [cast("list[str]", times), bodies],
        )
    return [
        f'{{"time":{time},{env}{quote}{body}{quote}}}'
        if time is not None
        else f"{{{env}{quote}{body}{quote}}}"
        for time, body in zip(times, bodies, strict=True)
    ]


def timed_events(
    env: str,
    timestamps: Sequence[int | None] | None,
    times: Sequence[str | None] | None,
    bodies: list[str],
) -> Sequence[str]:
    """Event objects whose event is a JSON text (``bodies``), with the time read from the
    message where there is one (``times``), else the CloudWatch time."""
    count = len(bodies)
    if times is not None and bodies and None not in times and _usual_times(timestamps):
        # Every time read from its message: the CloudWatch times, which could not fail, are
        # not needed.
        return InterleavedTexts(('{"time":', f",{env}", "}"), [cast("list[str]", times), bodies])
    chosen = _cloudwatch_times(timestamps) if timestamps is not None else [None] * count
    if times is not None:
        chosen = [
            time if time is not None else fallback
            for time, fallback in zip(times, chosen, strict=True)
        ]
    if bodies and None not in chosen:
        return InterleavedTexts(('{"time":', f",{env}", "}"), [cast("list[str]", chosen), bodies])
    return [
        f'{{"time":{time},{env}{body}}}' if time is not None else f"{{{env}{body}}}"
        for time, body in zip(chosen, bodies, strict=True)
    ]


def cloudwatch_times(timestamps: Sequence[int | None] | None, count: int) -> list[str | None]:
    """HEC time texts of CloudWatch timestamps (None for each of ``count`` lines without)."""
    return _cloudwatch_times(timestamps) if timestamps is not None else [None] * count


def _fast_starts(fmt: FlowFormat, messages: list[str]) -> list[str] | None:
    """The ``start`` values of a batch written the way AWS writes it, else None.

    AWS writes plain ASCII values separated by single spaces. When nothing in the batch needs
    a JSON escape (so there is no whitespace but spaces) and the batch has exactly
    ``fields - 1`` spaces per line, the lines fit their format; when every ``start`` is also a
    plain 10-digit epoch second, it is its own HEC ``time``. All of it is checked with a few
    C-level passes over the batch instead of a split per line; anything else returns None and
    takes the per-line path.

    The price of counting spaces per batch rather than per line: lines whose faults cancel
    out (one with a value missing or a double space, another with one value too many) are
    not counted as unparsed. They are delivered untouched either way, as every raw line is,
    with a ``time`` that is a valid epoch second from the line.
    """
    if not messages or fmt.start_index is None:
        return None
    plain = "".join(messages)
    if (
        not plain.isascii()
        or _needs_escaping(plain)
        or plain.count(" ") != len(messages) * (fmt.size - 1)
    ):
        return None
    pick, maxsplit = fmt.start_pick, fmt.start_maxsplit
    if fmt.start_from_end:
        starts = [line.rsplit(" ", maxsplit)[pick] for line in messages]
    else:
        starts = [line.split(" ", maxsplit)[pick] for line in messages]
    digits = "".join(starts)
    if (
        set(map(len, starts)) == {10}
        and digits.encode().isdigit()  # bytes.isdigit: ASCII digits only, at C speed
        and "0" not in digits[::10]  # no leading zero (JSON numbers have none)
    ):
        return starts
    return None


def _start_time(start: str) -> str | None:
    """HEC ``time`` text for a ``start`` value, or None if it is not an integer."""
    if not is_flow_int(start):
        return None
    if len(start) == 10 and start[0] != "0":
        return start
    return repr(epoch_seconds(start))


_Encoder = Callable[
    [str, FlowFormat, Sequence[int | None] | None, list[str]], tuple[Sequence[str], int]
]


def _in_chunks(encoder: _Encoder) -> _Encoder:
    """Run an encoder over slices of at most ``_CHUNK`` lines.

    A large record's batch-wide passes then work on data that stays in the CPU caches, and a
    line that sends its chunk to the per-line path costs only that chunk.
    """

    def chunked(
        env: str, fmt: FlowFormat, timestamps: Sequence[int | None] | None, messages: list[str]
    ) -> tuple[Sequence[str], int]:
        if len(messages) <= _CHUNK:
            return encoder(env, fmt, timestamps, messages)
        texts: list[Sequence[str]] = []
        unparsed = 0
        for low in range(0, len(messages), _CHUNK):
            high = low + _CHUNK
            part = timestamps[low:high] if timestamps is not None else None
            chunk_texts, chunk_unparsed = encoder(env, fmt, part, messages[low:high])
            texts.append(chunk_texts)
            unparsed += chunk_unparsed
        return InterleavedTexts.concat(texts), unparsed

    return chunked


@_in_chunks
def flow_raw_events(
    env: str, fmt: FlowFormat, timestamps: Sequence[int | None] | None, messages: list[str]
) -> tuple[Sequence[str], int]:
    """Flow lines sent untouched, ``time`` from ``start``; and how many did not fit."""
    starts = _fast_starts(fmt, messages)
    if starts is not None:
        return InterleavedTexts(('{"time":', f',{env}"', '"}'), [starts, messages]), 0
    texts = []
    unparsed = 0
    size, start_index = fmt.size, fmt.start_index
    for position, line in enumerate(messages):
        time = _cloudwatch_time(timestamps[position]) if timestamps is not None else None
        values = line.split()
        if len(values) != size:
            unparsed += 1
        elif start_index is not None:
            start_time = _start_time(values[start_index])
            if start_time is None:
                unparsed += 1
            else:
                time = start_time
        body = encode_basestring(line)
        texts.append(f'{{"time":{time},{env}{body}}}' if time is not None else f"{{{env}{body}}}")
    return texts, unparsed


@_in_chunks
def flow_json_events(
    env: str, fmt: FlowFormat, timestamps: Sequence[int | None] | None, messages: list[str]
) -> tuple[Sequence[str], int]:
    """Flow lines as add-on-named JSON records; lines that do not fit go as raw text."""
    fast = _flow_json_sliced(env, fmt, timestamps, messages)
    if fast is None:
        fast = _flow_json_fast(env, fmt, timestamps, messages)
    if fast is not None:
        return fast
    texts = []
    unparsed = 0
    size, start_index = fmt.size, fmt.start_index
    to_json = fmt.to_json
    for position, line in enumerate(messages):
        time = _cloudwatch_time(timestamps[position]) if timestamps is not None else None
        values = line.split()
        body = to_json(values) if len(values) == size else None
        if body is None:
            unparsed += 1
            body = encode_basestring(line)
        elif start_index is not None and values[start_index] != "-":
            time = _start_time(values[start_index])
        texts.append(f'{{"time":{time},{env}{body}}}' if time is not None else f"{{{env}{body}}}")
    return texts, unparsed


def _flow_json_sliced(
    env: str, fmt: FlowFormat, timestamps: Sequence[int | None] | None, messages: list[str]
) -> tuple[list[str], int] | None:
    """``_flow_json_batch`` over slices of ``_JSON_SLICE`` lines; None if any slice is refused.

    Refused or not, the chunk behaves as ``_flow_json_fast`` would: it is accepted only when
    every line is, and CloudWatch times are computed for the whole chunk when one line needs
    them, so a timestamp out of range fails the chunk exactly when the other paths would.
    """
    computed: list[list[str | None]] = []

    def cloudwatch_times() -> list[str | None]:
        if not computed:
            computed.append(_cloudwatch_times(cast("Sequence[int | None]", timestamps)))
        return computed[0]

    times = cloudwatch_times if timestamps is not None else None
    texts: list[str] = []
    for low in range(0, len(messages), _JSON_SLICE):
        part = _flow_json_batch(env, fmt, times, low, messages[low : low + _JSON_SLICE])
        if part is None:
            return None
        texts += part
    return texts, 0


def _flow_json_batch(
    env: str,
    fmt: FlowFormat,
    times: Callable[[], list[str | None]] | None,
    offset: int,
    messages: list[str],
) -> list[str] | None:
    """``flow_json_events`` for a batch written the way AWS writes it, in C-level passes.

    Takes the lines ``_flow_json_fast`` takes (None leaves the batch to it) and gives the same
    objects with fewer Python operations per line; ``times()`` are the CloudWatch times of the
    chunk, whose line ``offset`` is the first of ``messages``.

    The batch must need no escaping (so its only whitespace is spaces) and every line must
    have one value per field. The whole batch is split at once into ``[MARK, v0, ..., vN,
    MARK, v0, ...]``, each line behind a ``MARK``; finding one every ``size + 1`` tokens
    proves that each line has ``size`` values. Lines with ``-`` values (rare: NODATA,
    SKIPDATA) are set aside and encoded one by one from their own template; in the others the
    integers are checked at once (plain digits without leading zeros, ``start``/``end`` in
    seconds), the ``MARK`` slots take each line's ``time`` and one ``str.join`` interleaves the
    tokens with the constant pieces of the ``%`` template, a newline between lines (the
    envelope is JSON: a newline in it is escaped), to be split into the objects.
    """
    count = len(messages)
    plain = "".join(messages)
    if not count or not plain.isascii() or _needs_escaping(plain):
        return None
    size = fmt.size
    stride = size + 1
    text = _MARK_SPACE + _SPACE_MARK_SPACE.join(messages)
    tokens = text.split()  # MARK is no whitespace, and the messages hold no MARK
    if len(tokens) != count * stride or tokens[::stride].count(_MARK) != count:
        return None  # some line has a value too many or too few
    dashed = _dashed_lines(text)
    rows: list[list[str]] = []
    for line in dashed:
        low = line * stride + 1
        rows.append(tokens[low : low + size])
        tokens[low : low + size] = _PLAIN_VALUES[:size]  # valid everywhere; replaced below
    integers: list[str] = []
    for position in fmt.integer_positions:
        integers += tokens[position + 1 :: stride]
    if integers:
        numbers = " ".join(integers)
        if not numbers.encode().translate(None, b" ").isdigit() or _leading_zero(numbers):
            return None  # not plain ASCII digits, or leading zeros: the per-line path decides
    for position in fmt.time_positions:
        if max(map(len, tokens[position + 1 :: stride])) > _SECONDS_MAX_DIGITS:
            return None  # milliseconds somewhere: the per-line path converts them
    start_index = fmt.start_index
    events = []
    for values in rows:
        plan = fmt.json_template(tuple(i for i, value in enumerate(values) if value == "-"))
        numbers = " ".join(plan.integers(values))
        if numbers and (
            not numbers.replace(" ", "").encode().isdigit() or _LEADING_ZERO(" " + numbers)
        ):
            return None
        if any(len(values[i]) > _SECONDS_MAX_DIGITS for i in fmt.time_positions):
            return None
        events.append(plan.template % plan.values(values))
    fallback: list[str | None] | None = None
    if start_index is not None:
        starts = tokens[start_index + 1 :: stride]
        if times is not None and any(values[start_index] == "-" for values in rows):
            fallback = times()[offset : offset + count]
        tokens[::stride] = starts
        head = '{"time":'
    elif times is not None:
        fallback = times()[offset : offset + count]
        if None in fallback:
            return None
        tokens[::stride] = cast("list[str]", fallback)
        head = '{"time":'
    else:
        tokens[::stride] = [""] * count
        head = "{"
    body = fmt.json_template().template.split("%s")  # size + 1 pieces (no "%" in names)
    pattern: list[str | None] = [
        body[-1] + "}\n" + head,
        None,
        ("," if head != "{" else "") + env + body[0],
    ]
    for piece in body[1:-1]:
        pattern += (None, piece)
    pattern.append(None)
    joined = pattern * count
    joined[0] = head
    joined.append(body[-1] + "}")
    joined[1::2] = tokens
    texts = "".join(cast("list[str]", joined)).split("\n")
    if len(texts) != count:
        return None  # cannot happen (nothing joined holds a newline); the old way if it did
    for line, values, event in zip(dashed, rows, events, strict=True):
        time: str | None = values[start_index] if start_index is not None else "-"
        if time == "-":
            time = fallback[line] if fallback is not None else None
        texts[line] = f'{{"time":{time},{env}{event}}}' if time is not None else f"{{{env}{event}}}"
    return texts


def _dashed_lines(text: str) -> list[int]:
    """The lines (from 0) with a ``-`` value in ``_flow_json_batch``'s marked text."""
    lines: list[int] = []
    marks = 0
    checked = 0
    position = _dash_value(text, 0)
    while position >= 0:
        marks += text.count(_MARK, checked, position)
        lines.append(marks - 1)
        checked = text.find(_MARK, position)
        if checked < 0:
            break
        position = _dash_value(text, checked)
    return lines


def _dash_value(text: str, start: int) -> int:
    r"""Where the first ``" -"`` from ``start`` that is a whole value (a space or the end
    follows) is, or -1: what ``re.search(r" -(?= |\Z)")`` finds, with ``str.find``'s speed."""
    position = text.find(" -", start)
    while position >= 0 and text[position + 2 : position + 3] not in ("", " "):
        position = text.find(" -", position + 1)
    return position


def _leading_zero(numbers: str) -> bool:
    """Whether a value of space-separated ASCII digits has a leading zero (``0`` alone has
    none); a ``str`` search rules most batches out before the regular expression runs."""
    text = " " + numbers
    return " 0" in text and _LEADING_ZERO(text) is not None


def _flow_json_fast(
    env: str, fmt: FlowFormat, timestamps: Sequence[int | None] | None, messages: list[str]
) -> tuple[list[str], int] | None:
    """``flow_json_events`` for a batch written the way AWS writes it, else None.

    The batch must need no escaping (so its only whitespace is spaces) and every line must
    have one value per field. Each line then fills the ``%`` template for its pattern of
    ``-`` values; the integers of the whole batch are checked at once afterwards (plain
    digits without leading zeros, ``start``/``end`` in seconds), and any doubt sends the
    batch to the per-line path, which gives the same result.
    """
    plain = "".join(messages)
    if not messages or not plain.isascii() or _needs_escaping(plain):
        return None
    rows = list(map(str.split, messages))
    if set(map(len, rows)) != {fmt.size}:
        return None
    bodies = []
    integers: list[tuple[str, ...]] = []
    template_for = fmt.json_template
    full = template_for()
    full_template, full_integers = full.template, full.integers
    for row in rows:
        dashes = row.count("-")
        if dashes:
            index = row.index
            position = index("-")
            positions = [position]
            for _ in range(dashes - 1):
                position = index("-", position + 1)
                positions.append(position)
            plan = template_for(tuple(positions))
            bodies.append(plan.template % plan.values(row))
            integers.append(plan.integers(row))
        else:
            bodies.append(full_template % tuple(row))
            integers.append(full_integers(row))
    numbers = " ".join(chain.from_iterable(integers))
    if numbers and (
        not numbers.replace(" ", "").encode().isdigit() or _LEADING_ZERO(" " + numbers)
    ):
        return None
    if fmt.time_values is not None and (
        max(map(len, chain.from_iterable(map(fmt.time_values, rows)))) > _SECONDS_MAX_DIGITS
    ):
        return None  # milliseconds somewhere: the per-line path converts them
    if fmt.start_index is None:
        times = _cloudwatch_times(timestamps) if timestamps is not None else None
    else:
        starts: list[str | None] = list(map(itemgetter(fmt.start_index), rows))
        if "-" in starts:
            fallback = _cloudwatch_times(timestamps) if timestamps is not None else None
            starts = [
                (fallback[i] if fallback is not None else None) if start == "-" else start
                for i, start in enumerate(starts)
            ]
        times = starts
    if times is None:
        return [f"{{{env}{body}}}" for body in bodies], 0
    return [
        f'{{"time":{time},{env}{body}}}' if time is not None else f"{{{env}{body}}}"
        for time, body in zip(times, bodies, strict=True)
    ], 0
