"""Settings, from arguments, ``TOKENWIRE_*`` environment variables and defaults.

Provider base URLs and keys are *not* here: each official SDK reads its own
variables (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``ANTHROPIC_BASE_URL``,
``ANTHROPIC_API_KEY`` …).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tokenwire.errors import ConfigurationError

__all__ = ["LIMIT_GRAMMAR", "PusherApp", "Settings"]

LIMIT_GRAMMAR = re.compile(r"\s*([1-9][0-9]*)\s*/\s*(second|minute|hour|day)\s*")
"""``N/second|minute|hour|day`` (N ≥ 1): the grammar of ``TOKENWIRE_LIMIT_REQUESTS``."""


class PusherApp(BaseModel):
    """One Pusher Channels app served on ``/app/{key}`` (docs/websockets.md)."""

    id: str
    """``app_id`` of the HTTP publishing API (``/apps/{id}/…``)."""
    key: str
    """Public key the clients connect with (``new Pusher(key, …)``)."""
    secret: str
    """Signs channel auth, ``pusher:signin`` and HTTP API requests."""
    encryption_master_key_base64: str | None = None
    """32 bytes, base64, for ``private-encrypted-`` channels' shared secrets."""
    max_message_size: int = 100_000
    """Largest event ``data`` (HTTP API, client events) and client frame, bytes."""
    max_connections: int | None = 10_000
    """Connections to this app per node beyond which new ones are closed with 4100
    (``None``: no limit)."""
    max_channels: int = Field(100, ge=1)
    """Channels one connection may be subscribed to; a subscription beyond is answered
    ``pusher:subscription_error`` (``LimitReached``, status 4304), the connection stays."""
    max_backlog_bytes: int = Field(1_000_000, ge=1)
    """Bytes of frames that may wait for a connection whose socket is not draining (a
    client that does not read); beyond, it is closed with 4100 (besides 1,024 frames)."""
    client_event_rate: int = 10
    """Client events one connection may send per second (4301 beyond)."""
    activity_timeout: int = 120
    """Seconds of client silence before the server sends ``pusher:ping``."""

    @field_validator("encryption_master_key_base64")
    @classmethod
    def _thirty_two_bytes(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                key = base64.b64decode(value, validate=True)
            except binascii.Error:
                raise ValueError("not base64") from None
            if len(key) != 32:
                raise ValueError("must decode to 32 bytes")
        return value


def _default_pusher_apps() -> list[PusherApp]:
    # A secret of this process only: set TOKENWIRE_PUSHER_APPS for several nodes
    # or to use the HTTP publishing API from elsewhere.
    # app id "1": the Python `pusher` library accepts only digits.
    return [PusherApp(id="1", key="tokenwire", secret=secrets.token_hex(16))]


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("tokenwire"))


