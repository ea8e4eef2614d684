"""`hoopy demo` on embedded defaults: its printed psql command works; Ctrl-C cleans up."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def running_demo() -> Iterator[tuple[str, Path]]:
    """`hoopy demo` up to its banner (the text, its temp folder); Ctrl-C on leaving, which
    must end it cleanly and remove the folder."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hoopy.cli", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    folder: Path | None = None
    try:
        for line in iter(proc.stdout.readline, ""):
            lines.append(line)
            if "HOOPY_ADMIN_TOKEN=" in line and "(" in line:
                break
        text = "".join(lines)
        found = re.search(r"removes (\S+)\)", text)
        assert found, text
        folder = Path(found.group(1))
        yield text, folder
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert folder is not None and not folder.exists()


def test_demo_prints_working_commands_and_cleans_up() -> None:
    with running_demo() as (text, folder):
        m = re.search(r"^\s*PGPASSWORD=(\S+) psql (\".*\")$", text, re.M)
        assert m, text
        assert folder.is_dir()
        conninfo = shlex.split(m.group(2))[0]
        env = {**os.environ, "PGPASSWORD": m.group(1)}
        r = subprocess.run(
            ["psql", conninfo, "-At", "-c", "select count(*) from customers"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "4"
        r = subprocess.run(
            ["psql", conninfo, "-c", "drop table orders"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert "no-schema-changes" in r.stderr


def test_demo_kubernetes_target_works_with_real_kubectl(tmp_path: Path) -> None:
    """The printed kubectl line (hoopy kubeconfig's output, the dev issuer's credential
    plugin) reaches the built-in emulator through hoopy: a get works, a Secret's value
    and a ConfigMap's e-mail address are masked, a delete and an exec are refused."""
    from hoopy.kubetarget import SECRET_VALUE, SUPPORT_EMAIL

    env = {**os.environ, "KUBECACHEDIR": str(tmp_path / "kcache")}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, env=env, timeout=60)

    with running_demo() as (text, _folder):
        m = re.search(r"^\s*(kubectl --kubeconfig \S+) get pods -A$", text, re.M)
        assert m, text
        base = shlex.split(m.group(1))
        r = kubectl("get", "pods", "-A")
        assert r.returncode == 0, r.stderr
        assert "worker-0" in r.stdout and "coredns" in r.stdout, r.stdout
        r = kubectl("get", "secret", "-n", "shop", "db-credentials", "-o", "json")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)["data"]
        masked = base64.b64encode(b"hoopy:masked").decode()
        assert data == {"username": masked, "password": masked}
        assert SECRET_VALUE not in r.stdout
        assert base64.b64encode(SECRET_VALUE.encode()).decode() not in r.stdout
        r = kubectl("get", "configmap", "-n", "shop", "app-config", "-o", "yaml")
        assert r.returncode == 0, r.stderr
        assert "LOG_LEVEL: info" in r.stdout and SUPPORT_EMAIL not in r.stdout, r.stdout
        r = kubectl("delete", "pod", "-n", "shop", "worker-0")
        assert r.returncode != 0
        assert "Forbidden" in r.stderr and "no-deleting-in-the-cluster" in r.stderr, r.stderr
        r = kubectl("exec", "-n", "shop", "worker-0", "--", "id")
        assert r.returncode != 0 and "no-exec-in-the-demo-cluster" in r.stderr, r.stderr
        r = kubectl("get", "pod", "-n", "shop", "worker-0", "-o", "name")
        assert r.returncode == 0 and r.stdout.strip() == "pod/worker-0", r.stderr
