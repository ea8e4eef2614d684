"""The SFTP bridge (hoopy/protocols/ssh/sftp.py) between the real `sftp` client or
asyncssh's SFTP client and a real OpenSSH sshd, with every operation checked by the
policy engine: path globs, symlinks and `..` that would leave an allowed tree, deny
rules on remove/rename, byte counts recorded per file."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from hoopy.config import check_config
from hoopy.errors import CommandDenied
from hoopy.policy import Command, Identity, Match, PolicySet, Rule, SshMatch, decide
from hoopy.protocols.ssh.sftp import SftpBridge
from tests.integration.sshd import Sshd

pytest_plugins = ["tests.integration.sshd"]

WRITE_OPS = ("read", "write", "mkdir", "rmdir", "remove", "rename", "setstat", "symlink")
IDENTITIES = {
    "agent": Identity("agent-7", frozenset({"agents"})),
    "execonly": Identity("exec-bot", frozenset({"exec"})),
}


def policies(d: str) -> tuple[PolicySet, ...]:
    def rule(name: str, effect: Any, m: Match, reason: str = "") -> Rule:
        return Rule(name, effect, m, reason=reason)

    return (
        PolicySet(
            "sftp",
            (
                rule(
                    "read-pub",
                    "allow",
                    Match(
                        groups=("agents",),
                        ssh=SshMatch(sftp=("read", "stat", "list"), paths=(d, f"{d}/pub*")),
                    ),
                ),
                rule(
                    "write-uploads",
                    "allow",
                    Match(
                        groups=("agents",),
                        ssh=SshMatch(
                            sftp=WRITE_OPS,
                            paths=(f"{d}/pub/uploads/*",),
                        ),
                    ),
                ),
                rule(
                    "keep-files",
                    "deny",
                    Match(ssh=SshMatch(sftp=("remove", "rename"), paths=("*/keep*",))),
                    "keep files stay",
                ),
                rule("exec-anything", "allow", Match(groups=("exec",), ssh=SshMatch(("*",)))),
            ),
        ),
    )


@dataclass
class Bridge:
    port: int
    data: Path
    commands: list[Command] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    recorded: asyncio.Event = field(default_factory=asyncio.Event)
    fail_checks: bool = False
    waiting: asyncio.Event = field(default_factory=asyncio.Event)
    approved: asyncio.Event = field(default_factory=asyncio.Event)
    bridges: list[SftpBridge] = field(default_factory=list)

    async def client(self, user: str = "agent") -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            "127.0.0.1", self.port, username=user, known_hosts=None, agent_path=None,
            client_keys=None, config=[], password=None,
        )  # fmt: skip

    def paths_checked(self, op: str) -> list[tuple[str, ...]]:
        return [c.paths for c in self.commands if f"sftp_{op}" in c.kinds]


class AgentServer(asyncssh.SSHServer):
    """Stands in for hoopy's listener: the login name picks the identity."""

    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: the tests are about SFTP


@pytest.fixture(scope="module")
async def bridge(
    sshd: Sshd,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Bridge]:
    data = tmp_path_factory.mktemp("sftp") / "data"
    (data / "pub" / "uploads").mkdir(parents=True)
    (data / "secret").mkdir()
    (data / "pub" / "a.txt").write_text("hello\n")
    (data / "pub" / "keep.txt").write_text("keep me\n")
    (data / "secret" / "s.txt").write_text("top secret\n")
    (data / "pub" / "link").symlink_to("../secret/s.txt")
    (data / "pub" / "dirlink").symlink_to("../secret")
    d = str(data)
    sets = policies(d)
    backends: list[asyncssh.SSHClientConnection] = []
    state = Bridge(0, data)

    def make(chan: asyncssh.SSHServerChannel[bytes]) -> SftpBridge:
        who = IDENTITIES[chan.get_extra_info("username")]

        async def check(cmd: Command) -> object:
            state.commands.append(cmd)
            if state.fail_checks:
                raise RuntimeError("secret internals")
            if any("/slow" in p for p in cmd.paths):  # stands in for an approval wait
                state.waiting.set()
                await state.approved.wait()
            decision = decide(sets, who, cmd)
            if not decision.allowed:
                raise CommandDenied(decision.message(), decision.rule)
            return decision

        async def open_backend() -> asyncssh.SFTPClient:
            conn = await sshd.connect()
            backends.append(conn)
            return await conn.start_sftp_client()

        def record(type_: str, **fields: Any) -> None:
            state.records.append({"type": type_, **fields})
            state.recorded.set()

        made = SftpBridge(chan, open_backend, "web-1", check, record)
        state.bridges.append(made)
        return made

    server = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        server_factory=AgentServer, sftp_factory=make, allow_scp=False,
    )  # fmt: skip
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    await server.wait_closed()
    for conn in backends:
        conn.close()


