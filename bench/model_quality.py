"""The bundled model (``local:smollm2``): answer quality under two sampling settings, and speed.

Quality (the default mode) sends the same 20 prompts (explain, list, code, story,
short factual; one user turn each, no system prompt) with the same fixed seed per
prompt to :class:`~tokenwire.providers.local.LocalProvider` under each setting, one
generation at a time, the settings interleaved prompt by prompt. A setting is a set
of ``params`` (``key=value,key=value``) laid over the provider's defaults; an empty
one is the provider's defaults as shipped. Per answer:

- **distinct-4**: distinct word 4-grams / all word 4-grams (words: ``[\\w']+`` of the
  lowercased text). 1.0 = no 4-gram said twice; a sentence repeated until the cap
  drives it towards 0. Answers of fewer than 4 words count as 1.0.
- **cap**: the answer hit ``max_tokens`` (``finish_reason`` ``length``).
- **tokens**: generated tokens (llama.cpp's usage), and tokens/s (tokens / wall time
  of the generation, prompt included).

Speed (``--speed``) measures tokens/s of the model while a busy-loop process
(``while True: pass``) loads one core: ``threads=os.cpu_count()`` (the old default)
against the provider's default thread count, interleaved A B B A … in the same run so
that the machine's other load hits both alike; then the same without the busy loop.

Run::

    .venv/bin/python -m bench.model_quality                 # old vs new defaults, 20 prompts
    .venv/bin/python -m bench.model_quality --json out.json --show-text
    .venv/bin/python -m bench.model_quality --extra 'rp13=repeat_penalty=1.3'
    .venv/bin/python -m bench.model_quality --speed --rounds 4

See ``docs/performance.md``, "The bundled model".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenwire.events import Finish, TextDelta, Usage
from tokenwire.providers.base import GenerationRequest, Message
from tokenwire.providers.local import LocalProvider

PROMPTS: list[tuple[str, str]] = [
    ("explain", "Explain how photosynthesis works."),
    ("explain", "Why is the sky blue?"),
    ("explain", "Explain what a database index is and when to use one."),
    ("explain", "How does a vaccine train the immune system?"),
    ("list", "List five tips for sleeping better."),
    ("list", "Give me a packing list for a weekend camping trip."),
    ("list", "What are the main differences between Python and JavaScript?"),
    ("list", "List the planets of the solar system in order from the sun."),
    ("code", "Write a Python function that checks whether a string is a palindrome."),
    ("code", "Write a SQL query that returns the ten most recent rows of a table named orders."),
    ("code", "Write a JavaScript function that debounces another function."),
    ("code", "How do I read a CSV file in Python? Show an example."),
    ("story", "Write a short story about a baker who wakes up before sunrise."),
    ("story", "Tell me a story about a dragon who is afraid of the dark."),
    ("story", "Write a poem about the sea."),
    ("story", "Describe a day in the life of a lighthouse keeper."),
    ("factual", "What is the capital of Australia?"),
    ("factual", "How many legs does a spider have?"),
    ("factual", "Who wrote Pride and Prejudice?"),
    ("factual", "What is the boiling point of water in Fahrenheit?"),
]

OLD_DEFAULTS = (
    "temperature=0.2,top_p=0.95,repeat_penalty=1.0,repeat_last_n=64,"
    "frequency_penalty=0.0,presence_penalty=0.0,dry_multiplier=0.0,dry_penalty_last_n=64"
)
"""The sampling before issue 10: temperature 0.2, everything else llama.cpp's default."""

SPEED_PROMPT = "Tell me a long story about a lighthouse keeper and a storm."
_WORD = re.compile(r"[\w']+")


