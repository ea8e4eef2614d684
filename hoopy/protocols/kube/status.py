"""Kubernetes `Status` answers: the one place a hoopy error becomes what kubectl prints."""

from __future__ import annotations

import json

from aiohttp import web

from hoopy.errors import HoopyError

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    413: "RequestEntityTooLarge",
    500: "InternalError",
    502: "ServiceUnavailable",
    503: "ServiceUnavailable",
}


def status_body(code: int, reason: str, message: str) -> bytes:
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
    ).encode()


def status(code: int, reason: str, message: str) -> web.Response:
    return web.Response(
        status=code, body=status_body(code, reason, message), content_type="application/json"
    )


def status_for(e: HoopyError) -> web.Response:
    code = e.http_status
    return status(code, _REASONS.get(code, "InternalError"), f"hoopy: {e.message}")
