"""Reusable helpers for tests that need a real OIDC issuer and verifier.

async with running_issuer(tmp_path) as dev:            # DevIssuer on 127.0.0.1:<free>
    verifier = IdentityVerifier([issuer_config(dev)])
    identity = await verifier.verify(dev.mint("agent-1", ["agents"]))
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hoopy.config import IssuerConfig
from hoopy.devissuer import DevIssuer


class Clock:
    """A settable clock for IdentityVerifier(clock=...); starts at the real time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.asynccontextmanager
async def running_issuer(
    folder: Path, audience: str = "hoopy", groups_claim: str = "groups"
) -> AsyncIterator[DevIssuer]:
    """A DevIssuer serving over HTTP on 127.0.0.1 (random port), key kept in `folder`."""
    dev = DevIssuer(folder, "http://127.0.0.1:0", audience=audience, groups_claim=groups_claim)
    await dev.start("127.0.0.1", 0)
    try:
        yield dev
    finally:
        await dev.stop()


def issuer_config(dev: DevIssuer, **overrides: Any) -> IssuerConfig:
    """The IssuerConfig a gateway would use for this dev issuer (call after start())."""
    fields: dict[str, Any] = {
        "url": dev.issuer_url,
        "audience": dev.audience,
        "groups_claim": dev.groups_claim,
    }
    fields.update(overrides)
    return IssuerConfig(**fields)


def closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())