def distinct_4(text: str) -> float:
    """Distinct word 4-grams / all word 4-grams of ``text`` (1.0 below 4 words)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return len(set(grams)) / len(grams) if grams else 1.0


def parse_params(spec: str) -> dict[str, object]:
    """``"temperature=0.2,stop=x"`` → ``{"temperature": 0.2, "stop": "x"}`` (JSON values)."""
    params: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"not key=value: {item!r}")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


@dataclass
class Answer:
    setting: str
    prompt: int
    kind: str
    seed: int
    text: str
    finish_reason: str
    tokens: int
    seconds: float
    distinct4: float

    @property
    def capped(self) -> bool:
        return self.finish_reason == "length"


async def generate(provider: LocalProvider, prompt: str, params: dict[str, object]) -> Answer:
    request = GenerationRequest(
        model="smollm2", messages=[Message("user", prompt)], params=dict(params)
    )
    parts: list[str] = []
    tokens = 0
    reason = "?"
    start = time.perf_counter()
    async for event in provider.stream(request):
        if isinstance(event, TextDelta):
            parts.append(event.delta)
        elif isinstance(event, Usage):
            tokens = event.output_tokens
        elif isinstance(event, Finish):
            reason = event.finish_reason
    seconds = time.perf_counter() - start
    text = "".join(parts)
    return Answer("", 0, "", 0, text, reason, tokens, seconds, distinct_4(text))


def summarize(answers: list[Answer]) -> dict[str, float]:
    return {
        "answers": len(answers),
        "distinct4_mean": statistics.fmean(a.distinct4 for a in answers),
        "distinct4_min": min(a.distinct4 for a in answers),
        "below_0_5": sum(a.distinct4 < 0.5 for a in answers),
        "capped": sum(a.capped for a in answers),
        "tokens_mean": statistics.fmean(a.tokens for a in answers),
        "words_mean": statistics.fmean(len(_WORD.findall(a.text)) for a in answers),
        "tokens_per_s": sum(a.tokens for a in answers) / sum(a.seconds for a in answers),
    }


async def quality(args: argparse.Namespace) -> dict[str, object]:
    settings: dict[str, dict[str, object]] = {
        "old": parse_params(args.baseline),
        "new": parse_params(args.candidate),
    }
    for extra in args.extra:
        label, _, spec = extra.partition("=")
        settings[label] = parse_params(spec)
    provider = LocalProvider(threads=args.threads)
    await provider.warm_up()
    answers: list[Answer] = []
    for round_ in range(args.seeds):
        for i, (kind, prompt) in enumerate(PROMPTS):
            seed = args.seed + 1000 * round_ + i
            for label, params in settings.items():
                answer = await generate(
                    provider, prompt, {**params, "seed": seed, "max_tokens": args.max_tokens}
                )
                answer.setting, answer.prompt, answer.kind, answer.seed = label, i, kind, seed
                answers.append(answer)
                print(
                    f"  [{label:>6}] #{i:2} seed {seed:5} {answer.finish_reason:6} "
                    f"{answer.tokens:4} tok {answer.distinct4:5.2f} d4",
                    file=sys.stderr,
                    flush=True,
                )
    summary = {label: summarize([a for a in answers if a.setting == label]) for label in settings}
    print_quality(settings, summary, answers, args)
    return {
        "settings": settings,
        "max_tokens": args.max_tokens,
        "summary": summary,
        "answers": [asdict(a) for a in answers],
    }


def print_quality(
    settings: dict[str, dict[str, object]],
    summary: dict[str, dict[str, float]],
    answers: list[Answer],
    args: argparse.Namespace,
) -> None:
    labels = list(settings)
    print(f"\nmax_tokens {args.max_tokens}, {args.seeds} seed(s) per prompt", end="")
    print(f", threads {args.threads or 'default'}")
    for label, params in settings.items():
        print(f"  {label}: {params or 'the provider defaults'}")
    print(
        f"\n{'setting':>8} {'distinct-4 mean':>16} {'min':>5} {'<0.5':>5} {'capped':>7} "
        f"{'tokens':>7} {'words':>6} {'tok/s':>6}"
    )
    for label in labels:
        s = summary[label]
        print(
            f"{label:>8} {s['distinct4_mean']:16.3f} {s['distinct4_min']:5.2f} "
            f"{int(s['below_0_5']):5} {int(s['capped']):4}/{int(s['answers']):<2} "
            f"{s['tokens_mean']:7.0f} {s['words_mean']:6.0f} {s['tokens_per_s']:6.1f}"
        )
    print("\nper prompt (distinct-4 / tokens, * = hit the cap):")
    print(f"{'#':>3} {'kind':8} " + " ".join(f"{label:>12}" for label in labels))
    for round_ in range(args.seeds):
        for i, (kind, _prompt) in enumerate(PROMPTS):
            seed = args.seed + 1000 * round_ + i
            row = []
            for label in labels:
                a = next(x for x in answers if (x.setting, x.prompt, x.seed) == (label, i, seed))
                row.append(f"{a.distinct4:.2f}/{a.tokens:3}{'*' if a.capped else ' '}")
            print(f"{i:3} {kind:8} " + " ".join(f"{cell:>12}" for cell in row))
    if args.show_text:
        for a in answers:
            print(f"\n--- [{a.setting}] #{a.prompt} {PROMPTS[a.prompt][1]}\n{a.text}")


async def speed(args: argparse.Namespace) -> dict[str, object]:
    configs = {
        f"old threads={os.cpu_count()}": LocalProvider(threads=os.cpu_count()),
        "new default": LocalProvider(threads=args.threads),
    }
    for provider in configs.values():
        await provider.warm_up()
    params = {"seed": 7, "max_tokens": args.speed_tokens, "temperature": 0.2}
    results: dict[str, dict[str, list[float]]] = {}
    for load in (True, False):
        phase = "one core loaded" if load else "no extra load"
        busy = (
            subprocess.Popen([sys.executable, "-c", "while True: pass"])  # noqa: ASYNC220
            if load
            else None
        )
        try:
            results[phase] = {label: [] for label in configs}
            order = list(configs)
            for round_ in range(args.rounds):
                for label in order if round_ % 2 == 0 else order[::-1]:
                    answer = await generate(configs[label], SPEED_PROMPT, params)
                    rate = answer.tokens / answer.seconds
                    results[phase][label].append(rate)
                    print(f"  {phase}: {label}: {rate:.1f} tok/s", file=sys.stderr, flush=True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    print(f"\n{os.cpu_count()} CPUs, affinity {sorted(os.sched_getaffinity(0))}; tokens/s, median")
    for phase, by_label in results.items():
        for label, rates in by_label.items():
            print(
                f"  {phase:16} {label:18} median {statistics.median(rates):6.1f} "
                f"(runs: {', '.join(f'{r:.1f}' for r in rates)})"
            )
    return {"speed": results, "tokens": args.speed_tokens, "rounds": args.rounds}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--baseline", default=OLD_DEFAULTS, help="params of the 'old' setting")
    parser.add_argument("--candidate", default="", help="params of 'new' ('' = defaults)")
    parser.add_argument("--extra", action="append", default=[], help="LABEL=k=v,k=v (more)")
    parser.add_argument("--seed", type=int, default=1, help="seed of prompt 0 (prompt i: +i)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per prompt")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    parser.add_argument("--show-text", action="store_true", help="print every answer")
    parser.add_argument("--speed", action="store_true", help="tokens/s, old vs new threads")
    parser.add_argument("--rounds", type=int, default=4, help="--speed: runs per config")
    parser.add_argument("--speed-tokens", type=int, default=128, help="--speed: max_tokens")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    result = asyncio.run(speed(args) if args.speed else quality(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
