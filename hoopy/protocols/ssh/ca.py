"""hoopy's own SSH user CA: OIDC tokens too long for OpenSSH's password buffer.

OpenSSH reads a password (or SSH_ASKPASS output) into a 1,024-byte buffer, and real
identity providers issue longer tokens.  So an agent exchanges its token once for a
short-lived OpenSSH user certificate (`hoopy ssh-cert`, or `POST /api/ssh/certificate`
on the admin listener) and logs in with `ssh -i KEYFILE`.

The certificate carries the identity, so the SSH listener needs nothing else:
* key id and the one principal: the token's subject;
* validity: from a minute ago (clock skew) to the token's `exp` at the latest (and at
  most `max_ttl`): a certificate never outlives the token it was exchanged for;
* extensions `groups@hoopy` (a JSON list), `issuer@hoopy` and `token@hoopy` (the
  token's fingerprint, never the token): the groups are re-read from here at login;
* the standard `permit-pty` and `permit-port-forwarding` extensions, so OpenSSH clients
  ask for what hoopy's policy then decides (no X11 or agent forwarding).

`verify()` trusts only this CA's key (compared byte for byte), a user certificate,
inside its validity, whose principal is its key id.  There is no revocation list: a
certificate lives no longer than its token, which is what a stolen token allows anyway.

The CA key is an ed25519 key in the state folder (`ssh_user_ca`, mode 0600), created on
first use; replicas of one gateway must share that file.  asyncssh cannot write custom
extensions, so certificates are encoded here (PROTOCOL.certkeys, v01) and signed with
asyncssh.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh
from asyncssh.packet import PacketDecodeError, SSHPacket, String, UInt32, UInt64

from hoopy.policy import Identity, admits

if TYPE_CHECKING:
    from hoopy.config import Config

CA_KEY_FILE = "ssh_user_ca"
CERT_TYPE_USER = 1
MAX_TTL = 12 * 3600.0
SKEW = 60.0
EXT_GROUPS = "groups@hoopy"
EXT_ISSUER = "issuer@hoopy"
EXT_TOKEN = "token@hoopy"
# User key types a certificate may be issued for (OpenSSH cert-v01 names).
_CERT_ALGS = {
    b"ssh-ed25519": b"ssh-ed25519-cert-v01@openssh.com",
    b"ecdsa-sha2-nistp256": b"ecdsa-sha2-nistp256-cert-v01@openssh.com",
    b"ecdsa-sha2-nistp384": b"ecdsa-sha2-nistp384-cert-v01@openssh.com",
    b"ecdsa-sha2-nistp521": b"ecdsa-sha2-nistp521-cert-v01@openssh.com",
}


class CertificateError(Exception):
    """A certificate hoopy will not issue or accept; the message is safe to show."""


class SshCA:
    """The CA key and the two things done with it: issue and verify."""

    def __init__(self, key: asyncssh.SSHKey, clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self.public = key.convert_to_public()
        self.clock = clock

    @classmethod
    def open(cls, state_dir: Path, clock: Callable[[], float] = time.time) -> SshCA:
        """The CA of this state folder, created (0600, atomically) on first use."""
        return cls(_load_or_create(Path(state_dir) / CA_KEY_FILE), clock)

    @property
    def public_line(self) -> str:
        """The CA's public key, OpenSSH format (for TrustedUserCAKeys elsewhere)."""
        return self.public.export_public_key().decode().strip()

    def authorized_keys(self) -> asyncssh.SSHAuthorizedKeys:
        """For asyncssh's `authorized_client_keys`: this CA, any principal (asyncssh
        would otherwise require the principal to be the login name, a connector);
        `verify()` then checks the principal is the key id."""
        return asyncssh.import_authorized_keys(
            f'cert-authority,principals="*" {self.public_line}\n'
        )

    # -- issue --------------------------------------------------------------

    def issue(
        self, identity: Identity, public_key: asyncssh.SSHKey | str, max_ttl: float = MAX_TTL
    ) -> str:
        """A certificate (one OpenSSH line) for `public_key`, valid for `identity` until
        its token expires."""
        if isinstance(public_key, str):
            try:
                public_key = asyncssh.import_public_key(public_key)
            except (asyncssh.KeyImportError, ValueError):
                raise CertificateError("public_key is not an OpenSSH public key") from None
        cert_alg = _CERT_ALGS.get(public_key.algorithm)
        if cert_alg is None:
            raise CertificateError("use an ed25519 or ECDSA key (ssh-keygen -t ed25519)")
        if not identity.subject:
            raise CertificateError("the token has no subject")
        now = self.clock()
        until = min(identity.expires_at, now + max_ttl)
        if until <= now:
            raise CertificateError("the token has expired")
        extensions = {
            EXT_GROUPS: json.dumps(sorted(identity.groups)),
            EXT_ISSUER: identity.issuer,
            EXT_TOKEN: identity.token_fingerprint,
            "permit-port-forwarding": "",
            "permit-pty": "",
        }
        body = b"".join(
            (
                String(cert_alg),
                String(secrets.token_bytes(32)),
                public_key.convert_to_public().encode_ssh_public(),
                UInt64(secrets.randbits(63)),
                UInt32(CERT_TYPE_USER),
                String(identity.subject),
                String(String(identity.subject)),
                UInt64(int(now - SKEW)),
                UInt64(int(until)),
                String(b""),  # no critical options: hoopy's policy restricts, not the cert
                String(_options(extensions)),
                String(b""),
                String(self.public.public_data),
            )
        )
        blob = body + String(self.key.sign(body, self.key.sig_algorithms[0]))
        return f"{cert_alg.decode()} {base64.b64encode(blob).decode()}"

    # -- verify -------------------------------------------------------------

    def verify(self, cert: bytes | str) -> Identity:
        """The identity a certificate from this CA carries, or CertificateError.
        `cert` is the wire blob or an OpenSSH certificate line."""
        try:
            return self._verify(_blob(cert))
        except CertificateError:
            raise
        except (PacketDecodeError, ValueError, UnicodeDecodeError, TypeError):
            raise CertificateError("malformed certificate") from None

    def _verify(self, blob: bytes) -> Identity:
        p = SSHPacket(blob)
        alg = p.get_string()
        key_alg = next((k for k, c in _CERT_ALGS.items() if c == alg), None)
        if key_alg is None:
            raise CertificateError("not a certificate hoopy issues")
        p.get_string()  # nonce
        _skip_public_key(p, key_alg)
        p.get_uint64()  # serial
        if p.get_uint32() != CERT_TYPE_USER:
            raise CertificateError("not a user certificate")
        key_id = p.get_string().decode()
        principals = _strings(p.get_string())
        valid_after, valid_before = p.get_uint64(), p.get_uint64()
        critical, extensions = p.get_string(), p.get_string()
        p.get_string()  # reserved
        signer = p.get_string()
        signed = p.get_consumed_payload()
        signature = p.get_string()
        p.check_end()
        if not secrets.compare_digest(signer, self.public.public_data):
            raise CertificateError("certificate not signed by hoopy's SSH CA")
        if not self.public.verify(signed, signature):
            raise CertificateError("bad certificate signature")
        if critical:
            raise CertificateError("unexpected critical options")
        now = self.clock()
        if not valid_after <= now < valid_before:
            raise CertificateError("certificate expired or not yet valid")
        if not key_id or [s.decode() for s in principals] != [key_id]:
            raise CertificateError("certificate principal is not its key id")
        ext = dict(_pairs(extensions))
        groups = json.loads(_inner(ext.get(EXT_GROUPS, String("[]"))))
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise CertificateError("malformed groups extension")
        return Identity(
            subject=key_id,
            groups=frozenset(groups),
            issuer=_inner(ext.get(EXT_ISSUER, String(""))),
            token_fingerprint=_inner(ext.get(EXT_TOKEN, String(""))),
            expires_at=float(valid_before),
        )


