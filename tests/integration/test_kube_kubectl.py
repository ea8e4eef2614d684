"""Real kubectl 1.32 through hoopy to the Kubernetes API emulator (hoopy/kubeemu):
everyday commands, policy on verbs/resources/namespaces/exec commands, cross-namespace
lists and watches, Secret masking in every output shape, exec with and without TTY."""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kubefixture import (
    KUBECTL,
    Emu,
    KubeHoopy,
    start_hoopy,
)

POLICY = """
rules:
  - name: agents
    effect: allow
    match: {groups: [agents], connectors: ["cluster*"]}
  - name: no-kube-system
    effect: deny
    reason: kube-system is off limits
    match: {kubernetes: {namespaces: [kube-system]}}
  - name: keep-secrets
    effect: deny
    reason: secrets are managed by the platform team
    match: {kubernetes: {verbs: [delete, deletecollection], resources: [secrets]}}
  - name: no-rm-in-pods
    effect: deny
    reason: no deleting files inside pods
    match: {kubernetes: {resources: ["pods/exec", "pods/attach"], commands: ["rm *", "rm"]}}
  - name: deploy-deletes-need-sre
    effect: require_approval
    approvers: [sre]
    timeout: 60s
    match: {kubernetes: {verbs: [delete], resources: [deployments]}}
  - name: hide-emails
    effect: mask
    detectors: [email]
    match: {connectors: ["cluster*"]}
"""
SECRET_VALUE = "s3cr3t-Value-9f8e7d"

pytest_plugins = ["tests.kubefixture"]  # the emulator fixture, `emu`


@pytest.fixture(scope="module")
def hk(emu: Emu, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeHoopy]:
    h = start_hoopy(
        tmp_path_factory.mktemp("hoopy-kube"),
        emu,
        POLICY,
        connectors={
            "cluster": "",
            "cluster-raw": "mask_secrets: false\n",
            "cluster-imp": "impersonate: true\n",
        },
    )
    try:
        yield h
    finally:
        h.stop()


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout


def make_ns(hk: KubeHoopy, ns: str) -> None:
    ok(hk.kubectl("create", "namespace", ns))


