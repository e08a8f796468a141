"""Core SSE benchmark: tokenwire's native SSE vs. a bare Starlette ``StreamingResponse``
and sse-starlette's ``EventSourceResponse`` (two anchors).

Run ``python -m bench.sse_bench`` (full, a few minutes) or ``--quick`` (a smoke run,
under 20 s). Each server runs under uvicorn in its own subprocess pinned to CPU 0
(``taskset -c 0``); the clients (:mod:`bench.client`) run in processes pinned to
CPU 1. Only 127.0.0.1 is used, and every run is bounded by a deadline.

1. Unpaced throughput: 1, 50 and 500 concurrent streams of ``M`` text deltas each,
   sent as fast as possible: text-delta events per second received by the clients.
   tokenwire runs with ``coalesce_ms=0`` (one event per delta, as the bare app) and
   with ``coalesce_ms=20`` (deltas merge, so tokens per second count), and as
   ``tokenwire default``: every setting as ``tokenwire serve`` has it (coalescing
   20 ms, orphan timeout), but for the per-caller stream limit (all clients share
   one address).
2. Paced: ``N`` streams at one delta per 20 ms with absolute deadlines and random
   phases (the same for both servers): lateness (receive time minus emission time)
   and server RSS per held connection.

See ``docs/performance.md`` for the method and the results.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
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

from bench.client import LoadResult, LoadSpec, prepare_process, run_load_in_process

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = 0
CLIENT_CPU = 1
PACE_MS = 20.0
TW_MODEL = "bench:default"
ANCHORS = {
    "bare": ("bare_app", "bare Starlette"),
    "sse-starlette": ("sse_starlette_app", "sse-starlette"),
}
"""Server kinds that are not tokenwire: app factory in :mod:`bench.servers`, row label."""
BASELINE = "baseline"
"""The server kind of a tokenwire server run from ``--baseline-src`` (another
checkout's ``src``), beside this checkout's, for side-by-side figures in one run."""
_baseline_src: list[Path] = []
BASELINE_HELP = (
    "also run every tokenwire server from DIR, another checkout's src (e.g. a "
    "`git worktree add /tmp/base main`'s src), beside this one's"
)


def set_baseline_src(src: Path | None) -> list[str]:
    """Use ``src`` (a directory holding a ``tokenwire`` package, e.g. another
    checkout's ``src``) for the :data:`BASELINE` servers; return the tokenwire kinds
    to run: ``["tokenwire"]``, or ``["tokenwire", BASELINE]`` with a baseline.

    Raises:
        SystemExit: ``src`` has no ``tokenwire/__init__.py``.
    """
    _baseline_src.clear()
    if src is None:
        return ["tokenwire"]
    if not (src / "tokenwire" / "__init__.py").is_file():
        raise SystemExit(f"--baseline-src {src}: no tokenwire package there (give a src dir)")
    _baseline_src.append(src.resolve())
    return ["tokenwire", BASELINE]


def server_env(kind: str) -> dict[str, str]:
    """``PYTHONPATH`` (and a label) for a server subprocess of ``kind``: the bench
    package's root, preceded for :data:`BASELINE` by the baseline's ``src`` (ahead of
    the installed tokenwire), then the caller's own ``PYTHONPATH``."""
    paths = [*(map(str, _baseline_src) if kind == BASELINE else []), str(ROOT)]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(paths)}


def tokenwire_label(kind: str) -> str:
    """``tokenwire``, or ``tokenwire (baseline)`` for a :data:`BASELINE` server."""
    return "tokenwire (baseline)" if kind == BASELINE else "tokenwire"


@dataclass(frozen=True, slots=True)
class Level:
    """An unpaced load: ``streams`` concurrent streams, each ``rounds`` times ``n`` deltas."""

    streams: int
    n: int
    rounds: int


@dataclass(frozen=True, slots=True)
class Plan:
    """What one invocation measures."""

    levels: tuple[Level, ...]
    coalesce_rows: tuple[float, ...]
    paced: tuple[int, ...]
    paced_seconds: float
    client_procs: int
    paced_coalesced_max: int = 0
    """Paced runs with at most this many streams also run tokenwire with coalesce_ms=20."""


FULL = Plan(
    levels=(Level(1, 2000, 10), Level(50, 2000, 2), Level(500, 400, 1)),
    coalesce_rows=(0.0, 20.0),
    paced=(500, 1000, 2000),
    paced_seconds=10.0,
    client_procs=1,
    paced_coalesced_max=500,
)
QUICK = Plan(
    levels=(Level(1, 400, 2), Level(50, 100, 1)),
    coalesce_rows=(0.0,),
    paced=(100,),
    paced_seconds=1.0,
    client_procs=1,
)


# servers ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


LOOP = "uvloop" if _has("uvloop") else "asyncio"
HTTP = "httptools" if _has("httptools") else "h11"
TOKENWIRE_HTTP = "tokenwire.server.serving:HeaderTimeoutProtocol"
"""What ``tokenwire serve`` runs for HTTP (httptools with a request-head deadline):
the tokenwire servers' ``--http`` (a baseline ``src`` must have it); the anchors'
is :data:`HTTP`."""


class Server:
    """A uvicorn subprocess serving ``app`` (a factory in :mod:`bench.servers`) on CPU 0."""

    def __init__(self, kind: str, coalesce_ms: float | None = 0.0) -> None:
        self.kind = kind
        self.coalesce_ms = coalesce_ms
        """``None``: every setting as ``tokenwire serve`` has it (the default row)."""
        self.port = _free_port()
        self.data_dir = tempfile.mkdtemp(prefix="tokenwire-bench-")
        app = f"bench.servers:{ANCHORS.get(kind, ('tokenwire_app', ''))[0]}"
        command = [
            sys.executable, "-m", "uvicorn", app, "--factory",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "warning", "--no-access-log", "--backlog", "4096",
            "--timeout-keep-alive", "3600", "--loop", LOOP,
            "--http", HTTP if kind in ANCHORS else TOKENWIRE_HTTP,
        ]  # fmt: skip
        if shutil.which("taskset"):
            command = ["taskset", "-c", str(SERVER_CPU), *command]
        env = {
            **os.environ,
            "BENCH_DATA_DIR": self.data_dir,
            "BENCH_COALESCE_MS": "default" if coalesce_ms is None else str(coalesce_ms),
            **server_env(kind),
        }
        self.process = subprocess.Popen(command, cwd=ROOT, env=env)
        self.pid = self.process.pid

    @property
    def label(self) -> str:
        if self.kind in ANCHORS:
            return ANCHORS[self.kind][1]
        if self.coalesce_ms is None:
            return f"{tokenwire_label(self.kind)} default"
        return f"{tokenwire_label(self.kind)} coalesce_ms={self.coalesce_ms:g}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/healthz"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.process.returncode}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(url, timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.label} did not start within {timeout} s")

    def rss_kb(self) -> int:
        """Resident set size, KiB (``VmRSS`` of ``/proc/<pid>/status``)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time consumed so far, seconds."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@contextlib.contextmanager
def serving(kind: str, coalesce_ms: float | None = 0.0) -> Iterator[Server]:
    server = Server(kind, coalesce_ms)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# clients ------------------------------------------------------------------


def _split(spec: LoadSpec, procs: int) -> list[LoadSpec]:
    """Divide ``spec``'s workers between ``procs`` client processes."""
    specs: list[LoadSpec] = []
    for index in range(procs):
        workers = spec.workers // procs + (1 if index < spec.workers % procs else 0)
        if workers == 0:
            continue
        first = sum(s.workers for s in specs)
        start_ats = spec.start_ats[first : first + workers] if spec.start_ats else ()
        specs.append(dataclasses.replace(spec, workers=workers, start_ats=start_ats))
    return specs