@pytest.fixture
async def sftp(bridge: Bridge) -> AsyncIterator[asyncssh.SFTPClient]:
    bridge.commands.clear()
    bridge.records.clear()
    bridge.recorded.clear()
    async with await bridge.client() as conn, conn.start_sftp_client() as client:
        yield client


# -- reading ------------------------------------------------------------------------


async def test_allowed_read_is_bridged_and_its_bytes_recorded(
    bridge: Bridge, sftp: asyncssh.SFTPClient
) -> None:
    d = bridge.data
    async with sftp.open(f"{d}/pub/a.txt", "rb") as f:
        assert await f.read() == b"hello\n"
    assert {"type": "sftp_file", "path": f"{d}/pub/a.txt", "bytes_read": 6, "bytes_written": 0} in (
        bridge.records
    )
    [cmd] = [c for c in bridge.commands if "sftp_read" in c.kinds]
    assert cmd.protocol == "ssh" and cmd.connector == "web-1"
    assert cmd.text == cmd.command_line == f"sftp read {d}/pub/a.txt"
    assert sorted(await sftp.listdir(f"{d}/pub")) == sorted(
        [".", "..", "a.txt", "keep.txt", "uploads", "link", "dirlink"]
    )


@pytest.mark.parametrize(
    "path",
    [
        "secret/s.txt",
        "pub/../secret/s.txt",
        "pub/uploads/../../secret/s.txt",
        "pub/link",  # a symlink to ../secret/s.txt
        "pub/dirlink/s.txt",  # through a symlinked folder
        "pub//dirlink/./s.txt",
    ],
)
async def test_reads_outside_the_allowed_tree_are_refused(
    bridge: Bridge, sftp: asyncssh.SFTPClient, path: str
) -> None:
    with pytest.raises(asyncssh.SFTPPermissionDenied, match="no policy rule allows this"):
        await sftp.open(f"{bridge.data}/{path}", "rb")
    [checked] = bridge.paths_checked("read")
    assert f"{bridge.data}/secret/s.txt" in checked  # the path the backend would open
    assert bridge.records == []


async def test_stat_and_listing_follow_the_same_rules(
    bridge: Bridge, sftp: asyncssh.SFTPClient
) -> None:
    d = bridge.data
    assert (await sftp.stat(f"{d}/pub/a.txt")).size == 6
    for call in (sftp.stat, sftp.listdir, sftp.lstat):
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await call(f"{d}/secret")
    with pytest.raises(asyncssh.SFTPPermissionDenied):
        await sftp.listdir(f"{d}/pub/dirlink")
    assert await sftp.readlink(f"{d}/pub/link") == "../secret/s.txt"  # the link itself is in pub


# -- writing ------------------------------------------------------------------------


