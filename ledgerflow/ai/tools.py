"""Tools: ordinary steps, described to the model from their signature and docstring.

A tool call is a step call, so it is retried, timed out and recorded like any other,
and never run again once its result is in the log. What the model sends as arguments
is checked here, in workflow code, against the schema built from the signature:
a call that does not fit is answered with the problem (the model can correct itself),
never passed on to the step.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import inspect
import json
import re
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ledgerflow.eventlog.delays import delay_seconds
from ledgerflow.eventlog.errors import ConfigurationError, InvalidArgumentError
from ledgerflow.eventlog.text import clip
from ledgerflow.worker.registry import StepFunction

from .model import ToolSpec

TOOL_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What chat-completions APIs accept as a function name."""
MAX_DESCRIPTION: Final = 1024
DEFAULT_MAX_RESULT_CHARS: Final = 16_000
"""A tool's result as the model reads it is cut to this (head and tail kept, a marker
between): one tool returning megabytes must not fill every later model call."""

_PRIMITIVES: Final[dict[Any, str]] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
}
_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params):\s*$")
_ARG_LINE = re.compile(r"^\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SPHINX = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+):\s*(.*)$")
_HEADER = re.compile(r"^[A-Z][a-z]+(?: [A-Za-z]+){0,2}:$")


@dataclass(frozen=True)
class Tool:
    """A step the agent may call; build one with ``lf.ai.tool(step, ...)``.

    ``approval``: before each call the agent creates a hook and waits for a person's
    decision (``lf.ai.approve`` / ``lf.ai.reject``); a rejection, or no decision within
    ``approval_timeout`` seconds, is what the model is told instead of a result.
    """

    step: StepFunction[..., Any]
    name: str
    description: str
    parameters: dict[str, Any]
    approval: bool = False
    approval_timeout: float | None = None
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS
    _checks: dict[str, _Check] = field(default_factory=dict, repr=False, compare=False)
    _required: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)

    def check_arguments(self, arguments: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The arguments the step is called with, or the problem to tell the model.

        Deterministic (it runs in workflow code): no clock, no I/O, the same answer on
        every replay. Whole floats given for integers become integers; nothing else is
        converted.
        """
        unknown = sorted(set(arguments) - set(self._checks))
        if unknown:
            return {}, f"unknown argument(s) {', '.join(unknown)}; {self._expects()}"
        missing = sorted(self._required - set(arguments))
        if missing:
            return {}, f"missing argument(s) {', '.join(missing)}; {self._expects()}"
        checked: dict[str, Any] = {}
        for name, value in arguments.items():
            ok, converted = self._checks[name](value)
            if not ok:
                shown = clip(json.dumps(value, default=repr)[:300], 300)
                return {}, f"argument {name} = {shown} is not {_describe(self.parameters, name)}"
            checked[name] = converted
        return checked, None

    def _expects(self) -> str:
        wanted = ", ".join(
            f"{name}{'' if name in self._required else '?'}: {_describe(self.parameters, name)}"
            for name in self._checks
        )
        return f"{self.name} takes ({wanted})"

    def render(self, result: Any) -> str:
        """A result as the model reads it: text as is, anything else as JSON, bounded."""
        text = result if isinstance(result, str) else json.dumps(_jsonable(result), sort_keys=False)
        return clip(text, self.max_result_chars)


def tool(
    step: StepFunction[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    approval: bool = False,
    approval_timeout: float | dt.timedelta | None = None,
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
) -> Tool:
    """Describe a step to the model: its name, what it does and its parameters' schema.

    ``name`` defaults to the function's name, ``description`` to its docstring's text
    before an ``Args:`` (or ``:param``) section, whose entries describe the parameters.
    Parameters are ``str``, ``int``, ``float``, ``bool``, ``Literal[...]``, lists and
    ``dict[str, ...]`` of these, optionally ``| None`` and ``Annotated[T, "description"]``;
    anything else is a ConfigurationError here, at import, naming the parameter.
    Resource parameters (``lf.use``) are filled by the worker and never shown.
    """
    if not isinstance(step, StepFunction):
        raise ConfigurationError(
            f"a tool is a step: decorate {getattr(step, '__qualname__', step)!r} with @lf.step"
        )
    fn = step.definition.fn
    label = name or fn.__name__
    if not TOOL_NAME.match(label):
        raise ConfigurationError(
            f"tool name {label!r}: 1-64 letters, digits, '_' or '-' (pass name=...)"
        )
    summary, documented = _parse_docstring(inspect.getdoc(fn) or "")
    text = description if description is not None else summary
    if not text:
        raise ConfigurationError(
            f"tool {label!r} has no description: give its step a docstring or pass description="
        )
    if max_result_chars < 100:
        raise ConfigurationError(f"tool {label!r}: max_result_chars must be at least 100")
    timeout = None
    if approval_timeout is not None:
        try:
            timeout = delay_seconds(approval_timeout, f"tool {label!r}: approval_timeout")
        except InvalidArgumentError as exc:
            raise ConfigurationError(str(exc)) from None
    properties, checks, required = _parameters(label, step, documented)
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    schema["additionalProperties"] = False
    return Tool(
        step=step,
        name=label,
        description=clip(text, MAX_DESCRIPTION),
        parameters=schema,
        approval=approval,
        approval_timeout=timeout,
        max_result_chars=max_result_chars,
        _checks=checks,
        _required=frozenset(required),
    )


# --- the schema --------------------------------------------------------------------------

_Check = Callable[[Any], tuple[bool, Any]]


def _parameters(
    label: str, step: StepFunction[..., Any], documented: dict[str, str]
) -> tuple[dict[str, Any], dict[str, _Check], list[str]]:
    definition = step.definition
    signature = definition.signature or inspect.signature(definition.fn)
    try:
        hints = typing.get_type_hints(definition.fn, include_extras=True)
    except Exception as exc:  # an annotation naming something this module cannot see
        raise ConfigurationError(
            f"tool {label!r}: cannot read its annotations ({type(exc).__name__}: {exc})"
        ) from None
    properties: dict[str, Any] = {}
    checks: dict[str, _Check] = {}
    required: list[str] = []
    for param in signature.parameters.values():
        if param.name in definition.resources:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ConfigurationError(
                f"tool {label!r}: parameter {param.name!r} cannot be passed by name; a tool's "
                "parameters are named (the model sends a JSON object)"
            )
        where = f"tool {label!r}, parameter {param.name!r}"
        annotation = hints.get(param.name, Any)
        schema, check = _schema(annotation, where)
        if param.name in documented and "description" not in schema:
            schema = {**schema, "description": documented[param.name]}
        properties[param.name] = schema
        checks[param.name] = check
        if param.default is param.empty:
            required.append(param.name)
    return properties, checks, required


def _schema(annotation: Any, where: str) -> tuple[dict[str, Any], _Check]:
    """The JSON schema of one annotation, and a check of a decoded JSON value against it."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return {}, lambda value: (_is_json(value), value)
    if origin is typing.Annotated:
        schema, check = _schema(args[0], where)
        notes = [a for a in args[1:] if isinstance(a, str)]
        return ({**schema, "description": notes[0]} if notes else schema), check
    if annotation in _PRIMITIVES:
        return {"type": _PRIMITIVES[annotation]}, _primitive(annotation)
    if origin is typing.Literal:
        if not all(isinstance(a, str | int | float | bool) and a is not None for a in args):
            raise ConfigurationError(f"{where}: Literal values must be str, int, float or bool")
        allowed = list(args)
        return {"enum": allowed}, lambda value: (
            any(value == a and type(value) is type(a) for a in allowed),
            value,
        )
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) == 1 and len(args) == 2:
            schema, check = _schema(members[0], where)
            return {"anyOf": [schema, {"type": "null"}]}, _nullable(check)
        raise ConfigurationError(f"{where}: only `T | None` unions are supported")
    if origin is list or annotation is list:
        item_schema, item_check = _schema(args[0], where) if args else ({}, _any_json)
        return {"type": "array", "items": item_schema}, lambda value: _each(value, item_check)
    if origin is dict or annotation is dict:
        if args and args[0] is not str:
            raise ConfigurationError(f"{where}: a dict's keys must be str (JSON objects)")
        value_schema, value_check = _schema(args[1], where) if args else ({}, _any_json)
        schema = {"type": "object", "additionalProperties": value_schema}
        return schema, lambda value: _values(value, value_check)
    shown = getattr(annotation, "__qualname__", repr(annotation))
    raise ConfigurationError(
        f"{where}: type {shown} cannot be described to a model; use str, int, float, bool, "
        "Literal, list or dict[str, ...] of these (or T | None)"
    )


