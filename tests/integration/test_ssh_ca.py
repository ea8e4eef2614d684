"""hoopy's SSH user CA (hoopy/protocols/ssh/ca.py): a token longer than OpenSSH's
1,024-byte password buffer is exchanged for a certificate (`hoopy ssh-cert`, locally or
through `POST /api/ssh/certificate`), real `ssh-keygen -L` reads it, and the real `ssh`
client logs in with it to an asyncssh server that trusts only that CA."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy.admin import AdminServer
from hoopy.config import load_config
from hoopy.errors import AuthFailed
from hoopy.identity import AuthError, IdentityVerifier
from hoopy.policy import Identity
from hoopy.protocols.ssh.ca import (
    CA_KEY_FILE,
    CertificateError,
    CertificateLogin,
    SshCA,
)
from tests.oidc_helpers import running_issuer

GROUPS = [f"team-{i:03d}-with-a-long-group-name" for i in range(60)]  # a >1 KiB token


@dataclass
class Env:
    folder: Path
    config: Path
    dev: Any

    def token(self, sub: str = "agent-7", groups: list[str] | None = None, **kw: Any) -> str:
        return str(self.dev.mint(sub, ["agents", *GROUPS] if groups is None else groups, **kw))

    def token_file(self, token: str, name: str = "token") -> Path:
        path = self.folder / name
        path.write_text(token + "\n")
        return path


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with running_issuer(tmp_path / "issuer") as dev:
        (tmp_path / "connectors").mkdir()
        (tmp_path / "policies").mkdir()
        (tmp_path / "connectors" / "web-1.yaml").write_text(
            "type: ssh\naddress: 127.0.0.1:22\nuser: deploy\n"
            "private_key: file:id\nknown_hosts: file:known_hosts\n"
        )
        (tmp_path / "policies" / "agents.yaml").write_text(
            "rules:\n  - name: agents-ssh\n    effect: allow\n"
            "    match: {groups: [agents], connectors: [web-1]}\n"
        )
        cfg = tmp_path / "hoopy.yaml"
        cfg.write_text(
            "listen: {admin: 127.0.0.1:0}\nstate: sqlite:state/state.db\n"
            f"identity: {{issuers: [{{url: '{dev.issuer_url}', audience: hoopy}}]}}\n"
        )
        yield Env(tmp_path, cfg, dev)


async def hoopy(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hoopy.cli", *args, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def run(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


def ca_of(env: Env) -> SshCA:
    return SshCA.open(load_config(env.config).state_dir)


# -- the exchange -------------------------------------------------------------------


async def test_long_token_exchanged_locally_and_read_by_ssh_keygen(env: Env) -> None:
    token = env.token()
    assert len(token) > 1024  # what OpenSSH could not carry as a password
    tf = env.token_file(token)
    key = env.folder / "agent_key"
    rc, out, err = await hoopy(
        "ssh-cert", "--token-file", str(tf), "-o", str(key), "--config", "hoopy.yaml",
        cwd=env.folder,
    )  # fmt: skip
    assert rc == 0, err
    assert "certificate for 'agent-7'" in err and token not in out + err
    assert (key.stat().st_mode & 0o777) == 0o600
    ca_file = load_config(env.config).state_dir / CA_KEY_FILE
    assert (ca_file.stat().st_mode & 0o777) == 0o600

    rc, listing, _ = await run("ssh-keygen", "-L", "-f", f"{key}-cert.pub")
    assert rc == 0
    assert "user certificate" in listing and 'Key ID: "agent-7"' in listing
    assert re.search(r"Principals: \n\s+agent-7\n\s+Critical Options: \(none\)", listing)
    assert "groups@hoopy" in listing and "issuer@hoopy" in listing
    assert "permit-pty" in listing and "permit-X11-forwarding" not in listing
    ca_line = ca_of(env).public_line.split()[1]
    assert f"Signing CA: ED25519 {_fingerprint(ca_line)}" in listing

    identity = ca_of(env).verify((Path(f"{key}-cert.pub")).read_text())
    assert identity.subject == "agent-7"
    assert identity.groups == frozenset({"agents", *GROUPS})
    assert identity.issuer == env.dev.issuer_url
    claims = json.loads(_b64json(token.split(".")[1]))
    assert identity.expires_at <= claims["exp"]  # never outlives the token


async def test_certificate_never_outlives_a_short_token(env: Env) -> None:
    token = env.token(ttl=90)
    key = env.folder / "k"
    rc, _, err = await hoopy(
        "ssh-cert", "--token-file", str(env.token_file(token)), "-o", str(key),
        "--config", "hoopy.yaml", cwd=env.folder,
    )  # fmt: skip
    assert rc == 0, err
    identity = ca_of(env).verify(Path(f"{key}-cert.pub").read_text())
    assert identity.expires_at <= time.time() + 91


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("expired", "token rejected"),
        ("forged", "token rejected"),
        ("not-admitted", "may use no ssh connector"),
    ],
)
async def test_local_exchange_refuses(env: Env, case: str, message: str) -> None:
    token = {
        "expired": lambda: env.token(ttl=-120),
        "forged": lambda: env.token()[:-4] + "AAAA",
        "not-admitted": lambda: env.token(groups=["visitors"]),
    }[case]()
    key = env.folder / "k"
    rc, out, err = await hoopy(
        "ssh-cert", "--token-file", str(env.token_file(token)), "-o", str(key),
        "--config", "hoopy.yaml", cwd=env.folder,
    )  # fmt: skip
    assert rc == 1 and message in err, err
    assert not key.exists() and not Path(f"{key}-cert.pub").exists()
    assert token not in out + err


# -- through the admin API --------------------------------------------------------


class Metrics:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def render(self) -> str:
        return ""


class StandInGateway:
    """What AdminServer uses: the real config and the real token verifier."""

    def __init__(self, config_path: Path) -> None:
        self.config = load_config(config_path)
        self.verifier = IdentityVerifier(self.config.issuers)
        self.metrics = Metrics()
        self.rejections: list[tuple[str, str, str | None]] = []

    def record_rejection(
        self, protocol: str, client: str, connector: str, reason: str, tls: bool,
        identity: Identity | None = None,
    ) -> None:  # fmt: skip
        self.rejections.append((protocol, reason, identity.subject if identity else None))

    async def authenticate(self, token: str) -> Identity:
        try:
            return await self.verifier.verify(token)
        except AuthError as e:
            raise AuthFailed(f"token rejected: {e.message}") from None


@pytest.fixture
async def admin(env: Env) -> AsyncIterator[tuple[str, StandInGateway]]:
    gw = StandInGateway(env.config)
    server = AdminServer(gw)  # type: ignore[arg-type]
    port = await server.start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}", gw
    await server.stop()
    await gw.verifier.close()


async def test_exchange_through_the_admin_api(env: Env, admin: tuple[str, Any]) -> None:
    url, gw = admin
    key = env.folder / "k"
    rc, _, err = await hoopy(
        "ssh-cert", "--token-file", str(env.token_file(env.token())), "-o", str(key),
        "--gateway", url, cwd=env.folder,
    )  # fmt: skip
    assert rc == 0, err
    assert ca_of(env).verify(Path(f"{key}-cert.pub").read_text()).subject == "agent-7"
    assert gw.metrics.counts == {"ssh_certificates_total": 1}


async def test_admin_api_refusals(env: Env, admin: tuple[str, Any]) -> None:
    url, gw = admin
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048).export_public_key().decode()

    async def post(token: str | None, body: Any) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as http,
            http.post(url + "/api/ssh/certificate", json=body, headers=headers) as r,
        ):
            return r.status, (await r.json())["error"]

    good = env.token()
    assert await post(None, {"public_key": public}) == (401, "an OIDC token is required")
    status, msg = await post(env.token(ttl=-120), {"public_key": public})
    assert status == 401 and msg.startswith("token rejected")
    assert (await post(env.token(groups=["visitors"]), {"public_key": public}))[0] == 403
    assert (await post(good, {"key": public}))[0] == 400
    assert (await post(good, {"public_key": "ssh-ed25519 AAAAnope"}))[0] == 400
    assert (await post(good, {"public_key": rsa}))[1].startswith("use an ed25519")
    assert gw.metrics.counts == {}
    assert [(p, who) for p, _, who in gw.rejections] == [
        ("ssh-cert", None),
        ("ssh-cert", "agent-7"),
    ]
    assert gw.rejections[1][1] == "identity 'agent-7' may use no ssh connector"
    # the exemption is this one path: an OIDC token opens nothing else under /api/
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + "/api/sessions", headers={"Authorization": f"Bearer {good}"}) as r,
    ):
        assert r.status == 401


# -- logging in with the real ssh client --------------------------------------------


class Server(asyncssh.SSHServer):
    def __init__(self, ca: SshCA, seen: list[Identity | str]) -> None:
        self.ca, self.seen = ca, seen
        self.login: CertificateLogin | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.login = CertificateLogin(self.ca).attach(conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def auth_completed(self) -> None:
        assert self.login is not None and self.login.identity is not None
        self.seen.append(self.login.identity)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.login is not None and self.login.identity is None:
            self.seen.append(self.login.refusal)


@pytest.fixture
async def server(env: Env) -> AsyncIterator[tuple[int, list[Identity | str]]]:
    ca = ca_of(env)
    seen: list[Identity | str] = []

    async def answer(process: asyncssh.SSHServerProcess[str]) -> None:
        process.stdout.write(f"hello {process.get_extra_info('username')}\n")
        process.exit(0)

    host_key = asyncssh.generate_private_key("ssh-ed25519")
    srv = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[host_key], authorized_client_keys=ca.authorized_keys(),
        server_factory=lambda: Server(ca, seen), process_factory=answer,
        password_auth=False, kbdint_auth=False,
    )  # fmt: skip
    yield srv.sockets[0].getsockname()[1], seen
    srv.close()
    await srv.wait_closed()


def ssh_argv(port: int, key: Path) -> list[str]:
    return [
        "ssh", "-F", "/dev/null", "-p", str(port), "-i", str(key),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "PreferredAuthentications=publickey", "web-1@127.0.0.1", "true",
    ]  # fmt: skip


def write_key_and_cert(folder: Path, name: str, cert_for: SshCA, identity: Identity) -> Path:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = folder / name
    key.write_private_key(path)
    os.chmod(path, 0o600)
    Path(f"{path}-cert.pub").write_text(cert_for.issue(identity, key.export_public_key().decode()))
    return path


async def test_real_ssh_client_logs_in_with_the_certificate(
    env: Env, server: tuple[int, list[Any]]
) -> None:
    port, seen = server
    key = env.folder / "k"
    rc, _, err = await hoopy(
        "ssh-cert", "--token-file", str(env.token_file(env.token())), "-o", str(key),
        "--config", "hoopy.yaml", cwd=env.folder,
    )  # fmt: skip
    assert rc == 0, err
    rc, out, err = await run(*ssh_argv(port, key))
    assert rc == 0, err
    assert out == "hello web-1\n"  # the login name is the connector, the principal the subject
    [identity] = seen
    assert isinstance(identity, Identity)
    assert identity.subject == "agent-7" and "agents" in identity.groups


@pytest.mark.parametrize("case", ["expired", "foreign-ca", "plain-key", "other-principal"])
async def test_real_ssh_client_is_refused(
    env: Env, server: tuple[int, list[Any]], tmp_path: Path, case: str
) -> None:
    port, seen = server
    now = time.time()
    who = Identity("agent-7", frozenset({"agents"}), "iss", "fp", now + 600)
    if case == "expired":  # issued an hour ago for a token that expired 30 minutes ago
        then = SshCA(ca_of(env).key, clock=lambda: now - 3600)
        key = write_key_and_cert(tmp_path, "k", then, Identity("agent-7", expires_at=now - 1800))
    elif case == "foreign-ca":
        key = write_key_and_cert(tmp_path, "k", SshCA.open(tmp_path / "other"), who)
    elif case == "other-principal":  # asyncssh alone would take it (principals="*")
        user = asyncssh.generate_private_key("ssh-ed25519")
        key = tmp_path / "k"
        user.write_private_key(key)
        os.chmod(key, 0o600)
        cert = ca_of(env).key.generate_user_certificate(user, "agent-7", principals=["root"])
        cert.write_certificate(f"{key}-cert.pub")
    else:  # a bare key, no certificate: nothing but the CA is trusted
        key = tmp_path / "k"
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(key)
        os.chmod(key, 0o600)
    rc, _, err = await run(*ssh_argv(port, key))
    assert rc == 255 and "Permission denied" in err
    assert not any(isinstance(s, Identity) for s in seen)
    if case == "other-principal":
        assert "certificate principal is not its key id" in seen


# -- verify(): only this CA, only what it issues ------------------------------------


def test_verify_refuses_what_this_ca_did_not_issue(tmp_path: Path) -> None:
    ca = SshCA.open(tmp_path / "ca")
    assert SshCA.open(tmp_path / "ca").public_line == ca.public_line  # persistent
    user = asyncssh.generate_private_key("ssh-ed25519")
    who = Identity("agent-7", frozenset({"agents"}), "iss", "fp", time.time() + 600)
    good = ca.issue(who, user.export_public_key().decode())
    assert ca.verify(good).subject == "agent-7"

    def refused(cert: str | bytes, message: str) -> None:
        with pytest.raises(CertificateError, match=message):
            ca.verify(cert)

    other = SshCA.open(tmp_path / "other")
    refused(other.issue(who, user.export_public_key().decode()), "not signed by hoopy")
    blob = bytearray(asyncssh.import_certificate(good).public_data)
    blob[-70] ^= 1  # a flipped bit in the signed part (the signing key or a field)
    refused(bytes(blob), "bad certificate signature|not signed|malformed")
    refused("ssh-ed25519-cert-v01@openssh.com AAAA", "malformed")
    refused("garbage", "malformed")
    refused(user.export_public_key().decode(), "not a certificate")
    # Made with this CA's key by other means: principals other than the key id, a host
    # certificate, a critical option (force-command) — none of them are hoopy's.
    for cert, why in [
        (ca.key.generate_user_certificate(user, "agent-7", principals=["root"]), "principal"),
        (ca.key.generate_user_certificate(user, "agent-7"), "principal"),
        (ca.key.generate_host_certificate(user, "agent-7", principals=["agent-7"]), "user"),
        (
            ca.key.generate_user_certificate(
                user, "agent-7", principals=["agent-7"], force_command="id"
            ),
            "critical",
        ),
    ]:
        refused(cert.public_data, why)
    later = SshCA(ca.key, clock=lambda: time.time() + 601)
    with pytest.raises(CertificateError, match="expired"):
        later.verify(good)
    with pytest.raises(CertificateError, match="expired"):
        ca.issue(Identity("agent-7", expires_at=time.time() - 1), user.export_public_key().decode())


def _b64json(part: str) -> str:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


def _fingerprint(b64: str) -> str:
    import base64
    import hashlib

    digest = hashlib.sha256(base64.b64decode(b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


# -- end to end with `hoopy serve` ---------------------------------------------------


async def test_hoopy_serve_exchanges_a_long_token(env: Env, tmp_path: Path) -> None:
    """The real gateway's admin listener (its own dev issuer, config and state folder)
    issues the certificate, signed by the CA in that gateway's state folder."""
    from hoopy import pgcluster
    from hoopy.devissuer import DevIssuer

    folder = env.folder
    cfg = folder / "served.yaml"
    cfg.write_text(
        "listen: {admin: 127.0.0.1:0}\nstate: sqlite:served/state.db\n"
        f"dev_issuer: {{listen: 127.0.0.1:{pgcluster.free_port()}}}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hoopy.cli", "serve", "--config", str(cfg),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        while not (
            line := (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        ).startswith("hoopy ready "):
            assert line, "hoopy serve exited before it was ready"
        addresses = json.loads(line[len("hoopy ready ") :])
        dev = DevIssuer(folder / "served", addresses["dev_issuer"])
        token = dev.mint("agent-9", ["agents", *GROUPS])
        assert len(token) > 1024
        key = tmp_path / "k"
        rc, _, err = await hoopy(
            "ssh-cert", "--token-file", str(env.token_file(token, "t9")), "-o", str(key),
            "--gateway", f"http://{addresses['admin']}", cwd=folder,
        )  # fmt: skip
        assert rc == 0, err
        served_ca = SshCA.open(folder / "served")
        assert served_ca.verify(Path(f"{key}-cert.pub").read_text()).subject == "agent-9"
        # a forged token is refused (and recorded by the real gateway, which stays up)
        rc, _, err = await hoopy(
            "ssh-cert", "--token-file", str(env.token_file(token[:-4] + "AAAA", "bad")),
            "-o", str(tmp_path / "k2"), "--gateway", f"http://{addresses['admin']}", cwd=folder,
        )  # fmt: skip
        assert rc == 1 and "the gateway refused (HTTP 401): token rejected" in err, err
        assert proc.returncode is None
        rc, listing, err = await hoopy("sessions", "list", "--config", str(cfg), cwd=folder)
        assert rc == 0 and "ssh-cert" in listing and "rejected" in listing, listing + err
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


_FUZZ_CA = SshCA(asyncssh.generate_private_key("ssh-ed25519"))
_FUZZ_CERT = asyncssh.import_certificate(
    _FUZZ_CA.issue(
        Identity("agent-7", frozenset({"agents"}), "iss", "fp", time.time() + 3600),
        asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode(),
    )
).public_data


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_verify_raises_only_certificate_error_on_any_bytes(data: st.DataObject) -> None:
    """Random blobs and valid certificates with bytes flipped, cut or inserted: verify()
    answers CertificateError, never another exception, and never an identity for a
    changed signed part."""
    blob = bytearray(_FUZZ_CERT)
    how = data.draw(st.sampled_from(["random", "flip", "cut", "insert"]))
    if how == "random":
        blob = bytearray(data.draw(st.binary(max_size=600)))
    elif how == "flip":
        for i in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=4)):
            blob[i] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        del blob[data.draw(st.integers(0, len(blob) - 1)) :]
    else:
        at = data.draw(st.integers(0, len(blob)))
        blob[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        _FUZZ_CA.verify(bytes(blob))
    except CertificateError:
        return
    # only an unchanged certificate may pass (a flip can hit the signature's own
    # length-prefixed bytes in ways ed25519 rejects; it may never pass changed)
    assert bytes(blob) == _FUZZ_CERT