class Lines:
    """A kubectl process whose stdout lines are read in the background (bounded waits)."""

    def __init__(self, hk: KubeHoopy, *args: str) -> None:
        env = {**os.environ, "KUBECONFIG": "/dev/null", "KUBECACHEDIR": str(hk.folder / "kcache")}
        self.proc = subprocess.Popen(
            [
                KUBECTL,
                "--server",
                f"{hk.server}/k8s/cluster",
                "--certificate-authority",
                str(hk.ca),
                "--token",
                hk.token(),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        out = self.proc.stdout
        assert out is not None
        threading.Thread(target=lambda: [self.lines.put(x) for x in out], daemon=True).start()

    def until(self, needle: str, timeout: float = 30) -> str:
        while True:
            line = self.lines.get(timeout=timeout)
            self.seen.append(line)
            if needle in line:
                return line

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# ---- everyday commands ------------------------------------------------------------------
def test_get_create_patch_apply_delete(hk: KubeHoopy, tmp_path: Path) -> None:
    make_ns(hk, "t-crud")
    ok(hk.kubectl("-n", "t-crud", "run", "web-0", "--image=nginx"))
    assert "web-0" in ok(hk.kubectl("-n", "t-crud", "get", "pods"))
    pod = json.loads(ok(hk.kubectl("-n", "t-crud", "get", "pod", "web-0", "-o", "json")))
    assert pod["metadata"]["namespace"] == "t-crud"
    ok(hk.kubectl("-n", "t-crud", "label", "pod", "web-0", "tier=front"))
    ok(
        hk.kubectl(
            "-n", "t-crud", "patch", "pod", "web-0", "-p", '{"metadata":{"annotations":{"a":"b"}}}'
        )
    )
    got = json.loads(ok(hk.kubectl("-n", "t-crud", "get", "pod", "web-0", "-o", "json")))
    assert (
        got["metadata"]["labels"]["tier"] == "front" and got["metadata"]["annotations"]["a"] == "b"
    )
    manifest = tmp_path / "cm.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  k: one\n"
    )
    assert "created" in ok(
        hk.kubectl("-n", "t-crud", "apply", "--validate=false", "-f", str(manifest))
    )
    manifest.write_text(manifest.read_text().replace("k: one", "k: two"))
    assert "configured" in ok(
        hk.kubectl("-n", "t-crud", "apply", "--validate=false", "-f", str(manifest))
    )
    ok(
        hk.kubectl(
            "-n", "t-crud", "apply", "--server-side", "--validate=false", "-f", str(manifest)
        )
    )
    assert ok(hk.kubectl("-n", "t-crud", "get", "cm", "app", "-o", "jsonpath={.data.k}")) == "two"
    ok(hk.kubectl("-n", "t-crud", "create", "deployment", "web", "--image=nginx"))
    assert "restarted" in ok(hk.kubectl("-n", "t-crud", "rollout", "restart", "deploy/web"))
    assert "deleted" in ok(hk.kubectl("-n", "t-crud", "delete", "pod", "web-0"))
    r = hk.kubectl("-n", "t-crud", "get", "pod", "web-0")
    assert r.returncode == 1 and "NotFound" in r.stderr


def test_watch_streams_events(hk: KubeHoopy) -> None:
    make_ns(hk, "t-watch")
    w = Lines(hk, "-n", "t-watch", "get", "pods", "-w")
    try:
        ok(hk.kubectl("-n", "t-watch", "run", "arrives-later", "--image=x"))
        assert "Running" in w.until("arrives-later")
    finally:
        w.stop()


def test_logs_follow(hk: KubeHoopy, emu: Emu) -> None:
    make_ns(hk, "t-logs")
    ok(hk.kubectl("-n", "t-logs", "run", "talker", "--image=x"))
    emu.call("POST", "/emu/log/t-logs/talker", {"lines": ["first line"]})
    f = Lines(hk, "-n", "t-logs", "logs", "-f", "talker")
    try:
        f.until("first line")
        emu.call(
            "POST",
            "/emu/log/t-logs/talker",
            {"lines": ["second line", "mail bob@example.com"], "close": True},
        )
        f.until("second line")
        masked = f.until("mail")
        assert "bob@example.com" not in masked  # mask rules' detectors apply to logs
        assert f.proc.wait(30) == 0
    finally:
        f.stop()


# ---- exec -----------------------------------------------------------------------------
def test_exec_exit_codes_and_stdin(hk: KubeHoopy) -> None:
    make_ns(hk, "t-exec")
    ok(hk.kubectl("-n", "t-exec", "run", "box", "--image=x"))
    r = hk.kubectl(
        "-n", "t-exec", "exec", "box", "--", "sh", "-c", "echo out; echo err >&2; exit 3"
    )
    assert r.returncode == 3 and r.stdout == "out\n" and "err" in r.stderr
    r = hk.kubectl("-n", "t-exec", "exec", "-i", "box", "--", "wc", "-c", input="x" * 100_000)
    assert r.returncode == 0 and r.stdout.strip() == "100000"
    # mask rules' detectors apply to exec output (a value split across writes too)
    r = hk.kubectl(
        "-n",
        "t-exec",
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "printf 'mail carol@exa'; sleep 0.2; printf 'mple.com now\\n'; echo tail",
    )
    assert r.returncode == 0 and "carol@example.com" not in r.stdout and "tail" in r.stdout
    assert r.stdout.startswith("mail ") and "now" in r.stdout


def test_exec_tty_is_recorded_as_asciicast(hk: KubeHoopy) -> None:
    make_ns(hk, "t-tty")
    ok(hk.kubectl("-n", "t-tty", "run", "shell", "--image=x"))
    r = hk.kubectl_tty(
        "-n", "t-tty", "exec", "-it", "shell", "--",
        "sh", "-c", "'echo tty-marker-$((6*7)); tty; exit 5'",
        token=hk.token(sub="tty-agent"),
    )  # fmt: skip
    assert r.returncode == 5, r.stdout + r.stderr
    assert "tty-marker-42" in r.stdout and "/dev/pts/" in r.stdout
    casts = [p.read_text() for p in (hk.folder / "recordings").rglob("*.cast")]
    assert any("tty-marker-42" in c for c in casts)
    listed = hk.cli("sessions", "list", "--subject", "tty-agent").stdout.split()
    replayed = hk.cli("replay", listed[0], "--speed", "1000")
    assert replayed.returncode == 0, replayed.stderr
    assert "pods/exec t-tty/shell -- sh -c" in replayed.stdout
    verified = hk.cli("verify", listed[0])
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["rm", "-rf", "/tmp/x"],
        ["/bin/rm", "-rf", "/tmp/x"],
        ["sh", "-c", "rm -rf /tmp/x"],
        ["sh", "-c", "true; rm -rf /tmp/x"],
        ["bash", "-c", "echo hi && /usr/bin/rm /tmp/x"],
        ["sh", "-c", 'r""m -rf /tmp/x'],
        ["sh", "-c", "\\rm /tmp/x"],
        ["env", "rm", "/tmp/x"],
        ["nice", "rm", "/tmp/x"],
        ["busybox", "rm", "/tmp/x"],
    ],
)
def test_exec_denied_commands(hk: KubeHoopy, argv: list[str]) -> None:
    ns = f"t-rm-{zlib.crc32(repr(argv).encode()) % 100000}"
    make_ns(hk, ns)
    ok(hk.kubectl("-n", ns, "run", "victim", "--image=x"))
    r = hk.kubectl("-n", ns, "exec", "victim", "--", *argv)
    assert r.returncode != 0
    assert "no-rm-in-pods" in r.stderr and "Forbidden" in r.stderr


