"""Vercel AI SDK UI message stream endpoints (DESIGN §8): not implemented yet."""

from __future__ import annotations

from fastapi import APIRouter

from tokenwire.server.tokenwire import Tokenwire

__all__ = ["build_aisdk_router"]


def build_aisdk_router(tw: Tokenwire) -> APIRouter:
    """The ``/api/chat`` routes bound to ``tw``."""
    return APIRouter()
