"""The two local files a credential may read: Azure Arc's challenge key file and the workload
identity federated token file. Their contents are secrets: never logged, never in a message."""

from __future__ import annotations

import os
import stat
import time
from typing import NamedTuple

from . import _constants
from ._errors import CredentialUnavailableError, ManagedIdentityError
from ._models import FileRead, LocalFile, ManagedIdentitySource

_ARC = ManagedIdentitySource.AZURE_ARC


def read_local_file(step: FileRead) -> str:
    """Do a token flow's file read.

    Raises:
        ManagedIdentityError: The file fails a check or cannot be read.
    """
    if step.kind is LocalFile.ARC_KEY:
        return read_arc_key(step.path, step.directory)
    return read_federated_token(step.path, fresh=step.fresh)


def read_arc_key(path: str, directory: str | None) -> str:
    """Read the key file an Azure Arc challenge names, after checking that it is a regular
    file directly inside ``directory`` (the agent's key directory), named ``*.key``, and at
    most 4096 bytes.

    Raises:
        ManagedIdentityError: The path or the file fails a check, or cannot be read.
    """
    if directory is None:
        raise _key_error(path, f"Azure Arc is not supported on this platform ({os.name})")
    if not path or not os.path.isabs(path):
        raise _key_error(path, "the path is not absolute")
    if ".." in path.replace("\\", "/").split("/"):
        raise _key_error(path, "the path contains '..'")
    if not path.endswith(".key"):
        raise _key_error(path, "the file name must have the '.key' extension")
    expected = os.path.realpath(directory)
    if os.path.realpath(os.path.dirname(path)) != expected:
        raise _key_error(path, f"the file is not in the agent's key directory {directory}")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _key_error(path, exc.strerror or "it cannot be opened") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _key_error(path, "it is not a regular file")
        if info.st_size > _constants.ARC_MAX_KEY_FILE_SIZE:
            raise _key_error(path, f"it is larger than {_constants.ARC_MAX_KEY_FILE_SIZE} bytes")
        data = os.read(fd, _constants.ARC_MAX_KEY_FILE_SIZE + 1)
    except OSError as exc:
        raise _key_error(path, exc.strerror or "it cannot be read") from None
    finally:
        os.close(fd)
    if len(data) > _constants.ARC_MAX_KEY_FILE_SIZE:
        raise _key_error(path, f"it is larger than {_constants.ARC_MAX_KEY_FILE_SIZE} bytes")
    try:
        key = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _key_error(path, "it is not UTF-8 text") from None
    if not key or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key) or not key.isascii():
        raise _key_error(path, "its content is not a key")
    return key


def _key_error(path: str, reason: str) -> ManagedIdentityError:
    return ManagedIdentityError(
        f"Azure Arc challenge refused: the key file path {path!r} is invalid: {reason}.",
        source=_ARC,
    )


class _Cached(NamedTuple):
    """The federated token file as last read: its stat, when it was read, its text."""

    mtime_ns: int
    size: int
    inode: int
    read_ns: int
    text: str


_RACY_NS = 2_000_000_000
"""A file modified this close (in nanoseconds) to the moment it was read may have been written
again within the file system's timestamp granularity without its stat changing: it is re-read
until it is older than that."""

_federated: dict[str, _Cached] = {}
"""Per path, the federated token file as last read. Each entry is replaced whole (an atomic
store), so event loops on several threads share it safely: at worst two of them read the file."""


def read_federated_token(path: str, *, fresh: bool = False) -> str:
    """The workload identity federated token (the kubelet rotates the file): the text last read
    while the file's modification time, size and inode are unchanged, else the file read anew.

    Args:
        path: The file (``AZURE_FEDERATED_TOKEN_FILE``).
        fresh: Read the file whatever its stat says.

    Raises:
        CredentialUnavailableError: The file cannot be read or is empty.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise _token_file_error(path, exc) from None
    cached = _federated.get(path)
    if (
        not fresh
        and cached is not None
        and (cached.mtime_ns, cached.size, cached.inode)
        == (info.st_mtime_ns, info.st_size, info.st_ino)
        and cached.read_ns - cached.mtime_ns >= _RACY_NS
    ):
        return cached.text
    read_ns = time.time_ns()
    text = _read_federated_token(path)
    _federated[path] = _Cached(info.st_mtime_ns, info.st_size, info.st_ino, read_ns, text)
    return text


def _read_federated_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read(64 * 1024).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise _token_file_error(path, exc) from None
    if not token:
        raise CredentialUnavailableError(
            f"The workload identity federated token file {path!r} is empty.",
            source=ManagedIdentitySource.WORKLOAD_IDENTITY,
        )
    return token


def _token_file_error(path: str, exc: OSError | UnicodeDecodeError) -> CredentialUnavailableError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    return CredentialUnavailableError(
        f"The workload identity federated token file {path!r} cannot be read: {reason}. "
        "Check AZURE_FEDERATED_TOKEN_FILE and the service account token volume.",
        source=ManagedIdentitySource.WORKLOAD_IDENTITY,
    )
