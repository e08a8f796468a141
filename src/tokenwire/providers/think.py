"""Split inline ``<think>…</think>`` reasoning out of streamed content (sans-I/O).

Open-weight reasoning models (DeepSeek-R1, QwQ, Qwen3 …) served behind OpenAI-compatible
APIs often send their reasoning inside the ordinary ``content`` stream, wrapped in
``<think>`` and ``</think>``. :class:`ThinkSplitter` turns such a stream back into
reasoning and text, one delta at a time, whatever way the tags are cut across
deltas (``<thi`` | ``nk>``).

Rules (deliberately narrow, so ordinary text that mentions the tag is never eaten):

- Only a ``<think>`` at the very start of the content, after optional whitespace,
  opens reasoning. The whitespace before it is dropped.
- Reasoning runs until the first ``</think>``; a stream that ends inside it is
  all reasoning.
- Leading whitespace at the start of the reasoning and of the text after
  ``</think>`` is dropped (models put ``\\n`` or ``\\n\\n`` there).
- Anything else is text, unchanged.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

__all__ = ["CLOSE_TAG", "OPEN_TAG", "Kind", "ThinkSplitter"]

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

Kind = Literal["text", "reasoning"]


class _State(Enum):
    START = "start"  # nothing but whitespace seen yet; may still open a <think> block
    REASONING = "reasoning"  # inside <think>, looking for </think>
    TEXT = "text"  # plain text until the end of the stream


class ThinkSplitter:
    """Incremental ``<think>`` splitter: ``feed(text)`` per delta, ``flush()`` at the end.

    Text that might be the beginning of a tag is held back until the next delta
    decides it, so the output is the same for every split of the input.
    """

    def __init__(self) -> None:
        self._state = _State.START
        self._buffer = ""
        self._strip = False  # drop leading whitespace of the current segment

    def feed(self, text: str) -> list[tuple[Kind, str]]:
        """Consume one content delta.

        Returns:
            ``(kind, text)`` pieces, in order, with non-empty text.
        """
        self._buffer += text
        out: list[tuple[Kind, str]] = []
        if self._state is _State.START:
            self._start()
        if self._state is _State.REASONING:
            self._reasoning(out)
        if self._state is _State.TEXT and self._buffer:
            self._emit(out, "text", self._buffer)
            self._buffer = ""
        return out

    def flush(self) -> list[tuple[Kind, str]]:
        """End of the content: return whatever is still held back."""
        out: list[tuple[Kind, str]] = []
        kind: Kind = "reasoning" if self._state is _State.REASONING else "text"
        self._emit(out, kind, self._buffer)
        self._buffer = ""
        return out

    def _start(self) -> None:
        rest = self._buffer.lstrip()
        if not rest or (len(rest) < len(OPEN_TAG) and OPEN_TAG.startswith(rest)):
            return  # undecided: only whitespace, or a prefix of "<think>"
        if rest.startswith(OPEN_TAG):
            self._state = _State.REASONING
            self._buffer = rest[len(OPEN_TAG) :]
            self._strip = True
        else:
            self._state = _State.TEXT

    def _reasoning(self, out: list[tuple[Kind, str]]) -> None:
        end = self._buffer.find(CLOSE_TAG)
        if end >= 0:
            self._emit(out, "reasoning", self._buffer[:end])
            self._buffer = self._buffer[end + len(CLOSE_TAG) :]
            self._state = _State.TEXT
            self._strip = True
            return
        keep = _partial_suffix(self._buffer, CLOSE_TAG)
        self._emit(out, "reasoning", self._buffer[: len(self._buffer) - keep])
        self._buffer = self._buffer[len(self._buffer) - keep :]

    def _emit(self, out: list[tuple[Kind, str]], kind: Kind, text: str) -> None:
        if self._strip:
            text = text.lstrip()
            if text:
                self._strip = False
        if text:
            out.append((kind, text))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
