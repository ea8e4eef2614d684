"""SFTP through `hoopy serve` with the real OpenSSH `sftp` client and a real sshd behind:
the subsystem opens only for identities some rule lets do SFTP operations, each
operation is checked against `ssh: {sftp: [...], paths: [...]}` (a denied path is
refused with the rule's name), and operations and byte counts are recorded."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sshd import ADMIN_TOKEN, Sshd, SshHoopy, start_ssh_hoopy, stop

pytest_plugins = ["tests.integration.sshd"]


def _policy(data: Path) -> str:
    return f"""\
mode: enforce
rules:
  - name: sftp-read-pub
    effect: allow
    match:
      groups: [sftpers]
      connectors: ["web-1", "web-masked"]
      ssh: {{sftp: [read, stat, list], paths: ["{data}", "{data}/pub", "{data}/pub/*"]}}
  - name: sftp-upload
    effect: allow
    match:
      groups: [sftpers]
      connectors: ["web-1"]
      ssh: {{sftp: [write, stat], paths: ["{data}/pub/in/*"]}}
  - name: removals-need-ops
    effect: require_approval
    approvers: [ops]
    timeout: 60s
    match:
      groups: [sftpers]
      connectors: ["web-1"]
      ssh: {{sftp: [remove], paths: ["{data}/pub/in/*"]}}
  - name: no-secrets
    effect: deny
    reason: secret files stay on the host
    match: {{ssh: {{sftp: ["*"], paths: ["*secret*"]}}}}
