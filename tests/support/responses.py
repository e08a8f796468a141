"""The ``openai`` SDK's own Responses types, for checking what ``/v1/responses`` sends."""

from __future__ import annotations

import typing
from typing import Any

from openai.types.responses import ResponseStreamEvent
from pydantic import BaseModel


def _event_types() -> dict[str, type[BaseModel]]:
    union = typing.get_args(ResponseStreamEvent)[0]  # Annotated[Union[...], discriminator]
    classes: tuple[type[BaseModel], ...] = typing.get_args(union)
    return {typing.get_args(c.model_fields["type"].annotation)[0]: c for c in classes}


EVENT_TYPES = _event_types()


def validate(event: dict[str, Any]) -> BaseModel:
    """``event`` parsed strictly by the SDK type its ``type`` names."""
    return EVENT_TYPES[event["type"]].model_validate(event)


TERMINAL = {"response.completed", "response.incomplete", "response.failed"}
TOOL = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}
