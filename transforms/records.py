"""Frozen records shared by every part: log events, batches, flow-log records, HEC events."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import chain, repeat
from typing import Literal, NamedTuple, TypedDict, cast, overload

from transforms.options import DEFAULT_DESTINATION

#: Where a record came from, which decides how it is decoded and routed.
#: ``cloudwatch``: gzip CloudWatch Logs subscription payload;
#: ``direct``: a flow log sent straight to Firehose as ``{"message": "<line>"}``;
#: ``text``: anything else (plain text or JSON that is neither of the above), and the lines
#: of local files and stdin;
#: ``s3``: lines of a flow-log or log file read from an S3 object.
Origin = Literal["cloudwatch", "direct", "text", "s3"]

#: HEC endpoint an encoded batch is shaped for.
Endpoint = Literal["event", "raw"]

#: How text that cannot be UTF-8 (lone surrogates from ``\\udXXX`` JSON escapes) is written:
#: as the ``\\udXXX`` escape again, which inside a JSON string is exactly the original.
WIRE_ERRORS = "backslashreplace"


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One CloudWatch Logs event (``logEvents[i]``); ``id`` is the natural dedup key."""

    id: str | None
    timestamp_ms: int | None
    message: str


@dataclass(frozen=True, slots=True)
class LogBatch:
    """One decoded payload: the CloudWatch Logs subscription envelope and its events."""

    origin: Origin
    events: tuple[LogEvent, ...]
    log_group: str | None = None
    log_stream: str | None = None
    owner: str | None = None
    subscription_filters: tuple[str, ...] = ()
    is_control: bool = False


@dataclass(frozen=True, slots=True)
class FlowLogRecord:
    """A parsed flow-log line: AWS field names and their values (``None`` for ``-``)."""

    fields: tuple[str, ...]
    values: tuple[str | None, ...]


class HecEvent(TypedDict, total=False):
    """One object for HEC's event endpoint (``/services/collector/event``)."""

    time: float
    host: str
    source: str
    sourcetype: str
    index: str
    event: str | dict[str, object]
    fields: dict[str, str]


class RawTarget(NamedTuple):
    """Metadata the raw endpoint takes as query parameters; one value per batch."""

    source: str | None
    sourcetype: str | None
    index: str | None  # type: ignore[assignment]  # HEC's name; shadows tuple.index on purpose
    host: str | None


class EncodedEvent(NamedTuple):
    """One event ready for the wire.

    ``payload`` is one JSON object for the event endpoint, or one line (no newline) for
    the raw endpoint. ``event_id`` is the CloudWatch event id where there is one.
    """

    payload: bytes
    event_id: str | None


#: ``EncodedEvent`` of a (payload, event id) pair, without a Python call (what ``_make`` does).
_new_event = cast(
    "Callable[[tuple[bytes, str | None]], EncodedEvent]", partial(tuple.__new__, EncodedEvent)
)


class InterleavedTexts(Sequence[str]):
    """Texts made of constant pieces and per-text values, kept as columns until needed.

    Text ``i`` is ``pieces[0] + columns[0][i] + pieces[1] + ... + columns[-1][i] +
    pieces[-1]``. The pipeline's shapers return this instead of one string per event, so that
    the Firehose path (``joined``) writes all of a record's objects in one ``str.join`` over
    the columns, without an f-string per event; a text is only made when one is read.

    Args:
        pieces: one more than there are columns.
        columns: the values, one list per slot, all of the same length.
    """

    __slots__ = ("_columns", "_count", "_pieces", "_texts")

    def __init__(self, pieces: Sequence[str], columns: Sequence[list[str]]) -> None:
        if len(pieces) != len(columns) + 1 or not columns:
            raise ValueError(f"{len(pieces)} pieces for {len(columns)} columns")
        count = len(columns[0])
        if any(len(column) != count for column in columns):
            raise ValueError("columns of different lengths")
        self._pieces = tuple(pieces)
        self._columns = list(columns)
        self._count = count
        self._texts: list[str] | None = None

    @property
    def pieces(self) -> tuple[str, ...]:
        """The constant pieces around and between the columns."""
        return self._pieces

    @property
    def columns(self) -> list[list[str]]:
        """The per-text values, one list per slot."""
        return self._columns

    def joined(self, separator: str = "") -> str:
        """All texts joined with ``separator``: the same string as ``separator.join(self)``."""
        count = self._count
        if not count:
            return ""
        pieces, columns = self._pieces, self._columns
        width = len(columns)
        between = pieces[-1] + separator + pieces[0]
        # One object: column 0, piece 1, column 1, ..., column k-1, then what closes it and
        # opens the next; the last one's closing is the last piece alone.
        pattern: list[str] = []
        for piece in (*pieces[1:-1], between):
            pattern += ("", piece)
        parts = pattern * count
        for slot, column in enumerate(columns):
            parts[2 * slot :: 2 * width] = column
        parts[-1] = pieces[-1]
        return pieces[0] + "".join(parts)

    @classmethod
    def concat(cls, parts: Sequence[Sequence[str]]) -> Sequence[str]:
        """The texts of ``parts`` in order: still interleaved when every part is with the
        same pieces, else one list."""
        if parts and all(isinstance(part, InterleavedTexts) for part in parts):
            interleaved = cast("Sequence[InterleavedTexts]", parts)
            pieces = interleaved[0].pieces
            if all(part.pieces == pieces for part in interleaved):
                columns: list[list[str]] = [[] for _ in interleaved[0].columns]
                for part in interleaved:
                    for column, values in zip(columns, part.columns, strict=True):
                        column.extend(values)
                return cls(pieces, columns)
        return [text for part in parts for text in part]

    def _all(self) -> list[str]:
        if self._texts is None:
            pieces, columns = self._pieces, self._columns
            if len(columns) == 1:
                first, last = pieces
                self._texts = [f"{first}{value}{last}" for value in columns[0]]
            elif len(columns) == 2:  # the shapers' usual width: time and message
                first, middle, last = pieces
                self._texts = [
                    f"{first}{one}{middle}{two}{last}"
                    for one, two in zip(columns[0], columns[1], strict=True)
                ]
            else:
                self._texts = [
                    "".join(chain.from_iterable(zip(pieces[:-1], values, strict=True))) + pieces[-1]
                    for values in zip(*columns, strict=True)
                ]
        return self._texts

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        return self._all()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __repr__(self) -> str:
        return f"InterleavedTexts(<{self._count} texts>)"


