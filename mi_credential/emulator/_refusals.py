"""How each source refuses a request: its status and the JSON body in that source's own shape."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from .._models import ManagedIdentitySource


class Reject(Exception):
    """A request the endpoint refuses, with its status and JSON body."""

    def __init__(
        self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def invalid_request(description: str) -> Reject:
    """The OAuth-style refusal of IMDS, Azure Arc, Azure ML and Cloud Shell."""
    return Reject(400, {"error": "invalid_request", "error_description": description})


def app_service_error(description: str) -> Reject:
    """App Service's 400."""
    return Reject(
        400, {"statusCode": 400, "message": description, "correlationId": str(uuid.uuid4())}
    )


def service_fabric_error(code: str, message: str, status: int = 400) -> Reject:
    """Service Fabric's refusal: an ``error`` object with a code."""
    return Reject(
        status, {"error": {"correlationId": str(uuid.uuid4()), "code": code, "message": message}}
    )


def entra_error(code: str, description: str, status: int = 400) -> Reject:
    """Microsoft Entra ID's OAuth refusal, with its timestamp and ids."""
    return Reject(
        status,
        {
            "error": code,
            "error_description": description,
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        },
    )


def bad_request(source: ManagedIdentitySource, description: str) -> Reject:
    """The 400 ``source`` answers a request it cannot read (a malformed query or form)."""
    if source is ManagedIdentitySource.APP_SERVICE:
        return app_service_error(description)
    if source is ManagedIdentitySource.SERVICE_FABRIC:
        return service_fabric_error("BadRequest", description)
    if source is ManagedIdentitySource.WORKLOAD_IDENTITY:
        return entra_error("invalid_request", description)
    return invalid_request(description)
