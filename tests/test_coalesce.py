"""The coalescing rule (:class:`tokenwire.protocol.coalesce.Coalescer`) with a fake clock."""

from __future__ import annotations

import pytest

from tokenwire.events import (
    Event,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
)
from tokenwire.protocol.coalesce import Coalescer


class Clock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def coalescer(window: float = 0.02) -> tuple[Coalescer, Clock]:
    clock = Clock()
    return Coalescer(window, clock), clock


def text(delta: str, part: int = 0) -> TextDelta:
    return TextDelta(part=part, delta=delta)


def test_first_delta_is_never_delayed() -> None:
    c, _ = coalescer()
    assert c.push(text("a")) == [text("a")]
    assert c.deadline is None


def test_deltas_within_the_window_merge_until_its_end() -> None:
    c, clock = coalescer(0.02)
    assert c.push(text("a")) == [text("a")]
    clock.now += 0.005
    assert c.push(text("b")) == []
    assert c.deadline == pytest.approx(100.02)
    clock.now += 0.005
    assert c.push(text("c")) == []
    assert c.deadline == pytest.approx(100.02)  # merging does not move the deadline
    clock.now = 100.02
    assert c.flush() == [text("bc")]
    assert c.deadline is None and c.flush() == []


def test_a_refusal_is_never_merged_into_text() -> None:
    c, clock = coalescer(0.02)
    refusal = TextDelta(part=0, delta="no", refusal=True)
    assert c.push(text("a")) == [text("a")]
    clock.now += 0.005
    assert c.push(text("b")) == []
    assert c.push(refusal) == [text("b")]  # the pending text goes out first, unmerged
    assert c.flush() == [refusal]


def test_a_merged_delta_past_the_deadline_is_released_at_once() -> None:
    c, clock = coalescer(0.02)
    c.push(text("a"))
    clock.now += 0.01
    assert c.push(text("b")) == []
    clock.now += 0.02  # the timer was late
    assert c.push(text("c")) == [text("bc")]
    assert c.deadline is None


def test_a_late_timer_does_not_push_the_next_window_back() -> None:
    """At a steady 50 tokens/s a late flush must not make every later delta wait."""
    c, clock = coalescer(0.02)
    assert c.push(text("a")) == [text("a")]
    clock.now = 100.019
    assert c.push(text("b")) == []
    clock.now = 100.023  # the timer fired 3 ms late
    assert c.flush() == [text("b")]
    clock.now = 100.0405  # one window after b's deadline, though not after its release
    assert c.push(text("c")) == [text("c")]
    clock.now = 100.045
    assert c.push(text("d")) == []
    assert c.deadline == pytest.approx(100.0605)


def test_a_delta_after_a_quiet_window_is_not_delayed() -> None:
    c, clock = coalescer(0.02)
    c.push(text("a"))
    clock.now += 0.025
    assert c.push(text("b")) == [text("b")]


def test_another_part_releases_the_held_delta() -> None:
    c, clock = coalescer(0.02)
    c.push(text("a"))
    clock.now += 0.001
    assert c.push(text("b")) == []
    assert c.push(text("x", part=1)) == [text("b")]
    assert c.deadline == pytest.approx(100.021)  # held: the window restarts at the release
    assert c.flush() == [text("x", part=1)]


def test_another_kind_releases_the_held_delta() -> None:
    c, clock = coalescer(0.02)
    c.push(text("a"))
    clock.now += 0.001
    c.push(text("b"))
    assert c.push(ReasoningDelta(part=0, delta="r")) == [text("b")]
    assert c.flush() == [ReasoningDelta(part=0, delta="r")]


def test_another_tool_call_releases_the_held_arguments() -> None:
    c, clock = coalescer(0.02)
    first = ToolCallDelta(part=1, tool_call_id="c1", delta='{"a"')
    assert c.push(first) == [first]
    clock.now += 0.001
    c.push(ToolCallDelta(part=1, tool_call_id="c1", delta=":1"))
    c.push(ToolCallDelta(part=1, tool_call_id="c1", delta="}"))
    other = ToolCallDelta(part=1, tool_call_id="c2", delta="{")
    assert c.push(other) == [ToolCallDelta(part=1, tool_call_id="c1", delta=":1}")]
    assert c.flush() == [other]


def test_an_event_that_is_not_a_delta_releases_the_held_delta_first() -> None:
    c, clock = coalescer(0.02)
    c.push(text("a"))
    clock.now += 0.001
    c.push(text("b"))
    start = ToolCallStart(part=1, tool_call_id="c1", name="f")
    assert c.push(start) == [text("b"), start]
    assert c.deadline is None


def test_flush_at_the_end_releases_what_is_held() -> None:
    c, clock = coalescer(0.02)
    out: list[Event] = []
    for delta in "hello":
        out += c.push(text(delta))
        clock.now += 0.001
    out += c.flush()
    assert out == [text("h"), text("ello")]


def test_window_zero_releases_every_delta() -> None:
    c, _ = coalescer(0.0)
    assert [e for d in "abc" for e in c.push(text(d))] == [text("a"), text("b"), text("c")]
    assert c.deadline is None