def test_spdy_gets_a_clear_status(hk: KubeHoopy) -> None:
    import http.client
    import ssl

    ctx = ssl.create_default_context(cafile=str(hk.ca))
    host, port = hk.addresses["kubernetes"].rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
    make_ns(hk, "t-spdy")
    ok(hk.kubectl("-n", "t-spdy", "run", "p", "--image=x"))
    conn.request(
        "POST",
        "/k8s/cluster/api/v1/namespaces/t-spdy/pods/p/exec?command=id&stdout=true",
        headers={
            "Authorization": f"Bearer {hk.token()}",
            "Connection": "Upgrade",
            "Upgrade": "SPDY/3.1",
            "X-Stream-Protocol-Version": "v4.channel.k8s.io",
        },
    )
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 400 and body["kind"] == "Status" and "kubectl 1.30" in body["message"]


# ---- policy ---------------------------------------------------------------------------
def test_denied_namespace_and_verb(hk: KubeHoopy) -> None:
    r = hk.kubectl("-n", "kube-system", "get", "pods")
    assert r.returncode == 1 and "no-kube-system" in r.stderr and "off limits" in r.stderr
    make_ns(hk, "t-deny")
    ok(hk.kubectl("-n", "t-deny", "create", "secret", "generic", "keep", "--from-literal=a=b"))
    r = hk.kubectl("-n", "t-deny", "delete", "secret", "keep")
    assert r.returncode == 1 and "keep-secrets" in r.stderr
    assert "keep" in ok(hk.kubectl("-n", "t-deny", "get", "secrets"))
    r = hk.kubectl("-n", "t-deny", "delete", "secrets", "--all")
    assert r.returncode == 1 and "keep-secrets" in r.stderr


