"""What an error reporter could take from an exception, and the check that no secret is in it.

Shared by the tests that plant canary secrets (tests/test_secrets.py and the hostile endpoints
of tests/reliability): the text of every link of the cause chain and the formatted traceback,
and everything reachable from the exception through attributes, slots and containers, which a
reporter that serialises exceptions walks.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Iterator


def chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes (or contexts), each once."""
    found: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def said(error: BaseException) -> str:
    """Every text a reporter prints: ``str``, ``repr`` and attributes of each link of the chain,
    and the formatted traceback."""
    parts: list[str] = []
    for link in chain(error):
        parts += [str(link), repr(link), *(str(v) for v in vars(link).values())]
        parts += [repr(v) for v in vars(link).values()]
    parts += traceback.format_exception(error)
    return "\n".join(parts)


def reachable(root: object) -> Iterator[object]:
    """Every object reachable from ``root`` through the cause chain, attributes (``vars()`` and
    slots), and the items of containers, a few levels deep."""
    seen: set[int] = set()
    stack: list[tuple[object, int]] = [(root, 0)]
    while stack:
        value, depth = stack.pop()
        if id(value) in seen or depth > 8 or isinstance(value, type):
            continue
        seen.add(id(value))
        yield value
        children: list[object] = []
        if isinstance(value, BaseException):
            children += [value.__cause__, value.__context__, *value.args]
        if isinstance(value, dict):
            children += [*value.keys(), *value.values()]
        elif isinstance(value, (list, tuple, set, frozenset)):
            children += list(value)
        elif not isinstance(value, (str, bytes, int, float, bool)) and value is not None:
            children += list(getattr(value, "__dict__", {}).values())
            for cls in type(value).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if isinstance(slot, str) and hasattr(value, slot):
                        children.append(getattr(value, slot))
            for name in ("request_info", "headers", "history"):
                with_attribute = getattr(value, name, None)
                if with_attribute is not None and not callable(with_attribute):
                    children.append(with_attribute)
        stack.extend((child, depth + 1) for child in children if child is not None)


def assert_no_secret(
    error: BaseException,
    secrets: Iterable[str],
    records: Iterable[logging.LogRecord] = (),
) -> None:
    """No secret in what :func:`said` gives, in the ``str``/``repr``/``vars()`` of anything
    :func:`reachable` from ``error``, or in a log record's message."""
    secrets = [secret for secret in secrets if secret]
    assert secrets, "no secret to look for: the check could not fail"
    texts = [("the exception's text or traceback", said(error))]
    for value in reachable(error):
        where = f"a {type(value).__name__} reachable from the exception"
        texts += [(where, str(value)), (where, repr(value))]
        if hasattr(value, "__dict__"):
            texts.append((where, repr(vars(value))))
    texts += [(f"the log record of {r.name}", r.getMessage()) for r in records]
    for secret in secrets:
        for where, text in texts:
            assert secret not in text, f"a secret is in {where}"
