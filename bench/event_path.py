"""Per-event path micro-benchmark, in process, without HTTP (issue #11).

Drives what one long unpaced native SSE stream costs per event, minus the socket:
the ``bench:`` provider (:class:`bench.servers.BenchProvider`) → producer →
coalescer (``coalesce_ms=0``) → log append (memory log) → reader
(``StreamLog.read``, as the SSE response reads) → native SSE framing
(``tokenwire.transports.sse.frame_events``). Only APIs present both in this checkout
and in the pre-move commit ``c921cb4`` are used (``Tokenwire``, ``Settings``,
``ProviderRegistry``, ``Tokenwire.start``, ``Tokenwire.log``), so ``--baseline-src``
can run the same code against another checkout's ``src``.

Run ``python -m bench.event_path [--baseline-src DIR]``: every round runs one
subprocess per version (alternating which goes first), each timing ``--streams``
streams of ``--n`` deltas after one warm-up stream; the report is the median
microseconds per event (stream start to terminal event read and framed, divided by
the events read) and the ratio this/baseline. ``--profile`` instead prints a
cProfile of one child per version, sorted by own time. CPU-light: one core, one
stream at a time, seconds per round.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.sse_bench import BASELINE, BASELINE_HELP, server_env, set_baseline_src

__all__ = ["main", "measure"]


async def _one_stream(tw: object, n: int) -> tuple[float, int, int]:
    """``(seconds, events read, bytes framed)`` of one stream of ``n`` deltas."""
    from tokenwire.providers.base import Message
    from tokenwire.transports.sse import frame_events

    started = time.perf_counter()
    stream = await tw.start(  # type: ignore[attr-defined]
        "bench:default", [Message(role="user", content="hi")], params={"n": n}
    )
    events = size = 0
    async for batch in tw.log.read(stream.stream_id, 0):  # type: ignore[attr-defined]
        if batch:
            events += len(batch)
            size += len(frame_events(batch))
    return time.perf_counter() - started, events, size


async def measure(n: int, streams: int, data_dir: Path) -> dict[str, object]:
    """Time ``streams`` streams of ``n`` deltas (after one warm-up stream) on a fresh
    :class:`~tokenwire.Tokenwire` (memory log, SQLite store in ``data_dir``).

    Returns:
        ``{"us_per_event": [µs per event of each stream], "events": int, "bytes": int,
        "tokenwire": the package's path}``.
    """
    import tokenwire
    from bench.servers import BenchProvider
    from tokenwire import Tokenwire
    from tokenwire.providers import ProviderRegistry
    from tokenwire.settings import Settings

    registry = ProviderRegistry()
    registry.register("bench", BenchProvider())  # type: ignore[arg-type]
    settings = Settings(
        data_dir=data_dir,
        coalesce_ms=0,
        orphan_timeout=None,
        limit_concurrent_streams=0,
        default_model="bench:default",
        models=["bench:default"],
    )
    per_event: list[float] = []
    events = size = 0
    async with Tokenwire(settings, registry=registry) as tw:
        await _one_stream(tw, n)
        for _ in range(streams):
            seconds, events, size = await _one_stream(tw, n)
            per_event.append(seconds / events * 1e6)
    return {
        "us_per_event": per_event,
        "events": events,
        "bytes": size,
        "tokenwire": str(Path(tokenwire.__file__).parent),
    }


def _child(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="tw-event-path-") as tmp:
        run = lambda: asyncio.run(measure(args.n, args.streams, Path(tmp)))  # noqa: E731
        if not args.profile:
            print(json.dumps(run()))
            return
        run()  # imports and first-use costs stay out of the profile
        profile = cProfile.Profile()
        result = profile.runcall(run)
        print(json.dumps({k: v for k, v in result.items() if k != "us_per_event"}))
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)


def _run_child(kind: str, args: argparse.Namespace) -> str:
    command = [sys.executable, "-m", "bench.event_path", "--child"]
    command += ["--n", str(args.n), "--streams", str(args.streams)]
    command += ["--profile", str(args.profile)] if args.profile else []
    env = {**os.environ, **server_env(kind)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{done.stderr}")
    return done.stdout


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and run (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m bench.event_path", description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="deltas per stream (2000)")
    parser.add_argument("--streams", type=int, default=5, help="timed streams per child (5)")
    parser.add_argument("--rounds", type=int, default=5, help="children per version (5)")
    parser.add_argument(
        "--baseline-src", type=Path, default=None, metavar="DIR", help=BASELINE_HELP
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="LINES", help="print LINES of a cProfile instead"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return
    kinds = set_baseline_src(args.baseline_src)
    if args.profile:
        for kind in kinds:
            print(f"=== {kind} ===\n{_run_child(kind, args)}")
        return
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    for round_ in range(args.rounds):
        order = kinds if round_ % 2 == 0 else kinds[::-1]
        for kind in order:
            result = json.loads(_run_child(kind, args))
            samples[kind] += result["us_per_event"]
            median = statistics.median(result["us_per_event"])
            print(
                f"round {round_ + 1} {kind:9} median {median:.2f} µs/event "
                f"({result['events']} events, {result['bytes']} bytes; {result['tokenwire']})"
            )
    medians = {kind: statistics.median(values) for kind, values in samples.items()}
    for kind, value in medians.items():
        print(f"{kind:9} median {value:.2f} µs/event over {len(samples[kind])} streams")
    if BASELINE in medians:
        ratio = medians[BASELINE] / medians["tokenwire"]
        print(f"events/s this/baseline: {ratio:.3f}")


if __name__ == "__main__":
    main()