def test_all_namespaces_never_show_governed_ones(hk: KubeHoopy, emu: Emu) -> None:
    emu.call(
        "POST", "/api/v1/namespaces/kube-system/pods", {"metadata": {"name": "hidden-sys-pod"}}
    )
    make_ns(hk, "t-all")
    ok(hk.kubectl("-n", "t-all", "run", "visible-pod", "--image=x"))
    for args in (
        ["get", "pods", "-A"],
        ["get", "pods", "-A", "-o", "json"],
        ["get", "pods", "-A", "-o", "name"],
        ["get", "--raw", "/k8s/cluster/api/v1/pods"],
        ["get", "namespaces"],
    ):
        out = ok(hk.kubectl(*args))
        assert "hidden-sys-pod" not in out and "kube-system" not in out, args
    assert "visible-pod" in ok(hk.kubectl("get", "pods", "-A"))
    w = Lines(hk, "get", "pods", "-A", "-w")
    try:
        w.until("visible-pod")
        emu.call("POST", "/api/v1/namespaces/kube-system/pods", {"metadata": {"name": "sys-later"}})
        ok(hk.kubectl("-n", "t-all", "run", "after-sys", "--image=x"))
        w.until("after-sys")
        assert not any("sys-later" in x or "hidden-sys-pod" in x for x in w.seen)
    finally:
        w.stop()
    # the emulator does hold them: the test can fail
    names = [p["metadata"]["name"] for p in emu.call("GET", "/api/v1/pods")["items"]]
    assert "hidden-sys-pod" in names and "sys-later" in names


def test_deployment_delete_waits_for_approval(hk: KubeHoopy) -> None:
    from tests.integration.test_pg_approvals import admin, wait_pending

    make_ns(hk, "t-appr")
    ok(hk.kubectl("-n", "t-appr", "create", "deployment", "api", "--image=x"))
    p = Lines(hk, "-n", "t-appr", "delete", "deployment", "api")
    try:
        a = wait_pending(hk, "deployments t-appr/api")  # type: ignore[arg-type]
        assert a["rule"] == "deploy-deletes-need-sre"
        status, _ = admin(hk, "POST", f"/api/approvals/{a['id']}/approve", {"by": "sre-1"})  # type: ignore[arg-type]
        assert status == 200
        assert p.proc.wait(30) == 0
        assert "deleted" in "".join(p.lines.queue) + "".join(p.seen)
    finally:
        p.stop()
    r = hk.kubectl("-n", "t-appr", "get", "deploy", "api")
    assert "NotFound" in r.stderr


# ---- Secrets and masking ------------------------------------------------------------
def _leaks(text: str, value: str = SECRET_VALUE) -> bool:
    b64 = base64.b64encode(value.encode()).decode()
    return value in text or b64 in text


def test_secret_values_hidden_in_every_shape(hk: KubeHoopy, emu: Emu, tmp_path: Path) -> None:
    make_ns(hk, "t-sec")
    ok(
        hk.kubectl(
            "-n",
            "t-sec",
            "create",
            "secret",
            "generic",
            "db",
            f"--from-literal=password={SECRET_VALUE}",
        )
    )
    applied = tmp_path / "s.yaml"
    applied.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: applied\n"
        f"stringData:\n  password: {SECRET_VALUE}\n"
    )
    ok(hk.kubectl("-n", "t-sec", "apply", "--validate=false", "-f", str(applied)))
    outputs = []
    for args in (
        ["get", "secret", "db", "-o", "yaml"],
        ["get", "secret", "db", "-o", "json"],
        ["get", "secret", "db", "-o", "jsonpath={.data.password}"],
        ["get", "secrets", "-o", "yaml"],
        ["get", "secrets", "-A", "-o", "json"],
        ["get", "secret", "applied", "-o", "yaml"],
        ["get", "--raw", "/k8s/cluster/api/v1/namespaces/t-sec/secrets/db"],
        ["get", "--raw", "/k8s/cluster/api/v1/secrets"],
        ["describe", "secret", "db"],
        ["get", "secrets", "-o", "wide"],
        ["get", "secret", "db", "-o", "go-template={{.data.password}}"],
    ):
        out = ok(hk.kubectl("-n", "t-sec", *args))
        assert not _leaks(out), args
        outputs.append(out)
    assert "hoopy:masked" in outputs[0] or "aG9vcHk6bWFza2Vk" in outputs[0]
    w = Lines(hk, "-n", "t-sec", "get", "secrets", "-w", "-o", "json")
    try:
        w.until('"db"')
        ok(
            hk.kubectl(
                "-n",
                "t-sec",
                "create",
                "secret",
                "generic",
                "later",
                f"--from-literal=k={SECRET_VALUE}",
            )
        )
        w.until('"later"')
    finally:
        w.stop()
    assert not _leaks("".join(w.seen) + "".join(w.lines.queue))
    # The values are really there upstream, and mask_secrets: false shows them
    raw = emu.call("GET", "/api/v1/namespaces/t-sec/secrets/db")
    assert _leaks(json.dumps(raw))
    assert _leaks(
        ok(hk.kubectl("-n", "t-sec", "get", "secret", "db", "-o", "yaml", connector="cluster-raw"))
    )
    assert not _leaks(hk.recordings_text()) and not _leaks(hk.log_text())