async def test_writes_land_only_where_allowed(bridge: Bridge, sftp: asyncssh.SFTPClient) -> None:
    d = bridge.data
    async with sftp.open(f"{d}/pub/uploads/new.txt", "wb") as f:
        await f.write(b"x" * 70000)
    assert (d / "pub" / "uploads" / "new.txt").read_bytes() == b"x" * 70000
    assert {
        "type": "sftp_file", "path": f"{d}/pub/uploads/new.txt",
        "bytes_read": 0, "bytes_written": 70000,
    } in bridge.records  # fmt: skip
    for target in ("pub/a.txt", "pub/fresh.txt", "secret/s.txt", "pub/link"):
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            async with sftp.open(f"{d}/{target}", "ab") as f:
                await f.write(b"pwned")
    assert (d / "pub" / "a.txt").read_text() == "hello\n"
    assert (d / "secret" / "s.txt").read_text() == "top secret\n"
    assert not (d / "pub" / "fresh.txt").exists()
    # read+write opens need both operations allowed: reading is allowed in pub, writing not
    with pytest.raises(asyncssh.SFTPPermissionDenied):
        await sftp.open(f"{d}/pub/a.txt", "r+b")


async def test_reads_fetched_ahead_never_return_stale_data(
    bridge: Bridge, sftp: asyncssh.SFTPClient
) -> None:
    """Sequential reads are fetched ahead from the backend; a write through the same
    handle drops what was fetched, so the next read sees it."""
    path = f"{bridge.data}/pub/uploads/ahead.bin"
    blob = os.urandom(600_000)
    async with sftp.open(path, "wb") as f:
        await f.write(blob)
    async with sftp.open(path, "r+b", block_size=0) as f:
        got = b"".join([await f.read(32768, off) for off in range(0, 65536, 32768)])
        assert got == blob[:65536]
        await f.write(b"N" * 32768, 98304)  # inside the window fetched ahead
        assert await f.read(32768, 65536) == blob[65536:98304]
        assert await f.read(32768, 98304) == b"N" * 32768
        rest = b"".join([await f.read(32768, off) for off in range(131072, 600_000, 32768)])
        assert rest == blob[131072:]
        assert await f.read(32768, 600_000) == b""
        # seeks and writes drop what was fetched; what still runs counts to the limit
        for _ in range(20):
            await f.read(32768, 0)
            await f.read(32768, 32768)
            await f.write(b"w", 0)
        bridges = [b for b in bridge.bridges if b._inflight or b._files]
        assert bridges and all(len(b._inflight) <= 32 for b in bridges)
    assert (bridge.data / "pub" / "uploads" / "ahead.bin").stat().st_size == 600_000


async def test_remove_rename_mkdir_setstat(bridge: Bridge, sftp: asyncssh.SFTPClient) -> None:
    d = bridge.data
    up = f"{d}/pub/uploads"
    for name in ("r1.txt", "keep-this.txt"):
        async with sftp.open(f"{up}/{name}", "wb") as f:
            await f.write(b"1")
    await sftp.rename(f"{up}/r1.txt", f"{up}/r2.txt")
    assert (d / "pub" / "uploads" / "r2.txt").exists()
    with pytest.raises(asyncssh.SFTPPermissionDenied):  # the target is outside uploads
        await sftp.rename(f"{up}/r2.txt", f"{d}/pub/r3.txt")
    with pytest.raises(asyncssh.SFTPPermissionDenied):  # the source is outside uploads
        await sftp.rename(f"{d}/pub/a.txt", f"{up}/a.txt")
    with pytest.raises(asyncssh.SFTPPermissionDenied, match=r"keep-files.*keep files stay"):
        await sftp.remove(f"{up}/keep-this.txt")
    with pytest.raises(asyncssh.SFTPPermissionDenied, match="keep-files"):
        await sftp.posix_rename(f"{up}/keep-this.txt", f"{up}/gone.txt")
    assert (d / "pub" / "uploads" / "keep-this.txt").exists()
    await sftp.remove(f"{up}/r2.txt")
    assert not (d / "pub" / "uploads" / "r2.txt").exists()
    with pytest.raises(asyncssh.SFTPPermissionDenied):
        await sftp.remove(f"{d}/pub/a.txt")

    await sftp.mkdir(f"{up}/sub")
    await sftp.rmdir(f"{up}/sub")
    with pytest.raises(asyncssh.SFTPPermissionDenied):
        await sftp.mkdir(f"{d}/pub/sub")
    await sftp.chmod(f"{up}/keep-this.txt", 0o600)
    assert (d / "pub" / "uploads" / "keep-this.txt").stat().st_mode & 0o777 == 0o600
    with pytest.raises(asyncssh.SFTPPermissionDenied):
        await sftp.chmod(f"{d}/pub/a.txt", 0o777)
    assert (d / "pub" / "a.txt").stat().st_mode & 0o777 != 0o777


