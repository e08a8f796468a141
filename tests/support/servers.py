"""Real servers on 127.0.0.1 for tests: an ASGI app under uvicorn in a thread, or a
``tokenwire`` command in a subprocess. Both wait for readiness by polling the socket,
never by sleeping a fixed time."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(
    url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def uvicorn_thread(app: Any, **options: Any) -> Iterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 in a thread; yield its base URL.
    ``options`` go to ``uvicorn.Config``."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def tokenwire_process(
    *args: str, env: dict[str, str] | None = None, ready_path: str = "/"
) -> Iterator[str]:
    """Run ``tokenwire <args> --port N`` in a subprocess; yield its base URL.

    Generations still running when it is stopped (SIGTERM) end after 1 s
    (``TOKENWIRE_SHUTDOWN_GRACE``, unless ``env`` sets it), not the default 10 s."""
    port = free_port()
    cmd = [sys.executable, "-m", "tokenwire", *args, "--host", "127.0.0.1", "--port", str(port)]
    full_env = {"TOKENWIRE_SHUTDOWN_GRACE": "1", **os.environ, **(env or {})}
    proc = subprocess.Popen(cmd, env=full_env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + ready_path, proc=proc)
        yield base
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM ``proc``; SIGKILL it if it has not exited after ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def fake_serve(data_dir: str, tokens: dict[str, str]) -> Iterator[str]:
    """``tokenwire serve`` with the ``fake:`` models and ``TOKENWIRE_AUTH_TOKENS`` =
    ``tokens`` (token → owner), its store in ``data_dir``; yield its base URL."""
    env = {
        "TOKENWIRE_DATA_DIR": data_dir,
        "TOKENWIRE_FAKE_PROVIDER": "1",
        "TOKENWIRE_AUTH_TOKENS": json.dumps(tokens),
    }
    args = ("serve", "--log-level", "warning")
    with tokenwire_process(*args, env=env, ready_path="/healthz") as url:
        yield url
