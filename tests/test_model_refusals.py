"""A model that cannot be served is refused with a 4xx on every surface that starts
a generation, before anything is created; and the CLI says so in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import uvicorn_thread
from tokenwire import Settings, create_app

UNSERVABLE = {
    "anthropic:claude-sonnet-4-6": "ANTHROPIC_API_KEY",  # no key in the environment
    "openai:gpt-4o": "OPENAI_API_KEY",
    "local:gpt-5": "'smollm2'",
    "nope:x": "unknown provider 'nope'",
}
_KEYS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        for name in _KEYS:
            env.delenv(name, raising=False)
        app = create_app(Settings(data_dir=tmp_path_factory.mktemp("data")))
        with uvicorn_thread(app) as url:
            yield url


def _attempts(model: str) -> list[tuple[str, dict[str, object], dict[str, str]]]:
    messages = [{"role": "user", "content": "hi"}]
    return [
        ("/v1/chat", {"model": model, "messages": messages}, {}),
        ("/v1/chat", {"model": model, "messages": messages}, {"accept": "text/event-stream"}),
        ("/v1/chat/completions", {"model": model, "messages": messages, "stream": True}, {}),
        (
            "/api/chat",
            {
                "id": f"chat-{model}",
                "model": model,
                "messages": [
                    {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}
                ],
            },
            {},
        ),
    ]


@pytest.mark.parametrize("model", UNSERVABLE)
def test_every_surface_refuses_before_creating_anything(base: str, model: str) -> None:
    with httpx.Client(base_url=base, timeout=30) as client:
        for path, body, headers in _attempts(model):
            response = client.post(path, json=body, headers=headers)
            assert 400 <= response.status_code < 500, (path, response.status_code)
            assert UNSERVABLE[model] in response.text, (path, response.text)
            assert not response.headers["content-type"].startswith("text/event-stream")
        assert client.get("/v1/conversations").json()["data"] == []


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenwire", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in {**os.environ, **(env or {})}.items() if k not in _KEYS},
    )


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (("chat", "hi", "--model", "anthropic:claude-sonnet-4-6"), {}, "ANTHROPIC_API_KEY"),
        (("chat", "hi", "--model", "nope:x"), {}, "unknown provider 'nope'"),
        (("serve",), {"TOKENWIRE_PORT": "eighty"}, "TOKENWIRE_PORT='eighty'"),
        (("serve",), {"TOKENWIRE_LOG_URL": "kafka://x"}, "TOKENWIRE_LOG_URL"),
        (("mock-provider", "--recordings", "/nonexistent"), {}, "/nonexistent"),
    ],
)
def test_cli_user_errors_are_one_line(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], said: str
) -> None:
    done = _cli(*args, env={"TOKENWIRE_DATA_DIR": str(tmp_path), **env})
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and said in done.stderr, done.stderr
    assert done.stderr.startswith("tokenwire: ")
