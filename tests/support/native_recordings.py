"""An independent reading of the Gemini and Ollama recordings, to check tokenwire against.

Like :mod:`tests.support.recordings`, it imports nothing from tokenwire: it reads the
raw bytes with ``json`` (SSE via :func:`tests.support.recordings.sse_events`, the
JSON-array framing whole, NDJSON line by line) and concatenates what they say.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.recordings import RECORDINGS, sse_events

__all__ = ["NativeExpected", "native_expected", "native_recordings"]


@dataclass
class NativeExpected:
    """What a recording says: text, reasoning, ``(name, arguments)`` calls, tokenwire's
    finish reason, ``(input, output, reasoning)`` tokens as tokenwire counts them
    (output includes reasoning), and the thought signatures of the calls."""

    text: str = ""
    reasoning: str = ""
    tool_calls: list[tuple[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: tuple[int, int, int] | None = None
    signatures: list[str | None] = field(default_factory=list)


def native_recordings(api: str) -> list[Path]:
    """The body files of ``gemini`` or ``ollama-generate`` recordings, sorted."""
    return sorted(
        p
        for p in (RECORDINGS / api).iterdir()
        if p.suffix in (".sse", ".json", ".ndjson") and not p.name.endswith(".meta.json")
    )


def native_expected(path: Path) -> NativeExpected:
    """Read a Gemini (``.sse`` or ``.json``) or Ollama (``.ndjson``) recording."""
    raw = path.read_bytes()
    if path.suffix == ".ndjson":
        return _ollama([json.loads(line) for line in raw.splitlines() if line.strip()])
    if path.suffix == ".json":
        return _gemini(json.loads(raw))
    return _gemini([data for _, data in sse_events(raw)])


def _build(paths: dict[str, Any]) -> dict[str, Any]:
    """Nested arguments from ``{"$.a.b[0].c": value}``."""
    root: dict[str, Any] = {}
    for path, value in paths.items():
        tokens = [int(t) if t.isdigit() else t for t in re.findall(r"[^.\[\]$]+", path)]
        node: Any = root
        for token, nxt in itertools.pairwise(tokens):
            if isinstance(token, int):
                node.extend([None] * (token + 1 - len(node)))
                if node[token] is None:
                    node[token] = [] if isinstance(nxt, int) else {}
            else:
                node.setdefault(token, [] if isinstance(nxt, int) else {})
            node = node[token]
        last = tokens[-1]
        if isinstance(last, int):
            node.extend([None] * (last + 1 - len(node)))
        node[last] = value
    return root


def _gemini(chunks: list[dict[str, Any]]) -> NativeExpected:
    out = NativeExpected()
    calls: list[list[Any]] = []  # [name, args or None, {jsonPath: value}]
    reason = None
    for chunk in chunks:
        for candidate in chunk.get("candidates", []):
            for part in candidate.get("content", {}).get("parts", []):
                call = part.get("functionCall")
                if call is not None:
                    if "name" in call:
                        calls.append([call["name"], call.get("args"), {}])
                        out.signatures.append(part.get("thoughtSignature"))
                    for piece in call.get("partialArgs", []):
                        store = calls[-1][2]
                        key = piece["jsonPath"]
                        store[key] = store.get(key, "") + piece["stringValue"]
                elif part.get("thought"):
                    out.reasoning += part.get("text", "")
                else:
                    out.text += part.get("text", "")
            reason = candidate.get("finishReason", reason)
        usage = chunk.get("usageMetadata", {})
        if "promptTokenCount" in usage:
            thoughts = usage.get("thoughtsTokenCount", 0)
            output = usage.get("candidatesTokenCount", 0) + thoughts
            out.usage = (usage["promptTokenCount"], output, thoughts)
    out.tool_calls = [(name, args if args is not None else _build(p)) for name, args, p in calls]
    names = {"STOP": "tool_calls" if calls else "stop", "MAX_TOKENS": "length"}
    out.finish_reason = names.get(reason, "content_filter") if reason else None
    return out


def _ollama(lines: list[dict[str, Any]]) -> NativeExpected:
    out = NativeExpected()
    content = ""
    for line in lines:
        message = line.get("message", {})
        content += message.get("content", line.get("response", ""))
        out.reasoning += message.get("thinking", line.get("thinking", ""))
        if line.get("done"):
            out.finish_reason = {"stop": "stop", "length": "length"}[line["done_reason"]]
            out.usage = (line["prompt_eval_count"], line["eval_count"], 0)
    match = re.match(r"\s*<think>(.*?)(</think>|$)", content, re.DOTALL)
    if match:
        out.reasoning += match.group(1).lstrip()
        content = content[match.end() :].lstrip()
    out.text = content
    return out
