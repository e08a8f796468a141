"""The lifecycle enums of :mod:`tokenwire.events`: their JSON is the plain string and
their transitions are checked in one place."""

from __future__ import annotations

import copy
import json

import msgspec
import pytest

from tokenwire.accumulate import MessageState
from tokenwire.events import (
    Cancelled,
    Error,
    Finish,
    MessageStatus,
    Start,
    StreamStatus,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    outcome,
)
from tokenwire.store import MESSAGE_STATUSES


def test_json_values_are_the_plain_strings() -> None:
    assert json.dumps({"status": StreamStatus.RUNNING}) == '{"status": "running"}'
    assert msgspec.json.encode(MessageStatus.CANCELLED) == b'"cancelled"'
    assert {"pending", "streaming", "completed", "failed", "cancelled"} == MESSAGE_STATUSES
    assert f"{StreamStatus.FAILED}" == "failed"


def test_outcome_of_each_terminal_event() -> None:
    assert outcome(Finish(finish_reason="stop")) is StreamStatus.COMPLETED
    assert outcome(Error(code="provider_error", message="x")) is StreamStatus.FAILED
    assert outcome(Cancelled(reason="user")) is StreamStatus.CANCELLED
    with pytest.raises(KeyError):
        outcome(TextDelta(part=0, delta="a"))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("pending", "streaming"),
        ("pending", "failed"),
        ("streaming", "streaming"),
        ("streaming", "completed"),
        ("streaming", "cancelled"),
        ("completed", "completed"),
        ("completed", "failed"),  # the log's first terminal event wins over a local fold
    ],
)
def test_allowed_transitions(old: str, new: str) -> None:
    assert MessageStatus(old).then(MessageStatus(new)) is MessageStatus(new)


@pytest.mark.parametrize(
    ("old", "new"),
    [("streaming", "pending"), ("completed", "streaming"), ("cancelled", "pending")],
)
def test_refused_transitions(old: str, new: str) -> None:
    with pytest.raises(ValueError, match=f"from {old} to {new}"):
        MessageStatus(old).then(MessageStatus(new))


def test_message_state_follows_the_events() -> None:
    state = MessageState()
    assert state.status is MessageStatus.PENDING
    state.apply(
        Start(seq=1, stream_id="s", message_id="m", conversation_id="c", model="m", created_at=0.0)
    )
    assert state.status is MessageStatus.STREAMING
    state.apply(Finish(seq=2, finish_reason="stop"))
    assert state.status is MessageStatus.COMPLETED
    state.apply(Error(seq=3, code="producer_lost", message="lost"))
    assert state.status is MessageStatus.FAILED
    with pytest.raises(ValueError, match="from failed to streaming"):
        state.apply(
            Start(
                seq=1, stream_id="s", message_id="m", conversation_id="c", model="m", created_at=0.0
            )
        )


def test_message_state_text_grows_across_reads_copies_and_replaced_parts() -> None:
    """Deltas are joined when read (not copied per delta): the text is whole after
    every read, in a deep copy taken between reads, and a part replaced by a tool call
    keeps no stale text."""
    state = MessageState()
    for seq, delta in enumerate(["He", "llo"], start=1):
        state.apply(TextDelta(seq=seq, part=0, delta=delta))
    assert state.text == "Hello"
    state.apply(TextDelta(seq=3, part=0, delta=","))
    copied = state.copy()
    assert copy.deepcopy(state).text == "Hello,"
    copied.apply(TextDelta(seq=4, part=0, delta=" copy"))
    state.apply(TextDelta(seq=4, part=0, delta=" world"))
    assert (state.text, copied.text) == ("Hello, world", "Hello, copy")
    state.apply(ToolCallStart(seq=5, part=0, tool_call_id="t1", name="get_time"))
    state.apply(TextDelta(seq=6, part=1, delta="after"))
    assert state.parts_list()[0]["type"] == "tool-call"
    assert "text" not in state.parts_list()[0]
    assert state.text == "after"


def test_message_state_tool_call_arguments_grow_across_reads_and_a_final_call() -> None:
    """A tool call's ``arguments_text`` is held as deltas and joined when read, like
    text: whole after each read (``tool_calls`` and ``parts_list``), and replaced by the
    ``tool-call`` event's parsed arguments when it arrives."""
    state = MessageState()
    state.apply(ToolCallStart(seq=1, part=0, tool_call_id="t1", name="get_time"))
    state.apply(TextDelta(seq=2, part=1, delta="and "))
    for seq, delta in enumerate(['{"tz"', ': "UT'], start=3):
        state.apply(ToolCallDelta(seq=seq, part=0, tool_call_id="t1", delta=delta))
    assert state.tool_calls[0]["arguments_text"] == '{"tz": "UT'
    state.apply(ToolCallDelta(seq=5, part=0, tool_call_id="t1", delta='C"}'))
    state.apply(TextDelta(seq=6, part=1, delta="text"))
    assert state.parts_list()[0]["arguments_text"] == '{"tz": "UTC"}'
    assert (state.tool_calls[0]["name"], state.text) == ("get_time", "and text")
    state.apply(
        ToolCall(seq=7, part=0, tool_call_id="t1", name="get_time", arguments={"tz": "UTC"})
    )
    assert state.tool_calls[0]["arguments"] == {"tz": "UTC"}
    assert "arguments_text" not in state.parts_list()[0]


def test_message_state_text_of_many_deltas_reads_whole() -> None:
    """Past 64 held deltas a part's text is joined as it grows; what is read is still
    every delta in order, in the state and in a copy."""
    state = MessageState()
    deltas = [f"{i}," for i in range(1, 301)]
    for seq, delta in enumerate(deltas, start=1):
        state.apply(TextDelta(seq=seq, part=0, delta=delta))
        if seq == 150:
            assert state.copy().text == "".join(deltas[:150])
    assert state.text == "".join(deltas)
    assert state.parts_list() == [{"type": "text", "text": "".join(deltas)}]
