"""Background chores of a :class:`~tokenwire.Tokenwire`: opening its stream log,
sweeping expired producer leases, loading a local default model in advance."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from tokenwire.accumulate import MessageState
from tokenwire.errors import ConfigurationError
from tokenwire.log.base import StreamLog
from tokenwire.log.memory import MemoryStreamLog
from tokenwire.providers import ProviderRegistry
from tokenwire.settings import Settings
from tokenwire.store import Store
from tokenwire.store.turns import decode_turn

__all__ = ["finish_lost_message", "open_log", "recoverable", "sweep_leases", "warm_up"]

logger = logging.getLogger("tokenwire")


async def sweep_leases(sweep: Callable[[], Awaitable[list[str]]], interval: float) -> None:
    """Every ``interval`` seconds, end the running streams whose producer's lease
    expired with ``producer_lost`` (the log calls :func:`finish_lost_message`), so
    a dead producer is found even when nobody reads its stream. Several processes
    may sweep the same log: the log appends the event once."""
    while True:
        await asyncio.sleep(interval)
        try:
            lost = await sweep()
        except Exception as exc:  # the log is down: try again next time
            logger.warning("could not look for lost producers: %r", exc)
            continue
        if lost:
            logger.warning("producer lost: %s", ", ".join(lost))


async def finish_lost_message(log: StreamLog, store: Store, stream_id: str) -> None:
    """Store the message of a stream whose producer died (``producer_lost``) as
    ``failed``, with everything the log holds of it; first its turn (``meta["turn"]``,
    :mod:`tokenwire.store.turns`) if the process died before writing it."""
    try:
        info = await log.info(stream_id)
        if "turn" in info.meta:
            await store.restore_turn(decode_turn(info.meta["turn"]))
        state = MessageState()
        for event in await log.events(stream_id):
            state.apply(event)
        await store.update_message(
            info.meta["message_id"],
            parts=state.parts_list(),
            status=state.status,
            usage=state.usage_dict(),
            error=state.error,
        )
    except Exception:
        logger.exception("could not store the message of lost stream %s", stream_id)


def recoverable(log: StreamLog) -> bool:
    """Whether a stream's turn is worth keeping in ``log`` for :func:`finish_lost_message`
    (``meta["turn"]``): not in the memory log, which dies with the process that would
    have written it."""
    return not isinstance(log, MemoryStreamLog)


async def warm_up(registry: ProviderRegistry, model: str) -> None:
    """Load ``model``'s weights now if it is a local one (first token at once)."""
    try:
        provider, _ = registry.resolve(model)
        warm_up = getattr(provider, "warm_up", None)
        if warm_up is not None:
            await warm_up()
    except Exception:
        logger.warning("could not load the default model in advance", exc_info=True)


def open_log(settings: Settings) -> StreamLog:
    url = settings.log_url
    if url.startswith("memory:"):
        return MemoryStreamLog(retention=settings.retention)
    if url.startswith(("redis://", "rediss://")):
        from tokenwire.log.redis import RedisStreamLog

        return RedisStreamLog.from_url(
            url, prefix=settings.log_prefix, retention=settings.retention
        )
    raise ConfigurationError(
        f"unsupported TOKENWIRE_LOG_URL {url!r} (supported: memory://, redis://, rediss://)"
    )
