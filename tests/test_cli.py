"""The ``tokenwire`` command as a person runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from tokenwire.store import Store

# Starts the CLI with SIGINT at Python's default handler, as an interactive shell
# does. A background job (CI, nohup, `cmd &`) inherits SIGINT *ignored*, and Python
# keeps an inherited SIG_IGN, so Ctrl-C would then reach nothing.
_MAIN = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'tokenwire'; from tokenwire.cli import main; main()"
)


def tokenwire(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _MAIN, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "TOKENWIRE_FAKE_PROVIDER": "1"},
        **kwargs,  # type: ignore[arg-type]
    )


def test_chat_streams_the_answer(tmp_path: Path) -> None:
    proc = tokenwire("chat", "héllo wörld 👋", "--model", "fake:echo", "--data-dir", str(tmp_path))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out == "héllo wörld 👋\n"
    assert "stop" in err


def test_ctrl_c_cancels_and_stores_the_partial_answer(tmp_path: Path) -> None:
    proc = tokenwire(
        "chat",
        "x",
        "--model",
        "fake:lorem",
        "--param",
        "stall_after=2",
        "--data-dir",
        str(tmp_path),
    )
    assert proc.stdout is not None
    try:
        seen = ""
        while "ipsum" not in seen:  # the two deltas arrive, then the provider stalls
            char = proc.stdout.read(1)
            assert char, proc.stderr.read() if proc.stderr else ""
            seen += char
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # never leave a stalled generation behind
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert "[cancelled]" in err

    async def stored() -> tuple[str, list[dict[str, object]]]:
        store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'tokenwire.db'}")
        try:
            (conversation,) = await store.list_conversations()
            message = (await store.messages(conversation.id))[-1]
            return message.status, message.parts
        finally:
            await store.close()

    status, parts = asyncio.run(stored())
    assert status == "cancelled"
    assert parts == [{"type": "text", "text": "lorem ipsum"}]


def test_bad_param_is_a_usage_error(tmp_path: Path) -> None:
    proc = tokenwire("chat", "x", "--param", "novalue", "--data-dir", str(tmp_path))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "KEY=VALUE" in err


def test_help_lists_the_commands() -> None:
    proc = tokenwire("--help")
    out, _ = proc.communicate(timeout=60)
    for command in ("serve", "chat", "mock-provider"):
        assert command in out


def test_tools_that_cannot_be_loaded_stop_serve_and_worker(tmp_path: Path) -> None:
    for command in ("serve", "worker"):
        proc = tokenwire(
            command, "--tools", "tokenwire.testing:nothing", "--data-dir", str(tmp_path)
        )
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (command, err)
        assert "tools 'tokenwire.testing:nothing': cannot load it" in out + err