def submit(
    pool: concurrent.futures.Executor, spec: LoadSpec, procs: int
) -> list[concurrent.futures.Future[LoadResult]]:
    return [pool.submit(run_load_in_process, part) for part in _split(spec, procs)]


def gather(futures: Sequence[concurrent.futures.Future[LoadResult]]) -> LoadResult:
    total = LoadResult()
    for future in futures:
        total.merge(future.result())
    return total


# measurements -------------------------------------------------------------


@dataclass(slots=True)
class ThroughputRow:
    server: str
    streams: int
    n: int
    rounds: int
    deltas_per_s: float
    tokens_per_s: float
    events_per_s: float
    server_cpu: float
    client_cpu: float
    failed: int
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PacedRow:
    server: str
    streams: int
    seconds: float
    tokens: int
    expected: int
    late_p50_ms: float
    late_p99_ms: float
    late_max_ms: float
    sched_p99_ms: float
    sched_max_ms: float
    rss_idle_mb: float
    rss_open_mb: float
    rss_end_mb: float
    kb_per_conn: float
    kb_per_conn_end: float
    opened_late: bool
    server_cpu: float
    client_cpu: float
    failed: int
    errors: list[str] = field(default_factory=list)


def _model(server: Server) -> str:
    return "bare" if server.kind in ANCHORS else TW_MODEL


