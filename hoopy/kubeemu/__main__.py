"""`python -m hoopy.kubeemu --dir D [--port N]`: run the emulator over HTTPS.

Writes D/ca.pem (self-signed CA = the server certificate), D/key.pem, D/token and
D/kubeconfig (a direct kubeconfig for the emulator), then prints
`kubeemu ready <port>` on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import ssl
from pathlib import Path

from aiohttp import web

from hoopy.config import TLSFiles
from hoopy.kubeemu.server import Emulator
from hoopy.tlsutil import ensure_pair


def kubeconfig(server: str, ca: Path, token: str, name: str = "emu") -> str:
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: {name}\n  cluster:\n    server: {server}\n"
        f"    certificate-authority: {ca}\n"
        f"users:\n- name: {name}\n  user:\n    token: {token}\n"
        f"contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n"
        f"current-context: {name}\n"
    )


async def run(folder: Path, port: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(folder / "ca.pem", folder / "key.pem")
    ensure_pair(files)
    token_file = folder / "token"
    if not token_file.exists():
        token_file.write_text("emu-" + secrets.token_urlsafe(24))
    token = token_file.read_text().strip()
    emu = Emulator(token)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(files.cert), str(files.key))
    runner = web.AppRunner(emu.app(), access_log=None, handle_signals=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx)
    await site.start()
    emu.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    (folder / "kubeconfig").write_text(
        kubeconfig(f"https://127.0.0.1:{emu.port}", files.cert, token)
    )
    print(f"kubeemu ready {emu.port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(a.dir, a.port))


if __name__ == "__main__":
    main()
