"""What the emulator refuses before any route sees a request, and how it reads a request's query
string and form without tripping over malformed ones.

Every route, token endpoints and admin API alike, answers only requests addressed to a loopback
name: the ``Host`` header must be ``localhost``, an address in 127.0.0.0/8 or ``[::1]`` (with or
without a port). A web page that rebinds its own DNS name to 127.0.0.1 sends its own name as the
``Host``, so it is refused: it can neither read ``/emulator/environment/<source>`` (which holds the
App Service secret), script faults, nor read tokens from IMDS or Cloud Shell, whose only
requirement, a ``Metadata`` header, a same-origin page may set. Requests a browser marks as
another site's (an ``Origin`` that is not a loopback origin, ``Sec-Fetch-Site: cross-site``) are
refused too: they would otherwise be recorded and use up scripted faults. Clients of the emulator
address it by the loopback URLs :meth:`Emulator.environ` gives, and send neither header.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Awaitable, Callable
from urllib.parse import unquote_to_bytes

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: A ``%`` not followed by two hex digits.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")

_FORM = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"


class MalformedRequest(Exception):
    """A request whose query string or body cannot be read: the endpoint answers 400."""


_IPV6_LOOPBACK = ipaddress.IPv6Address("::1")


def loopback_authority(authority: str) -> bool:
    """Whether ``authority`` (a ``Host`` header, or the host[:port] of an origin) names a
    loopback host: ``localhost``, an IPv4 address in 127.0.0.0/8 or ``[::1]``, with an optional
    port."""
    if authority.startswith("["):
        name, bracket, rest = authority[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and _port(rest[1:]))):
            return False
        try:  # ::1 itself: Python 3.13 also calls ::ffff:127.0.0.1 loopback, 3.12 does not
            return ipaddress.IPv6Address(name) == _IPV6_LOOPBACK
        except ValueError:
            return False
    name, colon, port = authority.partition(":")
    if colon and not _port(port):
        return False
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.IPv4Address(name).is_loopback
    except ValueError:
        return False


def _port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535


def _loopback_origin(origin: str) -> bool:
    scheme, sep, authority = origin.partition("://")
    return bool(sep) and scheme in ("http", "https") and loopback_authority(authority)


def _forbidden(description: str) -> web.Response:
    return web.json_response({"error": "forbidden", "error_description": description}, status=403)


@web.middleware
async def loopback_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse (403) a request not addressed to a loopback name, or sent by another site's page."""
    hosts = request.headers.getall("Host", [])
    if len(hosts) != 1 or not loopback_authority(hosts[0]):
        return _forbidden(
            "The emulator answers requests addressed to localhost, 127.0.0.1 or [::1] only."
        )
    origin = request.headers.get("Origin")
    if (origin is not None and not _loopback_origin(origin)) or (
        request.headers.get("Sec-Fetch-Site") == "cross-site"
    ):
        return _forbidden("The emulator answers no request from another site's web page.")
    return await handler(request)


async def answer_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """If the request's body is broken (a corrupt compressed body...), write ``response`` now
    and close the connection: what follows on it cannot be told apart from the body, and aiohttp
    would trip over it again reading past the rest. A body merely left unread (one over a size
    limit) is left to aiohttp, which reads past it for a bounded time."""
    if request.content.exception() is None:
        return
    if not response.prepared:
        with contextlib.suppress(ConnectionError):  # the client may be gone already
            await response.prepare(request)
            await response.write_eof()
    request.protocol.force_close()


def malformed(encoded: bytes, what: str) -> str | None:
    """Why the percent-encoded ``encoded`` (a query string or urlencoded form) is malformed, or
    ``None`` if it is well formed: every ``%`` starts an escape, and it decodes to UTF-8."""
    if _BAD_ESCAPE.search(encoded):
        return f"Malformed percent-encoding in the {what}."
    try:
        unquote_to_bytes(encoded.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return f"The {what} is not UTF-8 once percent-decoded."
    return None


def check_query(request: web.Request) -> None:
    """Raise :class:`MalformedRequest` if the query string is malformed."""
    raw = request.rel_url.raw_query_string.encode("utf-8", "surrogateescape")
    problem = malformed(raw, "query")
    if problem is not None:
        raise MalformedRequest(problem)


async def read_form(request: web.Request) -> tuple[tuple[str, str], ...] | None:
    """The fields of a POST's form (urlencoded or multipart; another body has none), or
    ``None`` for another method.

    Raises:
        MalformedRequest: The body cannot be read as that form (malformed percent-encoding or
            multipart, a charset other than UTF-8, a file field, a corrupt compressed body...).
        web.HTTPRequestEntityTooLarge: The body is over the application's size limit.
    """
    if request.method != "POST":
        return None
    content_type = request.content_type
    if content_type not in (_FORM, _MULTIPART):
        return ()
    if content_type == _FORM and (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
        raise MalformedRequest("A form must be UTF-8.")
    try:
        if content_type == _FORM:
            problem = malformed(await request.read(), "form")
            if problem is not None:
                raise MalformedRequest(problem)
        fields = await request.post()
    except (MalformedRequest, web.HTTPException):
        raise
    except Exception as exc:  # whatever the parser makes of the client's bytes: its fault
        raise MalformedRequest(f"The body is not a well-formed {content_type} form.") from exc
    if any(not isinstance(value, str) for value in fields.values()):
        raise MalformedRequest("The form has a file field: the endpoint takes text fields only.")
    return tuple((name, str(value)) for name, value in fields.items())
