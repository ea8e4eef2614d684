"""Credentials written into a `kubectl exec` command line run as written in the pod but
never reach the session's event log, the state store or hoopy's log (shellsecrets.py),
with real kubectl through hoopy to the Kubernetes API emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kubefixture import Emu, KubeHoopy, start_hoopy

POLICY = """
rules:
  - name: agents
    effect: allow
    match: {groups: [agents], connectors: ["cluster*"]}
  - name: no-rm-in-pods
    effect: deny
    reason: no deleting files inside pods
    match: {kubernetes: {resources: ["pods/exec"], commands: ["rm *", "rm"]}}
"""

pytest_plugins = ["tests.kubefixture"]


@pytest.fixture(scope="module")
def hk(emu: Emu, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeHoopy]:
    h = start_hoopy(tmp_path_factory.mktemp("kube-secrets"), emu, POLICY)
    try:
        yield h
    finally:
        h.stop()


def _kept(h: KubeHoopy) -> str:
    files = [p for p in Path(h.folder).rglob("*") if p.is_file() and p.suffix != ".cast"]
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in files)


def _commands(h: KubeHoopy) -> list[str]:
    out = []
    for log in (Path(h.folder) / "recordings").rglob("*.jsonl"):
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event["type"] == "command":
                out.append(event["text"])
    return out


def test_exec_credentials_run_as_written_and_are_recorded_hidden(hk: KubeHoopy) -> None:
    secret = "Kubetok-5v9w"
    assert hk.kubectl("create", "namespace", "t-sec").returncode == 0
    assert hk.kubectl("-n", "t-sec", "run", "box", "--image=x").returncode == 0
    r = hk.kubectl(
        "-n", "t-sec", "exec", "box", "--",
        "sh", "-c", f'API_TOKEN={secret}; test "$API_TOKEN" = {secret} && echo kube-secret-ok',
    )  # fmt: skip
    assert r.returncode == 0 and "kube-secret-ok" in r.stdout, r.stderr
    r = hk.kubectl("-n", "t-sec", "exec", "box", "--", "rm", "-f", f"--password={secret}x")
    assert r.returncode != 0 and "no-rm-in-pods" in r.stderr
    texts = [t for t in _commands(hk) if "API_TOKEN" in t or "--password" in t]
    assert len(texts) >= 2 and all("****" in t for t in texts), texts
    assert secret not in _kept(hk) + hk.log_text()
