"""Shell-classifier bypasses found in the attack review, through the real OpenSSH client,
hoopy and a real sshd: most spellings deleted the marker file before their fix (hoopy
saw only allowed programs; the others were refused by this policy's allow list only,
and bypassed a deny-list policy: tests/test_shell_attacks.py); now each is denied and
the marker stays.  And the agent cannot
pick a non-UTF-8 locale for the backend's shell (which would read the line's bytes
differently from hoopy)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest

from tests.integration.sshd import Sshd, SshHoopy

pytest_plugins = ["tests.integration.sshd"]

BYPASSES = [
    "echo ${{x:-`rm -f {m}`}}",  # backquotes tree-sitter leaves as text in ${…}
    "echo \"${{x:-'$(rm -f {m})'}}\"",  # '…' is no quoting in a double-quoted ${…}
    "echo `echo \\`rm -f {m}\\``",  # bash unescapes \\` in `…` before reading it
    "env 'BASH_FUNC_ls%%=() {{ rm -f {m}; }}' bash -c ls",  # an exported function
    "unset PATH; : ${{PATH:=/usr/bin}}; echo ${{x?`rm -f {m}`}}",
    "cat <<EOF\n\t$(rm -f {m})\nEOF",  # tree-sitter reads no $(…) after a tab
    "sh -c 'true'\\ ';rm -f {m}'",  # an escaped blank tree-sitter drops
    "x='5 rm -f {m}'; nice -n $x true",  # word splitting in an option's value
    'echo "$\\\n(rm -f {m})"',  # $\<newline>( in double quotes
]


def _marker(sshd: Sshd, name: str) -> Path:
    path = sshd.folder / name
    path.write_text("still here\n")
    return path


@pytest.mark.parametrize("spelling", BYPASSES)
def test_bypass_is_denied_and_never_reaches_the_backend(
    ssh_hoopy: SshHoopy, sshd: Sshd, spelling: str
) -> None:
    marker = _marker(sshd, "marker-attack")
    command = spelling.format(m=marker)
    r = ssh_hoopy.ssh(command)
    assert r.returncode == 126, (command, r.stdout, r.stderr)
    assert "hoopy: denied" in r.stderr, r.stderr
    assert marker.exists(), f"{command!r} reached the backend"


def test_a_non_utf8_locale_is_not_passed_to_the_backend(ssh_hoopy: SshHoopy) -> None:
    known = asyncssh.import_known_hosts(ssh_hoopy.known_hosts().read_text())

    async def main() -> dict[str, str]:
        async with asyncssh.connect(
            "127.0.0.1",
            ssh_hoopy.ssh_port,
            username="web-1",
            password=ssh_hoopy.token(),
            known_hosts=known,
            client_keys=None,
            agent_path=None,
            config=None,
            preferred_auth="password",
        ) as conn:
            env = {"LANG": "en_US.UTF-8", "LC_ALL": "zh_TW.BIG5", "LC_CTYPE": "ja_JP.SJIS"}
            r = await conn.run("env", env={**env, "LC_TIME": "C", "LC_NUMERIC": "zh_CN"})
            out = str(r.stdout)
            return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    env = asyncio.run(main())
    assert env.get("LANG") == "en_US.UTF-8" and env.get("LC_TIME") == "C"
    assert "LC_ALL" not in env and "LC_CTYPE" not in env and "LC_NUMERIC" not in env
