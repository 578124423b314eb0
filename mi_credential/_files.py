"""The two local files a credential may read: Azure Arc's challenge key file and the workload
identity federated token file. Their contents are secrets: never logged, never in a message."""

from __future__ import annotations

import os
import stat

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
    return read_federated_token(step.path)


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


def read_federated_token(path: str) -> str:
    """Read the workload identity federated token file (the kubelet rotates it: read per use).

    Raises:
        CredentialUnavailableError: The file cannot be read or is empty.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read(64 * 1024).strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise CredentialUnavailableError(
            f"The workload identity federated token file {path!r} cannot be read: {reason}. "
            "Check AZURE_FEDERATED_TOKEN_FILE and the service account token volume.",
            source=ManagedIdentitySource.WORKLOAD_IDENTITY,
        ) from None
    if not token:
        raise CredentialUnavailableError(
            f"The workload identity federated token file {path!r} is empty.",
            source=ManagedIdentitySource.WORKLOAD_IDENTITY,
        )
    return token