async def test_symlink_targets_are_paths_too(bridge: Bridge, sftp: asyncssh.SFTPClient) -> None:
    """A link in uploads to a file outside would let a later open reach it."""
    d = bridge.data
    up = d / "pub" / "uploads"
    for target in ("/etc/passwd", "../../secret/s.txt", f"{d}/secret"):
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.symlink(target, f"{up}/l")
        assert not (up / "l").is_symlink()
    (up / "t.txt").write_text("t")
    await sftp.symlink("t.txt", f"{up}/ok")
    assert os.readlink(up / "ok") == "t.txt"
    # A relative target counts from the folder the link really lands in: through
    # uploads/a/b/c/alias -> ../../.. (uploads itself), "../../secret/s.txt" written
    # inside uploads/a/b is really data/secret/s.txt.
    (up / "a" / "b" / "c").mkdir(parents=True)
    (up / "a" / "b" / "c" / "alias").symlink_to("../../..")
    with pytest.raises(asyncssh.SFTPPermissionDenied):
        await sftp.symlink("../../secret/s.txt", f"{up}/a/b/c/alias/l2")
    assert not (up / "l2").is_symlink()


async def test_an_allow_on_commands_does_not_open_sftp(bridge: Bridge) -> None:
    """`ssh: {commands: ["*"]}` is about command lines; SFTP needs a rule naming it."""
    async with await bridge.client("execonly") as conn, conn.start_sftp_client() as sftp:
        for call in (sftp.listdir, sftp.stat):
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await call(str(bridge.data / "pub"))


# -- hostile input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [(b"/tmp/\xff\xfe", "not UTF-8"), (b"/tmp/a\x00/etc/passwd", "NUL"), (b"/" * 5000, "too long")],
)
async def test_paths_policy_cannot_read_are_refused(
    bridge: Bridge, sftp: asyncssh.SFTPClient, path: bytes, message: str
) -> None:
    with pytest.raises(asyncssh.SFTPError, match=message):
        await sftp.stat(path)
    assert bridge.commands == []


async def test_an_operation_waits_for_its_check_before_it_runs(
    bridge: Bridge, sftp: asyncssh.SFTPClient
) -> None:
    """A check that waits (an approval) holds the operation: nothing happens on the
    backend until it returns."""
    target = bridge.data / "pub" / "uploads" / "slow-dir"
    pending = asyncio.ensure_future(sftp.mkdir(str(target)))
    await asyncio.wait_for(bridge.waiting.wait(), 10)
    assert not target.exists() and not pending.done()
    bridge.approved.set()
    await asyncio.wait_for(pending, 10)
    assert target.is_dir()
    target.rmdir()


async def test_a_failing_check_refuses_and_quotes_nothing(
    bridge: Bridge, sftp: asyncssh.SFTPClient
) -> None:
    bridge.fail_checks = True
    try:
        with pytest.raises(asyncssh.SFTPFailure) as e:
            await sftp.open(str(bridge.data / "pub" / "a.txt"), "rb")
        assert "secret internals" not in str(e.value)
        assert e.value.reason == "hoopy could not check this operation"
    finally:
        bridge.fail_checks = False
    assert bridge.records == []


