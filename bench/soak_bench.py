"""Soak: hold ``N`` paced streams against ``tokenwire serve`` for ``M`` minutes; is RSS flat?

Run ``python -m bench.soak_bench`` (500 streams, 10 minutes) or, e.g.,
``--streams 200 --minutes 2 --stream-seconds 20 --retention 20`` for a short run.

``tokenwire serve`` runs as it ships (a subprocess on CPU 0 when ``taskset`` exists;
memory log, SQLite store, ``fake:lorem`` enabled with ``TOKENWIRE_FAKE_PROVIDER=1``).
A client process (:mod:`bench.client`'s raw-socket SSE reader, on CPU 1) keeps
``--streams`` streams open at all times: each worker starts a ``fake:lorem`` stream
of one delta every ``--interval-ms`` for ``--stream-seconds``, reads it to its
terminal event, and starts the next at once (first streams at random phases, so
ends are spread). Finished streams' events leave the memory log after
``--retention`` seconds (``TOKENWIRE_RETENTION``); the store keeps the messages.

Every ``--sample-seconds`` (10) the server's RSS is sampled (psutil) with a few
``/metrics`` gauges. Warm-up lasts until the log can be in steady state:
``stream_seconds + 2 x retention`` (streams started, finished, retained, swept).
The report compares RSS at the end of warm-up with RSS at the end: ``flat`` when
within ``--flat-pct`` (5 %). ``--json PATH`` writes every sample and the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from bench.client import LoadResult, prepare_process, read_stream, run_in_process

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = 0
CLIENT_CPU = 1
_GAUGES = (
    "tokenwire_generations_active",
    "tokenwire_readers_active",
    "tokenwire_log_streams",
    "tokenwire_log_events",
    "tokenwire_log_packed_bytes",
)


@dataclass(frozen=True, slots=True)
class SoakSpec:
    """What the client process runs (picklable)."""

    port: int
    streams: int
    stream_seconds: float
    interval_ms: float
    until: float
    """Unix time in seconds at which every stream is dropped."""
    cpu: int | None = CLIENT_CPU


@dataclass(slots=True)
class Sample:
    t: float
    """Seconds since the streams started."""
    rss_mb: float
    gauges: dict[str, float]


@dataclass(slots=True)
class Report:
    environment: str
    streams: int
    minutes: float
    stream_seconds: float
    interval_ms: float
    retention: float
    warm_up_s: float
    rss_idle_mb: float
    rss_warm_mb: float
    rss_end_mb: float
    rss_max_after_warm_mb: float
    growth_pct: float
    flat: bool
    streams_completed: int
    streams_failed: int
    events: int
    errors: list[str]
    samples: list[Sample] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def tokenwire_serve(streams: int, retention: float) -> Iterator[tuple[int, psutil.Process]]:
    """``tokenwire serve`` as it ships, on a free port; yield its port and process."""
    port = _free_port()
    data_dir = tempfile.mkdtemp(prefix="tokenwire-soak-")
    command = [
        sys.executable, "-m", "tokenwire", "serve", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    if shutil.which("taskset"):
        command = ["taskset", "-c", str(SERVER_CPU), *command]
    env = {
        **os.environ,
        "TOKENWIRE_DATA_DIR": data_dir,
        "TOKENWIRE_FAKE_PROVIDER": "1",
        "TOKENWIRE_DEFAULT_MODEL": "fake:lorem",
        "TOKENWIRE_RETENTION": str(retention),
        # the load is one anonymous client: lift the per-identity limits
        "TOKENWIRE_LIMIT_CONCURRENT_STREAMS": str(streams * 2),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),  # this checkout's
    }
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"tokenwire serve exited with {process.returncode}")
            url = f"http://127.0.0.1:{port}/healthz"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("tokenwire serve did not start within 60 s")
            time.sleep(0.1)
        yield port, psutil.Process(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


def _request(port: int, tokens: int, interval_ms: float) -> bytes:
    body = json.dumps(
        {
            "model": "fake:lorem",
            "messages": [{"role": "user", "content": "soak"}],
            "params": {"tokens": tokens, "delay_ms": interval_ms},
        }
    ).encode()
    head = (
        f"POST /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Accept: text/event-stream\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _soak(spec: SoakSpec) -> LoadResult:
    result = LoadResult()
    opening = asyncio.Semaphore(64)
    tokens = max(1, round(spec.stream_seconds * 1000 / spec.interval_ms))
    request = _request(spec.port, tokens, spec.interval_ms)
    phases = random.Random(spec.streams)

    async def make() -> bytes:
        return request

    async def worker() -> None:
        # a shorter first stream: the streams' ends are spread from the start
        first = max(1, round(tokens * phases.random()))
        first_request = _request(spec.port, first, spec.interval_ms)

        async def make_first() -> bytes:
            return first_request

        await read_stream(result, opening, spec.port, False, make_first)
        while time.time() < spec.until:
            await read_stream(result, opening, spec.port, False, make)

    usage = psutil.Process().cpu_times()
    result.started = time.time()
    tasks = [asyncio.create_task(worker()) for _ in range(spec.streams)]
    await asyncio.wait(tasks, timeout=max(0.0, spec.until - time.time()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    result.ended = time.time()
    after = psutil.Process().cpu_times()
    result.cpu_seconds = after.user + after.system - usage.user - usage.system
    return result


def run_soak_in_process(spec: SoakSpec) -> LoadResult:
    """Entry point of the client process."""
    return run_in_process(spec.cpu, _soak(spec))


def _gauges(port: int) -> dict[str, float]:
    found: dict[str, float] = {}
    url = f"http://127.0.0.1:{port}/metrics"
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            name, _, value = line.partition(" ")
            if name in _GAUGES:
                found[name] = float(value)
    return found


def _environment() -> str:
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPUs, load average at the start {load[0]:.2f}; server on CPU "
        f"{SERVER_CPU}, client on CPU {CLIENT_CPU}; Python {sys.version.split()[0]}"
    )


def soak(args: argparse.Namespace) -> Report:
    warm_up = args.stream_seconds + 2 * args.retention
    seconds = args.minutes * 60
    if warm_up >= seconds:
        raise SystemExit(
            f"warm-up ({warm_up:g} s = stream seconds + 2 x retention) must be shorter "
            f"than the run ({seconds:g} s)"
        )
    environment = _environment()
    with tokenwire_serve(args.streams, args.retention) as (port, server):
        rss_idle = server.memory_info().rss / 2**20
        start = time.time()
        spec = SoakSpec(
            port=port,
            streams=args.streams,
            stream_seconds=args.stream_seconds,
            interval_ms=args.interval_ms,
            until=start + seconds,
        )
        samples: list[Sample] = []
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            future = pool.submit(run_soak_in_process, spec)
            next_at = start + args.sample_seconds
            while time.time() < start + seconds:
                time.sleep(max(0.0, min(next_at, start + seconds) - time.time()))
                sample = Sample(
                    t=round(time.time() - start, 1),
                    rss_mb=round(server.memory_info().rss / 2**20, 1),
                    gauges=_gauges(port),
                )
                samples.append(sample)
                print(f"  {sample.t:7.1f} s  RSS {sample.rss_mb:7.1f} MB  {sample.gauges}")
                next_at += args.sample_seconds
            result = future.result()
    warm = [s for s in samples if s.t <= warm_up + 1e-6]
    after = [s for s in samples if s.t >= warm_up - 1e-6]
    rss_warm = (warm[-1] if warm else samples[0]).rss_mb
    rss_end = samples[-1].rss_mb
    growth = (rss_end - rss_warm) / rss_warm * 100
    return Report(
        environment=environment,
        streams=args.streams,
        minutes=args.minutes,
        stream_seconds=args.stream_seconds,
        interval_ms=args.interval_ms,
        retention=args.retention,
        warm_up_s=warm_up,
        rss_idle_mb=round(rss_idle, 1),
        rss_warm_mb=rss_warm,
        rss_end_mb=rss_end,
        rss_max_after_warm_mb=max(s.rss_mb for s in after) if after else rss_end,
        growth_pct=round(growth, 2),
        flat=abs(growth) <= args.flat_pct,
        streams_completed=result.streams_ok,
        streams_failed=result.streams_failed,
        events=result.frames,
        errors=result.errors[:5],
        samples=samples,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=500, help="streams held open at once")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run")
    parser.add_argument("--stream-seconds", type=float, default=60.0, help="length of a stream")
    parser.add_argument("--interval-ms", type=float, default=200.0, help="one delta every …")
    parser.add_argument("--retention", type=float, default=60.0, help="TOKENWIRE_RETENTION, s")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="RSS sampling period")
    parser.add_argument("--flat-pct", type=float, default=5.0, help="'flat' tolerance, percent")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    prepare_process(None)
    report = soak(args)
    print(
        f"\n{report.streams} streams for {report.minutes:g} min: RSS idle {report.rss_idle_mb} MB, "
        f"after warm-up ({report.warm_up_s:g} s) {report.rss_warm_mb} MB, end "
        f"{report.rss_end_mb} MB ({report.growth_pct:+.1f} %: "
        f"{'flat' if report.flat else 'NOT flat'}); {report.streams_completed} streams "
        f"completed, {report.streams_failed} failed, {report.events} events\n{report.environment}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2))


if __name__ == "__main__":
    main()
