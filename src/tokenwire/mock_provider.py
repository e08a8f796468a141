"""``tokenwire mock-provider``: recorded provider streams served over the real APIs.

DESIGN §10 (a contract). The recordings under a directory (``<api>/<name>.sse``
with ``<name>.meta.json``, see ``recordings/README.md``) are replayed over the
providers' HTTP APIs, so the official SDKs can point at this server. The default
directory is :data:`BUNDLED_RECORDINGS`, the copy that ships inside the package
(each recording's source and license in its ``NOTICE``):

- ``POST /v1/chat/completions``: recordings whose ``api`` is ``openai-chat``
  (``AsyncOpenAI(base_url="http://HOST:PORT/v1")``);
- ``POST /v1/responses``: ``openai-responses`` (same base URL);
- ``POST /v1/messages``: ``anthropic-messages``
  (``AsyncAnthropic(base_url="http://HOST:PORT")``);
- ``POST /v1beta/models/{model}:streamGenerateContent[?alt=sse]``: ``gemini``
  (``GEMINI_BASE_URL=http://HOST:PORT``); the model is the one in the path. The
  body is replayed as recorded, whatever ``alt`` says: ``.sse`` recordings are
  Gemini's ``alt=sse`` framing, ``.json`` ones its JSON-array framing;
- ``POST /api/chat`` and ``POST /api/generate``: ``ollama-generate``
  (``OLLAMA_BASE_URL=http://HOST:PORT``). The recordings at hand are of
  ``/api/generate``, whose lines carry the text in ``response`` where ``/api/chat``
  has ``message.content``; ``/api/chat`` replays them unchanged (tokenwire's Ollama
  parser reads both shapes). ``stream`` defaults to true, as in Ollama.

The JSON body's ``model`` (Gemini: the path's) picks the recording: its path under the directory
without extension, e.g. ``openai-chat/gpt-4o_refusal``. An unknown model, or a
recording of another API than the endpoint's, is answered 404 in that API's error
shape naming the model (the SDKs raise ``NotFoundError``). Only streams are
recorded: a request without ``"stream": true`` is answered 400. Checks run in
this order: JSON body with a string ``model`` (400), recording of the endpoint's
API (404), valid ``x-mock-*`` headers (400), ``x-mock-status``, ``stream`` (400).
The body is replayed with the recording's ``status`` and ``content_type``, one
network write per event (an SSE event is the bytes up to and including its blank
line; CRLF, comments and padding are kept exactly), events ``pace_ms`` apart
(default 0).

Request headers (the contract for tests, benchmarks and frontend developers;
numbers are whole numbers >= 0, ``N`` counts events of the recording, and is
clamped to their number; an invalid value is answered 400):

- ``x-mock-status: S`` (400-599): answer HTTP ``S`` before any body, in the API's
  error shape; 429 is a ``rate_limit_error`` with ``retry-after: 1``, 529 an
  Anthropic ``overloaded_error``.
- ``x-mock-cut-after: N``: send N events, then close the connection without the
  chunked body's last chunk; clients see an incomplete read (httpx:
  ``RemoteProtocolError``), never a clean end. Under uvicorn this logs "ASGI
  callable returned without completing response".
- ``x-mock-stall-after: N``: send N events, then nothing more while the client
  stays connected (a client read timeout ends it).
- ``x-mock-inband-error: N``: send N events, then the API's in-band error (Chat
  Completions: ``data: {"error": {...}}``; Responses: the ``error`` event;
  Anthropic: ``event: error`` with an ``overloaded_error``) and end the body.
- At most one of cut, stall and in-band error per request.
- ``x-mock-pace-ms: MS``: milliseconds between two events for this request.
- ``x-mock-timing: recorded``: for recordings with a ``.reads.json`` (seconds
  since the request and bytes of every socket read), replay those reads at their
  recorded times instead of events; ``N`` above then counts reads. Excludes
  ``x-mock-pace-ms``; 400 when the recording has no timing.
- ``x-mock-tag: TEXT``: stored with the request record, to find it again.

Responses carry ``x-mock-request-id`` (also as ``x-request-id`` and
``request-id``). Observation endpoints:

- ``GET /`` and ``GET /_mock/health``: ``{"ok": true}``.
- ``GET /_mock/models``: ``{api: [recording names]}`` for every recording found.
- ``GET /_mock/requests[?tag=TEXT]``: the records of API requests, oldest first
  (the newest 10,000 are kept), each ``{"id", "tag", "path", "api", "model",
  "status", "outcome", "events_sent", "events_total", "headers", "started_at",
  "ended_at"}`` (times in seconds since the epoch, ``ended_at`` ``null`` while
  running; credentials in headers redacted; ``events_*`` count reads under
  ``x-mock-timing``). ``outcome`` (:class:`Outcome`) is ``received`` (being
  checked), ``rejected`` (HTTP error ``status``, no body), ``streaming``,
  ``stalling``, or how it ended: ``completed``, ``inband_error``, ``cut``, or
  ``client_disconnected`` (the client closed the connection first; detected at
  once, also while pacing or stalling). ``DELETE /_mock/requests`` forgets the
  records (ids keep counting). In-process, ``app.state.mock_requests`` holds the
  :class:`RequestRecord` objects.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenwire.mock_provider_faults import (
    ANTHROPIC_MESSAGES,
    GEMINI,
    OLLAMA_GENERATE,
    OPENAI_CHAT,
    OPENAI_RESPONSES,
    FaultHeaderError,
    Faults,
    Outcome,
    ReplayResponse,
    RequestRecord,
    error_body,
    error_headers,
    parse_faults,
)

__all__ = [
    "BUNDLED_RECORDINGS",
    "Outcome",
    "Recording",
    "RequestRecord",
    "create_app",
    "load_recordings",
    "serve",
    "split_events",
]

BUNDLED_RECORDINGS = Path(__file__).parent / "recordings"
"""The recordings shipped with tokenwire (real provider responses; sources and
licenses in ``NOTICE`` beside them)."""

_BODY_SUFFIXES = (".sse", ".ndjson", ".json")
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)")
_REDACTED_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key"})
_MAX_RECORDS = 10_000


def split_events(body: bytes, content_type: str = "text/event-stream") -> tuple[bytes, ...]:
    """Cut a recorded body into the units replayed one network write each.

    For ``text/event-stream`` a unit is an event: every line up to and including
    the blank line that ends it (lines end in CRLF, LF or CR, HTML Living
    Standard, "Interpreting an event stream"), comments included. For
    ``application/x-ndjson`` a unit is a line. Anything else is one unit.

    Args:
        body: the recorded bytes.
        content_type: the recording's ``content_type``; parameters are ignored.

    Returns:
        The units in order; their concatenation is ``body``. Bytes after the last
        blank line (or line break) form a last unit.
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind not in ("text/event-stream", "application/x-ndjson"):
        return (body,) if body else ()
    units: list[bytes] = []
    start = 0
    for line in _LINE.finditer(body):
        if kind == "application/x-ndjson" or not line.group().strip(b"\r\n"):
            units.append(body[start : line.end()])
            start = line.end()
    if start < len(body):
        units.append(body[start:])
    return tuple(units)


