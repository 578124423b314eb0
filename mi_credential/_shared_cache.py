"""The shared token cache: a per-user directory of token files, one writer at a time per token.

Opt-in (``ManagedIdentityCredential(shared_cache=...)`` or ``MI_CREDENTIAL_SHARED_CACHE``), so
that every worker process of a host makes one request per refresh. Each token is a file named
after a digest of everything that makes it different (source, endpoint, the endpoint's secret,
identity, resource, tenant), beside a lock file held with :mod:`filelock` (kernel locks, released
when their process dies) by the process that refreshes it.

The files are the user's alone: the directory must be a real directory (not a symbolic link)
owned by this user and writable by nobody else; entries are created ``0600`` with
``O_NOFOLLOW`` and renamed into place (``os.replace``), so a reader never sees half an entry. An
entry holds the access token, its type, expiry and refresh time, nothing else. One that is not a
regular file of this user's, cannot be decoded, is of another format, implausible or expired is
ignored, and replaced by the next token written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import sys
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from ._constants import MAX_TOKEN_LIFETIME
from ._environment import SourceConfig
from ._models import Identity, ParsedToken
from ._sources import Target
from ._sources._parse import token_problem

_logger = logging.getLogger("mi_credential")

ENVIRONMENT_VARIABLE = "MI_CREDENTIAL_SHARED_CACHE"
EXTRA_MESSAGE = (
    "The shared token cache needs filelock: pip install 'mi-credential[shared-cache]'"
)
#: The entry format; an entry of another one is ignored (and replaced).
FORMAT = 1
#: An entry larger than this is not read (a token entry is a few KB).
MAX_ENTRY_BYTES = 64 * 1024

_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"", "0", "false", "no", "off"})
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class UnsafeDirectoryError(Exception):
    """The shared cache directory cannot be trusted with tokens (the message says why)."""


def default_directory(environ: Mapping[str, str]) -> str:
    """The per-user directory ``shared_cache=True`` means on this platform."""
    if sys.platform == "win32":
        base = environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
        return os.path.join(base, "mi-credential")
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "mi-credential")
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"mi-credential-{os.getuid()}")


def chosen_directory(setting: object, environ: Mapping[str, str]) -> tuple[str | None, bool]:
    """The directory a ``shared_cache`` setting names (``None``: off), and whether the setting
    was explicit (the keyword) rather than the environment's.

    Raises:
        ValueError: A setting that is neither a boolean, ``None`` nor a path.
    """
    if setting is None:
        value = environ.get(ENVIRONMENT_VARIABLE, "").strip()
        if value.lower() in _OFF:
            return None, False
        if value.lower() in _ON:
            return default_directory(environ), False
        return os.path.abspath(value), False
    if setting is True:
        return default_directory(environ), True
    if setting is False:
        return None, True
    if isinstance(setting, (str, os.PathLike)):
        path = os.fspath(setting)
        if isinstance(path, str) and path.strip():
            return os.path.abspath(path), True
    raise ValueError(
        f"shared_cache must be True, False, None or a directory path, not {setting!r}."
    )


def prepare_directory(path: str) -> None:
    """Create ``path`` (``0700``) when missing, and check it is fit for tokens.

    Raises:
        UnsafeDirectoryError: It is a symbolic link, not a directory, another user's, or
            writable by its group or others; or it cannot be created.
    """
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeDirectoryError(f"{path} cannot be created ({exc.strerror})") from None
    check_directory(path)


def check_directory(path: str) -> None:
    """Raises :class:`UnsafeDirectoryError` unless ``path`` is this user's private directory."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise UnsafeDirectoryError(f"{path} cannot be read ({exc.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeDirectoryError(f"{path} is a symbolic link")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectoryError(f"{path} is not a directory")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise UnsafeDirectoryError(
            f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.getuid()})"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectoryError(
            f"{path} is writable by its group or others (mode {stat.S_IMODE(info.st_mode):o})"
        )


def namespace(config: SourceConfig, identity: Identity) -> bytes:
    """What makes this credential's tokens its own, besides the target: hashed into every
    entry's name, so two identities (or endpoints, or apps with their own secret) on one host
    never share an entry. The secret enters only through a digest."""
    secret = hashlib.sha256((config.secret or "").encode()).hexdigest()
    parts = (
        f"mi-credential/{FORMAT}",
        config.source.value,
        config.endpoint,
        secret,
        config.tenant_id or "",
        config.client_id or "",
        config.token_file or "",
        identity.kind.value,
        identity.value or "",
        json.dumps(identity.extra),
    )
    return "\0".join(parts).encode()


#: Every store in use, for a forked child to forget their locks (``_fork``).
_live: weakref.WeakSet[FileTokenStore] = weakref.WeakSet()


def live_stores() -> list[FileTokenStore]:
    return list(_live)


