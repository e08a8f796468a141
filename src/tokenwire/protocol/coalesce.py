"""Coalescing of deltas: a leading-edge throttle, sans-I/O (DESIGN §5, "Coalescing").

Consecutive deltas of the same part are merged for at most ``window`` seconds: a
delta is released at once when no delta was released in the last ``window``
seconds (so the first token is never delayed); otherwise it is held, merged with
the deltas that follow, until that window ends. A delta of another part, another
kind or another tool call, and any event that is not a delta, first release what
is held. ``window = 0`` turns merging off: every delta is released as it comes.

:class:`Coalescer` does no I/O and keeps no timer: the caller feeds events to
:meth:`Coalescer.push`, appends what it returns, and calls :meth:`Coalescer.flush`
once :attr:`Coalescer.deadline` has passed (and at the end). Time comes from the
injected ``clock``, so it is tested without sleeping.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import msgspec

from tokenwire.events import Event, ReasoningDelta, TextDelta, ToolCallDelta

__all__ = ["Coalescer"]

_Delta = TextDelta | ReasoningDelta | ToolCallDelta


class Coalescer:
    """Merges consecutive deltas of one part, releasing at most one per ``window``.

    Args:
        window: seconds; the longest a delta is held (``0``: never held).
        clock: monotonic seconds, e.g. :func:`time.monotonic`.
    """

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self.window = window
        self._clock = clock
        self._pending: _Delta | None = None
        self._merged: list[str] = []
        """The text of the deltas merged into ``_pending``, joined once at the release
        (a ``+`` per delta copied the held text each time: quadratic in a window)."""
        self._deadline = 0.0
        self._last_release = -math.inf

    @property
    def deadline(self) -> float | None:
        """Clock time at which the held delta is due, or ``None`` when none is held."""
        return None if self._pending is None else self._deadline

    def push(self, event: Event) -> list[Event]:
        """Take one event; return the events to append now, in order (maybe none)."""
        if not isinstance(event, _Delta):
            return [*self.flush(), event]
        now = self._clock()
        pending = self._pending
        if pending is not None and _mergeable(pending, event):
            self._merged.append(event.delta)
            return self.flush() if now >= self._deadline else []
        out = self.flush()
        if now - self._last_release >= self.window:
            self._last_release = now
            out.append(event)
        else:
            self._pending = event
            self._deadline = self._last_release + self.window
        return out

    def flush(self) -> list[Event]:
        """Release the held delta, if any (when its deadline passed, and at the end).

        A release at or after the deadline counts as made *at* the deadline: a timer
        that fires late (a busy event loop) must not push the next window back, or
        at a steady pace every later delta would be held longer (issue #12: at 50
        tokens/s the held time crept up to a whole window)."""
        if self._pending is None:
            return []
        pending, self._pending = self._pending, None
        if self._merged:
            pending = msgspec.structs.replace(pending, delta=pending.delta + "".join(self._merged))
            self._merged = []
        out: list[Event] = [pending]
        self._last_release = min(self._clock(), self._deadline)
        return out


def _mergeable(pending: _Delta, event: _Delta) -> bool:
    """Same kind, same part and, for tool-call arguments, the same tool call."""
    if type(pending) is not type(event) or pending.part != event.part:
        return False
    if type(event) is TextDelta and type(pending) is TextDelta:  # ("is": no isinstance)
        return pending.refusal == event.refusal  # a refusal is never merged into text
    if type(event) is ToolCallDelta and type(pending) is ToolCallDelta:
        return pending.tool_call_id == event.tool_call_id
    return True
