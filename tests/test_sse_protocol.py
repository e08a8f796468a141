"""SSE framing: encoder byte for byte, decoder against any split of its input."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenwire.events import Cancelled, Finish, Start, TextDelta, TokenUsage, decode_event, with_seq
from tokenwire.protocol.agui import AguiEncoder
from tokenwire.protocol.aisdk import UIMessageStreamEncoder
from tokenwire.protocol.openai_compat import ChunkEncoder
from tokenwire.protocol.sse import (
    DONE,
    HEARTBEAT,
    NATIVE,
    EventEncoder,
    ServerSentEvent,
    SSEDecoder,
    encode_retry,
    encode_sse,
)
from tokenwire.transports.sse import frame_events


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"data": b"{}"}, b"data: {}\n\n"),
        ({"data": b"x", "event": "ping"}, b"event: ping\ndata: x\n\n"),
        ({"data": b"x", "id": 7}, b"id: 7\ndata: x\n\n"),
        ({"data": b"x", "event": "e", "id": "3"}, b"id: 3\nevent: e\ndata: x\n\n"),
        ({"data": b""}, b"data: \n\n"),
    ],
)
def test_encode_sse(kwargs: dict[str, object], expected: bytes) -> None:
    assert encode_sse(**kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("ms", "expected"), [(1000, b"retry: 1000\n\n"), (0, b"retry: 0\n\n")])
def test_encode_retry(ms: int, expected: bytes) -> None:
    assert encode_retry(ms) == expected
    decoder = SSEDecoder()  # a retry block alone dispatches no event
    assert decoder.decode(expected) == [] and decoder.flush() == []


def test_encode_retry_rejects_negative() -> None:
    with pytest.raises(ValueError, match="milliseconds"):
        encode_retry(-1)


@pytest.mark.parametrize(
    "bad", [{"data": b"a\nb"}, {"data": b"a\rb"}, {"data": b"x", "event": "a\nb"}]
)
def test_encode_sse_rejects_line_breaks(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="line breaks"):
        encode_sse(**bad)  # type: ignore[arg-type]


def test_event_frames_are_the_contract() -> None:
    events = [
        with_seq(TextDelta(part=0, delta="é\n"), 2),
        with_seq(Cancelled(reason="user"), 3),
    ]
    assert frame_events(events) == (
        b"id: 2\nevent: text-delta\n"
        b'data: {"type":"text-delta","part":0,"delta":"\xc3\xa9\\n","seq":2}\n\n'
        b'id: 3\nevent: cancelled\ndata: {"type":"cancelled","reason":"user","seq":3}\n\n'
    )
    assert HEARTBEAT == b": ping\n\n"


def test_every_wire_format_is_one_encoder_interface() -> None:
    """native, AI SDK, OpenAI and AG-UI framings all answer ``frame(events) -> bytes``, the
    same bytes batch by batch as all at once, with ``[DONE]`` once, at the end (AI
    SDK, OpenAI)."""
    start = Start(
        stream_id="s", message_id="m", conversation_id="c", model="fake:echo", created_at=1.5
    )
    events = [
        with_seq(start, 1),
        with_seq(TextDelta(part=0, delta="caf"), 2),
        with_seq(TextDelta(part=0, delta="é"), 3),
        with_seq(Finish(finish_reason="stop"), 4),
    ]
    makers: list[Callable[[], EventEncoder]] = [
        lambda: NATIVE,
        lambda: UIMessageStreamEncoder(),
        lambda: ChunkEncoder("fake:echo"),
        lambda: AguiEncoder("thread", "run"),
    ]
    for make in makers:
        whole = make().frame(events)
        encoder = make()
        assert b"".join(encoder.frame([event]) for event in events) == whole
        with_done = isinstance(encoder, UIMessageStreamEncoder | ChunkEncoder)
        assert whole.count(DONE) == (1 if with_done else 0)
        assert DONE not in make().frame(events[:-1])
        assert b"caf" in whole
    assert NATIVE.frame(events) == frame_events(events)


def test_event_json_round_trip() -> None:
    start = Start(
        stream_id="s", message_id="m", conversation_id="c", model="fake:echo", created_at=1.5
    )
    finish = Finish(finish_reason="stop", usage=TokenUsage(input_tokens=3))
    for event in (start, finish):
        assert decode_event(frame_events([event]).split(b"data: ")[1].strip()) == event


STREAM = (
    ": comment\r\n"
    'id: 1\r\nevent: text-delta\r\ndata: {"d": "héllo 👋"}\r\n\r\n'
    "data: line one\ndata:line two\n\n"
    "retry: 3000\rid: 9\rdata: cr only\r\r"
    "event: ignored-without-data\n\n"
    "data: last\n\n"
).encode()
EXPECTED = [
    ServerSentEvent(comment="comment"),
    ServerSentEvent(data='{"d": "héllo 👋"}', event="text-delta", id="1"),
    ServerSentEvent(data="line one\nline two", id="1"),
    ServerSentEvent(data="cr only", id="9", retry=3000),
    ServerSentEvent(data="last", id="9"),
]


def _decode_in_pieces(data: bytes, cuts: list[int]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    out: list[ServerSentEvent] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out += decoder.decode(data[start:cut])
        start = cut
    return out + decoder.flush()


def test_decoder_whole() -> None:
    assert _decode_in_pieces(STREAM, []) == EXPECTED


def test_decoder_byte_by_byte() -> None:
    assert _decode_in_pieces(STREAM, list(range(len(STREAM)))) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_decoder_survives_any_split(cuts: list[int]) -> None:
    assert _decode_in_pieces(STREAM, cuts) == EXPECTED


def test_decoder_keeps_last_event_id() -> None:
    decoder = SSEDecoder()
    decoder.decode(b"id: 41\ndata: x\n\nid: 42\n")
    assert decoder.last_event_id == "42"
    assert decoder.flush() == []