async def test_extensions_answered_without_the_gateways_files(
    bridge: Bridge, sftp: asyncssh.SFTPClient, tmp_path: Path
) -> None:
    """asyncssh's server answers ranges@asyncssh.com (its client's `get` uses it) by
    seeking a local file: here the whole range is data.  Locks are refused."""
    async with sftp.open(str(bridge.data / "pub" / "a.txt"), "rb") as f:
        assert [r async for r in f.request_ranges(0, 6)] == [(0, 6)]
        with pytest.raises(asyncssh.SFTPOpUnsupported):
            await f.lock(0, 1, asyncssh.FXF_BLOCK_READ)
        assert await f.read() == b"hello\n"
    big = bridge.data / "pub" / "big.bin"
    big.write_bytes(os.urandom(300_000))
    await sftp.get(str(big), str(tmp_path / "big.bin"))  # ranges, parallel reads
    assert (tmp_path / "big.bin").read_bytes() == big.read_bytes()
    await sftp.put(str(tmp_path / "big.bin"), str(bridge.data / "pub" / "uploads" / "b.bin"))
    assert (bridge.data / "pub" / "uploads" / "b.bin").read_bytes() == big.read_bytes()
    big.unlink()


async def test_files_left_open_are_recorded_when_the_channel_ends(bridge: Bridge) -> None:
    bridge.records.clear()
    bridge.recorded.clear()
    conn = await bridge.client()
    sftp = await conn.start_sftp_client()
    f = await sftp.open(str(bridge.data / "pub" / "a.txt"), "rb")
    assert await f.read(3) == b"hel"
    conn.close()  # no close of the file, no SFTP exit
    await asyncio.wait_for(bridge.recorded.wait(), 10)
    assert bridge.records == [
        {
            "type": "sftp_file",
            "path": f"{bridge.data}/pub/a.txt",
            "bytes_read": 3,
            "bytes_written": 0,
        }
    ]


def test_every_file_system_method_is_overridden() -> None:
    """asyncssh.SFTPServer's defaults act on the gateway's own disk: each must be
    replaced (a new one in a later asyncssh fails here)."""
    helpers = {
        "channel", "connection", "env", "logger", "convert_attrs", "format_user",
        "format_group", "format_longname", "map_path", "reverse_map_path",
    }  # fmt: skip
    base = asyncssh.SFTPServer
    names = [n for n, v in vars(base).items() if not n.startswith("_") and n not in helpers]
    assert {"open", "remove", "scandir", "symlink", "statvfs", "exit"} <= set(names)
    missing = [n for n in names if vars(SftpBridge).get(n) is None]
    assert missing == []
    assert inspect.isasyncgenfunction(SftpBridge.scandir)


# -- the real OpenSSH sftp client -----------------------------------------------------


