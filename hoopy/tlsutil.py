"""TLS for the listeners: load the configured pair, or generate a self-signed one.

A generated key is written 0600 next to its certificate so restarts keep the
same certificate (agents may pin it).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hoopy.config import TLSFiles


def ensure_pair(files: TLSFiles, hostnames: tuple[str, ...] = ("localhost",)) -> bool:
    """Create a self-signed certificate and key if either is missing; True if made."""
    if files.cert.exists() and files.key.exists():
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hoopy gateway (self-signed)")])
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    sans += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    files.key.parent.mkdir(parents=True, exist_ok=True)
    files.cert.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


class DirectSSLObject(ssl.SSLObject):
    """An SSLObject whose read, write and pending are the C object's own methods.

    Event loops drive TLS through an SSLObject (memory BIOs) and call those three for
    every chunk of every connection; ssl.SSLObject's are Python methods that only
    forward to `_sslobj`, and a read that finds no complete record raises through
    that extra frame.  Binding the C methods on the instance (uvloop takes them from
    the instance when it wraps) removes a Python call per TLS read and write; every
    other method, and the semantics of these three, stay ssl's own."""

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        obj = super()._create(*args, **kwargs)  # type: ignore[misc]
        c = getattr(obj, "_sslobj", None)
        if c is not None:
            obj.read = c.read
            obj.write = c.write
            obj.pending = c.pending
        return obj


def fast_objects(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """`ctx` with DirectSSLObject for the connections it wraps (see there)."""
    if hasattr(ssl.SSLObject, "_create"):
        ctx.sslobject_class = DirectSSLObject
    return ctx


def server_context(files: TLSFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return fast_objects(ctx)


def cert_path(files: TLSFiles) -> Path:
    return files.cert
