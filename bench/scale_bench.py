"""Scale-out benchmark: one node on the memory log, one on the Redis log, two on Redis.

Run ``python -m bench.scale_bench`` (full, about 2.5 minutes) or ``--quick`` (a
smoke run, about 1 minute). Same harness as :mod:`bench.sse_bench`: tokenwire under uvicorn
in subprocesses (``bench.servers:tokenwire_app``, the ``bench:`` provider), the raw
socket client of :mod:`bench.client`, only 127.0.0.1, every run bounded by a
deadline. Rows:

1. one node on CPU 0, memory log; one client process on CPU 1;
2. one node on CPU 0, Redis log (``TOKENWIRE_LOG_URL``, a unique
   ``TOKENWIRE_LOG_PREFIX`` per row); one client process on CPU 1;
3. two nodes on the Redis log, node *i* pinned to CPU *i*; producers are local to
   the node that starts a stream. Client process *i*, pinned to CPU *i* (so it
   shares that core with node *i*), starts its streams on node *i*; every second
   stream is read from the *other* node (``POST /v1/chat`` → 202 on node *i*, then
   ``GET /v1/streams/{id}/events`` on node 1 - *i*), the rest as a plain SSE
   ``POST`` on node *i*.

Redis runs unpinned and shares the two cores. Each row measures unpaced
throughput (text-delta events/s, ``coalesce_ms=0``) with its server CPU
(``/proc/<pid>/stat``) and Redis CPU (``INFO cpu`` before/after), then, on fresh
nodes, paced lateness. Afterwards the row's Redis keys are deleted (``SCAN`` +
``UNLINK`` on its prefix). See ``docs/performance.md``, "Scale-out".

On fewer than four CPUs the two nodes, Redis and the clients share the cores, so the
measured second-node factor cannot reach 2; the derived figures also give it *with a
core per node*: 2 x one node's server CPU per event / two nodes' (each node then
CPU-bound), with the share of a core Redis would need at that rate.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis

from bench.client import (
    LoadResult,
    LoadSpec,
    _one_stream,
    prepare_process,
    read_stream,
    run_load_in_process,
)
from bench.sse_bench import (
    BASELINE,
    BASELINE_HELP,
    HTTP,
    LOOP,
    PACE_MS,
    ROOT,
    TW_MODEL,
    Server,
    _free_port,
    _quantile,
    _sleep_until,
    gather,
    server_env,
    set_baseline_src,
    tokenwire_label,
)

__all__ = ["main"]

REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, slots=True)
class Plan:
    """What one invocation measures."""

    streams: int
    """Unpaced: concurrent streams."""
    n: int
    """Unpaced: text deltas per stream."""
    rounds: int
    """Unpaced: streams each client worker runs one after the other."""
    paced_streams: int
    paced_seconds: float


FULL = Plan(streams=50, n=1000, rounds=1, paced_streams=200, paced_seconds=5.0)
QUICK = Plan(streams=50, n=200, rounds=1, paced_streams=200, paced_seconds=1.0)


@dataclass(frozen=True, slots=True)
class Config:
    """One row: how many nodes, on which log."""

    label: str
    nodes: int
    redis: bool
    kind: str = "tokenwire"
    """``tokenwire``, or :data:`~bench.sse_bench.BASELINE` (``--baseline-src``)."""


CONFIGS = (
    Config("1 node, memory log", 1, False),
    Config("1 node, Redis log", 1, True),
    Config("2 nodes, Redis log", 2, True),
)


# servers ------------------------------------------------------------------


class Node(Server):
    """A tokenwire uvicorn subprocess pinned to ``cpu``, on the memory or the Redis log.

    Reuses :class:`bench.sse_bench.Server` for readiness, CPU time and shutdown; only
    the start differs (CPU, ``TOKENWIRE_LOG_*`` variables), so ``__init__`` does not
    call the base one, which would start a second server.
    """

    def __init__(self, cpu: int, log_url: str | None, prefix: str, kind: str = "tokenwire") -> None:
        self.kind = kind
        self.coalesce_ms = 0.0
        self.cpu = cpu
        self.port = _free_port()
        self.data_dir = tempfile.mkdtemp(prefix="tokenwire-scale-bench-")
        command = [
            sys.executable, "-m", "uvicorn", "bench.servers:tokenwire_app", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "warning", "--no-access-log", "--backlog", "4096",
            "--timeout-keep-alive", "3600", "--loop", LOOP, "--http", HTTP,
        ]  # fmt: skip
        if shutil.which("taskset"):
            command = ["taskset", "-c", str(cpu), *command]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
        env |= {
            "BENCH_DATA_DIR": self.data_dir,
            "BENCH_COALESCE_MS": "0",
            **server_env(kind),
        }
        if log_url is not None:
            env |= {"TOKENWIRE_LOG_URL": log_url, "TOKENWIRE_LOG_PREFIX": prefix}
        self.process = subprocess.Popen(command, cwd=ROOT, env=env)
        self.pid = self.process.pid

    @property
    def label(self) -> str:
        return f"{tokenwire_label(self.kind)} node on CPU {self.cpu}"


@contextlib.contextmanager
def cluster(config: Config, redis_url: str, prefix: str) -> Iterator[list[Node]]:
    """Start the row's nodes (node *i* on CPU *i*), wait until ready, stop them after."""
    log_url = redis_url if config.redis else None
    nodes: list[Node] = []
    try:
        for cpu in range(config.nodes):
            nodes.append(Node(cpu, log_url, prefix, config.kind))
        for node in nodes:
            node.wait_ready()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