class Settings(BaseSettings):
    """Every knob of a tokenwire instance. Times are in seconds unless named ``_ms``."""

    model_config = SettingsConfigDict(env_prefix="TOKENWIRE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Field(default_factory=_default_data_dir)
    """SQLite file and other local state."""
    log_url: str = "memory://"
    """Stream log backend: ``memory://`` (one process) or ``redis://host:port/db``
    (``rediss://`` for TLS; several processes)."""
    log_prefix: str = "tw:"
    """Prefix of every Redis key and channel of the stream log."""
    store_url: str | None = None
    """SQLAlchemy async URL; ``None`` = SQLite file ``tokenwire.db`` in ``data_dir``."""
    default_model: str | None = None
    """Model used when a request names none; ``None`` = the first of ``models``."""
    models: list[str] | None = None
    """Models listed by ``GET /v1/models``; ``None`` = derived from the API keys set."""

    heartbeat_interval: float = 10.0
    """Seconds of silence on an SSE response before a ``: ping`` comment."""
    retention: float = 3600.0
    """Seconds a finished stream's events stay readable (then 410)."""
    coalesce_ms: float = 0.0
    """Longest time a delta may wait to be merged with the next; 0 (the default) =
    never merge: every delta is its own event, appended as it comes. Not DESIGN's
    20 ms (issue #12): a held delta waits for a timer, and on a loaded event loop the
    timer is late by the loop's lag (500 paced streams: p99 30 ms against 9 ms at 0;
    1,000: 187 against 91 ms, ``bench/sse_bench.py``, docs/performance.md), while at
    50 tokens/s a window merges almost nothing. What is ready in one turn of the loop
    still goes to a client in one write. Set it (e.g. 20) to cap a fast provider's
    events per second."""
    orphan_timeout: float | None = 60.0
    """Seconds with no reader before a stream is cancelled (``abandoned``);
    0 = at once, ``None`` = never."""
    max_stream_seconds: float = 600.0
    """A generation still running after this ends with ``error{stream_timeout}``
    (checked every second, or every quarter of the limit when shorter)."""
    provider_timeout: float = 120.0
    """Seconds without any event from the provider before the generation ends with
    ``error{provider_timeout}`` (a stalled upstream; checked like
    ``max_stream_seconds``)."""
    checkpoint_interval: float = 5.0
    """Seconds between store writes of a streaming message."""
    lease_ttl: float = 15.0
    """Seconds a producer's lease lasts without renewal (``producer_lost`` after)."""
    lease_sweep_interval: float = 5.0
    """Seconds between two looks for running streams whose producer's lease expired
    (each gets ``error{producer_lost}`` and its message is stored as failed, even
    with no reader); 0 = only readers notice."""
    shutdown_grace: float = 10.0
    """Seconds running generations may go on after SIGTERM (``tokenwire serve`` and
    ``tokenwire worker``) before they end with ``cancelled{reason: "shutdown"}``."""
    max_retries: int = 2
    """Retries of an upstream call that failed before its first event."""
    retry_backoff: float = 0.5
    """Seconds before the first retry; doubled for each next one."""
    max_body_bytes: int = 1_000_000
    """Largest accepted request body, bytes, declared or chunked (413 beyond)."""
    header_timeout: float = 10.0
    """Seconds a connection may take to send a request's complete headers, from its
    start or the previous response's end (``tokenwire serve``; slowloris). Closed after."""
    body_timeout: float = 30.0
    """Seconds a request may take to send its whole body once its headers are in
    (408 after)."""
    max_messages: int = 1000
    """Most messages one request may send to start a generation (422 beyond)."""
    max_message_chars: int = 100_000
    """Longest content of one message or system prompt of a request, characters
    (422 beyond)."""
    tools: str | None = None
    """Server-side tools as ``module:object`` (a ``ToolRegistry`` or a list of
    functions; docs/tools.md); a request's ``tools`` names the ones its model may call."""
    tool_timeout: float = Field(30.0, gt=0)
    """Seconds one server-side tool may run; then its result is an error."""
    fake_provider: bool = False
    """Serve the scripted ``fake:`` models (tests, benchmarks, demos); off: ``fake:``
    is an unknown provider (422)."""
    """Largest accepted request body (413 beyond)."""
    log_format: Literal["text", "json"] = "text"
    """Log lines of ``tokenwire serve`` and ``tokenwire worker``: ``text``, or ``json``
    (one object per line with ``request_id`` and ``stream_id``; docs/observability.md)."""

    # limits per caller (identity, or client IP when anonymous): docs/api.md "Limits"
    limit_requests: str | None = None
    """Generations one caller may start per period: ``N/second|minute|hour|day``
    (``120/minute``); ``None`` = no limit. Over it: 429 with ``Retry-After``."""
    limit_concurrent_streams: int = Field(8, ge=0)
    """Generations one caller may have running at once; 0 = no limit."""
    limit_tokens_per_day: int | None = Field(None, ge=1)
    """Output tokens one caller may use per UTC day; ``None`` = no limit."""

    @field_validator("limit_requests")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None and LIMIT_GRAMMAR.fullmatch(value) is None:
            raise ValueError("must be N/second, N/minute, N/hour or N/day (e.g. 120/minute)")
        return value

    cors_origins: list[str] = Field(default_factory=list)
    """Origins whose pages may call this server from the browser (``["https://app.example"]``,
    ``["*"]``): the auth endpoints, gap filling, the native API. Empty: same origin only."""
    auth_tokens: dict[str, str] = Field(default_factory=dict)
    """Bearer tokens and the user id each stands for (``{"token": "alice"}``): the
    server's default way to know who calls (``tokenwire.engine.identity``)."""
    jwt_secret: SecretStr | None = None
    """Verifies ``Authorization: Bearer <JWT>`` tokens signed with HS256 (at least 32
    bytes); the ``sub`` claim is the caller's user id; ``exp`` and ``nbf`` are checked
    when present."""
    jwt_public_key: str | None = None
    """PEM public key (the text, or the path of a ``.pem`` file) verifying bearer JWTs
    signed with RS256 (RSA key) or ES256 (P-256 key); ``sub`` is the user id."""
    jwt_audience: str | None = None
    """The ``aud`` a bearer JWT must carry; ``None`` = tokens carrying an ``aud`` are refused."""
    jwt_issuer: str | None = None
    """The ``iss`` a bearer JWT must carry; ``None`` = not checked."""
    allow_anonymous: bool = False
    """Serve callers without an identity even though an identity source (tokens, JWT
    keys, an ``identify`` hook) is configured; without one, everyone is anonymous.
    A request with an invalid or expired token is refused (401) either way."""

    # WebSockets: Pusher Channels protocol 7 (docs/websockets.md)
    pusher_apps: list[PusherApp] = Field(default_factory=_default_pusher_apps)
    """Apps served on ``/app/{key}``; the first carries the conversations' broadcasts.
    JSON in ``TOKENWIRE_PUSHER_APPS``. Default: app id ``1``, key ``tokenwire``
    and a random secret of this process."""
    websocket_compression: bool = False
    """Accept permessage-deflate on WebSockets (``tokenwire serve``). Off: token frames
    are small, and compressing costs CPU and memory per connection and rules out
    writing one encoded frame to every subscriber (docs/performance.md)."""
    pusher_url: str | None = None
    """Redis URL for fan-out and presence across nodes; ``None`` = ``log_url`` when
    it is ``redis://``, else this process only."""

    # job queue and worker processes (docs/scale-out.md)
    producers: Literal["local", "queue"] = "local"
    """Where generations run: ``local`` = a task of the process that started them;
    ``queue`` = enqueued for ``tokenwire worker`` processes (``serve --no-producers``)."""
    queue_url: str | None = None
    """Redis URL of the job queue; ``None`` = ``log_url`` when it is ``redis://``."""
    queue_name: str = "tokenwire"
    """Name of the queue; its Redis keys start with ``saq:<queue_name>:``."""
    queue_timeout: float = 60.0
    """Seconds a queued generation may wait for a worker before it ends with
    ``error{producer_lost}`` (its lease until a worker takes it)."""
    worker_concurrency: int = 64
    """Generations one ``tokenwire worker`` process runs at once."""
    worker_metrics_port: int | None = None
    """TCP port on which ``tokenwire worker`` serves its Prometheus metrics (``/metrics``,
    on ``host``); ``None`` = none (docs/observability.md)."""

    def identity_configured(self) -> bool:
        """Whether a setting names an identity source (``auth_tokens``, ``jwt_secret``,
        ``jwt_public_key``); an ``identify`` hook given to ``Tokenwire`` is one too."""
        return bool(self.auth_tokens or self.jwt_secret or self.jwt_public_key)

    # the bundled model, local:smollm2 (docs/performance.md, "The bundled model")
    local_threads: int | None = Field(default=None, ge=1)
    """CPU threads llama.cpp computes ``local:smollm2`` with; ``None`` = the CPUs this
    process may use minus one (at least 1), leaving a core for the server."""

    def resolved_store_url(self) -> str:
        """The store URL, defaulting to an SQLite file in ``data_dir``."""
        if self.store_url:
            return self.store_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'tokenwire.db'}"

    def resolved_queue_url(self) -> str:
        """The job queue's Redis URL.

        Raises:
            ConfigurationError: no ``queue_url`` and ``log_url`` is not a Redis URL.
        """
        url = self.queue_url or self.log_url
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError(
                "producers='queue' needs a Redis job queue: set TOKENWIRE_QUEUE_URL "
                "or a redis:// TOKENWIRE_LOG_URL"
            )
        return url

    def resolved_pusher_url(self) -> str | None:
        """Redis URL of the Pusher fan-out, or ``None`` for one process."""
        url = self.pusher_url or self.log_url
        return url if url.startswith(("redis://", "rediss://", "unix://")) else None

    def resolved_models(self) -> list[str]:
        """The configured models: explicit, or the default model plus one per provider
        whose key is set, plus ``local:smollm2``."""
        if self.models:
            return list(self.models)
        found: list[str] = [self.default_model] if self.default_model else []
        if os.environ.get("OPENAI_API_KEY"):
            found.append("openai:gpt-4o-mini")
        if os.environ.get("ANTHROPIC_API_KEY"):
            found.append("anthropic:claude-sonnet-4-6")
        if os.environ.get("GEMINI_API_KEY"):
            found.append("gemini:gemini-2.5-flash")
        found.append("local:smollm2")
        return list(dict.fromkeys(found))

    def resolved_default_model(self) -> str:
        return self.default_model or self.resolved_models()[0]