class FileTokenStore:
    """Tokens in files of one directory, for the credentials of one namespace.

    Args:
        directory: A directory that passed :func:`prepare_directory`.
        namespace: See :func:`namespace`.
        now: Wall clock, epoch seconds (an expired entry is not read).
    """

    __slots__ = (
        "__weakref__", "_directory", "_held", "_locks", "_names", "_namespace", "_now", "_warned"
    )

    def __init__(self, directory: str, namespace: bytes, now: Callable[[], float]) -> None:
        import filelock  # the extra; checked by open_store

        self._directory = directory
        self._namespace = namespace
        self._now = now
        self._names: dict[Target, str] = {}
        self._locks: dict[str, filelock.FileLock] = {}
        self._held: set[str] = set()
        self._warned = False
        _live.add(self)

    def __repr__(self) -> str:
        return f"FileTokenStore(directory={self._directory!r})"

    @property
    def directory(self) -> str:
        return self._directory

    def entry_path(self, target: Target) -> str:
        """The file ``target``'s token is kept in."""
        return os.path.join(self._directory, self._name(target) + ".json")

    def read(self, target: Target) -> ParsedToken | None:
        path = self.entry_path(target)
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:  # ELOOP: a symbolic link, never followed
            self._warn(f"the entry {path} cannot be opened ({exc.strerror}); it is replaced")
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or (
                hasattr(os, "getuid") and info.st_uid != os.getuid()
            ):
                self._warn(f"the entry {path} is not a file of this user's; it is replaced")
                return None
            data = os.read(fd, MAX_ENTRY_BYTES + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        return decode_entry(data, self._now())

    def write(self, target: Target, token: ParsedToken) -> None:
        import secrets

        path = self.entry_path(target)
        data = encode_entry(token)
        temporary = os.path.join(
            self._directory, f".{self._name(target)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        )
        try:
            check_directory(self._directory)
            fd = os.open(
                temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600
            )
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(temporary, path)
        except (OSError, UnsafeDirectoryError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            self._warn(f"a token could not be stored in {self._directory} ({reason})")
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    def try_lock(self, target: Target) -> bool:
        import filelock

        name = self._name(target)
        lock = self._locks.get(name)
        if lock is None:
            path = os.path.join(self._directory, name + ".lock")
            lock = self._locks[name] = filelock.FileLock(path, mode=0o600, thread_local=False)
        try:
            lock.acquire(timeout=0, blocking=False)
        except filelock.Timeout:
            return False
        except Exception as exc:  # no lock to be had: refresh without one rather than not at all
            self._warn(f"the lock in {self._directory} cannot be taken ({type(exc).__name__})")
            return True
        self._held.add(name)
        return True

    def unlock(self, target: Target) -> None:
        name = self._name(target)
        if name in self._held:
            self._held.discard(name)
            with contextlib.suppress(OSError):
                self._locks[name].release()

    def forget_locks(self) -> list[object]:
        """Forget the locks, returning them: in a forked child none is the child's, even one
        held in the parent (filelock has let go of the child's copies and refuses to use them),
        so the child makes its own."""
        locks: list[object] = [*self._locks.values()]
        self._locks, self._held = {}, set()
        return locks

    def _name(self, target: Target) -> str:
        name = self._names.get(target)
        if name is None:
            key = "\0".join((target.resource, target.tenant_id or "", str(target.cae)))
            digest = hashlib.sha256(self._namespace + b"\0" + key.encode()).hexdigest()
            name = self._names[target] = digest[:40]
        return name

    def _warn(self, message: str) -> None:
        """Logged at WARNING once per store, then at DEBUG: the cache works on without it."""
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        _logger.log(level, "Shared token cache: %s", message)


def encode_entry(token: ParsedToken) -> bytes:
    entry = {
        "format": FORMAT,
        "access_token": token.token,
        "token_type": token.token_type,
        "expires_on": token.expires_on,
        "refresh_on": token.refresh_on,
    }
    return json.dumps(entry, separators=(",", ":")).encode()


def decode_entry(data: bytes, now: float) -> ParsedToken | None:
    """The token an entry holds, if it is whole, of this format, plausible and not expired."""
    if len(data) > MAX_ENTRY_BYTES:
        return None
    try:
        entry: Any = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        return None
    token, token_type = entry.get("access_token"), entry.get("token_type")
    expires_on, refresh_on = entry.get("expires_on"), entry.get("refresh_on")
    if not (
        token_problem(token, token_type) is None
        and isinstance(token, str)
        and isinstance(token_type, str)
        and token_type
        and type(expires_on) is int
        and type(refresh_on) is int
        and 0 < refresh_on <= expires_on
        and now < expires_on <= now + MAX_TOKEN_LIFETIME
    ):
        return None
    return ParsedToken(token, expires_on, refresh_on, token_type)


def open_store(
    setting: object,
    environ: Mapping[str, str],
    config: SourceConfig | None,
    identity: Identity,
    now: Callable[[], float],
) -> FileTokenStore | None:
    """The shared store a credential's ``shared_cache`` setting asks for, if any and usable.

    A directory that cannot be trusted is logged at WARNING and not used: the credential keeps
    its in-process cache only.

    Raises:
        ValueError: A setting of the wrong type.
        ImportError: ``shared_cache`` was given but filelock (the ``shared-cache`` extra) is
            missing. When the environment variable asks for it, that is logged instead.
    """
    directory, explicit = chosen_directory(setting, environ)
    if directory is None or config is None:  # off, or nothing to share: no source here
        return None
    try:
        import filelock  # noqa: F401
    except ImportError:
        if explicit:
            raise ImportError(EXTRA_MESSAGE) from None
        _logger.warning("%s is set, but it is not used. %s", ENVIRONMENT_VARIABLE, EXTRA_MESSAGE)
        return None
    try:
        prepare_directory(directory)
    except UnsafeDirectoryError as exc:
        _logger.warning(
            "The shared token cache is not used: %s. Tokens are cached in this process only.",
            exc,
        )
        return None
    return FileTokenStore(directory, namespace(config, identity), now)
