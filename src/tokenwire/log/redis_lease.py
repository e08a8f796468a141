"""The producer's lease in the Redis stream log (see "Lease sweep" in
:mod:`tokenwire.log.redis`): the heartbeat, ``producer_lost`` once the lease expired,
and the sweep of expired leases whether or not anyone reads the stream."""

from __future__ import annotations

from collections.abc import Callable

from tokenwire.errors import LogUnavailableError, StreamExpiredError, StreamNotFoundError
from tokenwire.log.redis_core import RedisCore, as_str, lost_error

__all__ = ["Leases"]

_SWEEP_BATCH = 1000
"""Most expired leases one :meth:`Leases.sweep` call looks at."""


class Leases:
    """Heartbeats, ``producer_lost`` and the sweep.

    Args:
        core: the log's shared client and keys.
        on_lost: called with the stream id each time this process appended
            ``producer_lost``.
    """

    def __init__(self, core: RedisCore, on_lost: Callable[[str], None]) -> None:
        self._core = core
        self._on_lost = on_lost

    async def heartbeat(self, stream_id: str, ttl: float) -> None:
        """Renew the lease for ``ttl`` seconds and record its end in ``leases``.

        Raises:
            StreamNotFoundError, StreamExpiredError: no such stream.
            LogUnavailableError: Redis cannot be reached.
        """
        core = self._core
        code = await core.heartbeat(stream_id, ttl)
        if code < 0:
            raise await core.missing(stream_id, code)

    async def end_lost(self, stream_id: str) -> bool:
        """Append ``producer_lost`` if the lease is still expired (atomic: once);
        ``True`` when this call appended it. ``False`` while Redis is unreachable
        (the reader retries through the outage)."""
        try:
            appended = await self._core.append(stream_id, [lost_error()], lease_expired=True)
        except LogUnavailableError:
            return False
        if appended:
            self._on_lost(stream_id)
        return bool(appended)

    async def sweep(self) -> list[str]:
        """End every running stream whose lease expired; return the ids this call ended.

        Candidates come from the ``leases`` sorted set (at most ``_SWEEP_BATCH`` per
        call); ids of streams that ended or vanished are dropped from it.

        Raises:
            LogUnavailableError: Redis cannot be reached.
        """
        core, leases = self._core, self._core.keys.leases()
        due = await core.call(core.sweep_script(keys=[leases], args=[_SWEEP_BATCH]))
        lost: list[str] = []
        stale: list[str] = []
        for stream_id in map(as_str, due):
            try:
                if await self.end_lost(stream_id):
                    lost.append(stream_id)
                elif await self._ended(stream_id):
                    stale.append(stream_id)
            except (StreamNotFoundError, StreamExpiredError):
                stale.append(stream_id)
        if stale:
            await core.call(core.client.zrem(leases, *stale))
        return lost

    async def _ended(self, stream_id: str) -> bool:
        """Whether the stream ended or vanished (its status is not ``running``)."""
        status = await self._core.call(
            self._core.client.hget(self._core.keys.meta(stream_id), "status")
        )
        return status is None or as_str(status) != "running"