async def test_real_sftp_client_batch(bridge: Bridge, tmp_path: Path) -> None:
    d = bridge.data
    (tmp_path / "up.txt").write_text("uploaded by sftp\n")
    batch = tmp_path / "batch"
    batch.write_text(
        f"get {d}/pub/a.txt {tmp_path}/a.txt\n"
        f"put {tmp_path}/up.txt {d}/pub/uploads/up.txt\n"
        f"ls {d}/pub\n"
        f"-get {d}/secret/s.txt {tmp_path}/s.txt\n"
        f"-get {d}/pub/link {tmp_path}/link.txt\n"
        f"-put {tmp_path}/up.txt {d}/pub/a.txt\n"
        f"-rm {d}/pub/keep.txt\n"
        f"rename {d}/pub/uploads/up.txt {d}/pub/uploads/up2.txt\n"
    )
    proc = await asyncio.create_subprocess_exec(
        "sftp", "-F", "/dev/null", "-P", str(bridge.port), "-b", str(batch),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "agent@127.0.0.1",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert (tmp_path / "a.txt").read_text() == "hello\n"
    assert (d / "pub" / "uploads" / "up2.txt").read_text() == "uploaded by sftp\n"
    assert "a.txt" in out.decode() and "keep.txt" in out.decode()
    # four refusals (sftp's `get` globs first: a refused stat reads as "not found")
    errors = err.decode().splitlines()
    assert len(errors) == 4 and all("Permission denied" in e or "not found" in e for e in errors)
    assert not (tmp_path / "s.txt").exists() and not (tmp_path / "link.txt").exists()
    assert (d / "pub" / "a.txt").read_text() == "hello\n"
    assert (d / "pub" / "keep.txt").exists()


# -- policy keys ----------------------------------------------------------------------


def sftp_cmd(op: str, *paths: str, kinds: tuple[str, ...] = ()) -> Command:
    return Command(
        "ssh", "web-1", f"sftp {op}", kinds=frozenset(kinds or (f"sftp_{op}",)), paths=paths
    )


WHO = Identity("agent-7", frozenset({"agents"}))


@pytest.mark.parametrize(
    ("match", "cmd", "allowed"),
    [
        (SshMatch(sftp=("read",)), sftp_cmd("read", "/any"), True),
        (SshMatch(sftp=("read",)), sftp_cmd("write", "/any"), False),
        (SshMatch(sftp=("read",)), sftp_cmd("rw", "/a", kinds=("sftp_read", "sftp_write")), False),
        (SshMatch(sftp=("*",)), sftp_cmd("rw", "/a", kinds=("sftp_read", "sftp_write")), True),
        (SshMatch(sftp=("read",), paths=("/srv/*",)), sftp_cmd("read", "/srv/a"), True),
        (SshMatch(sftp=("read",), paths=("/srv/*",)), sftp_cmd("read", "/srv/a", "/etc/a"), False),
        (SshMatch(paths=("/srv/*",)), sftp_cmd("read", "/srv/a"), False),  # names no operation
        (SshMatch(commands=("*",)), sftp_cmd("read", "/srv/a"), False),
        (SshMatch(), sftp_cmd("read", "/srv/a"), False),
        (SshMatch(sftp=("read",)), Command("ssh", "web-1", "ls", command_line="ls"), False),
    ],
)
def test_allow_rules_must_name_every_operation_and_path(
    match: SshMatch, cmd: Command, allowed: bool
) -> None:
    ps = (PolicySet("p", (Rule("r", "allow", Match(ssh=match)),)),)
    assert decide(ps, WHO, cmd).allowed is allowed


@pytest.mark.parametrize(
    ("match", "cmd", "denied"),
    [
        (SshMatch(sftp=("remove",)), sftp_cmd("remove", "/a"), True),
        (SshMatch(paths=("/etc/*",)), sftp_cmd("rename", "/tmp/x", "/etc/x"), True),  # any path
        (SshMatch(paths=("/etc/*",)), sftp_cmd("read", "/tmp/x"), False),
        (SshMatch(), sftp_cmd("read", "/tmp/x"), True),  # ssh: {} is every ssh command
        (SshMatch(commands=("rm *",)), sftp_cmd("remove", "/tmp/x"), False),
        (SshMatch(opaque=True), sftp_cmd("remove", "/tmp/x"), False),  # about shell lines
        (SshMatch(sftp=("remove",)), Command("ssh", "w", "rm x", command_line="rm x"), False),
    ],
)
def test_deny_rules_match_any_operation_or_path(
    match: SshMatch, cmd: Command, denied: bool
) -> None:
    allow_all = Rule("all", "allow", Match(ssh=SshMatch(sftp=("*",), commands=("*",))))
    ps = (PolicySet("p", (Rule("no", "deny", Match(ssh=match)), allow_all)),)
    assert (decide(ps, WHO, cmd).rule == "no") is denied


def test_config_reads_sftp_keys_and_reports_unknown_operations(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "hoopy.yaml").write_text("listen: {admin: 127.0.0.1:0}\n")
    (tmp_path / "policies" / "p.yaml").write_text(
        "rules:\n  - name: up\n    effect: allow\n"
        "    match: {ssh: {sftp: [read, wirte], paths: ['/srv/**']}}\n"
        "  - name: empty\n    effect: deny\n    match: {ssh: {paths: []}}\n"
    )
    problems = check_config(tmp_path / "hoopy.yaml")
    assert any(
        "p.yaml:4:" in p and "unknown operation 'wirte' (did you mean 'write'?)" in p
        for p in problems
    ), problems
    assert any("p.yaml:7:" in p and "empty" in p for p in problems), problems
