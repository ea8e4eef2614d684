"""Shell-classifier bypasses through real kubectl exec and the Kubernetes emulator, with
a deny-list policy (everything allowed but rm in pods): before their fixes each argv
here was let through to the cluster although it runs rm; now each is Forbidden."""

from __future__ import annotations

import subprocess
import zlib
from collections.abc import Iterator

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
    match: {kubernetes: {resources: ["pods/exec", "pods/attach"], commands: ["rm *", "rm"]}}
"""

pytest_plugins = ["tests.kubefixture"]


@pytest.fixture(scope="module")
def hk(emu: Emu, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeHoopy]:
    h = start_hoopy(tmp_path_factory.mktemp("hoopy-kube-shell"), emu, POLICY)
    try:
        yield h
    finally:
        h.stop()


def _ok(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["sh", "-c", "echo ${x:-`rm -rf /tmp/x`}"],
        ["sh", "-c", "sh -c 'true'\\ ';rm -rf /tmp/x'"],
        ["sh", "-c", "cat <<EOF\n\t$(rm -rf /tmp/x)\nEOF"],
        ["sh", "-c", "x='5 rm -rf /tmp/x'; nice -n $x true"],
        ["env", "BASH_FUNC_ls%%=() { rm -rf x; }", "bash", "-c", "ls"],
        ["toybox", "rm", "-rf", "/tmp/x"],
        ["coreutils", "--coreutils-prog=rm", "-rf", "/tmp/x"],
        ["env", "-S", "rm\\_-rf\\_x"],
        ["sudo", "-s", "rm$IFS-rf$IFS''"],
    ],
)
def test_exec_bypass_is_forbidden(hk: KubeHoopy, argv: list[str]) -> None:
    ns = f"t-atk-{zlib.crc32(repr(argv).encode()) % 100000}"
    _ok(hk.kubectl("create", "namespace", ns))
    _ok(hk.kubectl("-n", ns, "run", "victim", "--image=x"))
    r = hk.kubectl("-n", ns, "exec", "victim", "--", *argv)
    assert r.returncode != 0, (argv, r.stdout)
    assert "Forbidden" in r.stderr, r.stderr
