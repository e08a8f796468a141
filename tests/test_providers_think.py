"""ThinkSplitter: inline <think> reasoning, whatever way the deltas are cut."""

from __future__ import annotations

import itertools

import pytest

from tokenwire.providers.think import ThinkSplitter


def run(deltas: list[str]) -> list[tuple[str, str]]:
    """Feed ``deltas`` and flush; merge neighbouring pieces of the same kind."""
    splitter = ThinkSplitter()
    pieces = [p for d in deltas for p in splitter.feed(d)] + splitter.flush()
    merged: list[tuple[str, str]] = []
    for kind, text in pieces:
        assert text
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return merged


@pytest.mark.parametrize(
    ("content", "want"),
    [
        ("<think>plan</think>answer", [("reasoning", "plan"), ("text", "answer")]),
        ("  \n<think>\nplan\n</think>\n\nanswer", [("reasoning", "plan\n"), ("text", "answer")]),
        ("<think>never closed", [("reasoning", "never closed")]),
        ("<think></think>answer", [("text", "answer")]),
        ("plain <think>not reasoning</think>", [("text", "plain <think>not reasoning</think>")]),
        ("<thinking>is not the tag", [("text", "<thinking>is not the tag")]),
        ("<thi", [("text", "<thi")]),
        ("  ", [("text", "  ")]),
        ("\n  {\n", [("text", "\n  {\n")]),
        ("<think>a < b </thin k></think>x", [("reasoning", "a < b </thin k>"), ("text", "x")]),
        ("", []),
    ],
)
def test_split_every_way(content: str, want: list[tuple[str, str]]) -> None:
    assert run([content]) == want
    for i, j in itertools.combinations_with_replacement(range(len(content) + 1), 2):
        assert run([content[:i], content[i:j], content[j:]]) == want, (i, j)


def test_tag_split_across_deltas_emits_nothing_early() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("<thi") == []
    assert splitter.feed("nk>Hmm") == [("reasoning", "Hmm")]
    assert splitter.feed(" ok</th") == [("reasoning", " ok")]
    assert splitter.feed("ink>") == []
    assert splitter.feed("\n\nHello") == [("text", "Hello")]
    assert splitter.flush() == []


def test_text_streams_through_without_delay() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("Hello") == [("text", "Hello")]
    assert splitter.feed(" <think>") == [("text", " <think>")]