def issue_for(config: Config, identity: Identity, public_key: str) -> tuple[SshCA, str]:
    """The gateway's CA and a certificate for this validated identity, which some policy
    must admit to an ssh connector (a certificate for nothing is not handed out)."""
    ssh = [name for name, c in config.connectors.items() if c.type == "ssh"]
    if not any(admits(config.policies, identity, name) for name in ssh):
        raise NotAdmitted(f"identity '{identity.subject}' may use no ssh connector")
    ca = SshCA.open(config.state_dir)
    return ca, ca.issue(identity, public_key)


class NotAdmitted(CertificateError):
    """The identity is valid but no policy lets it use an ssh connector."""


# -- asyncssh server side ---------------------------------------------------------


class CertificateLogin:
    """Learns which certificate an asyncssh server connection logged in with.

    asyncssh checks a certificate's signature, validity and the client's proof of its
    key, but does not hand the certificate (with hoopy's extensions) to the server.
    `attach(conn)` in `SSHServer.connection_made` wraps that one connection's
    `validate_public_key` so that a certificate asyncssh accepts must also pass
    `SshCA.verify`; its identity is then `login.identity`.  Use with
    `authorized_client_keys=ca.authorized_keys()` and no other authorized keys."""

    def __init__(self, ca: SshCA) -> None:
        self.ca = ca
        self.identity: Identity | None = None
        self.refusal = ""

    def attach(self, conn: asyncssh.SSHServerConnection) -> CertificateLogin:
        checked: Callable[..., Awaitable[bool]] = conn.validate_public_key

        async def validate(username: str, key_data: bytes, msg: bytes, sig: bytes) -> bool:
            try:
                identity = self.ca.verify(key_data)
            except CertificateError as e:
                self.refusal = str(e)
                return False
            if not await checked(username, key_data, msg, sig):
                return False
            if msg:  # the signed request, not the "would you accept this key?" probe
                self.identity = identity
            return True

        setattr(conn, "validate_public_key", validate)  # noqa: B010 (one connection only)
        return self


