"""Which origins get a token, and for which scope (no I/O; a request to a configured host on
another port is logged once, as it goes out unsigned).

An entry names an origin the way a user writes it: ``api.contoso.com``, ``api.contoso.com:8443``,
``https://api.contoso.com``, ``[::1]:8443``, or a wildcard ``*.blob.core.windows.net`` (any
subdomain, not the domain itself). Without a port, an entry means the scheme's default port (443
for https and wss; 80 for plain http and ws, which is used only for hosts in ``allow_http``).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from yarl import URL

from mi_credential.http import check_scope

from ._errors import InsecureTransportError

_logger = logging.getLogger("mi_credential_aiohttp")

SECURE_SCHEMES = frozenset({"https", "wss"})
PLAIN_SCHEMES = frozenset({"http", "ws"})

#: The Azure Instance Metadata Service: the managed identity endpoint itself never gets a token.
_METADATA_HOSTS = frozenset({"169.254.169.254"})

#: The decision cache is cleared when it reaches this size (a session talks to few origins, but
#: a wildcard entry could otherwise let it grow without bound).
_CACHE_LIMIT = 4096


class _Refused(enum.Enum):
    """The cached decision for plain http to a configured host not in ``allow_http``."""

    REFUSED = "refused"


_REFUSED = _Refused.REFUSED


@dataclass(frozen=True)
class Rule:
    """One configured origin and the scope its tokens are for."""

    host: str
    """The host, normalised (lower case, IDNA-encoded, no trailing dot); for a wildcard entry,
    the domain its subdomains belong to."""
    wildcard: bool
    port: int | None
    """The explicit port, or ``None`` for the scheme's default port (an explicit 443 is stored
    as ``None``: it names the same https origin)."""
    scope: str
    entry: str
    """The entry as the user wrote it, for messages."""

    def matches(self, host: str, port: int | None, secure: bool) -> bool:
        if self.wildcard:
            if not host.endswith("." + self.host):
                return False
        elif host != self.host:
            return False
        if self.port is None:
            return port == (443 if secure else 80)
        return port == self.port


def normalise_host(host: str) -> str:
    """A host as yarl encodes it, without the trailing dot of a fully qualified name."""
    return host.rstrip(".")


def parse_entry(entry: str, scope: str) -> Rule:
    """Parse one configured origin.

    Raises:
        ValueError: ``entry`` is not a host, ``host:port`` or ``https://`` origin, or it names
            plain http, a path, credentials or an instance metadata address; or ``scope`` is
            not a scope (:func:`mi_credential.http.check_scope`).
    """
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"Each host must be a non-empty string, not {entry!r}.")
    text = entry.strip()
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme.lower() in PLAIN_SCHEMES:
            raise ValueError(
                f"Host {entry!r}: tokens go only to https origins. Name the host without "
                "'http://' and list it in allow_http to permit plain http (local development "
                "only)."
            )
        if scheme.lower() not in SECURE_SCHEMES:
            raise ValueError(f"Host {entry!r}: only https origins can receive a token.")
        text = rest
    wildcard = text.startswith("*.")
    if wildcard:
        text = text[2:]
    if "*" in text:
        raise ValueError(
            f"Host {entry!r}: a wildcard is allowed only as the first label ('*.example.com')."
        )
    try:
        url = URL("https://" + text)
        host = url.raw_host
        port = url.explicit_port
    except ValueError as exc:
        raise ValueError(f"Host {entry!r} is not a valid host or host:port: {exc}") from None
    if not host:
        raise ValueError(f"Host {entry!r} names no host.")
    if url.user is not None or url.password is not None:
        raise ValueError(f"Host {entry!r} must not contain credentials.")
    if url.path not in ("", "/") or url.query_string or url.fragment:
        raise ValueError(
            f"Host {entry!r}: name an origin (host and optional port), not a URL with a path; "
            "a token is valid for the whole origin."
        )
    host = normalise_host(host)
    if port == 443:
        port = None  # the https default: the same origin as no port
    if wildcard and "." not in host:
        raise ValueError(f"Host {entry!r}: a wildcard must cover a domain ('*.example.com').")
    if host in _METADATA_HOSTS:
        raise ValueError(
            f"Host {entry!r} is the instance metadata service, the managed identity endpoint "
            "itself: it never receives a token."
        )
    try:
        check_scope(scope)
    except ValueError as exc:
        raise ValueError(f"Host {entry!r}: {exc}") from None
    return Rule(host=host, wildcard=wildcard, port=port, scope=scope, entry=entry)


def parse_http_host(entry: str) -> str:
    """Parse one ``allow_http`` host (no scheme, no port).

    Raises:
        ValueError: It is not a plain host name or address.
    """
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"Each allow_http host must be a non-empty string, not {entry!r}.")
    try:
        url = URL("http://" + entry.strip())
        host = url.raw_host
    except ValueError as exc:
        raise ValueError(f"allow_http host {entry!r} is not a valid host: {exc}") from None
    if (
        not host
        or url.explicit_port is not None
        or url.path not in ("", "/")
        or url.user is not None
        or "*" in entry
    ):
        raise ValueError(
            f"allow_http host {entry!r}: name a host only, such as 'localhost' or '127.0.0.1' "
            "(no scheme, port, path or wildcard)."
        )
    return normalise_host(host)


class OriginPolicy:
    """Decides, per request URL, the scope of the token to attach, if any.

    Args:
        scopes: Origin entry to scope.
        allow_http: Hosts that may receive a token over plain http.

    Raises:
        ValueError: An entry is malformed, the same origin is configured twice, or an
            ``allow_http`` host matches no entry.
    """

    __slots__ = ("_cache", "_exact", "_http_hosts", "_wildcards", "rules")

    def __init__(self, scopes: Mapping[str, str], allow_http: Iterable[str]) -> None:
        rules = [parse_entry(entry, scope) for entry, scope in scopes.items()]
        if not rules:
            raise ValueError("Configure at least one host to send tokens to.")
        seen: dict[tuple[str, bool, int | None], Rule] = {}
        for rule in rules:
            key = (rule.host, rule.wildcard, rule.port)
            other = seen.get(key)
            if other is not None:
                raise ValueError(f"Hosts {other.entry!r} and {rule.entry!r} name the same origin.")
            seen[key] = rule
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._exact: dict[str, list[Rule]] = {}
        for rule in rules:
            if not rule.wildcard:
                self._exact.setdefault(rule.host, []).append(rule)
        # Longest domain first: the most specific wildcard wins.
        self._wildcards = sorted(
            (r for r in rules if r.wildcard), key=lambda r: len(r.host), reverse=True
        )
        http_hosts = frozenset(parse_http_host(h) for h in _as_iterable(allow_http, "allow_http"))
        for host in http_hosts:
            if not any(
                r.host == host or (r.wildcard and host.endswith("." + r.host)) for r in rules
            ):
                raise ValueError(
                    f"allow_http host {host!r} has no scope: list it among the hosts too."
                )
        self._http_hosts = http_hosts
        self._cache: dict[tuple[str, str | None, int | None], str | _Refused | None] = {}

    def scope_for(self, url: URL) -> str | None:
        """The scope of the token ``url`` gets, or ``None`` if it gets none.

        Raises:
            InsecureTransportError: ``url`` is plain http to a configured host that is not in
                ``allow_http``.
        """
        key = (url.scheme, url.raw_host, url.port)
        try:
            scope = self._cache[key]
        except KeyError:
            scope = self._decide(*key)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = scope
        if scope is _REFUSED:
            raise InsecureTransportError(url.raw_host or "", url.scheme)
        return scope

    def _decide(self, scheme: str, raw_host: str | None, port: int | None) -> str | _Refused | None:
        secure = scheme in SECURE_SCHEMES
        if not raw_host or not (secure or scheme in PLAIN_SCHEMES):
            return None
        host = normalise_host(raw_host)
        rule = self._match(host, port, secure)
        if rule is None:
            if self._exact.get(host):  # decided once per origin: warned once
                _logger.warning(
                    "BearerTokenMiddleware: %s://%s:%s gets no token: its host is configured "
                    "only as %s, and a host without a port means port %d. Name the port to "
                    "sign requests to it.",
                    scheme,
                    raw_host,
                    port,
                    ", ".join(repr(rule.entry) for rule in self._exact[host]),
                    443 if secure else 80,
                )
            return None
        if not secure and host not in self._http_hosts:
            return _REFUSED
        return rule.scope

    def _match(self, host: str, port: int | None, secure: bool) -> Rule | None:
        for rule in self._exact.get(host, ()):
            if rule.matches(host, port, secure):
                return rule
        for rule in self._wildcards:
            if rule.matches(host, port, secure):
                return rule
        return None


def _as_iterable(value: Iterable[str], name: str) -> Iterable[str]:
    if isinstance(value, str):
        raise ValueError(f"{name} must be a collection of host names, not a single string.")
    return value