def test_configmap_values_pass_detectors(hk: KubeHoopy) -> None:
    make_ns(hk, "t-cm")
    ok(
        hk.kubectl(
            "-n",
            "t-cm",
            "create",
            "configmap",
            "contacts",
            "--from-literal=owner=alice@example.com",
            "--from-literal=plain=hello",
        )
    )
    out = ok(hk.kubectl("-n", "t-cm", "get", "cm", "contacts", "-o", "yaml"))
    assert "alice@example.com" not in out and "hello" in out
    # a list's items come without their kind from kube-apiserver (and the emulator)
    out = ok(hk.kubectl("-n", "t-cm", "get", "cm", "-o", "yaml"))
    assert "alice@example.com" not in out and "hello" in out


# ---- credentials and impersonation -----------------------------------------------------
def test_cluster_credentials_stay_inside_and_impersonation(hk: KubeHoopy, emu: Emu) -> None:
    import http.client
    import ssl

    ctx = ssl.create_default_context(cafile=str(hk.ca))
    host, port = hk.addresses["kubernetes"].rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
    conn.request(
        "GET",
        "/k8s/cluster/api/v1/namespaces/default/pods?marker=forged",
        headers={
            "Authorization": f"Bearer {hk.token()}",
            "Impersonate-User": "system:admin",
            "Impersonate-Group": "system:masters",
        },
    )
    assert conn.getresponse().read()
    seen = [r for r in emu.requests() if "marker=forged" in r["path"]]
    assert seen and seen[-1]["impersonate_user"] == "" and seen[-1]["impersonate_group"] == []
    assert seen[-1]["authorization"] == f"Bearer {emu.token}"  # hoopy's own credential
    ok(hk.kubectl("get", "pods", "-n", "default", "-l", "marker=imp", connector="cluster-imp"))
    imp = [r for r in emu.requests() if "marker%3Dimp" in r["path"] or "marker=imp" in r["path"]]
    assert imp[-1]["impersonate_user"] == "agent-1" and imp[-1]["impersonate_group"] == ["agents"]
    for text in (hk.log_text(), hk.recordings_text()):
        assert emu.token not in text


