"""Shell-classifier bypasses found in the attack review, through the real OpenSSH client,
hoopy and a real sshd: most spellings deleted the marker file before their fix (hoopy
saw only allowed programs; the others were refused by this policy's allow list only,
and bypassed a deny-list policy: tests/test_shell_attacks.py); now each is denied and
the marker stays.  And the agent cannot
pick a non-UTF-8 locale for the backend's shell (which would read the line's bytes
differently from hoopy)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from tests.integration.sshd import Sshd, SshHoopy, start_ssh_hoopy, stop
from tests.integration.test_ssh_shell import Term

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
    "BASH_CMDS[id]=/usr/bin/rm; id -f {m}",  # bash's hash table: `id` runs rm
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


# A deny-list for PTY shells: every line hoopy can read runs, but not rm.
DENY_LIST = """\
mode: enforce
rules:
  - name: shells
    effect: allow
    match: {groups: [shellers], ssh: {shell: true}}
  - name: anything-visible
    effect: allow
    match: {groups: [shellers], ssh: {commands: ["*"]}}
"""


@pytest.fixture(scope="module")
def deny_list(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHoopy]:
    h = start_ssh_hoopy(tmp_path_factory.mktemp("hoopy-denylist"), sshd, {"dl": DENY_LIST})
    try:
        yield h
    finally:
        stop(h.proc)


async def test_a_meta_key_in_a_c_locale_cannot_recall_rm(deny_list: SshHoopy, sshd: Sshd) -> None:
    """In a C locale the backend's readline reads "®" (C2 AE) as M-b M-. : yank-last-arg
    puts the last word of the previous line ("rm") where hoopy saw "®"."""
    marker = _marker(sshd, "marker-meta")
    t = await Term.open(deny_list, ("agents", "shellers"), "web-1", "-o", "SetEnv=LC_ALL=C")
    await t.type(b"echo r''m\r")  # its last word, r''m, is in the backend's history
    await t.expect(rb"[\r\n]rm\r\n")
    await t.type(f"\u00ae -f {marker}\r".encode())
    await t.expect(rb"hoopy: denied")
    await t.type(b"echo aft''er\r")
    await t.expect(rb"[\r\n]after\r\n")
    await t.type(b"exit 0\r")
    assert await t.finish() == 0
    assert marker.exists(), "the Meta key line reached the backend"


async def test_a_pager_on_a_terminal_is_opaque(deny_list: SshHoopy, sshd: Sshd) -> None:
    """On a terminal less runs `!cmd`, and `v` opens an editor with its own `:!`: the
    keys typed there reach it as lines hoopy reads as shell (`:! rm …` is a program
    named `:!` to hoopy).  So a pager or editor is refused on a terminal, in a shell
    session and as an `ssh -t` command; without one (or with --no-pager) it runs."""
    t = await Term.open(deny_list, ("agents", "shellers"))
    await t.type(b"less /etc/hostname\r")
    await t.expect(rb"hoopy: denied: shell_code")
    await t.type(b"git --no-pager log -1 --oneline /nonexistent 2>/dev/null; echo gi''t-ok\r")
    await t.expect(rb"[\r\n]git-ok\r\n")
    await t.type(b"exit 0\r")
    assert await t.finish() == 0
    token = deny_list.token("shell-agent", ("agents", "shellers"))
    r = deny_list.ssh("less /etc/hostname", "-tt", token=token)
    assert r.returncode == 126 and "denied: shell_code" in r.stdout + r.stderr, r
    r = deny_list.ssh("less /etc/hostname", token=token)  # no terminal: less only copies the file
    assert r.returncode == 0, r.stderr
