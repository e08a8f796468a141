"""Wait for a stream's first provider event before answering with a status line.

OpenAI answers a streamed request that fails before its first token with an HTTP
error status, not with a 200 and an in-band error; clients (the ``openai`` SDKs)
raise the matching exception (``RateLimitError`` for 429) and retry on their own.
An adapter that wants the same waits here before it commits to 200.
"""

from __future__ import annotations

from tokenwire.events import Error, Start, StepStart
from tokenwire.log.base import StreamLog

__all__ = ["failure_before_first_event"]

_OURS = (Start, StepStart)
"""Events tokenwire appends itself before the provider's first one."""


async def failure_before_first_event(log: StreamLog, stream_id: str) -> Error | None:
    """Read ``stream_id`` until its first event from the provider (anything but
    ``start`` and ``step-start``).

    Args:
        log: the stream log.
        stream_id: a stream that exists (it was just started).

    Returns:
        The ``error`` event when the stream failed before any provider event; ``None``
        when a provider event (or ``cancelled``) came first. The reader is closed
        either way; the caller reads the stream again from ``seq`` 1.

    Raises:
        StreamNotFoundError, StreamExpiredError: as :meth:`StreamLog.read`.
    """
    reader = log.read(stream_id, 0)
    try:
        async for batch in reader:
            for event in batch:
                if not isinstance(event, _OURS):
                    return event if isinstance(event, Error) else None
    finally:
        await reader.aclose()
    return None
