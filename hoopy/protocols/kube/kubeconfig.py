"""`hoopy kubeconfig CONNECTOR` and `hoopy credential`: what an agent's kubectl needs.

The kubeconfig points at hoopy's listener with the connector's path prefix and
trusts hoopy's listener certificate; its user is an exec credential plugin,
`hoopy credential --source SRC`, which prints a `client.authentication.k8s.io/v1`
ExecCredential holding a token read from SRC at each use (so it is always fresh):
`file:PATH` (e.g. a projected service-account token), `env:NAME`, or
`dev:SUBJECT` (the development issuer; demo and tests only).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from hoopy.config import Config
from hoopy.tlsutil import ensure_pair

EXEC_API = "client.authentication.k8s.io/v1"


def kubeconfig(
    cfg: Config,
    config_path: Path,
    connector: str,
    source: str,
    server: str = "",
    command: tuple[str, ...] = ("hoopy",),
) -> str:
    if connector not in cfg.connectors or cfg.connectors[connector].type != "kubernetes":
        raise ValueError(f'no kubernetes connector "{connector}"')
    if not server:
        listen = cfg.listen.kubernetes
        if listen is None:
            raise ValueError("listen.kubernetes is not set in the config (or pass --server)")
        host = "127.0.0.1" if listen.host in ("0.0.0.0", "::", "") else listen.host
        server = f"https://{host}:{listen.port}"
    cluster: dict[str, Any] = {"server": f"{server.rstrip('/')}/k8s/{connector}"}
    ensure_pair(cfg.tls)  # the pair `hoopy serve` will use (made now if it is not yet)
    cluster["certificate-authority-data"] = base64.b64encode(cfg.tls.cert.read_bytes()).decode()
    args = [*command[1:], "credential", "--source", source]
    if source.startswith("dev:"):
        args += ["--config", str(config_path.resolve())]
    name = f"hoopy-{connector}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [
            {
                "name": name,
                "user": {
                    "exec": {
                        "apiVersion": EXEC_API,
                        "command": command[0],
                        "args": args,
                        "interactiveMode": "Never",
                        "provideClusterInfo": False,
                    }
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    return str(yaml.safe_dump(doc, sort_keys=False))


def _exp(token: str) -> str | None:
    """The JWT's exp as RFC 3339 (kubectl caches the token until then), if readable."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = dt.datetime.fromtimestamp(float(claims["exp"]), dt.UTC)
    except (IndexError, ValueError, KeyError, TypeError):
        return None
    return exp.strftime("%Y-%m-%dT%H:%M:%SZ")


def read_token(source: str, cfg: Config | None, groups: list[str]) -> str:
    kind, _, rest = source.partition(":")
    if kind == "file":
        return Path(rest).read_text().strip()
    if kind == "env":
        value = os.environ.get(rest)
        if not value:
            raise ValueError(f"environment variable {rest} is not set")
        return value.strip()
    if kind == "dev":
        from hoopy.devissuer import DevIssuer

        if cfg is None or cfg.dev_issuer is None:
            raise ValueError("dev: tokens need a config with dev_issuer")
        issuer = DevIssuer.from_config(cfg)
        return issuer.mint(rest, groups or ["agents"], ttl=900)
    raise ValueError("--source must be file:PATH, env:NAME or dev:SUBJECT")


def exec_credential(token: str) -> str:
    status: dict[str, Any] = {"token": token}
    exp = _exp(token)
    if exp:
        status["expirationTimestamp"] = exp
    return json.dumps({"apiVersion": EXEC_API, "kind": "ExecCredential", "status": status})


def main_credential(source: str, cfg: Config | None, groups: list[str]) -> int:
    try:
        token = read_token(source, cfg, groups)
    except (OSError, ValueError) as e:
        print(f"hoopy credential: {e}", file=sys.stderr)
        return 1
    print(exec_credential(token))
    return 0
