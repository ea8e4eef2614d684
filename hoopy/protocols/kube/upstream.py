"""The real cluster behind a Kubernetes connector: its kubeconfig, read once.

The kubeconfig is parsed with PyYAML directly (kubernetes-asyncio's loader was
considered: it wants a file path and its own client objects, and pulls a large
dependency in for ~60 lines of reading).  Supported credentials: `token`,
`tokenFile`, `client-certificate(-data)` + `client-key(-data)`; `exec` plugins
and `auth-provider`s are refused with a clear error (hoopy must hold the
credential itself).  Nothing here is ever logged or shown to agents.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from yarl import URL

from hoopy.config import KubeConnector
from hoopy.protocols.kube import h1
from hoopy.tlsutil import fast_objects


class KubeconfigError(Exception):
    pass


@dataclass
class Upstream:
    name: str
    server: str  # https://host:port[/prefix], no trailing slash
    ssl: ssl.SSLContext | bool
    auth: dict[str, str] = field(default_factory=dict)  # Authorization header, if a token
    _http: aiohttp.ClientSession | None = None
    _pool: h1.Pool | None = None
    prefix: str = ""  # the server URL's path, put before every request path

    def pool(self) -> h1.Pool:
        """Keep-alive connections for forwarded requests (h1.py says why not aiohttp)."""
        if self._pool is None:
            assert isinstance(self.ssl, ssl.SSLContext)
            url = URL(self.server)
            host = url.raw_host or ""
            hostport = f"[{host}]" if ":" in host else host
            if url.explicit_port is not None:
                hostport += f":{url.port}"
            self.prefix = url.raw_path.rstrip("/")
            self._pool = h1.Pool(host, url.port or 443, self.ssl, hostport)
        return self._pool

    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl, limit=256),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._http

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._http is not None:
            await self._http.close()


def _pick(items: Any, name: str, what: str) -> dict[str, Any]:
    for item in items or ():
        if isinstance(item, dict) and item.get("name") == name:
            value = item.get(what)
            if isinstance(value, dict):
                return value
    raise KubeconfigError(f"kubeconfig has no {what} named {name!r}")


def _data(section: dict[str, Any], key: str, base: Path) -> bytes | None:
    """`key-data` (base64) or `key` (a file path, relative to the kubeconfig)."""
    if section.get(f"{key}-data"):
        return base64.b64decode(section[f"{key}-data"])
    if section.get(key):
        p = Path(section[key])
        return (p if p.is_absolute() else base / p).read_bytes()
    return None


def load(connector: KubeConnector) -> Upstream:
    """Build the upstream of a connector; KubeconfigError names what is wrong (never a
    value from the file)."""
    text = connector.kubeconfig.get()
    ref = connector.kubeconfig.ref
    base = connector.kubeconfig.base
    if ref.startswith("file:"):
        p = Path(ref[5:])
        base = (p if p.is_absolute() else base / p).parent
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        raise KubeconfigError(f"connector {connector.name}: kubeconfig is not YAML") from None
    if not isinstance(doc, dict):
        raise KubeconfigError(f"connector {connector.name}: kubeconfig is not a mapping")
    try:
        return _build(connector.name, doc, connector.context, base)
    except (OSError, ValueError, ssl.SSLError) as e:
        raise KubeconfigError(
            f"connector {connector.name}: kubeconfig unusable ({type(e).__name__})"
        ) from None


def _build(name: str, doc: dict[str, Any], context: str, base: Path) -> Upstream:
    ctx_name = context or doc.get("current-context") or ""
    ctx = _pick(doc.get("contexts"), ctx_name, "context")
    cluster = _pick(doc.get("clusters"), ctx.get("cluster", ""), "cluster")
    user = _pick(doc.get("users"), ctx.get("user", ""), "user") if ctx.get("user") else {}
    server = str(cluster.get("server", "")).rstrip("/")
    if not server.startswith("https://"):
        raise KubeconfigError(f"connector {name}: the cluster server must be https://")
    if user.get("exec") or user.get("auth-provider"):
        raise KubeconfigError(
            f"connector {name}: exec and auth-provider credentials are not supported; "
            "use a token, tokenFile or client certificate"
        )
    tls = fast_objects(ssl.create_default_context())
    if cluster.get("insecure-skip-tls-verify"):
        raise KubeconfigError(f"connector {name}: insecure-skip-tls-verify is refused")
    ca = _data(cluster, "certificate-authority", base)
    if ca is not None:
        tls = fast_objects(ssl.create_default_context(cadata=ca.decode()))
    if cluster.get("tls-server-name"):
        raise KubeconfigError(f"connector {name}: tls-server-name is not supported")
    cert = _data(user, "client-certificate", base)
    key = _data(user, "client-key", base)
    if cert and key:
        _load_pair(tls, cert, key)
    auth: dict[str, str] = {}
    token = user.get("token")
    if not token and user.get("tokenFile"):
        p = Path(user["tokenFile"])
        token = (p if p.is_absolute() else base / p).read_text().strip()
    if token:
        auth["Authorization"] = f"Bearer {token}"
    if not auth and not cert:
        raise KubeconfigError(f"connector {name}: the kubeconfig user has no credential")
    return Upstream(name, server, tls, auth)


def _load_pair(tls: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl wants files: write both to a private temporary folder, load, remove."""
    with tempfile.TemporaryDirectory(prefix="hoopy-kube-") as d:
        os.chmod(d, 0o700)
        c, k = Path(d) / "c.pem", Path(d) / "k.pem"
        c.write_bytes(cert)
        fd = os.open(k, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        tls.load_cert_chain(str(c), str(k))
