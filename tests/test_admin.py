"""The admin HTTP API on 127.0.0.1 over a real state store, with a stand-in gateway."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hoopy.admin import AdminServer
from hoopy.approvals import APPROVED, PENDING, Approval, ApprovalService, ApprovalStore
from hoopy.config import Secret
from hoopy.state import StateStore

TOKEN = "admin-test-token-42"


@dataclass
class StandInConfig:
    admin_token: Secret


class StandInMetrics:
    def render(self) -> str:
        return ""


@dataclass
class StandInGateway:
    """The attributes AdminServer uses."""

    config: StandInConfig
    store: StateStore
    approvals: ApprovalService
    metrics: StandInMetrics = field(default_factory=StandInMetrics)


@dataclass
class Api:
    url: str
    http: aiohttp.ClientSession
    approvals: ApprovalService

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}", **kw.pop("headers", {})}
        async with self.http.request(method, self.url + path, headers=headers, **kw) as r:
            return r.status, await r.json()


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    monkeypatch.setenv("HOOPY_TEST_ADMIN_TOKEN", TOKEN)
    store = StateStore(tmp_path / "state.db")
    svc = ApprovalService(ApprovalStore(store))
    gw = StandInGateway(StandInConfig(Secret("env:HOOPY_TEST_ADMIN_TOKEN")), store, svc)
    server = AdminServer(gw)  # type: ignore[arg-type]
    port = await server.start("127.0.0.1", 0)
    async with aiohttp.ClientSession() as http:
        yield Api(f"http://127.0.0.1:{port}", http, svc)
    await server.stop()
    await svc.close()
    store.close()


def pending(api: Api, expires_in: float = 600) -> Approval:
    now = time.time()
    a = Approval(
        "apr-0123456789ab", "s-1", "postgres", "app-db", "agent-7", ["agents"],
        "delete from orders", "delete from orders", "r", ["dba"], PENDING, now - 1,
        now + expires_in,
    )  # fmt: skip
    api.approvals.store.create(a)
    return a


@pytest.mark.parametrize("limit", ["abc", "", "1.5", "0", "-1"])
async def test_bad_sessions_limit_is_400(api: Api, limit: str) -> None:
    status, body = await api.call("GET", f"/api/sessions?limit={limit}")
    assert status == 400 and "limit" in body["error"]


async def test_good_sessions_limit(api: Api) -> None:
    assert await api.call("GET", "/api/sessions?limit=5000") == (200, [])


@pytest.mark.parametrize("body", ["[1]", '"x"', "7", "null"])
async def test_decision_body_must_be_an_object(api: Api, body: str) -> None:
    a = pending(api)
    for action in ("deny", "approve"):
        status, got = await api.call(
            "POST",
            f"/api/approvals/{a.id}/{action}",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        assert status == 400 and got == {"error": "body must be a JSON object"}
    assert api.approvals.store.get(a.id).state == PENDING  # type: ignore[union-attr]


async def test_expired_approval_is_not_approved(api: Api) -> None:
    a = pending(api, expires_in=-1)
    status, got = await api.call("POST", f"/api/approvals/{a.id}/approve", json={"by": "alice"})
    assert (status, got) == (409, {"error": "approval has expired"})
    assert api.approvals.store.get(a.id).state == PENDING  # type: ignore[union-attr]


async def test_approve_with_an_object_body(api: Api) -> None:
    a = pending(api)
    status, got = await api.call("POST", f"/api/approvals/{a.id}/approve", json={"by": "alice"})
    assert status == 200 and got["state"] == APPROVED and got["decided_by"] == "admin:alice"
    status, got = await api.call("POST", f"/api/approvals/{a.id}/deny")
    assert (status, got) == (409, {"error": "approval is already approved"})
