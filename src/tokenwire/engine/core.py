"""The library entry point: :class:`Tokenwire` starts generations, :class:`Stream` reads one.

::

    tw = Tokenwire.from_env()
    async with tw:  # opens the store (migrations); stops producers at exit
        stream = await tw.start("fake:echo", [Message("user", "hi")])
        async for event in stream: ...
        app.include_router(tw.router, prefix="/ai")   # the native HTTP API

Server-side tools (docs/tools.md): ``Tokenwire(tools=[fn])`` or ``@tw.tool``, then
``tw.start(model, messages, tools=["fn"])`` runs the agent loop in one stream.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tokenwire.accumulate import MessageState
from tokenwire.agent import DEFAULT_MAX_STEPS, MAX_STEPS_LIMIT, history
from tokenwire.engine.history import check_tools, parts_of
from tokenwire.engine.housekeeping import finish_lost_message, recoverable, sweep_leases, warm_up
from tokenwire.engine.housekeeping import open_log as _open_log
from tokenwire.engine.identity import Access, HTTPRequest, Identify
from tokenwire.engine.limits import Limits, Ticket
from tokenwire.engine.stream import Stream
from tokenwire.errors import (
    ConversationNotFoundError,
    InvalidRequestError,
    ShuttingDownError,
)
from tokenwire.events import Event, Start
from tokenwire.log.base import StreamLog
from tokenwire.observability import logs as obs_logs
from tokenwire.producer import Generation, Producer, ProducerConfig
from tokenwire.providers import GenerationRequest, Message, Provider, ProviderRegistry
from tokenwire.providers.base import ToolSpec
from tokenwire.settings import Settings
from tokenwire.store import Store
from tokenwire.tools import Tool, ToolFunction, ToolRegistry, load_tools

if TYPE_CHECKING:
    from fastapi import APIRouter

    from tokenwire.queue import GenerationQueue

__all__ = ["Tokenwire"]

logger = logging.getLogger("tokenwire")
_TASK_END_TIMEOUT = 5.0
"""Seconds :meth:`Tokenwire.drain` waits for generation tasks after their producer ended."""


class Tokenwire:
    """One tokenwire instance: a stream log, a store, providers and running producers.

    Args:
        settings: configuration; ``None`` = :class:`Settings` from the environment.
        log: a stream log to use instead of the one ``settings.log_url`` names.
        store: an opened store to use instead of opening ``settings.store_url``.
        registry: providers; ``None`` = the built-in ones (``fake:`` only with
            ``settings.fake_provider``).
        identify: the embedding app's way to find the caller of an HTTP request
            (the owner of what they start), tried before the bearer tokens and JWTs
            of ``settings``; giving one makes identity required (401 without) unless
            ``settings.allow_anonymous``. See :mod:`tokenwire.engine.identity`.
        tools: server-side tools (functions, :class:`~tokenwire.tools.Tool` objects or
            a :class:`~tokenwire.tools.ToolRegistry`); ``None`` = ``settings.tools``.

    Raises:
        ConfigurationError: a JWT key in ``settings`` cannot be loaded, or the tools
            cannot be (:func:`~tokenwire.tools.load_tools`).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        log: StreamLog | None = None,
        store: Store | None = None,
        registry: ProviderRegistry | None = None,
        identify: Identify | None = None,
        tools: ToolRegistry | Iterable[Tool | ToolFunction] | None = None,
    ) -> None:
        self.settings = settings or Settings()
        if tools is None:
            tools = load_tools(self.settings.tools) if self.settings.tools else ToolRegistry()
        self.tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
        """The server-side tools requests may name (:meth:`tool` adds one)."""
        self.stream_started: list[Callable[[Start], Awaitable[None]]] = []
        """Awaited with each new stream's ``start`` event (the Pusher hub relays it)."""
        self.log: StreamLog = log or _open_log(self.settings)
        self._store = store
        self.access = Access(
            self.settings, log=self.log, store=lambda: self.store, identify=identify
        )
        """Who is calling and what they may touch: every HTTP surface asks it."""
        self.identify: Identify = self.access.identify
        """The caller of a request, ``None`` = anonymous (not checked against
        ``access.required``: routes use ``access.caller``)."""
        self.registry = registry or ProviderRegistry(self.settings)
        self.producer_config = ProducerConfig(  # the settings of the same names
            **{name: getattr(self.settings, name) for name in ProducerConfig.__struct_fields__}
        )
        self.producer = Producer(self.log, store, self.producer_config, self.tools)
        """Runs this instance's generations (and a worker's); its store is set by :meth:`open`."""
        self.limits = Limits(
            self.settings, is_running=self._is_running, output_tokens=self._output_tokens
        )
        """Per-caller limits the HTTP surfaces apply (:meth:`admit`, docs/api.md "Limits")."""
        self._tasks: dict[str, asyncio.Task[Event]] = {}
        self._warm_up: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.draining = False
        """Set by :meth:`drain`: :meth:`start` then raises :class:`ShuttingDownError`."""
        self.drained = asyncio.Event()
        """Set when :meth:`drain` has ended every generation of this process."""
        # with producers="queue", start() enqueues for workers
        self.queue: GenerationQueue | None = None
        if self.settings.producers == "queue":
            from tokenwire.queue import GenerationQueue

            self.queue = GenerationQueue.from_settings(self.settings)

    @classmethod
    def from_env(cls) -> Tokenwire:
        """An instance configured from ``TOKENWIRE_*`` variables."""
        return cls(Settings())

    @property
    def store(self) -> Store:
        """The opened store. Raises ``RuntimeError`` before :meth:`open`."""
        if self._store is None:
            raise RuntimeError("Tokenwire is not open: use 'async with tw:' or 'await tw.open()'")
        return self._store

    async def open(self) -> None:
        """Open the store (running migrations); idempotent."""
        if self._store is None:
            self._store = await Store.open(self.settings.resolved_store_url())
        self.producer.sink = self._store
        self.log.on_producer_lost = functools.partial(finish_lost_message, self.log, self._store)
        if self._warm_up is None:
            self._warm_up = asyncio.create_task(
                warm_up(self.registry, self.settings.resolved_default_model())
            )
        if self._sweeper is None and self.settings.lease_sweep_interval > 0:
            self._sweeper = asyncio.create_task(
                sweep_leases(self.log.sweep_expired_leases, self.settings.lease_sweep_interval),
                name="tokenwire-lease-sweep",
            )

    async def drain(self, grace: float | None = None) -> None:
        """Shut down gracefully: refuse new generations (:meth:`start` raises
        :class:`ShuttingDownError`), let the running ones of this process finish for
        ``grace`` seconds (``None``: ``settings.shutdown_grace``), then end the rest with
        ``cancelled{reason: "shutdown"}``. Returns when every one has its terminal event
        in the log and its message in the store, so readers can receive it."""
        self.draining = True
        await self.producer.drain(self.settings.shutdown_grace if grace is None else grace)
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=_TASK_END_TIMEOUT)
        self.drained.set()

    async def wait_events(self, stream_id: str, after: int, timeout: float) -> list[Event]:
        """Events with ``seq > after``, waiting up to ``timeout`` seconds for at least one
        (:meth:`StreamLog.wait`), but no longer than until :meth:`drain` has ended: a
        long poll on a stream produced elsewhere then answers with what there is rather
        than being cut when the server exits.

        Raises:
            StreamNotFoundError, StreamExpiredError: as the log does.
        """
        if self.drained.is_set():
            return await self.log.events(stream_id, after)
        waiting = asyncio.ensure_future(self.log.wait(stream_id, after, timeout))
        drained = asyncio.ensure_future(self.drained.wait())
        try:
            await asyncio.wait({waiting, drained}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drained.cancel()
            if not waiting.done():
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
        if waiting.done() and not waiting.cancelled():
            return waiting.result()
        return await self.log.events(stream_id, after)

    async def aclose(self) -> None:
        """Stop running generations (``cancelled`` with reason ``shutdown``), close everything."""
        tasks: list[asyncio.Task[Any]] = list(self._tasks.values())
        for background in (self._warm_up, self._sweeper):
            if background is not None:
                tasks.append(background)
        self._warm_up = self._sweeper = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.registry.aclose()
        await self.limits.close()
        await self.log.close()
        if self.queue is not None:
            await self.queue.close()
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def __aenter__(self) -> Tokenwire:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def router(self) -> APIRouter:
        """The native HTTP API (DESIGN §3) as a FastAPI router.

        The bridge to the server layer (imported here: the engine loads no web
        framework until a router is asked for)."""
        from tokenwire.server.routes import build_router

        return build_router(self)

    def tool(self, function: ToolFunction) -> ToolFunction:
        """Decorator: register ``function`` as a server-side tool; return it unchanged
        (raises :class:`ConfigurationError` as :meth:`ToolRegistry.add` does)."""
        self.tools.add(function)
        return function

    def check(
        self,
        model: str | None,
        messages: Sequence[Message],
        *,
        system: str | None = None,
        params: Mapping[str, object] | None = None,
        tools: Sequence[str | ToolSpec] = (),
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> tuple[Provider, str, str]:
        """Validate a request to start a generation, before anything is created.

        Args:
            model: ``provider:model``; ``None`` = the default model (an empty string
                is an error, not the default).
            messages: the request's messages: at most ``settings.max_messages``,
                each of at most ``settings.max_message_chars`` characters (and
                ``system`` too).
            params: checked by the provider when it is a
                :class:`~tokenwire.providers.base.CheckedProvider`.
            tools, max_steps: tool names and client tools, most model calls (1-50).

        Returns:
            ``(provider, the provider's model name, the full model name)``.

        Raises:
            UnknownModelError: ``model`` is empty, malformed or names no provider.
            InvalidRequestError: too many messages, a content too long, params
                the provider refuses, an unknown tool, tools for the local model, or
                ``max_steps`` out of range.
        """
        name = self.settings.resolved_default_model() if model is None else model
        provider, provider_model = self.registry.resolve(name, params)
        limit, chars = self.settings.max_messages, self.settings.max_message_chars
        if len(messages) > limit:
            raise InvalidRequestError("messages", f"at most {limit} messages per request")
        for i, message in enumerate(messages):
            if len(message.content) > chars:
                raise InvalidRequestError(
                    f"messages[{i}].content", f"longer than {chars} characters"
                )
        if system is not None and len(system) > chars:
            raise InvalidRequestError("system", f"longer than {chars} characters")
        if not 1 <= max_steps <= MAX_STEPS_LIMIT:
            raise InvalidRequestError("max_steps", f"must be from 1 to {MAX_STEPS_LIMIT}")
        self.tools.select([t for t in tools if isinstance(t, str)])
        check_tools(provider, name, messages, tools)
        return provider, provider_model, name

    async def admit(self, request: HTTPRequest) -> Ticket:
        """Apply the limits to a request that is about to start a generation; pass the
        ticket to :meth:`start`. The caller is ``identify``'s identity, or the client's
        IP address (``ip:<address>``) when anonymous.

        Raises:
            RateLimitedError: a limit refuses it (HTTP 429 with ``Retry-After``).
        """
        identity = await self.identify(request)
        if identity is not None:
            key = f"id:{identity.id}"
        else:
            key = f"ip:{request.client.host if request.client else 'unknown'}"
        return await self.limits.admit(key, uuid.uuid4().hex)

    async def _is_running(self, stream_id: str) -> bool:
        return (await self.log.info(stream_id)).status == "running"

    async def _output_tokens(self, stream_id: str) -> int:
        state = MessageState()
        for event in await self.log.events(stream_id):
            state.apply(event)
        return state.usage.output_tokens if state.usage is not None else 0

    async def start(
        self,
        model: str | None,
        messages: Sequence[Message],
        *,
        conversation_id: str | None = None,
        system: str | None = None,
        params: dict[str, object] | None = None,
        owner: str | None = None,
        source: str | None = None,
        ticket: Ticket | None = None,
        tools: Sequence[str | ToolSpec] = (),
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> Stream:
        """Start a generation and return its stream at once (the ``start`` event is logged).

        ``messages`` are the new messages; when the conversation exists, its stored
        history comes first (and ``messages`` may be empty: a new answer to it, as
        for "regenerate"). A generation still running in the conversation is
        cancelled with reason ``superseded``. ``owner`` is the user id of the caller
        (``None``: anonymous): a new conversation is theirs, and the stream belongs
        to its conversation's owner. ``source`` names the surface that starts a new
        conversation (``page``, ``api``, ``cli``, ``openai``, ``ai-sdk``), recorded
        with it; it is ignored for an existing conversation. ``ticket`` (from
        :meth:`admit`) names the stream and holds its concurrent-streams slot until
        the generation ends (released here if the start fails). ``tools``: a name is a
        registered server-side tool the model may call (the generation then runs the
        agent loop, :mod:`tokenwire.agent`, for at most ``max_steps`` model calls); a
        :class:`~tokenwire.providers.base.ToolSpec` is a client-side tool, only offered
        to the model (its calls end the stream, the client runs them).

        Raises:
            UnknownModelError: ``model`` is empty or names no provider.
            InvalidRequestError: as :meth:`check` says, or ``messages`` is empty and
                there is no ``conversation_id``.
            ConversationNotFoundError: ``conversation_id`` is unknown, or has an owner
                other than ``owner`` (``owner=None`` may continue only a conversation
                without owner: :func:`~tokenwire.store.models.may_touch`).
            ShuttingDownError: :meth:`drain` was called (HTTP 503).
        """
        try:
            if self.draining:
                raise ShuttingDownError("the server is shutting down; try again")
            return await self._start(
                model,
                messages,
                conversation_id=conversation_id,
                system=system,
                params=params,
                owner=owner,
                source=source,
                ticket=ticket,
                tools=tools,
                max_steps=max_steps,
            )
        except BaseException:
            if ticket is not None and not ticket.started:
                self.limits.finished(ticket)
            raise

    async def _start(
        self,
        model: str | None,
        messages: Sequence[Message],
        *,
        conversation_id: str | None,
        system: str | None,
        params: dict[str, object] | None,
        owner: str | None,
        source: str | None,
        ticket: Ticket | None,
        tools: Sequence[str | ToolSpec] = (),
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> Stream:
        if not messages and conversation_id is None:
            raise InvalidRequestError("messages", "must not be empty")
        names = [t for t in tools if isinstance(t, str)]
        provider, provider_model, model = self.check(
            model, messages, system=system, params=params, tools=tools, max_steps=max_steps
        )
        turn = await self.store.plan_turn(  # reads only: the writes follow the first byte
            conversation_id=conversation_id,
            owner=owner,
            messages=[(m.role, parts_of(m)) for m in messages],
            model=model,
            source=source,
        )
        if turn is None:
            raise ConversationNotFoundError(conversation_id)
        pending, conversation, stored, assistant = turn
        if not pending.new:  # a new conversation has no generation to supersede
            await self._supersede(conversation.id)
        stream_id = ticket.stream_id if ticket is not None else uuid.uuid4().hex
        obs_logs.stream_id.set(stream_id)  # the request's log lines from here on
        await self.log.create(stream_id, pending.meta(model, recoverable=recoverable(self.log)))
        start = Start(
            stream_id=stream_id,
            message_id=assistant.id,
            conversation_id=conversation.id,
            model=model,
            created_at=time.time(),
        )
        await self.log.append(stream_id, [start])
        self.store.submit_turn(pending)  # batched with other turns' writes (store/turns.py)
        for announce in self.stream_started:
            await announce(start)
        request = GenerationRequest(
            model=provider_model,
            messages=[*history(stored, messages), *messages],
            system=system,
            params=params or {},
            tools=[
                *(t.spec for t in self.tools.select(names)),
                *(t for t in tools if isinstance(t, ToolSpec)),
            ],
        )
        generation = Generation(
            stream_id=stream_id,
            message_id=assistant.id,
            conversation_id=conversation.id,
            request=request,
            model=model,
            tools=names,
            max_steps=max_steps,
        )
        # A worker process runs it (tokenwire.queue, docs/scale-out.md).
        if self.queue is not None:
            from tokenwire.queue import GenerationJob

            await self.store.settle()  # the worker's store writes the turn's end
            # The lease covers the wait for a worker: none in time -> producer_lost.
            await self.log.heartbeat(stream_id, self.settings.queue_timeout)
            await self.queue.enqueue(GenerationJob(model=model, generation=generation))
            if ticket is not None:
                self.limits.started(ticket, ends_here=False)
            return self._stream(stream_id, start)
        task = asyncio.create_task(
            self.producer.run(generation, provider), name=f"tokenwire-{stream_id}"
        )
        self._tasks[stream_id] = task
        task.add_done_callback(functools.partial(self._ended, stream_id, ticket))
        if ticket is not None:
            self.limits.started(ticket, ends_here=True)
        return self._stream(stream_id, start)

    def _ended(self, stream_id: str, ticket: Ticket | None, _: asyncio.Task[Event]) -> None:
        """A generation's task ended (one done-callback: each costs ~250 bytes per
        held generation)."""
        self._tasks.pop(stream_id, None)
        if ticket is not None:
            self.limits.finished(ticket)

    async def _supersede(self, conversation_id: str) -> None:
        active = await self.active_stream(conversation_id)
        if active is not None:
            await self.log.request_cancel(active[0], "superseded")

    async def active_stream(self, conversation_id: str) -> tuple[str, str] | None:
        """``(stream_id, message_id)`` of the conversation's running generation, if any
        (wherever it runs: the log knows)."""
        info = await self.log.active_stream(conversation_id)
        if info is None:
            return None
        return info.stream_id, info.meta["message_id"]

    async def stream(self, stream_id: str) -> Stream:
        """A handle on an existing stream.

        Raises:
            StreamNotFoundError, StreamExpiredError: as the log does.
        """
        await self.log.info(stream_id)
        return self._stream(stream_id)

    def _stream(self, stream_id: str, start: Start | None = None) -> Stream:
        return Stream(
            self.log,
            stream_id,
            heartbeat_interval=self.settings.heartbeat_interval,
            start=start,
        )

    async def cancel(self, stream_id: str, reason: str = "user") -> bool:
        """Ask the stream's producer to stop (wherever it runs). Idempotent."""
        return await self.log.request_cancel(stream_id, reason)

    async def wait_idle(self) -> None:
        """Wait until every generation started here has ended."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