def _primitive(kind: type) -> _Check:
    def check(value: Any) -> tuple[bool, Any]:
        if isinstance(value, bool):
            return kind is bool, value
        if kind is int and isinstance(value, float) and value.is_integer():
            return abs(value) < 2**53, int(value)
        if kind is float and isinstance(value, int):
            return True, value
        return type(value) is kind, value

    return check


def _nullable(check: _Check) -> _Check:
    def nullable(value: Any) -> tuple[bool, Any]:
        return (True, None) if value is None else check(value)

    return nullable


def _any_json(value: Any) -> tuple[bool, Any]:
    return _is_json(value), value


def _each(value: Any, check: _Check) -> tuple[bool, Any]:
    if not isinstance(value, list):
        return False, value
    converted = []
    for item in value:
        ok, item = check(item)
        if not ok:
            return False, value
        converted.append(item)
    return True, converted


def _values(value: Any, check: _Check) -> tuple[bool, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        return False, value
    converted = {}
    for key, item in value.items():
        ok, item = check(item)
        if not ok:
            return False, value
        converted[key] = item
    return True, converted


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def _describe(parameters: dict[str, Any], name: str) -> str:
    """A parameter's schema in a few words, for the model: ``integer``, ``one of [...]``."""
    schema = parameters["properties"][name]
    return _words(schema)


def _words(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + json.dumps(schema["enum"])
    if "anyOf" in schema:
        return _words(schema["anyOf"][0]) + " or null"
    kind = schema.get("type")
    if kind == "array":
        return f"a list of {_words(schema.get('items', {}))}"
    if kind == "object":
        return f"an object of {_words(schema.get('additionalProperties', {}))}"
    return {"string": "a string", "integer": "an integer", "number": "a number"}.get(
        str(kind), "a boolean" if kind == "boolean" else "any JSON value"
    )


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(the description, {parameter: its description}) of a Google- or Sphinx-style docstring.

    The description is the text before the first section (``Args:``, ``Returns:``,
    ``:param x:``); parameters come from an ``Args:`` section or ``:param`` lines.
    """
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None  # None before any section; "args", "sphinx" or "other"
    entry_indent: int | None = None
    current: str | None = None
    for line in doc.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if not stripped:
            continue
        sphinx = _SPHINX.match(line) if indent == 0 else None
        if sphinx:
            section, current = "sphinx", sphinx.group(1)
            params[current] = sphinx.group(2).strip()
        elif indent == 0 and (_HEADER.match(stripped) or stripped.startswith(":")):
            section = "args" if _SECTION.match(stripped) else "other"
            entry_indent, current = None, None
        elif section is None:
            summary.append(stripped)
        elif section == "args" and (entry_indent is None or indent == entry_indent):
            entry = _ARG_LINE.match(line)
            if entry is not None:
                entry_indent, current = indent, entry.group(1)
                params[current] = entry.group(2).strip()
        elif section in ("args", "sphinx") and current is not None and indent > 0:
            params[current] = f"{params[current]} {stripped}".strip()
    return " ".join(summary), params


# --- results as text -----------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """A result as plain JSON data; deterministic (sets in a sorted order), never failing."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v) for v in value), key=repr)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)  # a pydantic model
    if callable(dump):
        return _jsonable(dump(mode="json"))
    return repr(value)
