"""Differential test against real bash: every program bash actually runs for a line
must be one hoopy.shell saw (or hoopy must call the line opaque).

Each line runs under real bash in a throwaway sandbox: a user and mount namespace
(`unshare -rm`) chrooted into a temp folder whose /usr/bin holds logging stubs, copies
of real wrappers (env, nice, timeout, xargs, find, chroot …) and real bash/dash, with
the host's libraries mounted read-only.  A stub, and bash's command_not_found_handle,
log the argv of whatever bash runs; nothing outside the temp folder can be written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hoopy.shell import read_line
from tests.test_policy_shell import ALLOWED_LINES, DENIED_LINES

REAL = ("env", "nice", "timeout", "nohup", "setsid", "xargs", "find", "flock", "chroot")
SHELLS = {"bash": "bash", "sh": "bash", "dash": "dash"}
STUB = '#!/realbin/dash\nprintf "%s" "${0##*/}" >>"$HOOPY_LOG"\nfor a; do printf "\\037%s" "$a" >>"$HOOPY_LOG"; done\nprintf "\\036" >>"$HOOPY_LOG"\n'  # noqa: E501
RUNNER = r"""
command_not_found_handle() {
    printf '%s' "$1" >>"$HOOPY_LOG"; shift
    for a; do printf '\037%s' "$a" >>"$HOOPY_LOG"; done
    printf '\036' >>"$HOOPY_LOG"; return 127
}
export -f command_not_found_handle
export PATH=/usr/bin
cd /work
for f in /lines/*; do
    n=${f##*/}
    export HOOPY_LOG=/logs/$n
    : >"$HOOPY_LOG"
    /realbin/timeout -s KILL 3 /realbin/bash --norc --noprofile -c "$(</lines/$n)" \
        </dev/null >/dev/null 2>&1
done
"""
# Lines whose programs depend on files or input this sandbox does not have.
EXTRA_LINES = [
    "echo a b | xargs -n1 rm",
    "find /work -name x -exec rm {} \\;",
    "printf 'x\\n' | while read -r l; do rm \"$l\"; done",
    'set -- rm -rf /; "$@"',
    "IFS=,; x=rm,-rf; $x",
    'a=(rm -rf /); "${a[@]}"',
    "cmd=rm; ${cmd} x",
    "x=$'\\x72\\x6d'; $x y",
    "declare -A m=([k]=rm); ${m[k]} x",
    "r=$(printf rm); $r x",
    "function rm { reboot; }; rm x",
    "ls() { reboot; }; ls",
    "shopt -s expand_aliases; alias r=reboot; eval r",
    "time -p reboot",
    "! reboot",
    "coproc reboot",
    "exec reboot",
    "exec -- reboot",
    "{ reboot; } 2>/dev/null",
    "reboot 0<&-",
    "reboot <&-",
    "echo x | reboot",
    ">x reboot",
    "reboot >x y z",
    "reboot <<<x y",
    "reboot <<EOF x\nbody\nEOF",
    "reb\\\noot now",
    're""boot',
    "re''boot",
    "$'\\162eboot'",
    "\"re\"'bo'\\ot",
    '"re"{\\boot,}',
    "'r'\\e\\boot",
    '""\\r\\m x',
]


def _sandbox_works() -> bool:
    if not shutil.which("unshare") or not shutil.which("dash"):
        return False
    r = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=10)
    return r.returncode == 0


pytestmark = pytest.mark.skipif(not _sandbox_works(), reason="needs unshare -rm and dash")


def _build(root: Path, lines: list[str]) -> None:
    for d in ("usr/bin", "usr/lib", "usr/lib64", "realbin", "lines", "logs", "tmp", "work",
              "dev", "etc"):  # fmt: skip
        (root / d).mkdir(parents=True, exist_ok=True)
    links = {"bin": "usr/bin", "sbin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64",
             "usr/sbin": "bin", "usr/local": ".."}  # fmt: skip
    for link, target in links.items():
        (root / link).symlink_to(target)
    (root / "dev/null").touch()
    for name in ("bash", "dash", "timeout", *REAL):
        shutil.copy2(shutil.which(name) or "", root / "realbin" / name)
    names: set[str] = set()
    for line in lines:
        names |= {c.program for c in read_line(line).commands}
    names |= {"rm", "reboot", "shutdown", "ls", "id", "sh", "bash", "dash"}
    for name in names:
        if not name or "/" in name or name.startswith("-") or name in (".", ".."):
            continue
        path = root / "usr/bin" / name
        if name in SHELLS:
            path.symlink_to("/realbin/" + SHELLS[name])
        elif name in REAL:
            path.symlink_to("/realbin/" + name)
        else:
            path.write_text(STUB)
            path.chmod(0o755)
    for i, line in enumerate(lines):
        (root / "lines" / f"{i:04d}").write_text(line)
    (root / "runner.sh").write_text(RUNNER)


def _run(root: Path) -> None:
    mounts = [f"mount --rbind /dev/null {root}/dev/null"]
    for d in ("usr/lib", "usr/lib64"):
        if os.path.isdir("/" + d) and not os.path.islink("/" + d):
            mounts.append(f"mount --rbind /{d} {root}/{d} && mount -o remount,bind,ro {root}/{d}")
    script = " && ".join(mounts) + f" && exec chroot {root} /realbin/bash --norc /runner.sh"
    subprocess.run(["unshare", "-rm", "--", "/bin/sh", "-c", script], timeout=600, check=True)


def _logged(text: str) -> list[tuple[str, ...]]:
    return [tuple(rec.split("\x1f")) for rec in text.split("\x1e") if rec]


def _mentions(seen: tuple[str, ...], argv: tuple[str, ...]) -> bool:
    """hoopy's argv covers what bash ran: same program, and each argument the same
    unless hoopy showed it as source text (an expansion) or it came from input."""
    if not seen or seen[0] != argv[0]:
        return False
    for mine, real in zip(seen[1:], argv[1:], strict=False):
        if mine != real and not any(ch in mine for ch in "$`*?{~[("):
            return False
    return True


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[str, ...]]]:
    root = tmp_path_factory.mktemp("sandbox")
    lines = [line for line in DENIED_LINES + ALLOWED_LINES + EXTRA_LINES if "\0" not in line]
    _build(root, lines)
    _run(root)
    return {
        line: _logged((root / "logs" / f"{i:04d}").read_text(errors="replace"))
        for i, line in enumerate(lines)
    }


def test_the_sandbox_logs_what_bash_runs(ran: dict[str, list[tuple[str, ...]]]) -> None:
    assert ("rm", "-rf", "/") in ran["/bin/rm -rf /"]
    assert ("rm", "-rf", "/") in ran["sudo nice -n 1 timeout 9 env A=1 nohup rm -rf /"] or (
        ran["sudo nice -n 1 timeout 9 env A=1 nohup rm -rf /"][0][0] == "sudo"
    )
    assert ("rm", "-rf", "/") in ran["bash -c 'bash -c \"eval rm -rf /\"'"]
    assert ran["echo 'rm -rf /'"] == []


def test_every_program_bash_runs_is_seen_or_the_line_is_opaque(
    ran: dict[str, list[tuple[str, ...]]],
) -> None:
    missed = []
    for line, runs in ran.items():
        reading = read_line(line, interactive=False)
        if reading.opaque:
            continue
        seen = [c.argv for c in reading.commands]
        for argv in runs:
            if not any(_mentions(s, argv) for s in seen):
                missed.append((line, argv, seen))
    assert missed == [], "\n".join(map(repr, missed))
