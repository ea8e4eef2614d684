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
import random
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from hoopy.shell import read_line
from tests.test_policy_shell import ALLOWED_LINES, DENIED_LINES

REAL = ("env", "nice", "timeout", "nohup", "setsid", "xargs", "find", "flock", "chroot")
SHELLS = {"bash": "bash", "sh": "bash", "dash": "dash"}
# One write per record (O_APPEND): background commands must not interleave records.
STUB = (
    "#!/realbin/dash\n"
    'r="${0##*/}"; for a; do r="$r\037$a"; done; printf "%s\036" "$r" >>"$HOOPY_LOG"\n'
)
RUNNER = r"""
command_not_found_handle() {
    local r=$1 a; shift
    for a; do r+=$'\037'$a; done
    printf '%s\036' "$r" >>"$HOOPY_LOG"; return 127
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
    "reboot&",
    "reboot;",
    "reboot|cat",
    "{ reboot;}",
    "x=1 reboot",
    "'' reboot",
    "rebo\\ot now",
    "reboot #comment",
    "reboot#notacomment",
    "#!/bin/sh\nreboot",
    "[[ -n x ]] && reboot",
    "case x in (x) reboot;; esac",
    "case x in x|y) reboot;; esac",
    ": $(reboot)",
    ': "${x:=$(reboot)}"',
    ": ${x[$(reboot)]}",
    "echo $[$(reboot)]",
    "cat <<EOF | cat\n$(reboot)\nEOF",
    "cat << EOF\n$(reboot)\nEOF",
    'cat <<"EOF"\n$(reboot)\nEOF',
    "cat <<EOF\n\\$(reboot)\nEOF",
    "cat <<EOF\n`reboot`\nEOF",
    "echo \\$(reboot)",
    "reboot<<<$(id)",
    "exec 3>&1; reboot",
    "a=([0]=$(reboot))",
    "declare x=$(reboot)",
    "readonly x=$(reboot)",
    "typeset -i x=$(reboot)",
    "let x=$(reboot)",
    "for x in $(reboot); do :; done",
    "for ((i=$(reboot);i<1;i++)); do :; done",
    "while [ $(reboot) ]; do :; done",
    "test $(reboot)",
    "echo ${#x[$(reboot)]}",
    "echo ${x/$(reboot)/}",
    "echo ${x:$(reboot)}",
    "cd $(reboot)",
    "reboot 2>&1 >/dev/null",
    "reboot &>/dev/null",
    "reboot &>>/tmp/f",
    "reboot >|/tmp/f",
    "reboot <>/tmp/f",
    "echo x |& reboot",
    "reboot & wait",
    "(( x = $(reboot) ))",
    "function f() { reboot; }; f",
    "eval \\$\\(reboot\\)",
    "eval 'r'eboot",
    "sh -c reboot",
    "sh -c 'r\"e\"boot'",
    'sh -c "\\$(reboot)"',
    'bash -c \'eval "re""boot"\'',
    "dash -c 'reboot'",
    "env -- reboot",
    "env -i -- reboot",
    "env -u X -C /tmp reboot",
    "env A=1 B=2 -- reboot",
    "nice -- reboot",
    "nice -n5 -- reboot",
    "nice -n 5 -- reboot",
    "nohup -- reboot",
    "timeout -- 5 reboot",
    "timeout -k 1 -s TERM 5 reboot",
    "timeout --kill-after=1 5 reboot",
    "setsid -w reboot",
    "setsid -- reboot",
    "flock -x /tmp/l reboot",
    "flock /tmp/l -c reboot",
    "flock -w 1 /tmp/l -- reboot",
    "chroot / reboot",
    "chroot -- / reboot",
    "chroot --skip-chdir / reboot",
    "xargs -n 1 -P 2 reboot",
    "xargs -E x reboot",
    "xargs -d '\\n' reboot",
    "xargs --max-args=1 reboot",
    "xargs -r reboot",
    "xargs -0 -- reboot",
    "xargs -a /dev/null reboot",
    "xargs -L1 reboot",
    "find /work -maxdepth 0 -exec reboot \\;",
    "find /work -maxdepth 0 -execdir reboot {} +",
    "find /work -maxdepth 0 -name work -exec reboot x \\; -exec id \\;",
    "find -H /work -maxdepth 0 -exec reboot ';'",
]


# Random lines from a small grammar of spellings, wrappers and compound forms.
SPELLINGS = [
    "reboot", "\\reboot", "re\\boot", '"reboot"', "'reboot'", "r''eboot", "$'reboot'",
    "$'\\x72eboot'", '"re"boot', "'re'\"boot\"", "/usr/bin/reboot", "re\\\nboot",
    '"re"\\boot', "/bin//reboot", "id", "ls", "'i'd", '$"reboot"', "re$'b'oot",
    "\\r\\e\\b\\o\\o\\t", "r\\eboot", "/usr/bin/./reboot",
]  # fmt: skip
WRAPPERS = [
    "", "", "", "sudo ", "env ", "env -i A=1 ", "env -- ", "nice -n 5 ", "nice ", "timeout 5 ",
    "timeout -s KILL 3 ", "nohup ", "command ", "exec ", "time ", "setsid ", "chroot / ",
    "flock /tmp/l ", "xargs ", "xargs -r -0 ", "A=1 ", ">/tmp/o ", "2>&1 ", "sudo -u root ",
    "env -u X ", "nice -5 ", "timeout -k 1 2 ", "A=1 B=$HOME ", "</dev/null ", "time -p ",
]  # fmt: skip
ARGS = [
    "", " -f", " 'a b'", ' "$HOME"', " x\\ y", " >/dev/null", " 2>/tmp/e", " <<<x", " ;",
    " \\\n-f", " #c", " $'a\\tb'", " {a,b}", " *", " 'it'\\''s'", " 0<&-", " >&2 z",
]  # fmt: skip


def _simple(rng: random.Random) -> str:
    word = rng.choice(SPELLINGS)
    return rng.choice(WRAPPERS) + word + rng.choice(ARGS).rstrip(" ;")


def _compound(rng: random.Random, depth: int = 0) -> str:
    if depth > 2 or rng.random() < 0.4:
        return _simple(rng)
    a, b = _compound(rng, depth + 1), _compound(rng, depth + 1)
    forms = [
        f"{a}; {b}", f"{a} && {b}", f"{a} || {b}", f"{a} | {b}", f"{a} & {b}", f"{a}\n{b}",
        f"( {a} )", f"{{ {a}; }}", f"echo $({a})", f"echo `{a}`", f"cat <({a})",
        f"if {a}; then {b}; fi", f"for i in 1; do {a}; done", f"case x in x) {a};; esac",
        f"sh -c {shlex.quote(a)}", f"bash -c {shlex.quote(a + '; ' + b)}", f"eval {shlex.quote(a)}",
        f"x=$({a}); {b}", f"f() {{ {a}; }}; f", f"! {a}",
        f"{a} <<EOF\nbody\nEOF\n{b}", f"cat <<EOF\n$({a})\nEOF", f"cat <<EOF\n`{a}`\nEOF",
        f"bash <<EOF\n{a}\nEOF", f"bash <<< {shlex.quote(a)}", f"while true; do {a}; break; done",
        f"time {a}", f"[[ -n x ]] && {a}", f"(( 1 )) && {a}", f"function g {{ {a}; }}; g",
        f"{a} # {b}", f'echo "$({a})"', f'x="`{a}`"', f"{{ {a}; }} >/dev/null 2>&1",
        f"coproc {a}", f"{a} | while read l; do {b}; done", f"echo $(( $({a}) ))",
        f"case x in (x|y) {a};; *) {b};; esac", f"for ((i=0;i<1;i++)); do {a}; done",
        f"{a} \\\n; {b}", f"until false; do {a}; break; done", f"exec 3>&1; {a}",
    ]  # fmt: skip
    return rng.choice(forms)


GENERATED = [_compound(random.Random(seed)) for seed in range(250)]


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
    names |= {"rm", "reboot", "shutdown", "ls", "id", "sh", "bash", "dash", "cat", "sudo"}
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
    every = DENIED_LINES + ALLOWED_LINES + EXTRA_LINES + GENERATED
    lines = list(dict.fromkeys(line for line in every if "\0" not in line))
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


def test_generated_lines_run_what_they_should(ran: dict[str, list[tuple[str, ...]]]) -> None:
    # the generator's lines do run programs, and most are fully visible to hoopy
    ran_any = [line for line in GENERATED if ran[line]]
    visible = [line for line in GENERATED if not read_line(line, interactive=False).opaque]
    assert len(ran_any) > 150 and len(visible) > 100


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
