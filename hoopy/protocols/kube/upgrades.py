"""Upgraded requests: exec and attach over WebSocket, port-forward over its tunnel.

After the policy check, a connect request (exec, attach, portforward) is relayed by
execrelay.py or pfrelay.py once hoopy has refused what it cannot govern: SPDY, any
other upgrade, and port-forward while a mask rule applies (forwarded bytes cannot be
masked).  Separate from plain forwarding (forward.py); both share `Exchange`.
"""

from __future__ import annotations

from aiohttp import web
from yarl import URL

from hoopy.policy import Decision
from hoopy.protocols.kube import execrelay, pfrelay
from hoopy.protocols.kube.exchange import Exchange, _AnyAnswer
from hoopy.protocols.kube.requestinfo import RequestInfo, go_bool
from hoopy.protocols.kube.status import status
from hoopy.protocols.kube.upstream import Upstream


class Upgrades(Exchange):
    """An exec / attach / port-forward request, refused or handed to its relay."""

    def _upgrade_url(self) -> tuple[Upstream, URL]:
        """The cluster and URL an exec / attach / port-forward WebSocket goes to."""
        up = self.listener.upstream(self.connector)
        url = URL(up.server + self.path + ("?" + self.query if self.query else ""), encoded=True)
        return up, url

    async def _connect(
        self, info: RequestInfo, q: dict[str, list[str]], decision: Decision
    ) -> _AnyAnswer:
        upgrade = self.request.headers.get("Upgrade", "").lower()
        if info.subresource == "portforward" and decision.masks.detectors:
            # (before the SPDY answer: kubectl retries a refused tunnel over SPDY)
            self.status, self.decision = 403, "refused"
            self._record(info)
            return status(
                403,
                "Forbidden",
                "hoopy refuses port-forward while a mask rule applies "
                f"({', '.join(decision.masks.rules)}): forwarded bytes cannot be masked",
            )
        if upgrade.startswith("spdy"):
            self.status = 400
            self._record(info)
            return status(
                400,
                "BadRequest",
                "hoopy relays exec and attach over WebSocket (kubectl 1.30 or newer) and "
                "port-forward through kubectl's WebSocket tunnel (kubectl 1.31 or newer, "
                "without KUBECTL_PORT_FORWARD_WEBSOCKETS=false), never over SPDY",
            )
        if info.subresource == "portforward" and upgrade == "websocket":
            return await self._portforward(info)
        if upgrade != "websocket" or info.subresource not in ("exec", "attach"):
            self.status = 400
            self._record(info)
            return status(
                400,
                "BadRequest",
                f"hoopy does not relay {info.full_resource} {upgrade or 'without an upgrade'}",
            )
        assert isinstance(self.request, web.BaseRequest)  # (h1server hands upgrades over)
        up, url = self._upgrade_url()
        result = await execrelay.relay(
            self.request,
            up,
            url,
            self._headers(False),
            self.session,
            tty=go_bool(q.get("tty")),  # as the cluster reads it ("yes" is a TTY too)
            stdin=go_bool(q.get("stdin")),
            masker=self._masker(decision) if decision.masks.detectors else None,
            expires_at=self.expires_at,
        )
        self.status = result.status
        self.sent = result.sent
        self._record(
            info,
            exit=result.exit_code,
            stdin=result.received,
            stdout=result.stdout,
            stderr=result.stderr,
        )
        return result.response

    async def _portforward(self, info: RequestInfo) -> _AnyAnswer:
        assert isinstance(self.request, web.BaseRequest)  # (h1server hands upgrades over)
        if not pfrelay.offered(self.request):
            self.status = 400
            self._record(info)
            return status(
                400,
                "BadRequest",
                f"hoopy relays port-forward only as {pfrelay.PROTOCOL} (kubectl 1.31 or newer)",
            )
        up, url = self._upgrade_url()
        result = await pfrelay.relay(
            self.request,
            up,
            url,
            self._headers(False),
            self.session,
            pfrelay.judge(self.session, info.full_resource, info.namespace, info.name),
            expires_at=self.expires_at,
        )
        self.status = result.status
        self.sent = result.sent
        self._record(
            info,
            ports=result.ports,
            streams=result.streams,
            refused=result.refused,
            received=result.received,
        )
        return result.response
