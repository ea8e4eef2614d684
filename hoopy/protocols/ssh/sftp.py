"""SFTP through hoopy: an asyncssh SFTP server bridged to an SFTP client on the backend.

Theory of operation
-------------------
The agent's SFTP subsystem channel ends in `SftpBridge`, an `asyncssh.SFTPServer`
whose every method is overridden (the base class would act on the gateway's own file
system).  Each request becomes a policy `Command` (protocol "ssh", kinds
`{"sftp_<op>"}`, text `sftp <op> <path>`, `paths`) that is awaited through the `check`
callback the caller binds to `session.check`; only then is it performed on the backend
through an `asyncssh.SFTPClient`, and its result (or the backend's SFTP error) goes
back to the agent.  A refusal is an SFTP "permission denied" whose message names the
rule, so the real `sftp` client prints it.

Paths: SFTP paths may be relative to the login directory and contain `..` and
symlinks.  hoopy checks every path an operation touches in two forms: as written
(made absolute against the backend's home directory and normalised) and as the backend
resolves it (`realpath` of the path for operations that follow symlinks, of its parent
for those that act on the entry itself), and the backend is then asked to act on the
resolved path.  An allow rule must cover both, so a symlink inside an allowed tree
does not open files outside it.  What remains is a race: a process on the backend that
swaps a directory for a symlink between the check and the operation (do not allow
`symlink` where agents may also write, if paths are meant to confine them).

Operations (the `ssh.sftp` names): read, write (open for reading / for writing,
creating, truncating or appending), remove, rename (also posix-rename), mkdir, rmdir,
setstat (and fsetstat, lsetstat), stat (stat, lstat, readlink, statvfs),
list (a directory listing), symlink (also the link target), link.  fstat, fsync and
the reads and writes on an open handle are covered by its open; realpath is not
checked (a name only: clients need realpath(".") to start).  Bytes read and written
are recorded per file when it is closed (or when the channel ends).  Paths that are not
UTF-8 or contain NUL, and SFTP versions above 3, are refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar, cast

import asyncssh
from asyncssh import SFTPAttrs, SFTPError, SFTPName, SFTPVFSAttrs

from hoopy.errors import HoopyError
from hoopy.policy import Command

log = logging.getLogger("hoopy.ssh.sftp")

Check = Callable[[Command], Awaitable[object]]
Backend = Callable[[], Awaitable[asyncssh.SFTPClient]]
Record = Callable[..., None]
T = TypeVar("T")
MAX_PATH = 4096
# A sequential reader gets up to READ_AHEAD blocks (READ_AHEAD_BYTES at most) fetched
# ahead: with a 4 ms round trip to the backend, OpenSSH's sftp `get` went from 9-17 MiB/s
# without to 15-31 MiB/s with (a loaded 2-core machine; on loopback it changes nothing).
READ_AHEAD = 32
READ_AHEAD_BYTES = 2 * 1024 * 1024
MAX_BLOCK = 256 * 1024  # larger reads are not fetched ahead
_WRITE_FLAGS = asyncssh.FXF_WRITE | asyncssh.FXF_APPEND | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC


@dataclass(eq=False)  # handles are compared by identity
class _File:
    """An open backend file, what went through it, and reads fetched ahead."""

    path: str
    backend: asyncssh.SFTPClientFile
    read: int = 0
    written: int = 0
    next_offset: int = -1  # where a sequential reader reads next
    ahead: dict[tuple[int, int], asyncio.Future[bytes]] = field(default_factory=dict)

    def fetch(self, offset: int, size: int) -> asyncio.Future[bytes]:
        task = cast("asyncio.Future[bytes]", asyncio.ensure_future(self.backend.read(size, offset)))
        task.add_done_callback(_retrieved)
        return task

    def drop_ahead(self) -> None:
        """Forget what was fetched ahead.  Not cancelled: asyncssh's own sub-requests
        would be left behind; they finish on their own (at most READ_AHEAD of them)."""
        self.ahead.clear()

    def seek(self, offset: int, whence: int = 0) -> int:
        """asyncssh answers `ranges@asyncssh.com` (which its own client's `get` uses) by
        seeking the file object for data and holes, as in a local file.  A backend
        file's holes are unknown here: it is all data."""
        if whence == getattr(os, "SEEK_DATA", -1):
            return offset
        if whence == getattr(os, "SEEK_HOLE", -1):
            return 1 << 63  # the caller stops at the range it asked about
        raise asyncssh.SFTPOpUnsupported("seek is not supported")


class SftpBridge(asyncssh.SFTPServer):
    """One agent SFTP channel, bridged to a backend SFTP session with every operation
    checked.  `open_backend` starts that session (e.g. `conn.start_sftp_client` on the
    agent's backend connection) when the first request comes: asyncssh creates the
    bridge synchronously.  It is closed when the channel ends."""

    def __init__(
        self,
        chan: asyncssh.SSHServerChannel[bytes],
        open_backend: Backend,
        connector: str,
        check: Check,
        record: Record | None = None,
    ) -> None:
        super().__init__(chan)
        self._open_backend = open_backend
        self._client: asyncssh.SFTPClient | None = None
        self._starting = asyncio.Lock()
        self.connector = connector
        self._check_fn = check
        self._record = record
        self._home: str | None = None
        self._files: set[_File] = set()
        self._ahead_file: _File | None = None
        self._inflight: set[asyncio.Future[bytes]] = set()  # reads fetched ahead, running

    # -- paths and checks -----------------------------------------------------

    @property
    def backend(self) -> asyncssh.SFTPClient:
        assert self._client is not None, "_absolute() starts the backend session"
        return self._client

    async def _absolute(self, path: bytes) -> str:
        """Every path operation comes here first, so this starts the backend session."""
        if self._client is None:
            async with self._starting:
                if self._client is None:
                    self._client = await self._backend(self._open_backend())
        text = _text(path)
        if not text.startswith("/"):
            if self._home is None:
                self._home = _text(await self._backend(self.backend.realpath(b".")))
            text = posixpath.join(self._home, text)
        text = posixpath.normpath(text)
        return "/" + text.lstrip("/")  # normpath keeps a leading "//"

    async def _resolve(self, path: bytes, follow: bool) -> tuple[str, str]:
        """(as written, as the backend resolves it), both absolute."""
        written = await self._absolute(path)
        if written == "/":
            return written, written
        if follow:
            try:
                real = await self._backend(self.backend.realpath(written.encode()))
                return written, _text(real)
            except SFTPError:
                pass  # not there (yet): resolve its parent
        parent, name = posixpath.split(written)
        try:
            real_parent = _text(await self._backend(self.backend.realpath(parent.encode())))
        except SFTPError:
            return written, written  # no parent: the operation will fail on the backend
        return written, posixpath.join(real_parent, name)

    async def _check(self, ops: Sequence[str], shown: Sequence[str], paths: Sequence[str]) -> None:
        text = f"sftp {'+'.join(ops)} " + " -> ".join(shlex.quote(p) for p in shown)
        command = Command(
            protocol="ssh",
            connector=self.connector,
            text=text,
            kinds=frozenset(f"sftp_{op}" for op in ops),
            command_line=text,
            paths=tuple(dict.fromkeys(paths)),
        )
        try:
            await self._check_fn(command)
        except HoopyError as e:  # denied, approval refused, recording down, token expired
            raise asyncssh.SFTPPermissionDenied(str(e)) from None
        except Exception as e:  # never forwarded unchecked, never the exception's text
            log.error("checking an sftp operation failed: %s", type(e).__name__)
            raise asyncssh.SFTPFailure("hoopy could not check this operation") from None

    async def _checked(self, op: str, path: bytes, follow: bool) -> bytes:
        """Check one operation on one path; the resolved path to act on."""
        written, real = await self._resolve(path, follow)
        await self._check([op], [written], [written, real])
        return real.encode()

    async def _checked2(self, op: str, old: bytes, new: bytes) -> tuple[bytes, bytes]:
        """Rename and link: both paths, neither followed."""
        old_w, old_r = await self._resolve(old, follow=False)
        new_w, new_r = await self._resolve(new, follow=False)
        await self._check([op], [old_w, new_w], [old_w, old_r, new_w, new_r])
        return old_r.encode(), new_r.encode()

    async def _backend(self, call: Awaitable[T]) -> T:
        """Run a backend call: its SFTP errors go to the agent as they are, anything
        else (a lost backend) as a failure that quotes nothing."""
        try:
            return await call
        except (SFTPError, StopAsyncIteration):  # StopAsyncIteration: a listing's end
            raise
        except Exception as e:
            log.warning("sftp backend call failed: %s", type(e).__name__)
            raise asyncssh.SFTPFailure("backend unavailable") from None

    # -- files ------------------------------------------------------------------

    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> _File:
        ops = [
            op
            for op, on in (("read", pflags & asyncssh.FXF_READ), ("write", pflags & _WRITE_FLAGS))
            if on
        ]
        written, real = await self._resolve(path, follow=True)
        await self._check(ops or ["read"], [written], [written, real])
        # asyncssh splits requests larger than the backend's limits (OpenSSH's are
        # smaller than what asyncssh's server offers the agent)
        f = await self._backend(self.backend.open(real.encode(), pflags, attrs, encoding=None))
        handle = _File(written, f)
        self._files.add(handle)
        return handle

    def open56(self, *args: Any) -> NoReturn:
        raise asyncssh.SFTPOpUnsupported("SFTP version 3 only")

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        """asyncssh serves one request at a time, so a read waits a backend round trip;
        for a sequential reader the next blocks are already on their way (for one file
        per channel at a time: memory stays under READ_AHEAD_BYTES)."""
        f = self._file(file_obj)
        pending = f.ahead.pop((offset, size), None)
        sequential = pending is not None or offset == f.next_offset
        if pending is None:
            f.drop_ahead()  # a seek: what was fetched ahead is not wanted
            pending = f.fetch(offset, size)
        data = await self._backend(pending)
        if not data:
            raise asyncssh.SFTPEOFError
        f.read += len(data)
        f.next_offset = offset + len(data)
        if sequential and len(data) == size <= MAX_BLOCK:
            self._read_ahead(f, offset, size)
        return data

    def _read_ahead(self, f: _File, offset: int, size: int) -> None:
        if self._ahead_file is not f:
            if self._ahead_file is not None:
                self._ahead_file.drop_ahead()
            self._ahead_file = f
        limit = min(READ_AHEAD, READ_AHEAD_BYTES // size)
        for i in range(1, limit + 1):
            key = (offset + i * size, size)
            if key in f.ahead:
                continue
            if len(self._inflight) >= limit:  # dropped fetches still running count too
                break
            f.ahead[key] = task = f.fetch(*key)
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        f = self._file(file_obj)
        f.drop_ahead()  # what was read ahead may be what this overwrites
        n = await self._backend(f.backend.write(data, offset))
        f.written += len(data)
        return n

    async def close(self, file_obj: object) -> None:
        f = self._file(file_obj)
        self._files.discard(f)
        f.drop_ahead()
        try:
            await self._backend(f.backend.close())
        finally:
            self._recorded(f)

    async def fstat(self, file_obj: object) -> SFTPAttrs:
        return await self._backend(self._file(file_obj).backend.stat())

    async def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        f = self._file(file_obj)
        await self._check(["setstat"], [f.path], [f.path])
        await self._backend(f.backend.setstat(attrs))

    async def fsync(self, file_obj: object) -> None:
        await self._backend(self._file(file_obj).backend.fsync())

    async def fstatvfs(self, file_obj: object) -> SFTPVFSAttrs:
        return await self._backend(self._file(file_obj).backend.statvfs())

    def lock(self, *args: Any) -> NoReturn:
        raise asyncssh.SFTPOpUnsupported("byte-range locks are not supported")

    def unlock(self, *args: Any) -> NoReturn:
        raise asyncssh.SFTPOpUnsupported("byte-range locks are not supported")

    def _file(self, file_obj: object) -> _File:
        if not isinstance(file_obj, _File) or file_obj not in self._files:
            raise asyncssh.SFTPInvalidHandle("invalid file handle")
        return file_obj

    def _recorded(self, f: _File) -> None:
        if self._record is None:
            return
        try:
            self._record("sftp_file", path=f.path, bytes_read=f.read, bytes_written=f.written)
        except HoopyError as e:  # the recorder is down: say so (the session is refused next)
            raise asyncssh.SFTPFailure(str(e)) from None

    async def exit(self) -> None:
        """The channel ended: close what the agent left open, and record it."""
        files, self._files = list(self._files), set()
        for f in files:
            f.drop_ahead()
            try:
                await f.backend.close()
            except Exception:  # the backend may be gone already; the record matters
                log.debug("closing a backend file at exit failed")
            self._recorded(f)
        if self._client is not None:
            self._client.exit()

    # -- paths ------------------------------------------------------------------

    async def stat(self, path: bytes) -> SFTPAttrs:
        real = await self._checked("stat", path, True)
        return await self._backend(self.backend.stat(real))

    async def lstat(self, path: bytes) -> SFTPAttrs:
        real = await self._checked("stat", path, False)
        return await self._backend(self.backend.lstat(real))

    async def statvfs(self, path: bytes) -> SFTPVFSAttrs:
        real = await self._checked("stat", path, True)
        return await self._backend(self.backend.statvfs(real))

    async def realpath(self, path: bytes) -> bytes:
        """Not checked: it returns a name, no content or attributes, and every client
        asks for realpath(".") first (OpenSSH's sftp cannot start without it)."""
        return (await self._resolve(path, follow=True))[1].encode()

    async def readlink(self, path: bytes) -> bytes:
        real = await self._checked("stat", path, False)
        return await self._backend(self.backend.readlink(real))

    async def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        real = await self._checked("setstat", path, True)
        await self._backend(self.backend.setstat(real, attrs))

    async def lsetstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        real = await self._checked("setstat", path, False)
        await self._backend(self.backend.setstat(real, attrs, follow_symlinks=False))

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        real = await self._checked("list", path, True)
        names = self.backend.scandir(real)
        while True:
            try:
                name = await self._backend(names.__anext__())
            except StopAsyncIteration:
                return
            yield name

    async def remove(self, path: bytes) -> None:
        real = await self._checked("remove", path, False)
        await self._backend(self.backend.remove(real))

    async def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        real = await self._checked("mkdir", path, False)
        await self._backend(self.backend.mkdir(real, attrs))

    async def rmdir(self, path: bytes) -> None:
        real = await self._checked("rmdir", path, False)
        await self._backend(self.backend.rmdir(real))

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        old, new = await self._checked2("rename", oldpath, newpath)
        await self._backend(self.backend.rename(old, new))

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        old, new = await self._checked2("rename", oldpath, newpath)
        await self._backend(self.backend.posix_rename(old, new))

    async def link(self, oldpath: bytes, newpath: bytes) -> None:
        old, new = await self._checked2("link", oldpath, newpath)
        await self._backend(self.backend.link(old, new))

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        """`newpath` becomes a link to `oldpath`: the target is checked as a path too,
        since whatever opens the link acts on it.  A relative target is taken from the
        link's folder both as written and as resolved (they differ when that folder is
        reached through a symlink)."""
        new_w, new_r = await self._resolve(newpath, follow=False)
        targets: list[str] = []
        for folder in dict.fromkeys((posixpath.dirname(new_w), posixpath.dirname(new_r))):
            target = (
                oldpath if oldpath.startswith(b"/") else posixpath.join(folder.encode(), oldpath)
            )
            targets += await self._resolve(target, follow=True)
        await self._check(["symlink"], [new_w, targets[0]], [new_w, new_r, *targets])
        await self._backend(self.backend.symlink(oldpath, new_r.encode()))


def _retrieved(task: asyncio.Future[bytes]) -> None:
    """A read fetched ahead that nobody asked for: its error is not news."""
    if not task.cancelled():
        task.exception()


def _text(path: bytes | str) -> str:
    """A path as policy sees it; refuses what it could not match or record faithfully."""
    if isinstance(path, str):
        return path
    if len(path) > MAX_PATH:
        raise asyncssh.SFTPInvalidParameter("path too long")
    if b"\0" in path:
        raise asyncssh.SFTPInvalidParameter("path contains NUL")
    try:
        return path.decode("utf-8")
    except UnicodeDecodeError:
        raise asyncssh.SFTPInvalidParameter("path is not UTF-8") from None
