"""A stream's events packed in bytes: what the memory log keeps of each stream.

Held as one struct each, a 40-byte text delta costs about 190 bytes: the struct,
its ``str``, its ``seq`` as an ``int``, a list slot. Packed, it costs its UTF-8
text plus 5 bytes: a kind byte before the text in one ``bytearray`` and its end
offset in an ``array`` of 32-bit integers. A reasoning delta packs the same way;
any other event (``start``, tool calls, ``usage``, the terminal event …) is its
JSON (:func:`~tokenwire.events.encode_event`, as on the wire) behind a kind byte of
0. Reading decodes new structs, equal to the events appended.

The events of the last append, and those a live reader or follower has not taken
yet, are also kept as the structs that were appended (the *tail*): the memory log
trims it on every append to the slowest live reader's or follower's position. So a
reader or follower at the live edge is handed the very objects the producer
appended and decodes nothing; one that comes later (a replay) decodes.
"""

from __future__ import annotations

from array import array

import msgspec

from tokenwire.events import Event, ReasoningDelta, TextDelta, decode_event, encode_event

__all__ = ["PackedEvents"]

_TEXT = 1
"""Kind bytes 1 to 127: a text delta of part ``kind - 1``."""
_REASONING = 128
"""Kind bytes 128 to 255: a reasoning delta of part ``kind - 128``."""
_PARTS = 127
"""Parts numbered below this pack their deltas as bare text."""


class PackedEvents:
    """An append-only sequence of numbered events: event ``seq`` is at index ``seq - 1``.

    ``len()`` counts the events; :meth:`slice` reads them back as structs.
    """

    __slots__ = ("data", "ends", "tail", "tail_from")

    def __init__(self) -> None:
        self.data = bytearray()
        self.ends = array("I")
        """Where each event's bytes end in ``data`` (so 4 GiB per stream at most)."""
        self.tail: list[Event] = []
        self.tail_from = 0
        """The index of ``tail[0]``: the events from there on are also held as structs."""

    def __len__(self) -> int:
        return len(self.ends)

    def append(self, event: Event) -> None:
        """Pack ``event`` (already numbered ``len(self) + 1``) and hold it in the tail."""
        data = self.data
        if type(event) is TextDelta and event.part < _PARTS and event.refusal is msgspec.UNSET:
            data.append(_TEXT + event.part)
            data += event.delta.encode()
        elif type(event) is ReasoningDelta and event.part < _PARTS:
            data.append(_REASONING + event.part)
            data += event.delta.encode()
        else:
            data.append(0)
            data += encode_event(event)
        self.ends.append(len(data))
        self.tail.append(event)

    def trim(self, keep_from: int) -> None:
        """Stop holding the events before index ``keep_from`` as structs."""
        keep_from = min(keep_from, len(self.ends))
        if keep_from > self.tail_from:
            del self.tail[: keep_from - self.tail_from]
            self.tail_from = keep_from

    def slice(self, start: int, stop: int) -> list[Event]:
        """The events at indexes ``start`` to ``stop - 1`` (``stop`` capped at ``len``)."""
        stop = min(stop, len(self.ends))
        tail_from = self.tail_from
        if start >= tail_from:
            return self.tail[start - tail_from : stop - tail_from]
        events = [self._unpack(index) for index in range(start, min(stop, tail_from))]
        if stop > tail_from:
            events += self.tail[: stop - tail_from]
        return events

    def _unpack(self, index: int) -> Event:
        data = self.data
        begin = self.ends[index - 1] if index else 0
        kind = data[begin]
        payload = data[begin + 1 : self.ends[index]]
        if kind == 0:
            return decode_event(payload)
        if kind < _REASONING:
            return TextDelta(seq=index + 1, part=kind - _TEXT, delta=payload.decode())
        return ReasoningDelta(seq=index + 1, part=kind - _REASONING, delta=payload.decode())
