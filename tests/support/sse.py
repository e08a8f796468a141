"""Read tokenwire SSE responses in tests, with tokenwire's own incremental decoder."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tokenwire.protocol.sse import SSEDecoder

TERMINAL = {"finish", "error", "cancelled"}


def read_sse(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    stop_after: int | None = None,
    **kwargs: Any,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read events until the terminal one (or ``stop_after`` events, then hang up).

    Returns:
        ``(events, comments)``: each event's JSON with the SSE ``id`` and ``event``
        fields checked against it, and the comment lines seen.
    """
    events: list[dict[str, Any]] = []
    comments: list[str] = []
    decoder = SSEDecoder()
    with client.stream(method, url, **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for chunk in response.iter_raw():
            for sse in decoder.decode(chunk):
                if sse.comment is not None:
                    comments.append(sse.comment)
                    continue
                data = json.loads(sse.data)
                assert sse.event == data["type"] and sse.id == str(data["seq"])
                events.append(data)
                if data["type"] in TERMINAL or (
                    stop_after is not None and len(events) >= stop_after
                ):
                    return events, comments
    return events, comments


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "text-delta")


def chat_sse(base: str, model: str, content: str = "replay", **body: Any) -> list[dict[str, Any]]:
    """Start a generation with ``POST /v1/chat`` (SSE) on ``base``; its events to the end."""
    with httpx.Client(base_url=base, timeout=60) as client:
        events, _ = read_sse(
            client,
            "POST",
            "/v1/chat",
            json={"model": model, "messages": [{"role": "user", "content": content}], **body},
            headers={"accept": "text/event-stream"},
        )
    return events
