"""Server-side tools: Python functions the model may call during a generation (issue #13).

A :class:`Tool` wraps a sync or async function; its arguments' JSON Schema comes
from the function's type hints (a pydantic model built with ``create_model``), its
description from the docstring. A :class:`ToolRegistry` holds the tools a
:class:`~tokenwire.Tokenwire` may run; a request names the ones its model may call
(``tools: ["get_time"]``), and :mod:`tokenwire.agent` runs the loop.

::

    def get_weather(city: str, unit: Literal["C", "F"] = "C") -> dict[str, object]:
        "The current weather in a city."
        ...

    tw = Tokenwire(settings, tools=[get_weather])     # or @tw.tool
    # tokenwire serve --tools myapp.tools:TOOLS        # TOKENWIRE_TOOLS=myapp.tools:TOOLS
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, get_type_hints

import anyio
import anyio.to_thread
import pydantic
import pydantic_core

from tokenwire.errors import ConfigurationError, InvalidRequestError
from tokenwire.providers.base import ToolSpec

__all__ = ["Tool", "ToolArgumentsError", "ToolRegistry", "load_tools"]

ToolFunction = Callable[..., Any]


class ToolArgumentsError(ValueError):
    """The model's arguments do not match the tool's schema; the message (pydantic's
    error locations and messages, no input values) is written for the model."""


class Tool:
    """One tool: a name, a description, the JSON Schema of its arguments, a function.

    Args:
        function: called with the validated arguments as keyword arguments; a sync
            function runs in a worker thread (:func:`anyio.to_thread.run_sync`), so
            it does not block the event loop (a cancelled sync tool's thread runs
            to its end, its result is dropped).
        name: default ``function.__name__``.
        description: default the docstring's first paragraph.

    Raises:
        ConfigurationError: a parameter is ``*args``/``**kwargs`` or positional-only,
            or its type has no JSON Schema.
    """

    def __init__(
        self, function: ToolFunction, *, name: str | None = None, description: str | None = None
    ) -> None:
        self.function = function
        self.name = name or function.__name__
        doc = inspect.getdoc(function) or ""
        self.description = description if description is not None else doc.split("\n\n")[0]
        self.is_async = inspect.iscoroutinefunction(function)
        self.arguments = _arguments_model(function, self.name)
        try:
            schema = self.arguments.model_json_schema()
        except pydantic.PydanticUserError as exc:  # pragma: no cover - exotic types
            raise ConfigurationError(f"tool {self.name!r}: {exc}") from exc
        schema.pop("title", None)
        self.parameters: dict[str, object] = schema

    @property
    def spec(self) -> ToolSpec:
        """What a provider is told about the tool."""
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    def validate(self, arguments: Mapping[str, object] | None) -> dict[str, Any]:
        """The keyword arguments for the function.

        Raises:
            ToolArgumentsError: ``arguments`` do not match the schema.
        """
        try:
            model = self.arguments.model_validate(dict(arguments or {}))
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors(include_input=False, include_url=False)
            )
            raise ToolArgumentsError(f"invalid arguments for {self.name}: {problems}") from None
        return {field: getattr(model, field) for field in type(model).model_fields}

    async def call(self, arguments: Mapping[str, object] | None) -> object:
        """Validate ``arguments``, run the function and return its result as JSON
        values (:func:`pydantic_core.to_jsonable_python`).

        Raises:
            ToolArgumentsError: as :meth:`validate`; anything the function raises.
        """
        kwargs = self.validate(arguments)
        if self.is_async:
            result = await self.function(**kwargs)
        else:
            call = functools.partial(self.function, **kwargs)
            result = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        return pydantic_core.to_jsonable_python(result)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def _arguments_model(function: ToolFunction, name: str) -> type[pydantic.BaseModel]:
    """A pydantic model of the function's parameters (hints; ``Any`` when missing)."""
    hints = get_type_hints(function, include_extras=True)
    fields: dict[str, Any] = {}
    for param in inspect.signature(function).parameters.values():
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise ConfigurationError(
                f"tool {name!r}: parameter {param.name!r} must be a named parameter"
            )
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    config = pydantic.ConfigDict(extra="forbid")
    return pydantic.create_model(f"{name}_arguments", __config__=config, **fields)


def output_text(output: object) -> str:
    """A tool's output as the text of a ``tool`` message: a string as is, anything
    else as compact JSON."""
    if isinstance(output, str):
        return output
    return json.dumps(output, ensure_ascii=False, separators=(",", ":"))


class ToolRegistry:
    """The tools an instance may run, by name.

    Args:
        tools: functions or :class:`Tool` objects.

    Raises:
        ConfigurationError: two tools share a name.
    """

    def __init__(self, tools: Iterable[Tool | ToolFunction] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool | ToolFunction) -> Tool:
        """Register a tool (a function is wrapped in :class:`Tool`); return it.

        Raises:
            ConfigurationError: a tool of that name is registered already.
        """
        wrapped = tool if isinstance(tool, Tool) else Tool(tool)
        if wrapped.name in self._tools:
            raise ConfigurationError(f"two tools are named {wrapped.name!r}")
        self._tools[wrapped.name] = wrapped
        return wrapped

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def select(self, names: Iterable[str], field: str = "tools") -> list[Tool]:
        """The tools named by a request, in its order.

        Raises:
            InvalidRequestError: a name is not registered (HTTP 422 naming it).
        """
        selected: list[Tool] = []
        for i, name in enumerate(names):
            tool = self._tools.get(name)
            if tool is None:
                known = ", ".join(self.names()) or "none"
                raise InvalidRequestError(
                    f"{field}[{i}]", f"unknown tool {name!r} (registered: {known})"
                )
            if tool not in selected:
                selected.append(tool)
        return selected


def load_tools(target: str) -> ToolRegistry:
    """The tools named by ``module:object`` (``TOKENWIRE_TOOLS``, ``serve --tools``):
    the object is a :class:`ToolRegistry`, or a list of functions and :class:`Tool`
    objects, or one function.

    Raises:
        ConfigurationError: the module or object cannot be found, or is not tools.
    """
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"tools {target!r}: expected 'module:object'")
    try:
        value: object = importlib.import_module(module_name)
        for piece in attribute.split("."):
            value = getattr(value, piece)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"tools {target!r}: cannot load it ({exc})") from exc
    if isinstance(value, ToolRegistry):
        return value
    if isinstance(value, Tool) or inspect.isfunction(value):
        return ToolRegistry([value])
    if isinstance(value, list | tuple) and all(isinstance(v, Tool) or callable(v) for v in value):
        return ToolRegistry(value)
    raise ConfigurationError(f"tools {target!r}: not a ToolRegistry or a list of tools")
