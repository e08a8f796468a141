"""The exception tree: every class in :mod:`tokenwire.errors` carries its HTTP status
and code, and the native API's answer is read from the class."""

from __future__ import annotations

import json

import pytest
import redis.exceptions

from tests.support.servers import free_port
from tokenwire import errors
from tokenwire.errors import (
    ApiAuthError,
    AuthenticationError,
    BusUnavailableError,
    InvalidRequestError,
    PusherRequestError,
    QueueUnavailableError,
    RateLimitedError,
    RequestTooLargeError,
    StoreError,
    TokenwireError,
    UnknownModelError,
)
from tokenwire.queue import GenerationQueue
from tokenwire.server.errors import error_response, pusher_error_response
from tokenwire.settings import Settings
from tokenwire.transports.pusher.bus import BusMessage, RedisBus

CLASSES = [
    getattr(errors, name)
    for name in errors.__all__
    if isinstance(getattr(errors, name), type) and name != "TokenwireError"
]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_class_has_a_status_and_a_code(cls: type[TokenwireError]) -> None:
    assert issubclass(cls, TokenwireError)
    assert "http_status" in vars(cls), f"{cls.__name__} inherits its status"
    assert 400 <= cls.http_status <= 599
    assert cls.error_code.isidentifier()
    assert cls.error_code == cls.error_code.lower()


def _body(exc: TokenwireError) -> tuple[int, object, dict[str, str]]:
    response = error_response(exc)
    return response.status_code, json.loads(bytes(response.body)), dict(response.headers)


def test_fixed_message_hides_the_exception_text() -> None:
    status, body, _ = _body(StoreError("connection refused at 10.0.0.3:5432"))
    assert (status, body) == (503, {"detail": "the conversation store is unavailable"})


def test_field_errors_have_fastapis_validation_shape() -> None:
    status, body, _ = _body(InvalidRequestError("params.tokens", "must be > 0"))
    loc = ["body", "params", "tokens"]
    assert (status, body) == (
        422,
        {"detail": [{"loc": loc, "msg": "must be > 0", "type": "value_error"}]},
    )
    status, body, _ = _body(UnknownModelError("no provider 'x'"))
    assert status == 422
    assert body == {
        "detail": [{"loc": ["body", "model"], "msg": "no provider 'x'", "type": "value_error"}]
    }


def test_headers_of_401_and_429() -> None:
    status, body, headers = _body(AuthenticationError("expired", invalid_token=True))
    assert (status, body) == (401, {"detail": "expired"})
    assert headers["www-authenticate"] == 'Bearer error="invalid_token"'
    status, body, headers = _body(RateLimitedError("concurrent", 0, "too many at once"))
    assert (status, body, headers["retry-after"]) == (429, {"detail": "too many at once"}, "1")


# -- foreign errors become ours at their boundary -------------------------------


def _nothing_listens() -> str:
    """A Redis URL on a port nothing listens on (connections are refused)."""
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.mark.anyio
async def test_the_job_queue_raises_queue_unavailable_from_redis() -> None:
    queue = GenerationQueue.from_settings(Settings(queue_url=_nothing_listens()))
    try:
        with pytest.raises(QueueUnavailableError) as caught:
            await queue.ping()
        assert isinstance(caught.value.__cause__, redis.exceptions.RedisError)
        assert "127.0.0.1" not in str(caught.value)  # no client text reaches a caller
        with pytest.raises(QueueUnavailableError):
            await queue.claim("s1")
    finally:
        await queue.close()


@pytest.mark.anyio
async def test_the_pusher_bus_raises_bus_unavailable_from_redis() -> None:
    bus = RedisBus(_nothing_listens())
    try:
        with pytest.raises(BusUnavailableError) as caught:
            await bus.channels("app")
        assert isinstance(caught.value.__cause__, redis.exceptions.RedisError)
        with pytest.raises(BusUnavailableError):
            await bus.publish(BusMessage(kind="publish", app_id="app", channel="c"))
    finally:
        await bus.close()


def test_pusher_and_body_limit_errors_are_answered_from_the_tree() -> None:
    refused = pusher_error_response(PusherRequestError("unknown app_id 9", status=404))
    assert (refused.status_code, json.loads(bytes(refused.body))) == (
        404,
        {"error": "unknown app_id 9"},
    )
    signature = pusher_error_response(ApiAuthError("body_md5 does not match the body"))
    assert (signature.status_code, json.loads(bytes(signature.body))) == (
        401,
        {"error": "body_md5 does not match the body"},
    )
    anonymous = pusher_error_response(AuthenticationError("who are you"))
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    status, body, _ = _body(RequestTooLargeError(1024))
    assert (status, body) == (413, {"detail": "request body larger than 1024 bytes"})