class RedisProbe:
    """``INFO cpu`` of the Redis server, and deletion of a run's keys."""

    def __init__(self, url: str) -> None:
        host = urlsplit(url).hostname
        if host not in ("127.0.0.1", "localhost"):
            raise SystemExit(f"only a local Redis is allowed, not {host!r}")
        self.client = redis.Redis.from_url(url, socket_timeout=10)

    def cpu_seconds(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def endings(self, prefix: str, timeout: float = 30.0) -> dict[str, int]:
        """How the streams under ``prefix`` ended: their last event's type (and code)."""
        deadline = time.monotonic() + timeout
        counts: Counter[str] = Counter()
        for key in self.client.scan_iter(match=f"{prefix}s:*:events", count=1000):
            if time.monotonic() > deadline:
                counts["(not checked: timeout)"] += 1
                continue
            entries = self.client.xrevrange(key, count=1)
            if not entries:
                counts["(empty)"] += 1
                continue
            event = json.loads(entries[0][1][b"e"])
            kind = str(event.get("type"))
            detail = event.get("code") or event.get("reason")
            counts[f"{kind}:{detail}" if detail else kind] += 1
        return dict(sorted(counts.items()))

    def delete_prefix(self, prefix: str, timeout: float = 60.0) -> int:
        """``SCAN`` + ``UNLINK`` every key starting with ``prefix``; the count deleted."""
        deadline = time.monotonic() + timeout
        deleted = 0
        cursor = 0
        while time.monotonic() < deadline:
            cursor, keys = self.client.scan(cursor, match=f"{prefix}*", count=1000)
            if keys:
                deleted += int(self.client.unlink(*keys))
            if cursor == 0:
                break
        return deleted


# clients ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MixedSpec:
    """Streams started on ``load.port``; odd-numbered workers read theirs on ``read_port``."""

    load: LoadSpec
    read_port: int


async def _start_stream(port: int, model: str, params: dict[str, float]) -> str:
    """``POST /v1/chat`` without ``Accept: text/event-stream``: expect 202, return the id."""
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "go"}], "params": params}
    ).encode()
    head = (
        f"POST /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Accept: application/json\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + body)
        response_head = (await reader.readuntil(b"\r\n\r\n")).lower()
        status = response_head.split(b" ", 2)[1]
        length = None
        for line in response_head.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if status != b"202" or length is None:
            raise ConnectionError(f"unexpected 202 head: {response_head[:200]!r}")
        payload = await reader.readexactly(length)
    finally:
        writer.close()
    return str(json.loads(payload)["stream_id"])


async def _cross_stream(
    spec: LoadSpec,
    read_port: int,
    start_at: float,
    result: LoadResult,
    opening: asyncio.Semaphore,
) -> None:
    """Start a stream on ``spec.port``, read it over SSE from the node on ``read_port``."""
    params = {"n": spec.n, "interval_ms": spec.interval_ms, "start_at": start_at}

    async def request() -> bytes:
        stream_id = await _start_stream(spec.port, spec.model, params)
        return (
            f"GET /v1/streams/{stream_id}/events HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{read_port}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()

    errors = (OSError, ConnectionError, EOFError, ValueError, KeyError)
    await read_stream(result, opening, read_port, spec.interval_ms > 0, request, errors)


async def run_mixed(spec: MixedSpec) -> LoadResult:
    """Like :func:`bench.client.run_load`, with every second worker reading cross-node."""
    load = spec.load
    result = LoadResult()
    opening = asyncio.Semaphore(load.open_limit)

    async def worker(index: int) -> None:
        start_at = load.start_ats[index] if load.start_ats else 0.0
        for _ in range(load.rounds):
            if index % 2:
                await _cross_stream(load, spec.read_port, start_at, result, opening)
            else:
                await _one_stream(load, start_at, result, opening)

    cpu_before = time.process_time()
    result.started = time.time()
    tasks = [asyncio.create_task(worker(i)) for i in range(load.workers)]
    left = max(load.deadline - time.time(), 0.0) if load.deadline else None
    _, pending = await asyncio.wait(tasks, timeout=left)
    for task in pending:
        task.cancel()
    if pending:
        result.errors.append(f"{len(pending)} workers still running at the deadline")
        result.streams_failed += len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    result.ended = time.time()
    result.cpu_seconds = time.process_time() - cpu_before
    return result


def run_mixed_in_process(spec: MixedSpec) -> LoadResult:
    """Entry point of a client process for two-node rows."""
    prepare_process(spec.load.cpu)
    try:
        import uvloop

        return uvloop.run(run_mixed(spec))
    except ImportError:
        return asyncio.run(run_mixed(spec))


def submit(
    pool: concurrent.futures.Executor, nodes: Sequence[Node], spec: LoadSpec
) -> list[concurrent.futures.Future[LoadResult]]:
    """One node: one client on CPU 1. Two: client *i* on CPU *i* starts on node *i*."""
    if len(nodes) == 1:
        spec = dataclasses.replace(spec, port=nodes[0].port, cpu=1)
        return [pool.submit(run_load_in_process, spec)]
    futures = []
    first = 0
    for index, node in enumerate(nodes):
        workers = spec.workers // len(nodes) + (1 if index < spec.workers % len(nodes) else 0)
        starts = spec.start_ats[first : first + workers] if spec.start_ats else ()
        first += workers
        part = dataclasses.replace(
            spec, port=node.port, workers=workers, start_ats=starts, cpu=node.cpu
        )
        other = nodes[(index + 1) % len(nodes)]
        futures.append(pool.submit(run_mixed_in_process, MixedSpec(part, other.port)))
    return futures


# measurements -------------------------------------------------------------


@dataclass(slots=True)
class Row:
    config: str
    nodes: int
    # unpaced
    streams: int = 0
    deltas: int = 0
    events_per_s: float = 0.0
    server_cpu: list[float] = field(default_factory=list)
    """Per node: CPU seconds / wall seconds over the unpaced window."""
    redis_cpu: float = 0.0
    client_cpu: float = 0.0
    server_us_per_event: float = 0.0
    redis_us_per_event: float = 0.0
    client_us_per_event: float = 0.0
    failed: int = 0
    # paced
    paced_streams: int = 0
    tokens: int = 0
    expected: int = 0
    late_p50_ms: float = float("nan")
    late_p99_ms: float = float("nan")
    late_max_ms: float = float("nan")
    sched_p99_ms: float = float("nan")
    paced_server_cpu: list[float] = field(default_factory=list)
    paced_redis_cpu: float = 0.0
    paced_failed: int = 0
    opened_late: bool = False
    endings: dict[str, int] = field(default_factory=dict)
    """Redis rows: how the paced streams ended (last event type, error code)."""
    keys_deleted: int = 0
    errors: list[str] = field(default_factory=list)


def warm_up(pool: concurrent.futures.Executor, nodes: Sequence[Node]) -> float:
    """Run a few short streams; return the wall time per stream opened, seconds."""
    spec = LoadSpec(
        port=0, model=TW_MODEL, workers=16 * len(nodes), rounds=4, n=2, deadline=time.time() + 30
    )
    result = gather(submit(pool, nodes, spec))
    return (result.ended - result.started) / (spec.workers * spec.rounds)


def unpaced(
    pool: concurrent.futures.Executor,
    nodes: Sequence[Node],
    probe: RedisProbe,
    plan: Plan,
    row: Row,
) -> None:
    spec = LoadSpec(
        port=0,
        model=TW_MODEL,
        workers=plan.streams,
        rounds=plan.rounds,
        n=plan.n,
        open_limit=1024,
        deadline=time.time() + 120,
    )
    cpu_before = [node.cpu_seconds() for node in nodes]
    redis_before = probe.cpu_seconds()
    result = gather(submit(pool, nodes, spec))
    redis_cpu = probe.cpu_seconds() - redis_before
    server_cpu = [node.cpu_seconds() - b for node, b in zip(nodes, cpu_before, strict=True)]
    elapsed = max(result.ended - result.started, 1e-9)
    events = max(result.deltas, 1)
    row.streams = plan.streams
    row.deltas = result.deltas
    row.events_per_s = result.deltas / elapsed
    row.server_cpu = [c / elapsed for c in server_cpu]
    row.redis_cpu = redis_cpu / elapsed
    row.client_cpu = result.cpu_seconds / elapsed
    row.server_us_per_event = sum(server_cpu) / events * 1e6
    row.redis_us_per_event = redis_cpu / events * 1e6
    row.client_us_per_event = result.cpu_seconds / events * 1e6
    row.failed = result.streams_failed
    row.errors += result.errors[:3]


def paced(
    pool: concurrent.futures.Executor,
    nodes: Sequence[Node],
    probe: RedisProbe,
    plan: Plan,
    open_cost: float,
    row: Row,
) -> None:
    """``paced_streams`` streams at one delta per ``PACE_MS``, first due after a ramp."""
    streams = plan.paced_streams
    n = round(plan.paced_seconds * 1000 / PACE_MS)
    ramp = 1.0 + 1.25 * streams * open_cost
    start = time.time() + ramp
    phases = random.Random(streams).random  # the same phases for every row
    start_ats = tuple(start + phases() * PACE_MS / 1000 for _ in range(streams))
    spec = LoadSpec(
        port=0,
        model=TW_MODEL,
        workers=streams,
        rounds=1,
        n=n,
        interval_ms=PACE_MS,
        start_ats=start_ats,
        open_limit=64,
        deadline=start + plan.paced_seconds + 60,
    )
    futures = submit(pool, nodes, spec)
    _sleep_until(start)
    cpu_start = [node.cpu_seconds() for node in nodes]
    redis_start = probe.cpu_seconds()
    window = max(plan.paced_seconds - 0.5, 0.1)
    _sleep_until(start + window)
    cpu_end = [node.cpu_seconds() for node in nodes]
    redis_end = probe.cpu_seconds()
    result = gather(futures)
    emit = sorted(result.late_emit)
    sched = sorted(result.late_sched)
    row.paced_streams = streams
    row.tokens = result.tokens
    row.expected = streams * n
    row.late_p50_ms = _quantile(emit, 0.5) * 1000
    row.late_p99_ms = _quantile(emit, 0.99) * 1000
    row.late_max_ms = (emit[-1] if emit else float("nan")) * 1000
    row.sched_p99_ms = _quantile(sched, 0.99) * 1000
    row.paced_server_cpu = [(e - s) / window for s, e in zip(cpu_start, cpu_end, strict=True)]
    row.paced_redis_cpu = (redis_end - redis_start) / window
    row.paced_failed = result.streams_failed
    row.opened_late = result.last_open > start
    row.errors += result.errors[:3]


def measure(
    pool: concurrent.futures.Executor,
    probe: RedisProbe,
    config: Config,
    plan: Plan,
    redis_url: str,
    run_id: str,
) -> Row:
    row = Row(config=config.label, nodes=config.nodes)
    prefix = f"twbench:{run_id}:{config.nodes}{'r' if config.redis else 'm'}:"
    try:
        with cluster(config, redis_url, f"{prefix}u:") as nodes:
            warm_up(pool, nodes)
            unpaced(pool, nodes, probe, plan, row)
        with cluster(config, redis_url, f"{prefix}p:") as nodes:
            warm_up(pool, nodes)
            open_cost = warm_up(pool, nodes)
            before = Counter(probe.endings(f"{prefix}p:") if config.redis else {})
            paced(pool, nodes, probe, plan, open_cost, row)
        if config.redis:  # the paced streams only, not the warm-up's
            after = Counter(probe.endings(f"{prefix}p:"))
            after.subtract(before)
            row.endings = {kind: count for kind, count in after.items() if count}
    finally:
        if config.redis:
            row.keys_deleted = probe.delete_prefix(prefix)
    return row


# report -------------------------------------------------------------------


def _cpus(values: Sequence[float]) -> str:
    return " + ".join(f"{v:.0%}" for v in values)


def _endings(endings: dict[str, int]) -> str:
    return ", ".join(f"{kind} x {count}" for kind, count in endings.items()) or "-"


def table(rows: Sequence[Row], plan: Plan) -> str:
    base = rows[1].events_per_s if len(rows) > 1 and rows[1].events_per_s else float("nan")
    lines = [
        f"| row | events/s ({plan.streams} streams, unpaced) | vs 1 node Redis "
        "| server CPU | Redis CPU | client CPU | server + Redis µs/event "
        f"| lateness p50 / p99 / max (ms), {plan.paced_streams} paced "
        "| vs schedule p99 (ms) | paced server CPU | paced Redis CPU "
        "| tokens recv/expected | paced streams ended with | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        late = " (some opened late)" if r.opened_late else ""
        lines.append(
            f"| {r.config} | {r.events_per_s:,.0f} | {r.events_per_s / base:.2f} "
            f"| {_cpus(r.server_cpu)} | {r.redis_cpu:.0%} | {r.client_cpu:.0%} "
            f"| {r.server_us_per_event:.1f} + {r.redis_us_per_event:.1f} "
            f"| {r.late_p50_ms:.1f} / {r.late_p99_ms:.1f} / {r.late_max_ms:.1f}{late} "
            f"| {r.sched_p99_ms:.1f} | {_cpus(r.paced_server_cpu)} | {r.paced_redis_cpu:.0%} "
            f"| {r.tokens:,}/{r.expected:,} | {_endings(r.endings)} "
            f"| {r.failed} + {r.paced_failed} |"
        )
    return "\n".join(lines)


def figures(rows: Sequence[Row]) -> str:
    """The derived figures, once per server kind (this checkout's rows, then the
    ``--baseline-src`` rows, whose ``config`` ends in ``(baseline)``)."""
    ours = [r for r in rows if not r.config.endswith("(baseline)")]
    baseline = [r for r in rows if r.config.endswith("(baseline)")]
    parts = [_figures(*ours)]
    if baseline:
        parts.append("baseline:\n" + _figures(*baseline))
    return "\n".join(parts)


def _figures(memory: Row, one: Row, two: Row) -> str:
    mem_cost = memory.server_us_per_event + memory.redis_us_per_event
    one_cost = one.server_us_per_event + one.redis_us_per_event
    two_cost = two.server_us_per_event + two.redis_us_per_event
    scaling = two.events_per_s / one.events_per_s if one.events_per_s else float("nan")
    # With a core per node, each node CPU-bound: events/s = nodes / server CPU per event.
    per_core = 2 * one.server_us_per_event / two.server_us_per_event
    redis_share = 2 * two.redis_us_per_event / two.server_us_per_event
    return "\n".join(
        [
            f"- CPU per delivered event, memory log: server {memory.server_us_per_event:.1f} µs"
            f" (Redis {memory.redis_us_per_event:.1f} µs, background)",
            f"- CPU per delivered event, Redis log, 1 node: server {one.server_us_per_event:.1f}"
            f" µs + Redis {one.redis_us_per_event:.1f} µs = {one_cost:.1f} µs",
            f"- CPU per delivered event, Redis log, 2 nodes: server {two.server_us_per_event:.1f}"
            f" µs + Redis {two.redis_us_per_event:.1f} µs = {two_cost:.1f} µs",
            f"- cost of Redis per event (1 node): +{one_cost - mem_cost:.1f} µs "
            f"({one_cost / mem_cost:.2f} x the memory log); server process alone "
            f"+{one.server_us_per_event - memory.server_us_per_event:.1f} µs",
            f"- scaling factor of the second node: {two.events_per_s:,.0f} / "
            f"{one.events_per_s:,.0f} = {scaling:.2f}",
            f"- second node with a core per node, from CPU per event (derived, not measured):"
            f" 2 x {one.server_us_per_event:.1f} / {two.server_us_per_event:.1f} ="
            f" {per_core:.2f}, Redis then {redis_share:.0%} of a core",
        ]
    )


def _environment() -> str:
    return (
        f"{os.cpu_count()} CPUs; uvicorn --loop {LOOP} --http {HTTP}; "
        f"Python {sys.version.split()[0]}; Redis unpinned"
    )


def run(
    plan: Plan, redis_url: str, json_path: Path | None, kinds: Sequence[str] = ("tokenwire",)
) -> None:
    started = time.monotonic()
    prepare_process(None)
    probe = RedisProbe(redis_url)
    probe.client.ping()
    run_id = uuid.uuid4().hex[:10]
    print(_environment(), flush=True)
    rows: list[Row] = []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        configs = [
            dataclasses.replace(
                c, kind=k, label=f"{c.label}{' (baseline)' if k == BASELINE else ''}"
            )
            for c in CONFIGS
            for k in kinds
        ]
        for config in configs:
            row = measure(pool, probe, config, plan, redis_url, run_id)
            rows.append(row)
            print(
                f"  {row.config:20} {row.events_per_s:10,.0f} events/s, "
                f"paced p99 {row.late_p99_ms:.1f} ms, "
                f"failed {row.failed}+{row.paced_failed}, "
                f"{row.keys_deleted} Redis keys deleted",
                flush=True,
            )
            if row.endings:
                print(f"    paced streams ended with: {_endings(row.endings)}", flush=True)
            for error in row.errors[:3]:
                print(f"    error: {error}", flush=True)
    print(
        f"\nUnpaced: {plan.streams} streams x {plan.n} deltas x {plan.rounds} rounds, "
        f"coalesce_ms=0. Paced: {plan.paced_streams} streams, one delta per {PACE_MS:g} ms "
        f"for {plan.paced_seconds:g} s.\n"
    )
    print(table(rows, plan))
    print()
    print(figures(rows))
    print(f"\n{_environment()}; total {time.monotonic() - started:.1f} s")
    if json_path is not None:
        data = {
            "environment": _environment(),
            "plan": asdict(plan),
            "rows": [asdict(r) for r in rows],
        }
        json_path.write_text(json.dumps(data, indent=2))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run (about 1 minute)")
    parser.add_argument("--redis-url", default=REDIS_URL, help="a local Redis (127.0.0.1)")
    parser.add_argument("--paced-seconds", type=float, default=None, help="paced duration, s")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--baseline-src", type=Path, default=None, metavar="DIR", help=BASELINE_HELP
    )
    args = parser.parse_args(argv)
    kinds = set_baseline_src(args.baseline_src)
    plan = QUICK if args.quick else FULL
    if args.paced_seconds is not None:
        plan = dataclasses.replace(plan, paced_seconds=args.paced_seconds)
    run(plan, args.redis_url, args.json, kinds)


if __name__ == "__main__":
    main()
