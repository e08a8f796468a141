"""The exception tree: every class in :mod:`tokenwire.errors` carries its HTTP status
and code, and the native API's answer is read from the class."""

from __future__ import annotations

import json

import pytest

from tokenwire import errors
from tokenwire.errors import (
    AuthenticationError,
    InvalidRequestError,
    RateLimitedError,
    StoreError,
    TokenwireError,
    UnknownModelError,
)
from tokenwire.server.errors import error_response

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
