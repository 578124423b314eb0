"""What the admin API accepts: a bounded JSON body, and faults whose every field is checked.

A fault posted to ``/emulator/faults`` is refused (400, naming the field) unless each field has
its type and range: ``source`` a source's name or null; ``action`` one of the actions;
``status`` an integer from 100 to 599 (or 0 with ``respond``: no fault response, the request is
served normally after ``delay``); ``headers`` an object of header names to text without control
characters (the emulator frames the body itself: no ``Content-Length`` or
``Transfer-Encoding``); ``body`` any JSON value; ``content_type`` text without control
characters; ``delay`` a finite number of seconds from 0 to :data:`MAX_DELAY`; ``times`` a
positive integer or null (every request); ``skip`` an integer from 0; ``identity`` (for
``other_identity`` only) an object of ``client_id``, ``object_id`` and ``resource_id`` texts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

from aiohttp import web

from .._models import ManagedIdentitySource
from ._identities import EmulatedIdentity

Action = Literal["respond", "drop", "reset", "hang", "other_identity"]
ACTIONS: tuple[str, ...] = get_args(Action)

#: The largest admin request body, in bytes.
MAX_BODY = 256 * 1024
#: How deep arrays and objects may nest in an admin request body.
MAX_DEPTH = 32
#: The longest ``delay`` a fault may have, in seconds (``hang`` never answers).
MAX_DELAY = 600.0
#: The most header fields a fault may add.
MAX_HEADERS = 64

_SOURCES = frozenset(source.value for source in ManagedIdentitySource)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a horizontal tab is allowed
_FRAMING = frozenset({"content-length", "transfer-encoding"})
_IDENTITY_FIELDS = ("client_id", "object_id", "resource_id")


class InvalidInput(ValueError):
    """Admin input refused: ``status`` to answer, and the ``field`` at fault (if one is)."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status

    def body(self, index: int | None = None) -> dict[str, Any]:
        """The JSON error body: ``error``, and ``field`` and the fault's ``index`` if known."""
        body: dict[str, Any] = {"error": str(self) if index is None else f"fault {index}: {self}"}
        if self.field is not None:
            body["field"] = self.field
        if index is not None:
            body["index"] = index
        return body


async def read_json(request: web.Request) -> Any:
    """The JSON value of an admin request's body: ``application/json`` (a page of another site
    cannot send that type without the browser asking first), UTF-8, at most :data:`MAX_BODY`
    bytes, nested at most :data:`MAX_DEPTH` deep, without ``NaN`` or ``Infinity``."""
    if request.content_type != "application/json":
        raise InvalidInput("Content-Type must be application/json", status=415)
    too_large = InvalidInput(f"the body is over {MAX_BODY} bytes", status=413)
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > MAX_BODY:
                raise too_large
            chunks.append(chunk)
    except InvalidInput:
        raise
    except Exception as exc:  # a broken compressed body, a connection that went away...
        raise InvalidInput("the body cannot be read") from exc
    try:
        value = json.loads(b"".join(chunks).decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise InvalidInput(f"the JSON nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # not UTF-8, not JSON, NaN, an integer too long to convert
        raise InvalidInput(f"the body is not JSON ({exc})") from None
    if _depth(value) > MAX_DEPTH:
        raise InvalidInput(f"the JSON nests deeper than {MAX_DEPTH} levels")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in ``value`` (without recursing)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any, field: str, limit: int = 8192) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string", field=field)
    if len(value) > limit or _CONTROL.search(value):
        raise InvalidInput(
            f"{field} must be at most {limit} characters, without control characters (CR, LF...)",
            field=field,
        )
    return value


def _source(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value in _SOURCES):
        return value
    names = ", ".join(sorted(_SOURCES))
    raise InvalidInput(f"source must be null or one of {names}", field="source")


def _action(value: Any) -> str:
    if isinstance(value, str) and value in ACTIONS:
        return value
    raise InvalidInput(f"action must be one of {', '.join(ACTIONS)}", field="action")


def _status(value: Any) -> int:
    if _integer(value) and (100 <= value <= 599 or value == 0):
        return int(value)
    raise InvalidInput("status must be an integer from 100 to 599 (or 0)", field="status")


def _headers(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidInput("headers must be an object of header names to strings", field="headers")
    if len(value) > MAX_HEADERS:
        raise InvalidInput(f"headers may have at most {MAX_HEADERS} fields", field="headers")
    for name, text in value.items():
        if not _TOKEN.fullmatch(name):
            raise InvalidInput(f"headers: {name!r} is not a header name", field="headers")
        if name.lower() in _FRAMING:
            raise InvalidInput(
                f"headers: {name} is set by the emulator (use action reset for a broken body)",
                field="headers",
            )
        _text(text, f"headers.{name}")
    return dict(value)


def _delay(value: Any) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and math.isfinite(value) and 0 <= value <= MAX_DELAY:
        return float(value)
    raise InvalidInput(f"delay must be a number of seconds from 0 to {MAX_DELAY:g}", field="delay")


def _times(value: Any) -> int | None:
    if value is None:
        return None
    if _integer(value) and value >= 1:
        return int(value)
    raise InvalidInput("times must be a positive integer, or null for every request", field="times")


def _skip(value: Any) -> int:
    if _integer(value) and value >= 0:
        return int(value)
    raise InvalidInput("skip must be an integer from 0", field="skip")


def _identity(value: Any) -> EmulatedIdentity:
    if not isinstance(value, Mapping):
        raise InvalidInput("identity must be an object", field="identity")
    if set(value) != set(_IDENTITY_FIELDS):
        raise InvalidInput(
            f"identity must be an object of {', '.join(_IDENTITY_FIELDS)}", field="identity"
        )
    return EmulatedIdentity(*(_text(value[k], f"identity.{k}", 1024) for k in _IDENTITY_FIELDS))


_FIELDS: dict[str, Callable[[Any], Any]] = {
    "source": _source,
    "action": _action,
    "status": _status,
    "headers": _headers,
    "body": lambda value: value,  # any JSON value: the body is bounded and shallow already
    "content_type": lambda value: _text(value, "content_type", 256),
    "delay": _delay,
    "times": _times,
    "skip": _skip,
    "identity": _identity,
}


def fault_fields(data: Any) -> dict[str, Any]:
    """The keyword arguments of a :class:`~mi_credential.emulator.Fault` from its JSON object,
    every field checked.

    Raises:
        InvalidInput: Not an object, an unknown field, or a field of the wrong type or range.
    """
    if not isinstance(data, Mapping):
        raise InvalidInput("a fault must be a JSON object")
    unknown = set(data) - set(_FIELDS)
    if unknown:
        names = ", ".join(sorted(map(str, unknown)))
        raise InvalidInput(f"unknown fault fields: {names}", field=min(map(str, unknown)))
    fields = {name: _FIELDS[name](value) for name, value in data.items()}
    action = fields.get("action", "respond")
    if fields.get("status") == 0 and action != "respond":
        raise InvalidInput("status 0 (served normally) goes with action respond", field="status")
    if "identity" in fields and action != "other_identity":
        raise InvalidInput("identity goes with action other_identity", field="identity")
    return fields
