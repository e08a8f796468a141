"""Who is calling, and what they may touch: the one place every surface asks.

tokenwire does not log people in; it recognises them. Identity sources, tried in
this order for each request:

1. the embedding app's hook, ``Tokenwire(identify=...)``: ``async (request) ->
   Identity | None`` (it may raise :class:`~tokenwire.errors.AuthenticationError`);
2. ``Authorization: Bearer <token>`` looked up in ``TOKENWIRE_AUTH_TOKENS``
   (``{"token": "user id"}``);
3. ``Authorization: Bearer <JWT>`` verified with PyJWT against
   ``TOKENWIRE_JWT_SECRET`` (HS256) or ``TOKENWIRE_JWT_PUBLIC_KEY`` (RS256, ES256):
   ``sub`` is the user id; ``exp`` and ``nbf`` are checked when present (RFC 7519
   §4.1.4, §4.1.5), ``aud``/``iss`` against ``TOKENWIRE_JWT_AUDIENCE``/``_ISSUER``.

A bearer token that none of 2 and 3 accepts is a 401 (``WWW-Authenticate: Bearer
error="invalid_token"``, RFC 6750 §3.1), even when anonymous callers are allowed.
When any source is configured, a request with no identity is a 401
(``WWW-Authenticate: Bearer``) unless ``TOKENWIRE_ALLOW_ANONYMOUS=1``.

What identity decides (:class:`Access`; the rule itself is
:func:`tokenwire.store.models.may_touch`):

- everything a caller starts, on any surface (native API, OpenAI-compatible,
  AI SDK), is in a conversation owned by its creator (anonymous: no owner); a
  stream's owner is its conversation's;
- a conversation, stream or ``private-conversation.{id}`` channel with an owner
  answers 404 to anyone else, as if it did not exist; one without an owner is
  anybody's who knows its id;
- ``GET /v1/conversations`` lists the caller's own conversations (an anonymous
  caller: those nobody owns), paging over those only.

The engine reads a request through :class:`HTTPRequest` (its headers, client
address and ASGI scope), which starlette's ``Request``, ``WebSocket`` and
``HTTPConnection`` satisfy; it imports no web framework. The HTTP-only helpers
(:func:`~tokenwire.server.identity.require_json`,
:func:`~tokenwire.server.identity.is_loopback`) are in the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tokenwire.errors import (
    AuthenticationError,
    ConfigurationError,
    ConversationNotFoundError,
    StreamNotFoundError,
)
from tokenwire.store.models import may_touch

if TYPE_CHECKING:
    from tokenwire.log.base import StreamInfo, StreamLog
    from tokenwire.settings import Settings
    from tokenwire.store import ConversationRecord, Store

__all__ = [
    "Access",
    "HTTPRequest",
    "Identify",
    "Identity",
    "JWTVerifier",
    "bearer_tokens",
]


class Identity(msgspec.Struct, frozen=True):
    """A caller: ``id`` (owner of conversations, Pusher ``user_id``) and ``info``
    (shown to other members of presence channels as ``user_info``)."""

    id: str
    info: dict[str, Any] = msgspec.field(default_factory=dict)


class Client(Protocol):
    """The peer of a connection (starlette's ``Address``)."""

    @property
    def host(self) -> str: ...


class HTTPRequest(Protocol):
    """What the engine reads of an HTTP request or WebSocket handshake; starlette's
    ``HTTPConnection`` (so ``Request`` and ``WebSocket``) satisfies it."""

    @property
    def headers(self) -> Mapping[str, str]:
        """The request headers, by lower-case name."""

    @property
    def client(self) -> Client | None:
        """The peer, ``None`` when the server does not know it."""

    @property
    def scope(self) -> MutableMapping[str, Any]:
        """The ASGI scope (:meth:`Access.caller` keeps the caller in its ``state``)."""


Identify = Callable[[Any], Awaitable[Identity | None]]
"""``async (request) -> Identity | None``, called with the request (a starlette
``HTTPConnection``: an :class:`HTTPRequest`); ``None`` = anonymous. May raise
:class:`~tokenwire.errors.AuthenticationError` (401) for credentials it rejects.
The parameter is typed ``Any`` so that a hook annotated with starlette's
``Request`` or ``HTTPConnection`` is accepted."""

MIN_SECRET_BYTES = 32
"""Shortest accepted HS256 secret, bytes (RFC 7518 §3.2: at least the hash's size)."""
_STATE_KEY = "tokenwire.caller"
"""Where :meth:`Access.caller` keeps the identity found, in the ASGI scope's ``state``."""


class JWTVerifier:
    """Verifies bearer JWTs with PyJWT and returns their ``sub`` as an :class:`Identity`.

    Args:
        secret: HMAC secret for HS256 tokens, at least :data:`MIN_SECRET_BYTES`
            bytes; ``None`` = none accepted.
        public_key: PEM public key (or the path of a PEM file): RSA for RS256,
            P-256 for ES256 (also RS384/RS512, ES384/ES512 and EdDSA by key type);
            ``None`` = none accepted.
        audience: the ``aud`` required; ``None`` = a token carrying ``aud`` is refused.
        issuer: the ``iss`` required; ``None`` = not checked.

    Raises:
        ConfigurationError: neither key given, ``secret`` is too short, or
            ``public_key`` is not a PEM public key of a supported type.
    """

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self.keys: dict[str, Any] = {}
        """Accepted ``alg`` header value -> its key: the token's ``alg`` picks the key,
        so an HS256 token can never be checked against the public key."""
        if secret:
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise ConfigurationError(
                    f"TOKENWIRE_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes long "
                    "for HS256 (RFC 7518 §3.2)"
                )
            self.keys["HS256"] = secret
        if public_key:
            key = _load_public_key(public_key)
            for alg in _algorithms_for(key):
                self.keys[alg] = key
        if not self.keys:
            raise ConfigurationError("JWTVerifier needs a secret or a public key")
        self.audience = audience
        self.issuer = issuer

    def verify(self, token: str) -> Identity:
        """The identity a valid token stands for.

        Raises:
            AuthenticationError: the token is malformed, signed with another
                algorithm or key, expired (``exp``), not valid yet (``nbf``), for
                another audience or issuer, or has no string ``sub``.
        """
        try:
            alg = jwt.get_unverified_header(token).get("alg")
            if alg not in self.keys:
                raise _invalid(f"the bearer token is signed with {alg!r}, which is not accepted")
            claims = jwt.decode(
                token,
                self.keys[alg],
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid("the bearer token has expired") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("the bearer token is not valid yet (nbf)") from None
        except jwt.InvalidSignatureError:
            raise _invalid("the bearer token's signature does not verify") from None
        except jwt.MissingRequiredClaimError:
            raise _invalid("the bearer token has no sub claim") from None
        except jwt.InvalidAudienceError:
            raise _invalid("the bearer token is for another audience (aud)") from None
        except jwt.InvalidIssuerError:
            raise _invalid("the bearer token is from another issuer (iss)") from None
        except jwt.PyJWTError:
            raise _invalid("the bearer token is not a valid JWT") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise _invalid("the bearer token's sub claim must be a non-empty string")
        name = claims.get("name")
        return Identity(subject, {"name": name if isinstance(name, str) else subject})

    @classmethod
    def from_settings(cls, settings: Settings) -> JWTVerifier | None:
        """The verifier ``settings`` configure, or ``None`` without a JWT key."""
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        if not secret and not settings.jwt_public_key:
            return None
        return cls(
            secret=secret,
            public_key=settings.jwt_public_key,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )


def bearer_tokens(tokens: Mapping[str, str], jwt_verifier: JWTVerifier | None = None) -> Identify:
    """An :data:`Identify` reading ``Authorization: Bearer <token>``: a token of
    ``tokens`` (token -> user id) or, failing that, a JWT ``jwt_verifier`` accepts.

    No ``Authorization`` header, or another scheme, is anonymous (``None``); a bearer
    token neither accepts raises :class:`~tokenwire.errors.AuthenticationError`.
    """

    async def identify(request: HTTPRequest) -> Identity | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer":
            return None
        if not token:
            raise _invalid("the bearer token is empty")
        if token in tokens:
            user_id = tokens[token]
            return Identity(user_id, {"name": user_id})
        if jwt_verifier is not None and token.count(".") == 2:
            return jwt_verifier.verify(token)
        raise _invalid("the bearer token is not valid")

    return identify


class Access:
    """Answers "who is calling" and "may they touch this conversation, stream or
    channel" for every surface (native API, OpenAI-compatible, AI SDK, Pusher auth).

    Args:
        settings: the identity sources (``auth_tokens``, ``jwt_*``) and
            ``allow_anonymous``.
        log: the stream log (a stream's owner is in its ``meta``).
        store: returns the opened store (a conversation's owner is in it).
        identify: the embedding app's hook, tried before the bearer sources.

    Raises:
        ConfigurationError: a JWT key in ``settings`` cannot be loaded.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        log: StreamLog,
        store: Callable[[], Store],
        identify: Identify | None = None,
    ) -> None:
        self._log = log
        self._store = store
        self._hook = identify
        verifier = JWTVerifier.from_settings(settings)
        self._bearer = (
            bearer_tokens(settings.auth_tokens, verifier)
            if settings.auth_tokens or verifier is not None
            else None
        )
        self.required = (identify is not None or self._bearer is not None) and not (
            settings.allow_anonymous
        )
        """Whether a caller without an identity is refused (401)."""

    async def identify(self, request: HTTPRequest) -> Identity | None:
        """The caller's identity from the sources, ``None`` for anonymous (not cached,
        not checked against :attr:`required`: use :meth:`caller`).

        Raises:
            AuthenticationError: invalid credentials.
        """
        if self._hook is not None:
            identity = await self._hook(request)
            if identity is not None:
                return identity
        return None if self._bearer is None else await self._bearer(request)

    async def caller(self, request: HTTPRequest) -> Identity | None:
        """Who is calling (found once per request, then remembered in its scope).

        Returns:
            The identity, or ``None`` for an anonymous caller where that is allowed.

        Raises:
            AuthenticationError: invalid credentials, or none where an identity is
                required (HTTP 401).
        """
        state = request.scope.setdefault("state", {})
        if _STATE_KEY in state:
            found: Identity | None = state[_STATE_KEY]
            return found
        identity = await self.identify(request)
        if identity is None and self.required:
            raise AuthenticationError(
                "authentication required: send 'Authorization: Bearer <token>'"
            )
        state[_STATE_KEY] = identity
        return identity

    async def owner(self, request: HTTPRequest) -> str | None:
        """The caller's user id: the owner of what they start (``None``: anonymous).

        Raises:
            AuthenticationError: as :meth:`caller`.
        """
        identity = await self.caller(request)
        return None if identity is None else identity.id

    async def conversation(self, request: HTTPRequest, conversation_id: str) -> ConversationRecord:
        """The conversation, if the caller may touch it.

        Raises:
            AuthenticationError: as :meth:`caller`.
            ConversationNotFoundError: no such conversation, or another owner's (404).
        """
        record = await self.find_conversation(request, conversation_id)
        if record is None:
            raise ConversationNotFoundError(conversation_id)
        return record

    async def find_conversation(
        self, request: HTTPRequest, conversation_id: str
    ) -> ConversationRecord | None:
        """The conversation, or ``None`` when there is none with that id (for a
        surface that then creates it, as ``POST /api/chat`` does).

        Raises:
            AuthenticationError: as :meth:`caller`.
            ConversationNotFoundError: it is another owner's (404).
        """
        caller = await self.owner(request)
        record = await self._store().get_conversation(conversation_id)
        if record is not None and not may_touch(record.owner, caller):
            raise ConversationNotFoundError(conversation_id)
        return record

    async def stream(self, request: HTTPRequest, stream_id: str) -> StreamInfo:
        """What the log knows of the stream, if the caller may touch it.

        Raises:
            AuthenticationError: as :meth:`caller`.
            StreamNotFoundError: no such stream, or another owner's (404).
            StreamExpiredError: past retention (410). The log forgets the owner with
                the events, so this answer is the same for anyone who has the id
                (a random 128-bit one); the message itself stays owner-only in the
                store.
        """
        caller = await self.owner(request)
        info = await self._log.info(stream_id)
        if not may_touch(info.meta.get("owner"), caller):
            raise StreamNotFoundError(stream_id)
        return info

    async def conversations(
        self,
        request: HTTPRequest,
        *,
        limit: int,
        before: float | None,
        source: str | None = None,
        query: str | None = None,
    ) -> list[ConversationRecord]:
        """The caller's conversations, newest first: up to ``limit`` with
        ``updated_at < before`` (Unix seconds; ``None`` = from the newest), only
        those started from ``source`` and whose title contains ``query`` when given
        (see :meth:`~tokenwire.store.Store.list_conversations`). An anonymous caller
        gets those nobody owns. The store filters before it counts, so a page is
        never short because of others' conversations.

        Raises:
            AuthenticationError: as :meth:`caller`.
        """
        caller = await self.owner(request)
        return await self._store().list_conversations(
            owner=caller,
            unowned=caller is None,
            limit=limit,
            before=before,
            source=source,
            query=query,
        )


def _invalid(message: str) -> AuthenticationError:
    return AuthenticationError(message, invalid_token=True)


def _load_public_key(value: str) -> Any:
    text = value.strip()
    if not text.startswith("-----BEGIN"):
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise ConfigurationError(
                f"TOKENWIRE_JWT_PUBLIC_KEY is neither a PEM public key nor a readable file "
                f"({exc.strerror})"
            ) from None
    try:
        return load_pem_public_key(text.encode())
    except ValueError:
        raise ConfigurationError("TOKENWIRE_JWT_PUBLIC_KEY is not a PEM public key") from None


def _algorithms_for(key: Any) -> list[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256", "RS384", "RS512"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name in by_curve:
            return [by_curve[key.curve.name]]
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ["EdDSA"]
    raise ConfigurationError(
        "TOKENWIRE_JWT_PUBLIC_KEY must be an RSA, EC (P-256, P-384, P-521) or Ed25519 key"
    )
