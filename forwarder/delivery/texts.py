"""Events kept as their texts until a batch's body is built: one join and one encode a batch.

The transforms hand the deliverer ``EncodedEvents``: a text per event (a JSON object, or a
raw line), encoded to bytes when an event is read. Batching needs only each payload's size in
bytes, and a request body only the payloads joined by ``\\n``; making an ``EncodedEvent`` (an
encode and a tuple) per event for that was most of the deliverer's own time. A
:class:`TextEvents` keeps the texts, the ids and the payload sizes instead:

* sizes are exact and read at C speed: where a text is ASCII (``str.isascii``) its payload is
  the same characters, one byte each, so the size is ``len(text)``; otherwise every text is
  encoded once for its size (``len(text.encode("utf-8", WIRE_ERRORS))``, the per-event path);
* a batch's body is ``"\\n".join(texts).encode("utf-8", WIRE_ERRORS)``: byte for byte
  ``b"\\n".join`` of the payloads, since UTF-8 (and ``WIRE_ERRORS`` on a lone surrogate)
  encodes each character on its own and the separator is ASCII;
* read as a sequence it gives the same ``EncodedEvent`` values, in order, as the
  ``EncodedEvents`` it was made from (the backsplash, 413 halving and bad-event isolation
  read events this way; slices stay ``TextEvents``).

Texts the shapers return as :class:`~transforms.records.InterleavedTexts` (constant pieces
and per-event columns) stay in that form: sizes are the pieces' length plus each column's
lengths, slices cut the columns, and the body is its ``joined`` text, so no per-event string
is ever made on the way to the wire.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain, repeat
from operator import add, itemgetter
from typing import cast, overload

from transforms.records import WIRE_ERRORS, EncodedEvent, EncodedEvents, InterleavedTexts

_PAYLOAD = itemgetter(0)
_EVENT_ID = itemgetter(1)


def payload_sizes(texts: Sequence[str]) -> list[int]:
    """Bytes of each text's payload: ``len(text.encode("utf-8", WIRE_ERRORS))``, exactly."""
    if isinstance(texts, InterleavedTexts):
        pieces, columns = texts.pieces, texts.columns
        if "".join(pieces).isascii() and all("".join(column).isascii() for column in columns):
            sizes = list(map(len, columns[0]))
            for column in columns[1:]:
                sizes = list(map(add, sizes, map(len, column)))
            return list(map(add, sizes, repeat(sum(map(len, pieces)))))
    elif "".join(texts).isascii():  # a copy, but at memcpy speed: faster than a call per text
        return list(map(len, texts))
    return list(map(len, map(str.encode, texts, repeat("utf-8"), repeat(WIRE_ERRORS))))


def _slice_texts(texts: Sequence[str], index: slice) -> Sequence[str]:
    if isinstance(texts, InterleavedTexts):
        return InterleavedTexts(texts.pieces, [column[index] for column in texts.columns])
    return texts[index]


class TextEvents(Sequence[EncodedEvent]):
    """Events as texts, ids and exact payload sizes (see the module notes).

    Args:
        texts: per event, the payload as text.
        ids: per event, the CloudWatch event id or None.
        sizes: per event, the payload's size in bytes (:func:`payload_sizes` of ``texts``).
    """

    __slots__ = ("_ids", "_sizes", "_texts")

    def __init__(self, texts: Sequence[str], ids: list[str | None], sizes: list[int]) -> None:
        if not len(texts) == len(ids) == len(sizes):
            raise ValueError(f"{len(texts)} texts, {len(ids)} ids and {len(sizes)} sizes")
        self._texts = texts
        self._ids = ids
        self._sizes = sizes

    @classmethod
    def of(cls, events: EncodedEvents) -> TextEvents:
        """The events of ``events``, kept as texts."""
        texts = events.texts
        return cls(texts, list(events.ids), payload_sizes(texts))

    @property
    def texts(self) -> Sequence[str]:
        """Per event, the payload as text."""
        return self._texts

    @property
    def ids(self) -> list[str | None]:
        """Per event, the CloudWatch event id or None."""
        return self._ids

    @property
    def sizes(self) -> list[int]:
        """Per event, the payload's size in bytes."""
        return self._sizes

    def body(self) -> bytes:
        """The payloads joined by ``\\n`` (a request body before compression)."""
        return EncodedEvents(self._texts).body("\n")

    def __len__(self) -> int:
        return len(self._sizes)

    @overload
    def __getitem__(self, index: int) -> EncodedEvent: ...

    @overload
    def __getitem__(self, index: slice) -> TextEvents: ...

    def __getitem__(self, index: int | slice) -> EncodedEvent | TextEvents:
        if isinstance(index, slice):
            return TextEvents(
                _slice_texts(self._texts, index), self._ids[index], self._sizes[index]
            )
        return EncodedEvent(self._texts[index].encode("utf-8", WIRE_ERRORS), self._ids[index])

    def __iter__(self) -> Iterator[EncodedEvent]:
        return iter(EncodedEvents(self._texts, self._ids))

    def __repr__(self) -> str:
        return f"TextEvents(<{len(self)} events>)"


def batchable(events: Sequence[EncodedEvent]) -> Sequence[EncodedEvent]:
    """Events in a form batching reads at C speed: ``TextEvents`` for the transforms'
    ``EncodedEvents``, a list for anything else that is not one already."""
    if isinstance(events, (list, TextEvents)):
        return events
    if isinstance(events, EncodedEvents):
        return TextEvents.of(events)
    return list(events)


def sizes_of(events: Sequence[EncodedEvent]) -> list[int]:
    """Per event, the payload's size in bytes."""
    if isinstance(events, TextEvents):
        return events.sizes
    return list(map(len, map(_PAYLOAD, events)))


def ids_of(events: Sequence[EncodedEvent]) -> list[str | None]:
    """Per event, the CloudWatch event id or None."""
    if isinstance(events, TextEvents):
        return events.ids
    return list(map(_EVENT_ID, events))


def joined(events: Sequence[EncodedEvent]) -> bytes:
    """The events' payloads joined by ``\\n``."""
    if isinstance(events, TextEvents):
        return events.body()
    return b"\n".join(list(map(_PAYLOAD, events)))


def merged(parts: Sequence[Sequence[EncodedEvent]]) -> Sequence[EncodedEvent]:
    """The events of ``parts``, in order, in one sequence (``TextEvents`` when every part is
    one). One pass over all of them, however many parts: a batch filled by many small submits
    costs what one large submit does."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(part, TextEvents) for part in parts):
        runs = cast("Sequence[TextEvents]", parts)
        return TextEvents(
            InterleavedTexts.concat([run.texts for run in runs]),
            list(chain.from_iterable(run.ids for run in runs)),
            list(chain.from_iterable(run.sizes for run in runs)),
        )
    return list(chain.from_iterable(parts))
