"""Checks and derivations of field values, before anything reaches the database.

Everything here is pure: invalid values raise :class:`ValueError`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final, TypeVar, cast

import msgspec

from tokenwire.store.models import MESSAGE_ROLES, MESSAGE_STATUSES

__all__ = [
    "TITLE_LENGTH",
    "check_parts",
    "check_role",
    "check_status",
    "derive_title",
    "from_unix",
    "json_copy",
]

TITLE_LENGTH: Final = 80
"""Longest title derived from a user message, in characters."""

_T = TypeVar("_T")


def derive_title(parts: list[dict[str, object]]) -> str | None:
    """A conversation title from a user message's parts.

    Joins the ``text`` of the parts whose ``type`` is ``"text"``, folds all
    whitespace (newlines included) into single spaces. A longer line is cut at
    the last word boundary that fits and ends with "…", so that the title is at
    most :data:`TITLE_LENGTH` characters (a single longer word is cut inside).

    Args:
        parts: the message's parts, e.g. ``[{"type": "text", "text": "Hi"}]``.

    Returns:
        The title, or ``None`` when the message has no text.
    """
    texts = [p["text"] for p in parts if p.get("type") == "text" and isinstance(p.get("text"), str)]
    line = " ".join(" ".join(cast(list[str], texts)).split())
    if len(line) <= TITLE_LENGTH:
        return line or None
    cut = line[:TITLE_LENGTH]
    space = cut.rfind(" ")
    head = cut[:space] if space > 0 else cut[: TITLE_LENGTH - 1]
    return head.rstrip()[: TITLE_LENGTH - 1] + "…"


def json_copy(value: _T, name: str) -> _T:
    """A deep copy of a JSON-compatible value, so records never share the caller's lists.

    Args:
        value: lists, dicts with string keys, strings, numbers, booleans, ``None``.
        name: the argument's name, for the error message.

    Raises:
        ValueError: ``value`` holds something JSON cannot represent.
    """
    try:
        return cast(_T, msgspec.json.decode(msgspec.json.encode(value)))
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValueError(f"{name} must be JSON-serializable") from exc


def check_parts(parts: object) -> list[dict[str, object]]:
    """A deep copy of ``parts``, which must be a JSON-compatible list of objects."""
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise ValueError("parts must be a list of objects (dicts)")
    return json_copy(cast(list[dict[str, object]], parts), "parts")


def check_status(status: str) -> str:
    """``status`` if it is one of :data:`~tokenwire.store.models.MESSAGE_STATUSES`."""
    if status not in MESSAGE_STATUSES:
        raise ValueError(f"status must be one of {sorted(MESSAGE_STATUSES)}, not {status!r}")
    return status


def check_role(role: str) -> str:
    """``role`` if it is one of :data:`~tokenwire.store.models.MESSAGE_ROLES`."""
    if role not in MESSAGE_ROLES:
        raise ValueError(f"role must be one of {sorted(MESSAGE_ROLES)}, not {role!r}")
    return role


def from_unix(seconds: float, name: str) -> datetime:
    """The aware UTC datetime of a Unix time in seconds (``name`` is for the error).

    Raises:
        ValueError: not finite, or outside what :class:`datetime` holds.
    """
    if not math.isfinite(seconds):
        raise ValueError(f"{name} must be a finite number of seconds")
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):  # before year 1 or after 9999
        raise ValueError(f"{name} is out of range (Unix seconds of years 1970 to 9999)") from None