# ---- hoopy kubeconfig / hoopy credential ---------------------------------------------------
def test_kubeconfig_with_exec_credential_plugin(hk: KubeHoopy, tmp_path: Path) -> None:
    import sys

    r = hk.cli(
        "kubeconfig",
        "cluster",
        "--source",
        "dev:plugin-agent",
        "--server",
        hk.server,
        "--exec-command",
        f"{sys.executable} -m hoopy.cli",
    )
    assert r.returncode == 0, r.stderr
    assert "token" not in r.stdout.split("users:")[1].split("exec:")[0]  # no static token
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(r.stdout)
    env = {**os.environ, "KUBECONFIG": str(cfg), "KUBECACHEDIR": str(tmp_path / "cache")}
    got = subprocess.run(
        [KUBECTL, "get", "namespaces", "-o", "name"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert got.returncode == 0, got.stderr
    assert "namespace/default" in got.stdout
    listed = hk.cli("sessions", "list", "--subject", "plugin-agent").stdout
    assert "kubernetes" in listed
    # a file source: the token file is read at each use
    token_file = tmp_path / "token"
    token_file.write_text(hk.token(sub="file-agent"))
    cred = hk.cli("credential", "--source", f"file:{token_file}")
    doc = json.loads(cred.stdout)
    assert doc["kind"] == "ExecCredential" and doc["status"]["token"] == token_file.read_text()
    assert doc["status"]["expirationTimestamp"].endswith("Z")


@pytest.mark.parametrize(
    "argv",
    [
        ["sh", "-c", "$(echo rm) /tmp/x"],
        ["sh", "-c", "echo cm0gL3RtcC94 | base64 -d | sh"],
        ["python3", "-c", "import os; os.remove('/tmp/x')"],
        ["sh"],  # an interactive shell: what it runs is typed later
        ["bash", "-i"],
    ],
)
def test_exec_opaque_commands_refused(hk: KubeHoopy, argv: list[str]) -> None:
    ns = f"t-opq-{zlib.crc32(repr(argv).encode()) % 100000}"
    make_ns(hk, ns)
    ok(hk.kubectl("-n", ns, "run", "victim", "--image=x"))
    r = hk.kubectl("-n", ns, "exec", "victim", "--", *argv)
    assert r.returncode != 0 and "Forbidden" in r.stderr, r.stderr
    assert "shell_" in r.stderr and "opaque: true" in r.stderr, r.stderr


def test_cp_is_exec_of_tar(hk: KubeHoopy, tmp_path: Path) -> None:
    make_ns(hk, "t-cp")
    ok(hk.kubectl("-n", "t-cp", "run", "files", "--image=x"))
    src = tmp_path / "src.txt"
    src.write_text("copied through hoopy\n")
    remote = tmp_path / "remote.txt"  # the emulator's "container" is this host
    ok(hk.kubectl("cp", str(src), f"t-cp/files:{remote}"))
    assert remote.read_text() == "copied through hoopy\n"
    back = tmp_path / "back.txt"
    ok(hk.kubectl("cp", f"t-cp/files:{remote}", str(back)))
    assert back.read_text() == "copied through hoopy\n"


def test_request_abandoned_while_waiting_is_not_run(hk: KubeHoopy, emu: Emu) -> None:
    import time

    from tests.integration.test_pg_approvals import admin, wait_pending

    make_ns(hk, "t-gone")
    ok(hk.kubectl("-n", "t-gone", "create", "deployment", "keepme", "--image=x"))
    token = hk.token(sub="impatient-agent")
    r = hk.kubectl(
        "-n", "t-gone", "delete", "deployment", "keepme", "--request-timeout=2s", token=token
    )
    assert r.returncode != 0  # kubectl gave up waiting
    a = wait_pending(hk, "deployments t-gone/keepme")  # type: ignore[arg-type]
    status, _ = admin(hk, "POST", f"/api/approvals/{a['id']}/approve", {"by": "sre-1"})  # type: ignore[arg-type]
    assert status == 200
    sid = hk.cli("sessions", "list", "--subject", "impatient-agent").stdout.split()[0]
    deadline = time.monotonic() + 30
    while "abandoned" not in hk.cli("sessions", "show", sid).stdout:  # hoopy has handled it
        assert time.monotonic() < deadline, "the approved request was never handled"
    assert (
        emu.call("GET", "/apis/apps/v1/namespaces/t-gone/deployments/keepme")["metadata"]["name"]
        == "keepme"
    )


def test_an_exec_stream_ends_when_its_token_expires(hk: KubeHoopy) -> None:
    """A stream opened with a token lives no longer than the token: kubectl is told so
    on the error channel and the recording says why."""
    make_ns(hk, "t-expiry")
    ok(hk.kubectl("-n", "t-expiry", "run", "box", "--image=x"))
    started = time.monotonic()
    r = hk.kubectl(
        "-n", "t-expiry", "exec", "box", "--", "sh", "-c", "echo begun; sleep 40; echo late",
        token=hk.token(ttl=3),
        timeout=60,
    )  # fmt: skip
    assert time.monotonic() - started < 30  # ended by hoopy, not by the command
    assert r.returncode != 0 and "begun" in r.stdout and "late" not in r.stdout
    assert "token expired" in r.stderr
    deadline = time.monotonic() + 20
    while "token expired: the stream ends" not in hk.recordings_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
