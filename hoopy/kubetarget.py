"""`hoopy demo`'s Kubernetes target: the built-in API emulator (hoopy.kubeemu), in-process.

No kube-apiserver can be installed with what the README installs, so the demo runs
the same purpose-built emulator the tests drive real kubectl against: HTTPS on
127.0.0.1 with its own self-signed CA (in the demo's temp folder), a bearer token only
hoopy holds (the connector's kubeconfig), seeded with a few objects: a `shop`
namespace with pods, a deployment, a ConfigMap holding an e-mail address (a mask
rule's detector hides it) and a Secret (hoopy masks its values).  It is not a
cluster: no scheduler, controllers, RBAC or OpenAPI (see hoopy/kubeemu/README.md).
"""

from __future__ import annotations

import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from hoopy.config import TLSFiles
from hoopy.kubeemu.__main__ import kubeconfig
from hoopy.kubeemu.server import Emulator
from hoopy.kubeemu.store import BY_PATH
from hoopy.tlsutil import ensure_pair

NAMESPACE = "shop"
SECRET_VALUE = "demo-db-password-8c1f"  # what hoopy must never show the agent
SUPPORT_EMAIL = "oncall@shop.example.com"  # in a ConfigMap: masked by the email detector


def _pod(name: str, app: str, image: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": app, "image": image}]},
    }


OBJECTS: list[tuple[tuple[str, str], str, dict[str, Any]]] = [
    (("", "namespaces"), "", {"metadata": {"name": NAMESPACE}}),
    (("", "pods"), NAMESPACE, _pod("web-5d9c7-2xkqp", "web", "nginx:1.27")),
    (("", "pods"), NAMESPACE, _pod("web-5d9c7-8hmtz", "web", "nginx:1.27")),
    (("", "pods"), NAMESPACE, _pod("worker-0", "worker", "python:3.12")),
    (("", "pods"), "kube-system", _pod("coredns-7db6d-q4vnl", "coredns", "coredns:1.11")),
    (
        ("apps", "deployments"),
        NAMESPACE,
        {
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}},
        },
    ),
    (
        ("", "configmaps"),
        NAMESPACE,
        {
            "metadata": {"name": "app-config"},
            "data": {"LOG_LEVEL": "info", "SUPPORT_CONTACT": SUPPORT_EMAIL},
        },
    ),
    (
        ("", "secrets"),
        NAMESPACE,
        {
            "metadata": {"name": "db-credentials"},
            "stringData": {"username": "shop", "password": SECRET_VALUE},
        },
    ),
]
LOG = [
    "GET /healthz 200",
    f"order 1042 confirmed, receipt sent to ada@example.com (support: {SUPPORT_EMAIL})",
]


@dataclass
class DemoKube:
    runner: web.AppRunner
    port: int
    kubeconfig: Path  # the upstream kubeconfig: only hoopy reads it

    @classmethod
    async def start(cls, folder: Path) -> DemoKube:
        folder.mkdir(parents=True, mode=0o700)
        files = TLSFiles(folder / "ca.pem", folder / "key.pem")
        ensure_pair(files)
        token = "emu-" + secrets.token_urlsafe(24)
        emu = Emulator(token)
        for (group, resource), ns, obj in OBJECTS:
            emu.store.put(BY_PATH[(group, "v1", resource)], ns, obj)
        emu.store.append_log(NAMESPACE, "worker-0", LOG, close=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(files.cert), str(files.key))
        runner = web.AppRunner(emu.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        assert site._server is not None
        emu.port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        path = folder / "kubeconfig"
        path.write_text(kubeconfig(f"https://127.0.0.1:{emu.port}", files.cert, token))
        path.chmod(0o600)
        return cls(runner, emu.port, path)

    def connector(self) -> str:
        return f"type: kubernetes\nkubeconfig: file:{self.kubeconfig}\nmask_secrets: true\n"

    async def stop(self) -> None:
        await self.runner.cleanup()