@dataclass(frozen=True, slots=True)
class Recording:
    """One recorded response.

    Attributes:
        name: path under the recordings directory without extension.
        api: the metadata's ``api`` (``openai-chat``, ``anthropic-messages`` …).
        content_type: the ``Content-Type`` to answer with.
        status: the HTTP status to answer with.
        events: the body cut by :func:`split_events`.
        reads: ``(seconds since the request, bytes)`` of every recorded socket
            read, or ``None`` without a ``.reads.json``.
    """

    name: str
    api: str
    content_type: str
    status: int
    events: tuple[bytes, ...]
    reads: tuple[tuple[float, int], ...] | None = None

    @property
    def body(self) -> bytes:
        """The whole recorded body."""
        return b"".join(self.events)


def load_recordings(directory: Path) -> dict[str, Recording]:
    """Read every ``<name>.meta.json`` under ``directory`` with its body file.

    Args:
        directory: the recordings root (``<api>/<name>.{sse,ndjson,json}``).

    Returns:
        Recordings by name; a metadata file without a body file is skipped.

    Raises:
        NotADirectoryError: ``directory`` is not a directory.
        ValueError: a ``.reads.json`` does not add up to its body's length.
    """
    if not directory.is_dir():
        raise NotADirectoryError(f"recordings directory not found: {directory}")
    found: dict[str, Recording] = {}
    for meta_path in sorted(directory.rglob("*.meta.json")):
        stem = meta_path.with_name(meta_path.name.removesuffix(".meta.json"))
        body_path = next(
            (p for s in _BODY_SUFFIXES if (p := stem.with_name(stem.name + s)).is_file()), None
        )
        if body_path is None:
            continue
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        body = body_path.read_bytes()
        content_type = str(meta.get("content_type", "text/event-stream"))
        name = stem.relative_to(directory).as_posix()
        found[name] = Recording(
            name=name,
            api=str(meta["api"]),
            content_type=content_type,
            status=int(meta.get("status", 200)),
            events=split_events(body, content_type),
            reads=_load_reads(stem.with_name(stem.name + ".reads.json"), len(body)),
        )
    return found