# -- client side (`hoopy ssh-cert`) -----------------------------------------------------


def obtain_certificate(
    token: str, keyfile: Path, config: Config | None, gateway: str | None
) -> str:
    """Generate a key pair, have the token exchanged for a certificate (by a running
    gateway's admin API, or locally with `config`'s verifier and CA), and write KEYFILE
    (0600), KEYFILE.pub and KEYFILE-cert.pub.  Returns a note for the user; raises
    ValueError with the reason when the token or the request is refused."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment="hoopy ssh-cert")
    public = key.export_public_key().decode()
    if gateway:
        subject, until, cert = _from_gateway(gateway, token, public)
    else:
        assert config is not None
        identity = asyncio.run(_verify_token(config, token))
        try:
            ca, cert = issue_for(config, identity, public)
        except CertificateError as e:
            raise ValueError(str(e)) from None
        subject, until = identity.subject, ca.verify(cert).expires_at
    got = asyncssh.import_certificate(cert)
    if got.key.public_data != key.public_data:
        raise ValueError("the certificate returned is for another key")
    _write(keyfile, key.export_private_key(), private=True)
    _write(keyfile.with_name(keyfile.name + ".pub"), public.encode(), private=False)
    _write(keyfile.with_name(keyfile.name + "-cert.pub"), cert.encode() + b"\n", private=False)
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(until))
    return (
        f"wrote {keyfile} and {keyfile}-cert.pub: certificate for '{subject}' valid until "
        f"{when}\nconnect with: ssh -i {keyfile} -p PORT CONNECTOR@GATEWAY"
    )


async def _verify_token(config: Config, token: str) -> Identity:
    from hoopy.identity import AuthError, IdentityVerifier

    verifier = IdentityVerifier(config.issuers)
    try:
        return await verifier.verify(token)
    except AuthError as e:
        raise ValueError(f"token rejected: {e.message}") from None
    finally:
        await verifier.close()


def _from_gateway(url: str, token: str, public: str) -> tuple[str, float, str]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url.rstrip("/") + "/api/ssh/certificate",
        data=json.dumps({"public_key": public}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            reason = json.loads(e.read()).get("error", "")
        except ValueError:
            reason = ""
        raise ValueError(f"the gateway refused (HTTP {e.code}): {reason}") from None
    except urllib.error.URLError as e:
        raise ValueError(f"cannot reach the gateway at {url}: {e.reason}") from None
    return str(body["subject"]), float(body["valid_before"]), str(body["certificate"])


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        if private:
            os.fchmod(f.fileno(), 0o600)  # an older, wider file keeps its mode otherwise
        f.write(data)


# -- helpers ------------------------------------------------------------------------


def _load_or_create(path: Path) -> asyncssh.SSHKey:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment="hoopy SSH user CA")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(key.export_private_key())
            with contextlib.suppress(FileExistsError):  # another process won: use its key
                os.link(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return asyncssh.read_private_key(path)


def _options(values: dict[str, str]) -> bytes:
    """Extensions, sorted by name as OpenSSH requires; flags have empty data."""
    return b"".join(
        String(name) + String(String(value) if value else b"")
        for name, value in sorted(values.items())
    )


def _pairs(data: bytes) -> list[tuple[str, bytes]]:
    p = SSHPacket(data)
    out = []
    while p:
        out.append((p.get_string().decode(), p.get_string()))
    return out


def _strings(data: bytes) -> list[bytes]:
    p = SSHPacket(data)
    out = []
    while p:
        out.append(p.get_string())
    return out


def _inner(data: bytes) -> str:
    p = SSHPacket(data)
    value = p.get_string().decode()
    p.check_end()
    return value


def _skip_public_key(p: SSHPacket, key_alg: bytes) -> None:
    if key_alg == b"ssh-ed25519":
        p.get_string()
    else:  # ECDSA: curve name, point
        p.get_string()
        p.get_string()


def _blob(cert: bytes | str) -> bytes:
    if isinstance(cert, bytes):
        return cert
    parts = cert.split()
    if len(parts) < 2:
        raise CertificateError("malformed certificate")
    return base64.b64decode(parts[1], validate=True)
