"""A tokenwire cluster of real processes on 127.0.0.1 for the scale-out tests.

Gateways are ``tokenwire serve --no-producers`` processes, ready when ``/healthz``
answers and ``/readyz`` says 200 (log, queue and store reachable); workers are
``tokenwire worker`` processes, ready when saq lists them in Redis. Every wait
polls; nothing sleeps a fixed time. Every process is killed at :meth:`close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import redis

from tests.support.servers import free_port

REDIS_URL = os.environ.get("TOKENWIRE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get(
    "TOKENWIRE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
START_TIMEOUT = 30.0
"""Seconds a process may take to become ready."""


def unavailable() -> str | None:
    """Why the cluster can't run here (the reason to skip), or ``None``."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        return f"Redis at {REDIS_URL} does not answer ({exc!r})"
    if importlib.util.find_spec("asyncpg") is None:
        return "asyncpg is not installed"
    try:
        asyncio.run(pg_admin("SELECT 1"))
    except Exception as exc:
        return f"PostgreSQL at {PG_ADMIN_URL} does not answer ({exc!r})"
    return None


async def pg_admin(sql: str) -> None:
    """Run one statement on the PostgreSQL admin database."""
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Call ``check`` every 20 ms until it is true; ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


@dataclasses.dataclass
class Process:
    """One tokenwire process: a gateway (``url`` set) or a worker (``worker_id`` set)."""

    popen: subprocess.Popen[bytes]
    url: str = ""
    worker_id: str = ""

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine dies."""
        if self.alive:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)


class Cluster:
    """Gateways and workers sharing one Redis (log and queue) and one PostgreSQL database.

    Args:
        env: environment of every process (``TOKENWIRE_*``, provider variables).
        workdir: where the processes' output goes (``<name>.log``).
        concurrency: ``--concurrency`` of each worker.
    """

    def __init__(self, env: dict[str, str], workdir: Path, concurrency: int = 64) -> None:
        self.env = {**os.environ, **env}
        self.workdir = workdir
        self.concurrency = concurrency
        self.queue_name = env["TOKENWIRE_QUEUE_NAME"]
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.nodes: list[Process] = []
        self.workers: list[Process] = []

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "tokenwire", *args]
        with (self.workdir / f"{name}-{uuid.uuid4().hex[:6]}.log").open("wb") as out:
            return subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def start_node(self) -> Process:
        """Start a gateway and wait until ``/healthz`` answers and ``/readyz`` is 200."""
        port = free_port()
        args = ["serve", "--no-producers", "--host", "127.0.0.1", "--port", str(port)]
        node = Process(self._spawn("node", [*args, "--log-level", "warning"]))
        node.url = f"http://127.0.0.1:{port}"
        self.nodes.append(node)

        def ready() -> bool:
            if not node.alive:
                raise RuntimeError(f"gateway exited with {node.popen.returncode}")
            try:
                httpx.get(node.url + "/healthz", timeout=1).raise_for_status()
                return httpx.get(node.url + "/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        poll(ready, START_TIMEOUT, f"gateway {node.url}")
        return node

    def start_worker(self) -> Process:
        """Start a worker and wait until it has registered with the queue."""
        args = ["worker", "--concurrency", str(self.concurrency), "--log-level", "warning"]
        worker = Process(self._spawn("worker", args))
        worker.worker_id = f"{socket.gethostname()}-{worker.popen.pid}"
        self.workers.append(worker)
        key = f"saq:{self.queue_name}:worker_info:{worker.worker_id}"

        def ready() -> bool:
            if not worker.alive:
                raise RuntimeError(f"worker exited with {worker.popen.returncode}")
            return bool(self.redis.exists(key))

        poll(ready, START_TIMEOUT, f"worker {worker.worker_id}")
        return worker

    def heal(self, nodes: int = 2, workers: int = 2) -> None:
        """Forget dead processes; start new ones up to ``nodes`` gateways and ``workers``."""
        self.nodes = [n for n in self.nodes if n.alive]
        self.workers = [w for w in self.workers if w.alive]
        while len(self.nodes) < nodes:
            self.start_node()
        while len(self.workers) < workers:
            self.start_worker()

    def worker_of(self, stream_id: str, timeout: float = 10.0) -> Process:
        """The worker process running the stream (saq records it on the job)."""
        found: list[Process] = []

        def check() -> bool:
            raw = self.redis.get(f"saq:job:{self.queue_name}:{stream_id}")
            if raw is None:
                return False
            owner = json.loads(raw).get("worker_id")
            found[:] = [w for w in self.workers if w.worker_id == owner]
            return bool(found)

        poll(check, timeout, f"a worker to take {stream_id}")
        return found[0]

    def close(self) -> None:
        """Kill every process (SIGTERM, then SIGKILL after 5 s)."""
        processes = [*self.nodes, *self.workers]
        for process in processes:
            if process.alive:
                process.popen.terminate()
        for process in processes:
            try:
                process.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        self.redis.close()


def start_lorem(base: str, tokens: int, delay_ms: float) -> dict[str, str]:
    """``POST /v1/chat`` (202) on ``base`` for a paced ``fake:lorem`` answer."""
    body = {
        "model": "fake:lorem",
        "messages": [{"role": "user", "content": "hi"}],
        "params": {"tokens": tokens, "delay_ms": delay_ms},
    }
    response = httpx.post(base + "/v1/chat", json=body, timeout=10)
    assert response.status_code == 202, response.text
    return dict(response.json())


async def drop_queue_keys(name: str) -> None:
    """Delete the Redis keys of the job queue ``name`` (saq's and tokenwire's claims),
    and any under the prefix ``name:``."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        patterns = (f"saq:{name}:*", f"saq:job:{name}:*", f"tokenwire:{name}:*", f"{name}:*")
        for pattern in patterns:
            async for key in client.scan_iter(match=pattern, count=1000):
                await client.delete(key)
    finally:
        await client.aclose()


def drop_prefix(prefix: str) -> None:
    """Delete every Redis key under ``prefix``."""
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)
    client.close()


@contextlib.contextmanager
def services_env(kind: str, data_dir: Path) -> Iterator[dict[str, str]]:
    """The settings of a cluster on the machine's Redis and a new PostgreSQL database
    (``tw_{kind}_{tag}``): its own log prefix, queue name and store; the database and
    every key are dropped afterwards."""
    tag = uuid.uuid4().hex[:10]
    database = f"tw_{kind}_{tag}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{database}"'))
    env = {
        "TOKENWIRE_LOG_URL": REDIS_URL,
        "TOKENWIRE_LOG_PREFIX": f"tw-test-{tag}:",
        "TOKENWIRE_QUEUE_NAME": f"tw-test-{tag}",
        "TOKENWIRE_STORE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
        "TOKENWIRE_DATA_DIR": str(data_dir),
        "TOKENWIRE_FAKE_PROVIDER": "1",
        "TOKENWIRE_DEFAULT_MODEL": "fake:lorem",
    }
    try:
        yield env
    finally:
        asyncio.run(drop_queue_keys(env["TOKENWIRE_QUEUE_NAME"]))
        drop_prefix(env["TOKENWIRE_LOG_PREFIX"])
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
