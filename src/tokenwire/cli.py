"""The ``tokenwire`` command: ``serve``, ``worker``, ``chat`` and ``mock-provider``.

Every setting can also come from a ``TOKENWIRE_*`` environment variable
(``TOKENWIRE_DATA_DIR``, ``TOKENWIRE_LOG_URL``, ``TOKENWIRE_STORE_URL`` …); flags win.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from rich.console import Console

from tokenwire.errors import TokenwireError
from tokenwire.settings import Settings

app = typer.Typer(
    help="Durable, resumable, cancellable LLM response streams.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True, markup=False, highlight=False)


def _settings(**flags: Any) -> Settings:
    return Settings(**{k: v for k, v in flags.items() if v is not None})


def _say(settings: Settings, text: str) -> None:
    """A start-up line: on the console, or as a log record when logs are JSON."""
    if settings.log_format == "json":
        logging.getLogger("tokenwire").info("%s", text)
    else:
        console.print(text)


ToolsOption = Annotated[
    str | None,
    typer.Option(
        help="Server-side tools, 'module:object' (a ToolRegistry or a list of "
        "functions) that requests may name in 'tools' (env TOKENWIRE_TOOLS; docs/tools.md).",
    ),
]


def _check_tools(settings: Settings) -> None:
    """Load ``settings.tools`` once to fail early (exit 2) and say which tools there are."""
    if settings.tools:
        from tokenwire.errors import ConfigurationError
        from tokenwire.tools import load_tools

        try:
            loaded = load_tools(settings.tools)
        except ConfigurationError as exc:
            _fail(str(exc))
        _say(settings, f"tokenwire: tools {', '.join(loaded.names()) or '(none)'}")


def _check_exposure(settings: Settings) -> None:
    """Exit (status 2) when ``settings`` would serve anonymous callers on an interface
    other than loopback without saying so (``TOKENWIRE_ALLOW_ANONYMOUS=1``)."""
    from tokenwire.server.identity import is_loopback

    if not (
        is_loopback(settings.host) or settings.identity_configured() or settings.allow_anonymous
    ):
        _fail(
            f"refusing to serve {settings.host} with no identity source: set "
            "TOKENWIRE_AUTH_TOKENS, TOKENWIRE_JWT_SECRET or TOKENWIRE_JWT_PUBLIC_KEY, "
            "or TOKENWIRE_ALLOW_ANONYMOUS=1 to serve anonymous callers"
        )


def _observability(settings: Settings, log_level: str) -> None:
    """Logging in ``TOKENWIRE_LOG_FORMAT``; OpenTelemetry traces as ``OTEL_*`` ask."""
    from tokenwire.observability import logs, tracing

    logs.configure(log_level, settings.log_format)
    tracing.configure_from_env()


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on (env TOKENWIRE_HOST; 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (env TOKENWIRE_PORT; 8000).")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Default model, 'provider:model' (default: local:smollm2 without API keys)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="SQLite file and local state (env TOKENWIRE_DATA_DIR).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    no_producers: Annotated[
        bool,
        typer.Option(
            "--no-producers",
            help="Gateway only: queue generations for 'tokenwire worker' processes "
            "(env TOKENWIRE_PRODUCERS=queue; needs a Redis log or TOKENWIRE_QUEUE_URL).",
        ),
    ] = False,
    tools: ToolsOption = None,
) -> None:
    """Run the HTTP server: native API, SSE, and the chat page at http://HOST:PORT/.

    Refuses to start (exit status 2) on an interface other than loopback when no
    identity source is configured and anonymous callers are not explicitly allowed.
    """
    from tokenwire.observability.logs import uvicorn_log_config
    from tokenwire.server.app import create_app
    from tokenwire.server.serving import run

    settings = _settings(
        host=host,
        port=port,
        default_model=model,
        data_dir=data_dir,
        producers="queue" if no_producers else None,
        tools=tools,
    )
    _check_tools(settings)
    _check_exposure(settings)
    _observability(settings, log_level)
    asgi_app = create_app(settings, freeze_gc=True)
    _say(
        settings,
        f"tokenwire: chat page on http://{settings.host}:{settings.port}/"
        f"  (default model {settings.resolved_default_model()})",
    )
    log_config = uvicorn_log_config(settings.log_format)  # None: uvicorn's own (text)
    options = {} if log_config is None else {"log_config": log_config}
    run(asgi_app, log_level=log_level, **options)


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Generations run at once (env TOKENWIRE_WORKER_CONCURRENCY; 64)."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="SQLite file and local state (env TOKENWIRE_DATA_DIR).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus /metrics on this port (env TOKENWIRE_WORKER_METRICS_PORT)."
        ),
    ] = None,
    tools: ToolsOption = None,
) -> None:
    """Run queued generations (from 'serve --no-producers' nodes) until SIGINT/SIGTERM."""
    from tokenwire.worker import GenerationWorker, serve_metrics

    settings = _settings(data_dir=data_dir, worker_metrics_port=metrics_port, tools=tools)
    _check_tools(settings)
    _observability(settings, log_level)
    runner = GenerationWorker(settings, concurrency=concurrency)
    _say(settings, f"tokenwire worker {runner.id}: queue {settings.queue_name!r}")
    if settings.worker_metrics_port is not None:
        serve_metrics(runner, settings.host, settings.worker_metrics_port)
    asyncio.run(runner.run())


@app.command()
def chat(
    question: Annotated[str, typer.Argument(help="What to ask.")],
    model: Annotated[str | None, typer.Option(help="'provider:model'.")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where the conversation is stored.")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(help="Provider parameter KEY=VALUE (JSON values), e.g. max_tokens=64."),
    ] = None,
) -> None:
    """Stream one answer to the terminal; Ctrl-C stops the generation."""
    settings = _settings(default_model=model, data_dir=data_dir, orphan_timeout=None)
    params = dict(_param(p) for p in param or [])
    try:
        code = asyncio.run(_chat(settings, question, system, params))
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"expected KEY=VALUE, got {text!r}", param_hint="--param")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


async def _chat(
    settings: Settings, question: str, system: str | None, params: dict[str, object]
) -> int:
    from tokenwire.engine import Tokenwire
    from tokenwire.events import ReasoningDelta, TextDelta, ToolCall
    from tokenwire.providers import Message

    async with Tokenwire(settings) as tw:
        stream = await tw.start(
            None, [Message("user", question)], system=system, params=params, source="cli"
        )
        out = sys.stdout
        try:
            async for event in stream:
                if isinstance(event, TextDelta):
                    out.write(event.delta)
                    out.flush()
                elif isinstance(event, ReasoningDelta):
                    console.print(event.delta, end="", style="dim italic")
                elif isinstance(event, ToolCall):
                    console.print(
                        f"\n[tool call] {event.name}({event.arguments_text or event.arguments})"
                    )
        except asyncio.CancelledError:
            await stream.cancel("user")
            with contextlib.suppress(Exception):
                await asyncio.shield(tw.wait_idle())
            console.print("\n[cancelled]")
            return 130
        out.write("\n")
        if stream.status == "failed" and stream.state.error:
            console.print(f"error: {stream.state.error['message']}", style="red")
            return 1
        usage = stream.usage
        if usage is not None:
            console.print(
                f"[{stream.finish_reason}; {usage.input_tokens} in, {usage.output_tokens} out]",
                style="dim",
            )
        return 0


@app.command("mock-provider")
def mock_provider(
    recordings: Annotated[
        Path | None,
        typer.Option(
            help="Folder of recordings (<api>/<name>.sse …); default: the ones bundled "
            "with tokenwire (GET /_mock/models lists them)."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8100,
    pace_ms: Annotated[float, typer.Option(help="Milliseconds between replayed events.")] = 0.0,
) -> None:
    """Serve recorded provider responses over the providers' real HTTP APIs."""
    from tokenwire.mock_provider import BUNDLED_RECORDINGS
    from tokenwire.mock_provider import serve as serve_mock

    serve_mock(recordings or BUNDLED_RECORDINGS, host=host, port=port, pace_ms=pace_ms)


def main() -> None:
    """Console-script entry point. A user's mistake (a bad setting, an unknown
    model, a missing folder) prints one line on stderr and exits with status 2;
    a bug still shows its traceback."""
    try:
        app()
    except (TokenwireError, NotADirectoryError) as exc:
        _fail(str(exc))
    except ValidationError as exc:
        _fail("; ".join(_setting_error(error) for error in exc.errors()))


def _fail(message: str) -> NoReturn:
    console.print(f"tokenwire: {message}", style="red", soft_wrap=True)
    raise SystemExit(2)


def _setting_error(error: ErrorDetails) -> str:
    """``TOKENWIRE_PORT='abc': Input should be a valid integer …`` for one error of
    :class:`Settings`."""
    name = "TOKENWIRE_" + "_".join(str(part) for part in error["loc"]).upper()
    return f"{name}={error.get('input')!r}: {error['msg']}"