class EncodedEvents(Sequence[EncodedEvent]):
    """The events of an ``EncodedBatch``: one text per event, encoded to bytes on access.

    The pipeline builds texts (a JSON object, or a raw line); the Firehose path joins them
    into one record without ever creating an ``EncodedEvent`` per event (``body``), while
    callers that batch per event (the daemon) iterate ``EncodedEvent`` values.
    """

    __slots__ = ("_ids", "_texts")

    def __init__(self, texts: Sequence[str], ids: Sequence[str | None] | None = None) -> None:
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(ids)} event ids")
        self._texts = texts
        self._ids = ids

    @property
    def texts(self) -> Sequence[str]:
        """Per event: the JSON object (event endpoint) or the line (raw endpoint)."""
        return self._texts

    @property
    def ids(self) -> Sequence[str | None]:
        """Per event: the CloudWatch event id, or None."""
        return self._ids if self._ids is not None else [None] * len(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    @overload
    def __getitem__(self, index: int) -> EncodedEvent: ...

    @overload
    def __getitem__(self, index: slice) -> EncodedEvents: ...

    def __getitem__(self, index: int | slice) -> EncodedEvent | EncodedEvents:
        if isinstance(index, slice):
            ids = self._ids[index] if self._ids is not None else None
            return EncodedEvents(self._texts[index], ids)
        event_id = self._ids[index] if self._ids is not None else None
        return EncodedEvent(self._texts[index].encode("utf-8", WIRE_ERRORS), event_id)

    def __iter__(self) -> Iterator[EncodedEvent]:
        # At C speed, no Python call per event (the deliverer lists every event it gets):
        # texts encoded as ``__getitem__`` does, each paired with its id into an EncodedEvent.
        payloads = map(str.encode, self._texts, repeat("utf-8"), repeat(WIRE_ERRORS))
        if self._ids is None:
            return map(_new_event, zip(payloads, repeat(None), strict=False))  # (endless)
        return map(_new_event, zip(payloads, self._ids, strict=True))

    def body(self, separator: str = "", terminator: str = "") -> bytes:
        """All texts joined with ``separator``, plus ``terminator`` when not empty, as bytes."""
        texts = self._texts
        if not texts:
            return b""
        joined = (
            texts.joined(separator)
            if isinstance(texts, InterleavedTexts)
            else separator.join(texts)
        )
        return (joined + terminator).encode("utf-8", WIRE_ERRORS)

    def __repr__(self) -> str:
        return f"EncodedEvents(<{len(self._texts)} events>)"


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """One payload transformed: its events shaped for one HEC endpoint, and what happened.

    ``events`` holds one JSON object per event for the event endpoint, or one line (no
    newline) per event for the raw endpoint, whose metadata is ``raw_target``. ``unparsed``
    counts flow-log lines that did not fit their format (still delivered, as raw text).
    A control message has ``is_control`` and no events. ``filtered`` and ``sampled`` count
    the events a route's ``drop`` and ``sample`` rules removed (not in ``events``);
    ``time_unparsed`` the events whose time could not be read from the message (sent with
    the CloudWatch time). ``destination`` names the ``[destinations.NAME]`` its route chose
    (``default``: the top-level HEC settings); ``endpoint`` is that destination's.
    """

    origin: Origin
    endpoint: Endpoint
    events: Sequence[EncodedEvent]
    raw_target: RawTarget | None = None
    is_control: bool = False
    unparsed: int = 0
    log_group: str | None = None
    log_stream: str | None = None
    owner: str | None = None
    filtered: int = 0
    sampled: int = 0
    time_unparsed: int = 0
    destination: str = DEFAULT_DESTINATION

    @property
    def event_count(self) -> int:
        """Number of events to deliver."""
        return len(self.events)
