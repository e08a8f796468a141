"""OpenAI-compatible ``POST /v1/chat/completions`` (DESIGN §8): not implemented yet."""

from __future__ import annotations

from fastapi import APIRouter

from tokenwire.server.tokenwire import Tokenwire

__all__ = ["build_openai_router"]


def build_openai_router(tw: Tokenwire) -> APIRouter:
    """The OpenAI-compatible routes bound to ``tw``."""
    return APIRouter()
