"""Test helpers: the emulator and `hoopy serve` with a Kubernetes connector, as
subprocesses awaited on their ready lines, and a real-kubectl runner."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hoopy import pgcluster
from hoopy.devissuer import DevIssuer
from tests import serveproc

KUBECTL = os.environ.get("KUBECTL", "kubectl")


@dataclass
class Emu:
    folder: Path
    proc: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.folder / "token").read_text().strip()

    @property
    def kubeconfig(self) -> Path:
        return self.folder / "kubeconfig"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        ctx = ssl.create_default_context(cafile=str(self.folder / "ca.pem"))
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def requests(self) -> list[dict[str, Any]]:
        return self.call("GET", "/emu/requests")  # type: ignore[no-any-return]

    def stop(self) -> None:
        serveproc.stop(self.proc, 10)


def start_emulator(folder: Path) -> Emu:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hoopy.kubeemu", "--dir", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("kubeemu ready "):
        proc.kill()
        raise RuntimeError(f"emulator did not start: {line!r}")
    return Emu(folder, proc, int(line.split()[2]))


@dataclass
class KubeHoopy(serveproc.Served):
    @property
    def server(self) -> str:
        return f"https://{self.addresses['kubernetes']}"

    @property
    def ca(self) -> Path:
        return self.folder / "tls" / "cert.pem"

    def kubectl(
        self,
        *args: str,
        connector: str = "cluster",
        token: str | None = None,
        input: str | bytes | None = None,
        timeout: float = 60,
        text: bool = True,
    ) -> subprocess.CompletedProcess[Any]:
        tok = token if token is not None else self.token()
        env = {**os.environ, "KUBECONFIG": "/dev/null", "KUBECACHEDIR": str(self.folder / "kcache")}
        return subprocess.run(
            [
                KUBECTL,
                "--server",
                f"{self.server}/k8s/{connector}",
                "--certificate-authority",
                str(self.ca),
                "--token",
                tok,
                *args,
            ],
            capture_output=True,
            text=text,
            env=env,
            input=input,
            timeout=timeout,
        )

    def kubectl_tty(
        self, *args: str, token: str, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """kubectl under a pseudo-terminal (`script`), for `exec -it` / `attach -it`; the
        arguments are joined into script's shell line, so quote them for a shell."""
        line = " ".join(
            [
                KUBECTL,
                "--server",
                f"{self.server}/k8s/cluster",
                "--certificate-authority",
                str(self.ca),
                "--token",
                token,
                *args,
            ]
        )
        env = {**os.environ, "KUBECONFIG": "/dev/null", "KUBECACHEDIR": str(self.folder / "kcache")}
        return subprocess.run(
            ["script", "-qec", line, "/dev/null"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hoopy.cli", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def log_text(self) -> str:
        return "".join(self.stderr_lines)

    def recordings_text(self) -> str:
        return "".join(
            p.read_text(errors="replace")
            for p in sorted((self.folder / "recordings").rglob("*"))
            if p.is_file()
        )

    def stop(self) -> None:
        serveproc.stop(self.proc)


def _profile() -> list[str]:
    """HOOPY_PROFILE=FILE runs hoopy under cProfile (bench/kube.py investigations)."""
    out = os.environ.get("HOOPY_PROFILE")
    if out and out.endswith(".py"):  # a wrapper script of one's own
        return [out]
    return ["-m", "cProfile", "-o", out] if out else []


def _wrapper() -> bool:
    return os.environ.get("HOOPY_PROFILE", "").endswith(".py")


def start_hoopy(
    folder: Path,
    emu: Emu,
    policy: str,
    connectors: dict[str, str] | None = None,
    extra_yaml: str = "",
) -> KubeHoopy:
    """`connectors`: name -> extra YAML keys of a kubernetes connector to the emulator
    (default: one connector `cluster`)."""
    (folder / "connectors").mkdir(parents=True)
    (folder / "policies").mkdir()
    for name, keys in (connectors or {"cluster": ""}).items():
        (folder / "connectors" / f"{name}.yaml").write_text(
            f"type: kubernetes\nkubeconfig: file:{emu.kubeconfig}\n" + keys
        )
    (folder / "policies" / "kube.yaml").write_text(policy)
    issuer_port = pgcluster.free_port()
    cfg = folder / "hoopy.yaml"
    cfg.write_text(
        "listen:\n  kubernetes: 127.0.0.1:0\n  admin: 127.0.0.1:0\n"
        "state: sqlite:state/state.db\nadmin_token: env:TEST_ADMIN_TOKEN\n"
        f"dev_issuer: {{listen: 127.0.0.1:{issuer_port}}}\n"
        "recordings: recordings/\n" + extra_yaml
    )
    env = {**os.environ, "TEST_ADMIN_TOKEN": "admin-secret-token", "PYTHONUNBUFFERED": "1"}
    args = [*_profile(), *([] if _wrapper() else ["-m", "hoopy.cli"])]
    proc, addresses, lines = serveproc.launch(cfg, env, args)
    issuer = DevIssuer(folder / "state", addresses["dev_issuer"])
    return KubeHoopy(folder, cfg, proc, addresses, issuer, lines)


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emu]:
    """The emulator, one per test module that imports this fixture."""
    e = start_emulator(tmp_path_factory.mktemp("kubeemu"))
    try:
        yield e
    finally:
        e.stop()