def warm_up(pool: concurrent.futures.Executor, server: Server) -> float:
    """Run a few short streams; return the server's cost of one stream, seconds."""
    spec = LoadSpec(
        port=server.port,
        model=_model(server),
        workers=16,
        rounds=4,
        n=2,
        deadline=time.time() + 30,
        cpu=CLIENT_CPU,
    )
    result = gather(submit(pool, spec, 1))
    return (result.ended - result.started) / (spec.workers * spec.rounds)


def throughput(
    pool: concurrent.futures.Executor, server: Server, level: Level, procs: int
) -> ThroughputRow:
    spec = LoadSpec(
        port=server.port,
        model=_model(server),
        workers=level.streams,
        rounds=level.rounds,
        n=level.n,
        open_limit=1024,
        deadline=time.time() + 120,
        cpu=CLIENT_CPU,
    )
    cpu_before = server.cpu_seconds()
    result = gather(submit(pool, spec, procs))
    server_cpu = server.cpu_seconds() - cpu_before
    elapsed = max(result.ended - result.started, 1e-9)
    return ThroughputRow(
        server=server.label,
        streams=level.streams,
        n=level.n,
        rounds=level.rounds,
        deltas_per_s=result.deltas / elapsed,
        tokens_per_s=result.tokens / elapsed,
        events_per_s=result.frames / elapsed,
        server_cpu=server_cpu / elapsed,
        client_cpu=result.cpu_seconds / elapsed,
        failed=result.streams_failed,
        errors=result.errors[:3],
    )


def _quantile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _sleep_until(when: float) -> None:
    time.sleep(max(0.0, when - time.time()))


def paced(
    pool: concurrent.futures.Executor,
    server: Server,
    streams: int,
    seconds: float,
    procs: int,
    open_cost: float,
) -> PacedRow:
    """Hold ``streams`` paced streams; sample RSS once all are open and near the end.

    The first delta of every stream is due ``ramp`` seconds from now (enough to
    open all of them at ``open_cost`` seconds each, measured by :func:`warm_up`),
    plus a random phase within the first pacing interval.
    """
    time.sleep(0.3)
    rss_idle = server.rss_kb()
    n = round(seconds * 1000 / PACE_MS)
    ramp = 1.0 + 1.25 * streams * open_cost
    start = time.time() + ramp
    phases = random.Random(streams).random  # the same phases for both servers
    start_ats = tuple(start + phases() * PACE_MS / 1000 for _ in range(streams))
    spec = LoadSpec(
        port=server.port,
        model=_model(server),
        workers=streams,
        rounds=1,
        n=n,
        interval_ms=PACE_MS,
        start_ats=start_ats,
        open_limit=64,
        deadline=start + seconds + 60,
        cpu=CLIENT_CPU,
    )
    futures = submit(pool, spec, procs)
    _sleep_until(start - 0.2)
    rss_open = server.rss_kb()
    sampled_open = time.time()
    cpu_start = server.cpu_seconds()
    _sleep_until(start + seconds - 0.5)
    rss_end = server.rss_kb()
    cpu_end = server.cpu_seconds()
    result = gather(futures)
    emit = sorted(result.late_emit)
    sched = sorted(result.late_sched)
    kb = 1.0 / 1024
    return PacedRow(
        server=server.label,
        streams=streams,
        seconds=seconds,
        tokens=result.tokens,
        expected=streams * n,
        late_p50_ms=_quantile(emit, 0.5) * 1000,
        late_p99_ms=_quantile(emit, 0.99) * 1000,
        late_max_ms=(emit[-1] if emit else float("nan")) * 1000,
        sched_p99_ms=_quantile(sched, 0.99) * 1000,
        sched_max_ms=(sched[-1] if sched else float("nan")) * 1000,
        rss_idle_mb=rss_idle * kb,
        rss_open_mb=rss_open * kb,
        rss_end_mb=rss_end * kb,
        kb_per_conn=(rss_open - rss_idle) / streams,
        kb_per_conn_end=(rss_end - rss_idle) / streams,
        opened_late=result.last_open > sampled_open,
        server_cpu=(cpu_end - cpu_start) / max(seconds - 0.3, 1e-9),
        client_cpu=result.cpu_seconds / max(result.ended - result.started, 1e-9),
        failed=result.streams_failed,
        errors=result.errors[:3],
    )


