"""`postgres: {workers: N}`: N processes serve PostgreSQL agents on one address and port.

Theory of operation
-------------------
hoopy's PostgreSQL path is CPU-bound in one Python process; N processes use N cores.
The gateway process (`hoopy serve`) binds the PostgreSQL listener as it does alone but
with SO_REUSEPORT, then starts N-1 workers (`python -m hoopy.cli serve`, with WORKER_ENV
in the environment) that bind the same addresses and ports with SO_REUSEPORT too: the
kernel hands each new connection to one of the processes' sockets (by a hash of its
addresses).  Measured: 8 agents connecting at once to 2 processes sharing one socket
(inherited fd) split 8/0 or 7/1 in about 45 % of trials (the first process to wake
accepts the whole burst); with SO_REUSEPORT in about 7 %.  The price: connections still
queued on a worker's socket when it dies are reset, and another process of the same
user could join the port (Linux allows that to the same user only).  A worker runs the
PostgreSQL listener only, with gateway pieces of its own (identity verifier, policies,
recorder, approval service and its Slack notifier, state store connection, ownership
lock): to the state folder each worker is what a replica is, so a crashed worker's
sessions are ended as "crashed" by the next process to start.  Everything else (admin
API and Slack interactivity, SSH, Kubernetes, the dev issuer) stays in the gateway
process.  Approvals cross processes through the state store, exactly as a decision
made with `hoopy approvals approve` does (ApprovalService._wait polls it).

A CancelRequest arrives on a new connection, which any process may accept: the fake
backend pid given to an agent names the process that holds its session (pid mod N,
Gateway.register_cancel), and a process that does not hold the key passes the request
on over a Unix socket in a private (0700) folder to that process's listener.

Lifecycle: the gateway prints `hoopy ready` once every worker accepts (each says so with
READY on its stdout pipe); SIGTERM/SIGINT to the gateway stops the workers and waits for
them.  A worker ignores SIGINT (a terminal's ^C reaches the whole process group: the
gateway decides), stops on SIGTERM, and stops when its parent dies (Linux
PR_SET_PDEATHSIG, and EOF on its stdin pipe, whose other end only the parent holds).
A worker that dies unexpectedly is logged and started again after a growing backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hoopy.config import Config, IssuerConfig

if TYPE_CHECKING:
    from hoopy.gateway import Gateway
    from hoopy.protocols.postgres.proxy import PostgresListener
    from hoopy.serve import Running

log = logging.getLogger("hoopy.workers")

WORKER_ENV = "HOOPY_PG_WORKER"  # JSON WorkerSpec: set only by the gateway for its workers
READY = "hoopy worker ready"
START_TIMEOUT = 60.0  # s for a worker to accept (imports, state store, ownership lock)
STOP_TIMEOUT = 20.0  # s for a worker to end its sessions on SIGTERM before SIGKILL
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0  # s before a dead worker is started again …
STABLE = 60.0  # … reset once a worker has lived this long
_CANCEL_CODE = 80877102
_CLICK_CODE = 0x686F6F70  # "hoop": a Slack click for a session here (length, code, JSON)
_CLICK_MAX = 64 * 1024


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker learns from the gateway process (WORKER_ENV)."""

    index: int  # 1 … count-1 (the gateway process is 0)
    count: int
    listen: tuple[tuple[int, str, int], ...]  # the gateway's PostgreSQL sockets: family, host, port
    parent: int  # the gateway's pid: a worker started by anyone else exits at once
    cancel_dir: str  # <index>.sock: each process's Unix listener for passed-on cancels
    dev_issuer: str  # the dev issuer's URL ("": none); its port may be chosen at start


def worker_spec() -> WorkerSpec | None:
    text = os.environ.get(WORKER_ENV)
    if not text:
        return None
    d = json.loads(text)
    return WorkerSpec(**{**d, "listen": tuple(tuple(a) for a in d["listen"])})


def cancel_request(pid: int, key: int) -> bytes:
    return struct.pack("!iiII", 16, _CANCEL_CODE, pid, key)


