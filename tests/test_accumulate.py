"""MessageState.take_growth and PartsGrowth.onto: a message written piece by piece
(checkpoints, then the end) is stored whole, and the state forgets what it handed over."""

from __future__ import annotations

import pytest

from tokenwire.accumulate import MessageState, PartsGrowth
from tokenwire.events import (
    Event,
    ReasoningDelta,
    Source,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    with_seq,
)

EVENTS: list[Event] = [
    TextDelta(part=2, delta="Hel"),
    ReasoningDelta(part=0, delta="think"),  # a lower part after a higher one: positions shift
    ToolCallStart(part=5, tool_call_id="t1", name="search"),
    TextDelta(part=2, delta="lo"),
    ToolCallDelta(part=5, tool_call_id="t1", delta='{"q": '),
    ReasoningDelta(part=0, delta=" more"),
    ToolCallDelta(part=5, tool_call_id="t1", delta="1}"),
    ToolCall(part=5, tool_call_id="t1", name="search", arguments={"q": 1}),  # replaces the part
    ToolCall(
        part=8, tool_call_id="t2", name="f", arguments=None, arguments_text="{bad", invalid=True
    ),
    Source(part=6, url="https://example.org", title="Example"),
    *(TextDelta(part=9, delta=f"<{i}>") for i in range(150)),  # more than one joined block
    ToolCallDelta(part=11, tool_call_id="t3", delta='{"a"'),  # deltas before any start
    TextDelta(part=2, delta="!"),
    ToolCallDelta(part=11, tool_call_id="t3", delta=": 2}"),
]


@pytest.mark.parametrize("every", [1, 2, 3, 7, 64, 200])
def test_every_write_of_the_growths_onto_each_other_is_the_message_so_far(every: int) -> None:
    state, reference = MessageState(), MessageState()
    written: list[dict[str, object]] = []
    for seq, event in enumerate(EVENTS, start=1):
        state.apply(with_seq(event, seq))
        reference.apply(with_seq(event, seq))
        if seq % every == 0 or seq == len(EVENTS):
            written = state.take_growth().onto(written)
            assert written == reference.parts_list(), seq


def test_after_a_take_the_state_holds_only_the_new_text() -> None:
    state = MessageState()
    state.apply(with_seq(TextDelta(part=0, delta="Hello"), 1))
    first = state.take_growth()
    assert first == PartsGrowth([{"type": "text", "text": "Hello"}])
    assert state.text == ""
    state.apply(with_seq(TextDelta(part=0, delta=", world"), 2))
    assert state.text == ", world"
    second = state.take_growth()
    assert second.parts == [{"type": "text", "text": ", world"}]
    assert second.continued == {0: (0, "text")}
    assert second.onto(first.parts) == [{"type": "text", "text": "Hello, world"}]
    assert state.take_growth().onto(second.onto(first.parts)) == [
        {"type": "text", "text": "Hello, world"}
    ]


def test_onto_counts_a_missing_written_part_or_field_as_empty() -> None:
    growth = PartsGrowth([{"type": "text", "text": "b"}], {0: (3, "text")})
    assert growth.onto([]) == [{"type": "text", "text": "b"}]
    assert growth.onto([{"type": "text"}]) == [{"type": "text", "text": "b"}]
    assert growth.parts == [{"type": "text", "text": "b"}]  # left as it was