# report -------------------------------------------------------------------


def _throughput_table(rows: list[ThroughputRow]) -> str:
    bare = {r.streams: r.deltas_per_s for r in rows if r.server == "bare Starlette"}
    lines = [
        "| server | streams | deltas x rounds | text-delta events/s | tokens/s "
        "| ratio vs bare | server CPU | client CPU | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        coalesced = r.server.startswith("tokenwire") and "coalesce_ms=0" not in r.server
        rate = r.tokens_per_s if coalesced else r.deltas_per_s
        ratio = rate / bare[r.streams] if bare.get(r.streams) else float("nan")
        ratio_text = f"{ratio:.2f}" + (" (tokens)" if coalesced else "")
        lines.append(
            f"| {r.server} | {r.streams} | {r.n} x {r.rounds} | {r.deltas_per_s:,.0f} "
            f"| {r.tokens_per_s:,.0f} | {ratio_text} | {r.server_cpu:.0%} "
            f"| {r.client_cpu:.0%} | {r.failed} |"
        )
    return "\n".join(lines)


def _paced_table(rows: list[PacedRow]) -> str:
    lines = [
        "| server | streams | tokens recv/expected | lateness p50 / p99 / max (ms) "
        "| vs schedule p99 / max (ms) | RSS idle → open → end (MB) | KB/conn open (end) "
        "| server CPU | client CPU | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        late = " (some opened late)" if r.opened_late else ""
        lines.append(
            f"| {r.server} | {r.streams} | {r.tokens:,}/{r.expected:,} "
            f"| {r.late_p50_ms:.1f} / {r.late_p99_ms:.1f} / {r.late_max_ms:.1f} "
            f"| {r.sched_p99_ms:.1f} / {r.sched_max_ms:.1f} "
            f"| {r.rss_idle_mb:.1f} → {r.rss_open_mb:.1f} → {r.rss_end_mb:.1f} "
            f"| {r.kb_per_conn:.1f} ({r.kb_per_conn_end:.1f}){late} "
            f"| {r.server_cpu:.0%} | {r.client_cpu:.0%} | {r.failed} |"
        )
    return "\n".join(lines)


def _targets(unpaced: list[ThroughputRow], paced_rows: list[PacedRow]) -> str:
    bare = {r.streams: r.deltas_per_s for r in unpaced if r.server == "bare Starlette"}
    lines = []
    for r in unpaced:
        if "coalesce_ms=0" in r.server and bare.get(r.streams):
            ratio = r.deltas_per_s / bare[r.streams]
            verdict = "met" if ratio >= 0.7 else "NOT met"
            lines.append(
                f"- events/s >= 0.7 x bare at {r.streams} streams: {ratio:.3f} → {verdict}"
            )
    for p in paced_rows:
        if p.server.startswith("tokenwire"):
            if p.streams == 500:
                verdict = "met" if p.late_p99_ms < 50 else "NOT met"
                late = f"{p.late_p99_ms:.1f} ms"
                lines.append(f"- p99 lateness < 50 ms at 500 paced streams: {late} → {verdict}")
            verdict = "met" if p.kb_per_conn < 32 else "NOT met"
            lines.append(
                f"- < 32 KB RSS per held connection ({p.streams} streams): "
                f"{p.kb_per_conn:.1f} KB → {verdict}"
            )
    return "\n".join(lines)


# main ---------------------------------------------------------------------


def _environment() -> str:
    return (
        f"{os.cpu_count()} CPUs; server on CPU {SERVER_CPU}, clients on CPU {CLIENT_CPU}; "
        f"uvicorn --loop {LOOP} --http {HTTP} (tokenwire: {TOKENWIRE_HTTP}); "
        f"Python {sys.version.split()[0]}"
    )


def run(plan: Plan, json_path: Path | None, kinds: Sequence[str] = ("tokenwire",)) -> None:
    prepare_process(CLIENT_CPU)
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    unpaced: list[ThroughputRow] = []
    paced_rows: list[PacedRow] = []
    procs = plan.client_procs
    print(_environment(), flush=True)
    with concurrent.futures.ProcessPoolExecutor(procs, mp_context=context) as pool:
        configs: list[tuple[str, float | None]] = [(a, 0.0) for a in ANCHORS]
        configs += [(k, c) for c in (*plan.coalesce_rows, None) for k in kinds]
        for kind, coalesce in configs:
            with serving(kind, coalesce) as server:
                warm_up(pool, server)
                for level in plan.levels:
                    row = throughput(pool, server, level, procs)
                    unpaced.append(row)
                    print(
                        f"  {row.server:28} {row.streams:5} streams: "
                        f"{row.deltas_per_s:10,.0f} deltas/s {row.tokens_per_s:10,.0f} tokens/s",
                        flush=True,
                    )
        for streams in plan.paced:
            paced_configs: list[tuple[str, float | None]] = [(a, 0.0) for a in ANCHORS]
            paced_configs += [(k, 0.0) for k in kinds]
            if streams <= plan.paced_coalesced_max:
                paced_configs += [(k, 20.0) for k in kinds]
            paced_configs += [(k, None) for k in kinds]
            for kind, coalesce in paced_configs:
                with serving(kind, coalesce) as server:
                    warm_up(pool, server)
                    open_cost = warm_up(pool, server)
                    prow = paced(pool, server, streams, plan.paced_seconds, procs, open_cost)
                    paced_rows.append(prow)
                    print(
                        f"  {prow.server:28} {streams:5} paced: p99 {prow.late_p99_ms:.1f} ms, "
                        f"{prow.kb_per_conn:.1f} KB/conn",
                        flush=True,
                    )
    print()
    print("Unpaced throughput (text-delta events/s received by the clients)\n")
    print(_throughput_table(unpaced))
    print(f"\nPaced: one delta per {PACE_MS:g} ms per stream for {plan.paced_seconds:g} s\n")
    print(_paced_table(paced_rows))
    print("\nTargets\n")
    print(_targets(unpaced, paced_rows))
    print(f"\n{_environment()}; total {time.monotonic() - started:.1f} s")
    if json_path is not None:
        data = {
            "environment": _environment(),
            "unpaced": [asdict(r) for r in unpaced],
            "paced": [asdict(r) for r in paced_rows],
        }
        json_path.write_text(json.dumps(data, indent=2))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (< 20 s)")
    parser.add_argument("--client-procs", type=int, default=None, help="client processes")
    parser.add_argument("--paced", type=int, nargs="*", default=None, help="paced stream counts")
    parser.add_argument("--paced-seconds", type=float, default=None, help="paced duration, s")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--baseline-src", type=Path, default=None, metavar="DIR", help=BASELINE_HELP
    )
    args = parser.parse_args(argv)
    kinds = set_baseline_src(args.baseline_src)
    plan = QUICK if args.quick else FULL
    if args.client_procs is not None:
        plan = dataclasses.replace(plan, client_procs=args.client_procs)
    if args.paced is not None:
        plan = dataclasses.replace(plan, paced=tuple(args.paced))
    if args.paced_seconds is not None:
        plan = dataclasses.replace(plan, paced_seconds=args.paced_seconds)
    run(plan, args.json, kinds)


if __name__ == "__main__":
    main()