"""


@pytest.fixture(scope="module")
def data(sshd: Sshd) -> Path:
    d = sshd.folder / "sftp-data"
    (d / "pub" / "in").mkdir(parents=True, exist_ok=True)
    (d / "pub" / "report.txt").write_text("quarterly numbers\n" * 1000)
    (d / "pub" / "secret.txt").write_text("the password is hunter2\n")
    (d / "private.txt").write_text("not for agents\n")
    return d


@pytest.fixture(scope="module")
def hoopy(sshd: Sshd, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHoopy]:
    h = start_ssh_hoopy(tmp_path_factory.mktemp("hoopy-sftp"), sshd, {"sftp": _policy(data)})
    try:
        yield h
    finally:
        stop(h.proc)


def sftp(
    h: SshHoopy,
    batch: str,
    tmp: Path,
    groups: tuple[str, ...] = ("sftpers",),
    sub: str = "sftp-agent",
    connector: str = "web-1",
) -> subprocess.CompletedProcess[str]:
    """The real `sftp -b`; BatchMode=no comes first (sftp -b adds BatchMode=yes, and
    OpenSSH takes the first value), so SSH_ASKPASS can give the token."""
    script = tmp / "batch"
    script.write_text(batch)
    argv = h.ssh_argv(connector)[1:-1]  # the ssh options, without "ssh" and the target
    argv[argv.index("-p")] = "-P"
    return subprocess.run(
        ["sftp", "-o", "BatchMode=no", *argv, "-b", str(script), f"{connector}@127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=h.ssh_env(h.token(sub, groups)),
        cwd=tmp,
    )


def _recording(h: SshHoopy, needle: str) -> Path:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for log in (h.folder / "recordings").rglob("*.jsonl"):
            text = log.read_text()
            if needle in text and '"type":"session_end"' in text:
                return log
        time.sleep(0.05)
    raise AssertionError(f"no finished recording holds {needle!r}")


def test_allowed_get_works_and_is_recorded(hoopy: SshHoopy, data: Path, tmp_path: Path) -> None:
    r = sftp(hoopy, f"cd {data}/pub\nls\nget report.txt\n", tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "report.txt").read_text() == (data / "pub" / "report.txt").read_text()
    log = _recording(hoopy, "report.txt")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    reads = [e for e in events if e.get("type") == "command" and "sftp_read" in e.get("kinds", [])]
    assert reads and reads[0]["outcome"] == "allow" and reads[0]["rule"] == "sftp-read-pub"
    files = [e for e in events if e.get("type") == "sftp_file"]
    assert files and files[0]["path"] == f"{data}/pub/report.txt"
    assert files[0]["bytes_read"] == len("quarterly numbers\n" * 1000)
    assert hoopy.cli("verify", log.stem).returncode == 0


@pytest.mark.parametrize(
    ("batch", "rule", "path"),
    [
        ("get {d}/pub/secret.txt\n", "no-secrets", "{d}/pub/secret.txt"),
        ("get {d}/pub/../pub/./secret.txt\n", "no-secrets", "{d}/pub/secret.txt"),
        ("get {d}/private.txt\n", "", "{d}/private.txt"),
        ("get {d}/pub/../private.txt\n", "", "{d}/private.txt"),
        ("ls {d}/..\n", "", "{p}"),
        ("rm {d}/pub/report.txt\n", "", "{d}/pub/report.txt"),
        ("put {d}/pub/report.txt {d}/pub/report2.txt\n", "", "{d}/pub/report2.txt"),
    ],
)
def test_denied_paths_and_operations_are_refused(
    hoopy: SshHoopy, data: Path, tmp_path: Path, batch: str, rule: str, path: str
) -> None:
    """The client is refused (OpenSSH's sftp shows a refused stat as "not found", a
    refused open as "Permission denied"; hoopy's reason comes on stderr) and the denial
    is recorded."""
    sub = f"sftp-{uuid.uuid4().hex[:12]}"
    r = sftp(hoopy, batch.format(d=data), tmp_path, sub=sub)
    assert r.returncode != 0
    # the reason reaches the agent on stderr (sftp itself shows only the SFTP status)
    assert (f"denied by rule '{rule}'" if rule else "no policy rule allows this") in r.stderr
    assert not (tmp_path / "secret.txt").exists() and not (tmp_path / "private.txt").exists()
    assert (data / "pub" / "report.txt").exists() and not (data / "pub" / "report2.txt").exists()
    path = path.format(d=data, p=data.parent)
    log = _recording(hoopy, sub)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    denials = [
        e
        for e in events
        if e.get("type") == "command" and e["outcome"] == "deny" and path in e["text"]
    ]
    assert denials and denials[0]["rule"] == rule, denials
    assert all(
        not (
            e.get("type") == "command"
            and e["outcome"] == "allow"
            and path in e["text"]
            and set(e["kinds"]) & {"sftp_read", "sftp_write", "sftp_remove"}
        )
        for e in events
    )
    assert hoopy.cli("verify", log.stem).returncode == 0


def test_upload_where_allowed(hoopy: SshHoopy, data: Path, tmp_path: Path) -> None:
    (tmp_path / "up.txt").write_text("uploaded by an agent\n")
    r = sftp(hoopy, f"put up.txt {data}/pub/in/up.txt\n", tmp_path)
    assert r.returncode == 0, r.stderr
    assert (data / "pub" / "in" / "up.txt").read_text() == "uploaded by an agent\n"


def test_sftp_is_refused_without_an_sftp_rule(hoopy: SshHoopy, data: Path, tmp_path: Path) -> None:
    sub = f"nosftp-{uuid.uuid4().hex[:12]}"
    r = sftp(hoopy, f"get {data}/pub/report.txt\n", tmp_path, groups=("agents",), sub=sub)
    assert r.returncode != 0
    assert "SFTP is not allowed for" in r.stderr, r.stderr
    assert not (tmp_path / "report.txt").exists()
    events = [json.loads(line) for line in _recording(hoopy, sub).read_text().splitlines()]
    assert any(e.get("type") == "refused" and e.get("what") == "sftp" for e in events)
    assert not any(e.get("type") == "command" for e in events)


def test_reads_where_mask_rules_apply_are_refused(
    hoopy: SshHoopy, data: Path, tmp_path: Path
) -> None:
    """web-masked has a mask rule with detectors: file contents cannot be masked, so a
    read there is refused (listing is not)."""
    script = f"ls {data}/pub\nget {data}/pub/report.txt\n"
    r = sftp(hoopy, script, tmp_path, connector="web-masked", sub="sftp-masked")
    assert r.returncode != 0
    assert "report.txt" in r.stdout  # the listing worked
    assert "SFTP cannot mask file contents" in r.stderr, r.stderr
    assert not (tmp_path / "report.txt").exists()
    events = [
        json.loads(line) for line in _recording(hoopy, "sftp-masked").read_text().splitlines()
    ]
    assert any(e.get("type") == "refused" and e.get("what") == "sftp_read" for e in events)


def test_scp_in_sftp_mode_goes_through_the_same_checks(
    hoopy: SshHoopy, data: Path, tmp_path: Path
) -> None:
    """OpenSSH 9's `scp` speaks SFTP unless given -O: allowed paths copy, others not."""
    argv = hoopy.ssh_argv("web-1")[1:-1]
    argv[argv.index("-p")] = "-P"
    env = hoopy.ssh_env(hoopy.token("scp-agent", ("sftpers",)))

    def scp(remote: str, local: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["scp", "-o", "BatchMode=no", *argv, f"web-1@127.0.0.1:{remote}", str(local)],
            capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    r = scp(f"{data}/pub/report.txt", tmp_path / "copy.txt")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "copy.txt").read_bytes() == (data / "pub" / "report.txt").read_bytes()
    r = scp(f"{data}/private.txt", tmp_path / "private.txt")
    assert r.returncode != 0 and "no policy rule allows this" in r.stderr, r.stderr
    assert not (tmp_path / "private.txt").exists()


def test_an_operation_needing_approval_waits_for_it(
    hoopy: SshHoopy, data: Path, tmp_path: Path
) -> None:
    victim = data / "pub" / "in" / "to-remove.txt"
    victim.write_text("remove me once approved\n")
    script = tmp_path / "batch"
    script.write_text(f"rm {victim}\n")
    argv = hoopy.ssh_argv("web-1")[1:-1]
    argv[argv.index("-p")] = "-P"
    proc = subprocess.Popen(
        ["sftp", "-o", "BatchMode=no", *argv, "-b", str(script), "web-1@127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=hoopy.ssh_env(hoopy.token("sftp-approvals", ("sftpers",))),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # hoopy's note, while the operation waits
        assert "waiting for approval" in line and "by ops" in line, line
        assert victim.exists()
        approval_id = line.split("waiting for approval ")[1].split()[0]
        req = urllib.request.Request(
            f"http://{hoopy.addresses['admin']}/api/approvals/{approval_id}/approve",
            method="POST", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not victim.exists()


def test_a_symlink_inside_the_allowed_tree_does_not_lead_out(
    hoopy: SshHoopy, data: Path, tmp_path: Path
) -> None:
    link = data / "pub" / "innocent.txt"
    link.unlink(missing_ok=True)
    link.symlink_to(data / "private.txt")  # made on the backend, outside the agent's reach
    sub = f"sftp-link-{uuid.uuid4().hex[:8]}"
    r = sftp(hoopy, f"get {link}\n", tmp_path, sub=sub)
    assert r.returncode != 0 and not (tmp_path / "innocent.txt").exists()
    assert "no policy rule allows this" in r.stderr, r.stderr
    events = [json.loads(line) for line in _recording(hoopy, sub).read_text().splitlines()]
    assert any(
        e.get("type") == "command" and e["outcome"] == "deny" and "innocent.txt" in e["text"]
        for e in events
    )