class CancelRouter:
    """Passes a CancelRequest this process does not hold on to the process that does
    (and, from the gateway process, a Slack click to the process running the session)."""

    def __init__(self, index: int, count: int, folder: str) -> None:
        self.index, self.count, self.folder = index, count, folder

    def path(self, index: int) -> str:
        return os.path.join(self.folder, f"{index}.sock")

    async def listen(self, listener: PostgresListener) -> None:
        """This process's Unix socket for cancels passed on: it takes one CancelRequest
        (or Slack click) per connection and nothing else (never a session), and acts on
        it here only."""
        path = self.path(self.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a worker's predecessor, dead

        async def passed_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                async with asyncio.timeout(5.0):
                    length, code = struct.unpack("!iI", await reader.readexactly(8))
                    if length == 16 and code == _CANCEL_CODE:
                        pid, key = struct.unpack("!II", await reader.readexactly(8))
                        await listener.cancel_here(pid, key)
                    elif code == _CLICK_CODE and 8 < length <= _CLICK_MAX:
                        click = json.loads(await reader.readexactly(length - 8))
                        if isinstance(click, dict) and isinstance(click.get("info"), dict):
                            listener.gw.record_click(str(click.get("approval")), click["info"])
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_unix_server(passed_on, path=path)
        listener.more_servers.append(server)  # closed with the listener

    async def __call__(self, pid: int, key: int) -> None:
        """Called for a key this process does not hold."""
        owner = pid % self.count
        if owner == self.index:
            return  # ours, and no longer open
        if await self.send(owner, cancel_request(pid, key), "a cancel request"):
            log.info("cancel request passed on to postgres process %d", owner)

    async def send(self, index: int, data: bytes, what: str) -> bool:
        try:
            async with asyncio.timeout(5.0):
                reader, writer = await asyncio.open_unix_connection(self.path(index))
                writer.write(data)
                await writer.drain()
                await reader.read(1)  # it closes once it has acted
            writer.close()
            return True
        except (OSError, TimeoutError) as e:
            log.warning("cannot pass %s on to postgres process %d: %s", what, index, e)
            return False


# ---- the gateway process's side ---------------------------------------------------------


class Workers:
    """The gateway process's N-1 worker processes: started, watched, restarted, stopped."""

    def __init__(self, config: Config, listener: PostgresListener, dev_issuer: str) -> None:
        self.config = config
        self.count = config.postgres.workers
        self.listener = listener
        self.dev_issuer = dev_issuer
        self.cancel_dir = tempfile.mkdtemp(prefix="hoopy-workers-")  # 0700
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.tasks: list[asyncio.Task[Any]] = []
        self.stopping = False

    def addresses(self) -> tuple[tuple[int, str, int], ...]:
        """Each PostgreSQL socket's family and bound address (port 0 in the config: the
        port the OS chose), for the workers to bind too."""
        sockets = self.listener.server.sockets if self.listener.server else ()
        return tuple((int(s.family), *s.getsockname()[:2]) for s in sockets)

    async def start(self, gw: Gateway) -> None:
        """Start every worker; returns once all accept, raises if one cannot start."""
        router = self.router = CancelRouter(0, self.count, self.cancel_dir)
        gw.process, gw.cancel_elsewhere = (0, self.count), router
        gw.click_elsewhere = self.pass_click
        await router.listen(self.listener)
        first = [asyncio.get_running_loop().create_future() for _ in range(1, self.count)]
        for i, ready in enumerate(first, 1):
            self.tasks.append(asyncio.get_running_loop().create_task(self._watch(i, ready)))
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await asyncio.gather(*first)
        except BaseException:
            await self.close()
            raise

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        spec = WorkerSpec(
            index, self.count, self.addresses(), os.getpid(), self.cancel_dir, self.dev_issuer
        )
        verbose = ["-v"] if logging.getLogger().level <= logging.DEBUG else []
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hoopy.cli", *verbose, "serve",
            "--config", os.path.abspath(self.config.path),
            stdin=asyncio.subprocess.PIPE,  # its EOF tells the worker its parent is gone
            stdout=asyncio.subprocess.PIPE,  # READY, then nothing
            env={**os.environ, WORKER_ENV: json.dumps(asdict(spec))},
        )  # fmt: skip

    async def _watch(self, index: int, first: asyncio.Future[None]) -> None:
        """Run worker `index` until the gateway stops; start it again whenever it dies."""
        backoff = BACKOFF_FIRST
        while not self.stopping:
            began = time.monotonic()
            try:
                proc = await self._spawn(index)
            except OSError as e:
                if not first.done():
                    first.set_exception(RuntimeError(f"cannot start postgres worker {index}: {e}"))
                    return
                log.error("cannot start postgres worker %d: %s", index, e)
            else:
                self.procs[index] = proc
                ready = await self._until_ready(proc)
                if ready:
                    log.info("postgres worker %d (pid %d) accepts", index, proc.pid)
                    if not first.done():
                        first.set_result(None)
                elif not first.done():
                    rc = await proc.wait()
                    first.set_exception(
                        RuntimeError(f"postgres worker {index} exited with {rc} before it accepted")
                    )
                    return
                await self._drain(proc)
                rc = await proc.wait()
                if self.stopping:
                    return
                if time.monotonic() - began >= STABLE:
                    backoff = BACKOFF_FIRST
                log.error(
                    "postgres worker %d (pid %d) exited unexpectedly (%s); restarting it in "
                    "%.1f s", index, proc.pid, _status(rc), backoff,
                )  # fmt: skip
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    @staticmethod
    async def _until_ready(proc: asyncio.subprocess.Process) -> bool:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            if line.decode(errors="replace").strip() == READY:
                return True
        return False

    @staticmethod
    async def _drain(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while await proc.stdout.read(4096):
            pass

    def pass_click(self, session_id: str, approval_id: str, info: dict[str, Any]) -> None:
        """A Slack click (taken here) goes into the recording of the worker whose session
        waits for it: the session index names the process (owner host/pid/token)."""
        row = self.listener.gw.store.get_session(session_id)
        pid = row.owner.split("/")[1] if row is not None and row.owner.count("/") == 2 else ""
        index = next((i for i, p in self.procs.items() if str(p.pid) == pid), None)
        if index is None:
            return
        body = json.dumps({"approval": approval_id, "info": info}).encode()
        data = struct.pack("!iI", 8 + len(body), _CLICK_CODE) + body
        sent = self.router.send(index, data, "a Slack click")
        task = asyncio.get_running_loop().create_task(sent)
        self.tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self.tasks.remove(task)

    async def close(self) -> None:
        """SIGTERM every worker and wait for it (SIGKILL after STOP_TIMEOUT)."""
        self.stopping = True
        for t in self.tasks:  # first: none may start a worker after this
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        procs = [p for p in self.procs.values() if p.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.error("postgres worker pid %d did not stop; killing it", p.pid)
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
        shutil.rmtree(self.cancel_dir, ignore_errors=True)


def _status(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-rc).name}"
    return f"exit status {rc}"


async def refuse_taken_port(host: str, port: int) -> None:
    """With SO_REUSEPORT a second gateway of the same user would silently share the port
    of one already running: bind it once without, so a port in use fails (OSError) as
    it does with one process."""
    if port != 0:
        probe = await asyncio.start_server(lambda _r, w: w.close(), host, port)
        probe.close()
        await probe.wait_closed()


async def start_workers(running: Running, listener: PostgresListener, config: Config) -> None:
    # The hash mask's generated key, written here before any worker could race to
    # create it (one process would read the file before the other has written it).
    _ = running.gateway.mask_key
    workers = Workers(config, listener, running.addresses.get("dev_issuer", ""))
    await workers.start(running.gateway)
    running.closers.append(workers.close)
    running.workers = workers


# ---- a worker's side --------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the parent dies (Linux); and never run for a parent already gone."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        raise SystemExit("hoopy postgres worker: its gateway process is gone")


def _reuse_port_socket(family: int, host: str, port: int) -> socket.socket:
    """A listening socket joining the gateway's on (host, port): as asyncio binds one with
    reuse_port (SO_REUSEADDR, IPv6 only for an IPv6 address)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(100)
    except BaseException:
        sock.close()
        raise
    return sock


def _log_as(index: int) -> None:
    fmt = f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s"
    for h in logging.getLogger().handlers:
        h.setFormatter(logging.Formatter(fmt))


async def worker_forever(config: Config, spec: WorkerSpec) -> None:
    from hoopy.protocols.postgres.proxy import PostgresListener
    from hoopy.serve import _tune_gc, build_gateway
    from hoopy.slack import SlackNotifier
    from hoopy.tlsutil import server_context

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(spec.parent)
    _log_as(spec.index)
    issuers = list(config.issuers)
    if config.dev_issuer is not None and spec.dev_issuer:
        d = config.dev_issuer
        issuers.append(
            IssuerConfig(spec.dev_issuer, d.audience, d.groups_claim, allow_insecure_http=True)
        )
    closers: list[Any] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def parent_pipe() -> None:  # only the parent holds its other end: EOF, it is gone
        try:
            if not os.read(0, 512):
                stop.set()
        except BlockingIOError:
            pass
        except OSError:
            stop.set()

    loop.add_reader(0, parent_pipe)
    try:
        gw = build_gateway(replace(config, issuers=tuple(issuers)), closers)
        if config.slack is not None and gw.approvals is not None:
            gw.approvals.notifiers = [SlackNotifier(config.slack)]  # clicks: gateway process
        router = CancelRouter(spec.index, spec.count, spec.cancel_dir)
        gw.process, gw.cancel_elsewhere = (spec.index, spec.count), router
        listener = PostgresListener(gw, server_context(config.tls))
        closers.append(listener.close)
        for family, host, port in spec.listen:
            await listener.serve_socket(_reuse_port_socket(family, host, port))
        await router.listen(listener)
        _tune_gc()
        log.info(
            "postgres worker %d of %d (pid %d) accepting", spec.index, spec.count - 1, os.getpid()
        )
        print(READY, flush=True)
        await stop.wait()
    finally:
        loop.remove_reader(0)
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                await close()
        with contextlib.suppress(OSError):
            Path(CancelRouter(spec.index, spec.count, spec.cancel_dir).path(spec.index)).unlink()
