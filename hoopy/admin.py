"""The admin HTTP API (DESIGN §7): health, metrics, sessions.

Everything but /healthz and /metrics needs `Authorization: Bearer <admin_token>`;
with no admin token configured those endpoints refuse (fail closed).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from aiohttp import web

from hoopy.gateway import Gateway
from hoopy.httpguard import GuardedAppRunner
from hoopy.recorder import read_events, verify_row

log = logging.getLogger("hoopy.admin")
SSH_CERT_PATH = "/api/ssh/certificate"


class AdminServer:
    def __init__(self, gw: Gateway, slack: Any = None) -> None:
        self.gw = gw
        self.runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[self._auth])
        self.app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/metrics", self.metrics),
                web.get("/api/sessions", self.sessions),
                web.get("/api/sessions/{id}", self.session),
                web.get("/api/approvals", self.approvals),
                web.get("/api/approvals/{id}", self.approval),
                web.post("/api/approvals/{id}/{action:approve|deny}", self.decide),
                web.post(SSH_CERT_PATH, self.ssh_certificate),
            ]
        )
        if slack is not None:  # Slack signs these itself: no admin token
            self.app.router.add_post("/slack/interactions", slack.handle)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        public = request.path == SSH_CERT_PATH  # the caller's own OIDC token is the bearer
        if request.path.startswith("/api/") and not public and not self._authorized(request):
            return web.json_response({"error": "admin token required"}, status=401)
        resp: web.StreamResponse = await handler(request)
        return resp

    def _authorized(self, request: web.Request) -> bool:
        secret = self.gw.config.admin_token
        if secret is None:
            return False
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        try:
            return scheme == "Bearer" and secret.matches(token)
        except Exception:  # an unreadable secret admits nobody
            return False

    async def start(self, host: str, port: int) -> int:
        self.runner = GuardedAppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        server: Any = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.gw.metrics.render(), content_type="text/plain")

    async def sessions(self, request: web.Request) -> web.Response:
        q = request.query
        limit = _limit(q.get("limit", "100"))
        if limit is None:
            return web.json_response({"error": "limit must be a positive integer"}, status=400)
        rows = self.gw.store.list_sessions(
            subject=q.get("subject"),
            connector=q.get("connector"),
            limit=limit,
            issuer=q.get("issuer"),  # an agent is (issuer, subject)
        )
        return web.json_response([asdict(r) for r in rows])

    async def approvals(self, request: web.Request) -> web.Response:
        svc = self.gw.approvals
        if svc is None:
            return web.json_response([])
        state = request.query.get("state")
        return web.json_response([a.to_json() for a in svc.store.list(state)])

    async def approval(self, request: web.Request) -> web.Response:
        svc = self.gw.approvals
        a = svc.store.get(request.match_info["id"]) if svc else None
        if a is None:
            return web.json_response({"error": "no such approval"}, status=404)
        return web.json_response(a.to_json())

    async def decide(self, request: web.Request) -> web.Response:
        svc = self.gw.approvals
        aid = request.match_info["id"]
        if svc is None or svc.store.get(aid) is None:
            return web.json_response({"error": "no such approval"}, status=404)
        body: Any = {}
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"error": "body must be JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        by = str(body.get("by") or "admin-api")
        done = svc.decide(
            aid,
            request.match_info["action"] == "approve",
            f"admin:{by}",
            str(body.get("reason") or ""),
        )
        if done is None:  # no longer pending, or expired
            return web.json_response({"error": svc.store.refusal(aid, svc.clock())}, status=409)
        return web.json_response(done.to_json())

    async def session(self, request: web.Request) -> web.Response:
        row = self.gw.store.get_session(request.match_info["id"])
        if row is None:
            return web.json_response({"error": "no such session"}, status=404)
        body: dict[str, Any] = {"session": asdict(row)}
        if row.path:
            from pathlib import Path

            body["events"] = read_events(Path(row.path))
            body["verified"] = verify_row(row).ok
        return web.json_response(body)

    async def ssh_certificate(self, request: web.Request) -> web.Response:
        """Exchange an OIDC token (the bearer) for an SSH user certificate on the public
        key in the JSON body: for tokens longer than OpenSSH's password buffer."""
        from hoopy.errors import AuthFailed
        from hoopy.protocols.ssh.ca import MAX_TTL, CertificateError, NotAdmitted, issue_for

        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        try:
            body = await request.json() if scheme == "Bearer" and token else None
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if body is None:
            return web.json_response({"error": "an OIDC token is required"}, status=401)
        key = body.get("public_key") if isinstance(body, dict) else None
        if not isinstance(key, str):
            return web.json_response({"error": "public_key is required"}, status=400)
        peer = request.remote or ""
        try:
            identity = await self.gw.authenticate(token)
        except AuthFailed as e:  # recorded as refused logins are (bounded per host)
            self.gw.record_rejection("ssh-cert", peer, "", str(e), tls=request.secure)
            return web.json_response({"error": str(e)}, status=401)
        try:
            ca, cert = issue_for(self.gw.config, identity, key)
        except NotAdmitted as e:
            self.gw.record_rejection("ssh-cert", peer, "", str(e), request.secure, identity)
            return web.json_response({"error": str(e)}, status=403)
        except CertificateError as e:
            return web.json_response({"error": str(e)}, status=400)
        self.gw.metrics.inc("ssh_certificates_total")
        log.info("ssh certificate issued to %s", identity.subject)
        return web.json_response(
            {
                "certificate": cert,
                "subject": identity.subject,
                "valid_before": int(min(identity.expires_at, ca.clock() + MAX_TTL)),
                "ca": ca.public_line,
            }
        )


def _limit(text: str) -> int | None:
    """A `limit` query parameter (at most 1000), or None when it is not a positive integer
    (a negative LIMIT would mean "no limit" to SQLite)."""
    try:
        n = int(text)
    except ValueError:
        return None
    return min(n, 1000) if n >= 1 else None