def _load_reads(path: Path, body_length: int) -> tuple[tuple[float, int], ...] | None:
    if not path.is_file():
        return None
    reads = tuple(
        (float(r["t"]), int(r["bytes"])) for r in json.loads(path.read_text(encoding="utf-8"))
    )
    if sum(n for _, n in reads) != body_length:
        raise ValueError(
            f"{path}: the reads add up to another length than the body's {body_length} bytes"
        )
    return reads


class _Rejection(Exception):
    """A request answered with HTTP ``status`` and ``message`` in the API's error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


_ENDPOINTS = {
    OPENAI_CHAT: ("/v1/chat/completions",),
    OPENAI_RESPONSES: ("/v1/responses",),
    ANTHROPIC_MESSAGES: ("/v1/messages",),
    GEMINI: ("/v1beta/models/{model}:streamGenerateContent",),
    OLLAMA_GENERATE: ("/api/chat", "/api/generate"),
}
_GEMINI_METHOD = ":streamGenerateContent"


def _gemini_model(target: str) -> str | None:
    """The model of a Gemini path after ``/v1beta/`` (``models/{model}:streamGenerateContent``)."""
    if not target.startswith("models/") or not target.endswith(_GEMINI_METHOD):
        return None
    return target.removeprefix("models/").removesuffix(_GEMINI_METHOD) or None


def _wants_stream(api: str, body: dict[str, object]) -> bool:
    if api == GEMINI:  # the method itself streams
        return True
    if api == OLLAMA_GENERATE:  # Ollama streams unless told not to
        return body.get("stream", True) is True
    return body.get("stream") is True


class _MockProvider:
    """The app's state and endpoints."""

    def __init__(self, recordings: dict[str, Recording], pace_ms: float) -> None:
        self.recordings = recordings
        self.pace_ms = pace_ms
        self.records: deque[RequestRecord] = deque(maxlen=_MAX_RECORDS)
        self._ids = itertools.count(1)

    def endpoints(self, api: str) -> list[Route]:
        async def replay(request: Request) -> Response:
            return await self._replay(request, api)

        if api == GEMINI:
            return [Route("/v1beta/{target:path}", replay, methods=["POST"])]
        return [Route(path, replay, methods=["POST"]) for path in _ENDPOINTS[api]]

    async def _replay(self, request: Request, api: str) -> Response:
        headers = {
            k: ("<redacted>" if k in _REDACTED_HEADERS else v) for k, v in request.headers.items()
        }
        record = RequestRecord(
            id=next(self._ids),
            path=request.url.path,
            api=api,
            headers=headers,
            tag=request.headers.get("x-mock-tag"),
        )
        self.records.append(record)
        try:
            recording, faults = await self._select(request, record)
        except _Rejection as rejection:
            return self._reject(record, rejection.status, rejection.message)
        chunks, gaps = self._plan(recording, faults)
        record.status, record.events_total = recording.status, len(chunks)
        return ReplayResponse(
            chunks=chunks,
            gaps=gaps,
            faults=faults,
            record=record,
            status=recording.status,
            headers={**_ids(record), "content-type": recording.content_type},
        )

    async def _select(self, request: Request, record: RequestRecord) -> tuple[Recording, Faults]:
        """The recording and faults a request asks for; checks in the documented order.

        Raises:
            _Rejection: the request is answered with an HTTP error instead.
        """
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise _Rejection(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise _Rejection(400, "the request body is not a JSON object")
        if record.api == GEMINI:
            model = _gemini_model(request.path_params.get("target", ""))
            if model is None:
                path = _ENDPOINTS[GEMINI][0]
                raise _Rejection(404, f"Only POST {path} is served")
        else:
            model = body.get("model")
        if not isinstance(model, str):
            raise _Rejection(400, "the request body has no string `model`")
        record.model = model
        recording = self.recordings.get(model)
        if recording is None:
            raise _Rejection(404, f"The model `{model}` does not exist: no such recording")
        if recording.api != record.api:
            where = " and ".join(_ENDPOINTS.get(recording.api, ("no endpoint of this server",)))
            message = (
                f"The model `{model}` is a recording of api {recording.api}, served at {where}"
            )
            raise _Rejection(404, message)
        try:
            faults = parse_faults(request.headers)
        except FaultHeaderError as exc:
            raise _Rejection(400, str(exc)) from None
        if faults.status is not None:
            raise _Rejection(faults.status, f"Injected HTTP {faults.status} (x-mock-status)")
        if not _wants_stream(record.api, body):
            raise _Rejection(400, f"Only streams are recorded: send `stream: true` for `{model}`")
        if faults.recorded_timing and recording.reads is None:
            raise _Rejection(400, f"The recording `{model}` has no recorded timing")
        return recording, faults

    def _plan(
        self, recording: Recording, faults: Faults
    ) -> tuple[tuple[bytes, ...], tuple[float, ...]]:
        """The chunks to send and the seconds to wait before each."""
        if faults.recorded_timing and recording.reads is not None:
            body, chunks, gaps, offset, last = recording.body, [], [], 0, 0.0
            for at, size in recording.reads:
                chunks.append(body[offset : offset + size])
                gaps.append(max(at - last, 0.0))
                offset, last = offset + size, at
            return tuple(chunks), tuple(gaps)
        pace = (self.pace_ms if faults.pace_ms is None else faults.pace_ms) / 1000
        return recording.events, tuple(
            0.0 if i == 0 else pace for i in range(len(recording.events))
        )

    def _reject(self, record: RequestRecord, status: int, message: str) -> JSONResponse:
        record.status = status
        record.move(Outcome.REJECTED)
        content = error_body(record.api, status, message, request_id=f"req_mock_{record.id}")
        return JSONResponse(
            content, status_code=status, headers={**_ids(record), **error_headers(status)}
        )

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def models(self, request: Request) -> JSONResponse:
        by_api: dict[str, list[str]] = {}
        for name, recording in sorted(self.recordings.items()):
            by_api.setdefault(recording.api, []).append(name)
        return JSONResponse(by_api)

    async def requests(self, request: Request) -> JSONResponse:
        if request.method == "DELETE":
            self.records.clear()
            return JSONResponse({"ok": True})
        tag = request.query_params.get("tag")
        return JSONResponse([r.to_json() for r in self.records if tag is None or r.tag == tag])


def _ids(record: RequestRecord) -> dict[str, str]:
    value = str(record.id)
    return {"x-mock-request-id": value, "x-request-id": value, "request-id": f"req_mock_{value}"}


def create_app(recordings: Path = BUNDLED_RECORDINGS, *, pace_ms: float = 0) -> Starlette:
    """Build the mock provider's ASGI app (the endpoints and headers of the module
    docstring).

    Args:
        recordings: the recordings directory; read once, here.
        pace_ms: default milliseconds between two events; ``x-mock-pace-ms``
            overrides it per request.

    Returns:
        The Starlette app; its ``state.mock_requests`` is the deque of
        :class:`RequestRecord`, oldest first, for in-process inspection.

    Raises:
        NotADirectoryError: ``recordings`` is not a directory.
        ValueError: ``pace_ms`` is negative, or a timing file is inconsistent.
    """
    if not pace_ms >= 0:
        raise ValueError("pace_ms must be >= 0")
    mock = _MockProvider(load_recordings(recordings), pace_ms)
    routes = [
        *(route for api in _ENDPOINTS for route in mock.endpoints(api)),
        Route("/", mock.health, methods=["GET"]),
        Route("/_mock/health", mock.health, methods=["GET"]),
        Route("/_mock/models", mock.models, methods=["GET"]),
        Route("/_mock/requests", mock.requests, methods=["GET", "DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.state.mock_requests = mock.records
    return app


def serve(
    recordings: Path = BUNDLED_RECORDINGS,
    host: str = "127.0.0.1",
    port: int = 8100,
    pace_ms: float = 0,
) -> None:
    """Run the mock provider under uvicorn until interrupted.

    Args:
        recordings: the recordings directory.
        host: the interface to listen on.
        port: the TCP port to listen on.
        pace_ms: default milliseconds between two events.

    Raises:
        NotADirectoryError: ``recordings`` is not a directory.
    """
    import uvicorn

    app = create_app(recordings, pace_ms=pace_ms)
    # Stalled streams never end by themselves: give up on them 1 s into a shutdown.
    uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=1)
