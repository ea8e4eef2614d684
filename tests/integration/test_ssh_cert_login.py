"""Certificate logins through `hoopy serve`: a token too long for OpenSSH's 1,024-byte
password buffer is exchanged for a certificate (`hoopy ssh-cert` against the running
gateway), and the real `ssh -i KEYFILE` logs in with it, no password.  The identity
(subject, groups) comes from the certificate; an expired certificate, one from another
CA and a plain key are refused and recorded."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import asyncssh
import pytest

from tests.integration.sshd import SshHoopy

pytest_plugins = ["tests.integration.sshd"]


def ssh_cert(h: SshHoopy, token: str, key: Path) -> subprocess.CompletedProcess[str]:
    tf = key.with_name(key.name + ".token")
    tf.write_text(token)
    return subprocess.run(
        [sys.executable, "-m", "hoopy.cli", "ssh-cert", "--token-file", str(tf), "-o", str(key),
         "--gateway", f"http://{h.addresses['admin']}"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )  # fmt: skip


def ssh_with_key(
    h: SshHoopy, key: Path, command: str, connector: str = "web-1"
) -> subprocess.CompletedProcess[str]:
    """The real ssh, public keys only (no askpass, no password): `key` and, by OpenSSH's
    naming convention, its certificate `key-cert.pub`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    return subprocess.run(
        [
            "ssh", "-p", str(h.ssh_port), "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={h.known_hosts()}",
            "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "PreferredAuthentications=publickey", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", str(key),
            "-o", "ConnectTimeout=10", f"{connector}@127.0.0.1", command,
        ],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _session_log(h: SshHoopy, needle: str) -> list[dict[str, object]]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for log in (h.folder / "recordings").rglob("*.jsonl"):
            text = log.read_text()
            if needle in text and '"type":"session_end"' in text:
                return [json.loads(line) for line in text.splitlines()]
        time.sleep(0.05)
    raise AssertionError(f"no finished recording holds {needle!r}")


def test_long_token_to_certificate_to_ssh_exec(ssh_hoopy: SshHoopy, tmp_path: Path) -> None:
    token = ssh_hoopy.issuer.mint("cert-agent-1", ["agents"], extra={"pad": "x" * 1500})
    assert len(token) > 1024
    key = tmp_path / "agent_key"
    r = ssh_cert(ssh_hoopy, token, key)
    assert r.returncode == 0, r.stderr
    assert Path(f"{key}-cert.pub").exists()
    r = ssh_with_key(ssh_hoopy, key, "echo via-certificate; id -un")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["via-certificate", "root"]
    # the policy applies to the certificate's identity as to a token's
    r = ssh_with_key(ssh_hoopy, key, "rm -rf /tmp/nothing")
    assert r.returncode == 126 and "denied by rule 'no-rm'" in r.stderr
    events = _session_log(ssh_hoopy, "via-certificate")
    start = events[0]
    assert start["type"] == "session_start" and start["subject"] == "cert-agent-1", start
    assert ssh_hoopy.cli("verify", str(start["session"])).returncode == 0


def test_identity_and_groups_come_from_the_certificate(ssh_hoopy: SshHoopy, tmp_path: Path) -> None:
    """No token reaches the SSH listener: the session's subject, groups and issuer are
    the certificate's, and the agents rules (group `agents`) apply to it."""
    key = tmp_path / "k"
    token = ssh_hoopy.issuer.mint("cert-agent-2", ["agents", "night-shift"])
    assert ssh_cert(ssh_hoopy, token, key).returncode == 0
    r = ssh_with_key(ssh_hoopy, key, "echo grouped")
    assert r.returncode == 0 and r.stdout == "grouped\n", r.stderr
    start = _session_log(ssh_hoopy, "cert-agent-2")[0]
    assert start["groups"] == ["agents", "night-shift"], start
    extra = start["extra"]
    assert isinstance(extra, dict) and extra["issuer"] == ssh_hoopy.addresses["dev_issuer"]
    assert extra["token"] and extra["token"] not in token  # a fingerprint, not the token
    # an identity no rule admits gets no certificate at all
    other = tmp_path / "k2"
    r = ssh_cert(ssh_hoopy, ssh_hoopy.issuer.mint("cert-agent-3", ["nobody"]), other)
    assert r.returncode == 1 and "may use no ssh connector" in r.stderr, r.stderr


def _certificate_via_api(h: SshHoopy, token: str, key: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    req = urllib.request.Request(
        f"http://{h.addresses['admin']}/api/ssh/certificate",
        data=json.dumps({"public_key": Path(f"{key}.pub").read_text()}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.loads(resp.read())
    Path(f"{key}-cert.pub").write_text(body["certificate"] + "\n")


async def test_certificate_expiry_is_enforced(ssh_hoopy: SshHoopy, tmp_path: Path) -> None:
    """At login (asyncssh and OpenSSH refuse an expired certificate) and within a
    session that outlives it (its identity expires with the certificate)."""
    key = tmp_path / "short"
    exp = time.time() + 4
    token = ssh_hoopy.issuer.mint("cert-short", ["agents"], ttl=4)
    await asyncio.to_thread(_certificate_via_api, ssh_hoopy, token, key)
    async with asyncssh.connect(
        "127.0.0.1", ssh_hoopy.ssh_port, username="web-1",
        client_keys=[(str(key), f"{key}-cert.pub")], known_hosts=str(ssh_hoopy.known_hosts()),
        password=None, preferred_auth="publickey", agent_path=None, config=[],
    ) as conn:  # fmt: skip
        r = await conn.run("echo in-time")
        assert r.exit_status == 0 and r.stdout == "in-time\n", r.stderr
        while time.time() < exp + 1:  # the certificate's validity is what is tested
            await asyncio.sleep(0.2)
        r = await conn.run("echo after-expiry")
        assert r.exit_status == 255 and "after-expiry" not in str(r.stdout)
        assert "token expired" in str(r.stderr)
    r = await asyncio.to_thread(ssh_with_key, ssh_hoopy, key, "echo too-late")
    assert r.returncode == 255 and "too-late" not in r.stdout
    assert "Permission denied" in r.stderr


@pytest.mark.parametrize("case", ["other-ca", "plain-key"])
def test_keys_hoopy_did_not_certify_are_refused(
    ssh_hoopy: SshHoopy, tmp_path: Path, case: str
) -> None:
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    if case == "other-ca":
        ca = tmp_path / "rogue_ca"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ca)], check=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-s", str(ca), "-I", "cert-agent-1", "-n", "cert-agent-1",
             "-V", "-5m:+1h", f"{key}.pub"],
            check=True,
        )  # fmt: skip
    r = ssh_with_key(ssh_hoopy, key, "echo should-not-run")
    assert r.returncode == 255 and "should-not-run" not in r.stdout
    assert "Permission denied" in r.stderr
    if case == "other-ca":  # a certificate refused is recorded (a plain key is no news)
        events = _session_log(ssh_hoopy, "certificate not signed by hoopy's SSH CA")
        assert not any(e["type"] == "command" for e in events), events


def test_a_valid_certificate_for_an_unknown_connector_gets_the_same_answer(
    ssh_hoopy: SshHoopy, tmp_path: Path
) -> None:
    key = tmp_path / "k"
    assert (
        ssh_cert(ssh_hoopy, ssh_hoopy.issuer.mint("cert-agent-4", ["agents"]), key).returncode == 0
    )
    r = ssh_with_key(ssh_hoopy, key, "echo nope", connector="no-such-connector")
    assert r.returncode == 255 and "nope" not in r.stdout
    assert "Permission denied" in r.stderr
    events = _session_log(ssh_hoopy, '"connector":"no-such-connector"')
    assert not any(e["type"] == "command" for e in events)
