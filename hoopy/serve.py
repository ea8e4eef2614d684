"""`hoopy serve`: build the gateway from a config and run its listeners.

When every listener is up, one line `hoopy ready {json}` is printed on stdout
with the bound addresses (ports given as 0 in the config are chosen by the OS),
so scripts and tests can wait for it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from hoopy.admin import AdminServer
from hoopy.approvals import ApprovalService, ApprovalStore
from hoopy.config import Config, IssuerConfig
from hoopy.devissuer import DevIssuer
from hoopy.gateway import Gateway
from hoopy.identity import IdentityVerifier
from hoopy.protocols.postgres.proxy import PostgresListener
from hoopy.recorder import Recorder
from hoopy.slack import SlackInteractions, SlackNotifier, SlackSocketMode, make_client
from hoopy.state import StateStore
from hoopy.tlsutil import ensure_pair, server_context

log = logging.getLogger("hoopy.serve")


@dataclass
class Running:
    gateway: Gateway
    addresses: dict[str, str] = field(default_factory=dict)
    closers: list[Any] = field(default_factory=list)
    dev_issuer: DevIssuer | None = None
    ssh_host_key: str = ""  # fingerprint of the SSH listener's host key
    workers: Any = None  # pgworkers.Workers when postgres.workers > 1

    async def close(self) -> None:
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                await close()


async def start(config: Config) -> Running:
    """Start everything the config asks for; returns once all listeners are bound."""
    closers: list[Any] = []
    issuers = list(config.issuers)
    dev: DevIssuer | None = None
    addresses: dict[str, str] = {}
    if config.dev_issuer is not None:
        d = config.dev_issuer
        log.warning(
            "DEVELOPMENT OIDC ISSUER IS ON (dev_issuer in config): anyone who can "
            "run `hoopy token mint` on this host can mint tokens. Never in production."
        )
        dev = DevIssuer.from_config(config)
        await dev.start(d.listen.host, d.listen.port)
        closers.append(dev.stop)
        addresses["dev_issuer"] = dev.issuer_url
        issuers.append(
            IssuerConfig(
                url=dev.issuer_url,
                audience=d.audience,
                groups_claim=d.groups_claim,
                allow_insecure_http=True,  # hoopy fetches its own keys from itself
            )
        )
    gw = build_gateway(replace(config, issuers=tuple(issuers)), closers)
    running = Running(gw, addresses, closers, dev)
    try:
        await _listeners(running, config)
    except BaseException:
        await running.close()
        raise
    return running


def build_gateway(config: Config, closers: list[Any]) -> Gateway:
    """The pieces each process serving agents has of its own (pgworkers' workers too);
    `config.issuers` are all the issuers, the dev issuer included."""
    store = StateStore(config.state_path or config.state_dir / "state.db")
    closers.append(_async(store.close))
    recorder = Recorder(config.recordings, store)
    verifier = IdentityVerifier(list(config.issuers))
    approvals = ApprovalService(ApprovalStore(store))
    gw = Gateway(config, verifier, store, recorder, approvals)
    approvals.metrics = gw.metrics
    gw.start_flusher()
    closers.append(approvals.close)
    closers.append(gw.close)
    return gw


async def _listeners(running: Running, config: Config) -> None:
    gw = running.gateway
    if config.listen.postgres is not None:
        ensure_pair(config.tls)
        tls = server_context(config.tls)
        pgl = PostgresListener(gw, tls)
        a = config.listen.postgres
        if config.postgres.workers > 1:  # the workers bind the same port (pgworkers.py)
            from hoopy.pgworkers import refuse_taken_port

            await refuse_taken_port(a.host, a.port)
        port = await pgl.start(a.host, a.port, reuse_port=config.postgres.workers > 1)
        running.closers.append(pgl.close)
        running.addresses["postgres"] = f"{a.host}:{port}"
        if config.postgres.workers > 1:  # more processes accept on the same port
            from hoopy.pgworkers import start_workers

            await start_workers(running, pgl, config)
    if config.listen.ssh is not None:
        await _ssh(running, config)
    if config.listen.kubernetes is not None:
        from hoopy.protocols.kube.proxy import KubeListener

        ensure_pair(config.tls)
        kube = KubeListener(gw, server_context(config.tls))
        a = config.listen.kubernetes
        port = await kube.start(a.host, a.port)
        running.closers.append(kube.close)
        running.addresses["kubernetes"] = f"{a.host}:{port}"
    interactions = await _slack(running, config)
    if config.listen.admin is not None:
        admin = AdminServer(gw, interactions)
        a = config.listen.admin
        port = await admin.start(a.host, a.port)
        running.closers.append(admin.stop)
        running.addresses["admin"] = f"{a.host}:{port}"


async def _ssh(running: Running, config: Config) -> None:
    from hoopy.protocols.ssh.hostkey import ensure_host_key, fingerprint
    from hoopy.protocols.ssh.proxy import SshListener

    key = ensure_host_key(config.state_dir)
    listener = SshListener(running.gateway, key)
    a = config.listen.ssh
    assert a is not None
    port = await listener.start(a.host, a.port)
    running.closers.append(listener.close)
    running.addresses["ssh"] = f"{a.host}:{port}"
    running.ssh_host_key = fingerprint(key)


async def _slack(running: Running, config: Config) -> SlackInteractions | None:
    """Slack notifier + interactivity (HTTP on the admin listener, Socket Mode if an
    app token is configured).  Approvals never depend on Slack: CLI and API work too."""
    gw = running.gateway
    if config.slack is None or gw.approvals is None:
        return None
    client = make_client(config.slack)
    gw.approvals.notifiers = [SlackNotifier(config.slack, client)]
    interactions = SlackInteractions(gw.approvals, config.slack, client, gw.record_click)
    running.closers.append(interactions.close)
    if config.slack.app_token is not None:
        socket = SlackSocketMode(interactions)
        try:
            await socket.start()
            running.closers.append(socket.close)
        except Exception as e:  # Slack unreachable: approvals still work via CLI/API
            log.error("slack socket mode unavailable: %s", type(e).__name__)
    return interactions


def _async(fn: Any) -> Any:
    async def call() -> None:
        fn()

    return call


def install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _log_build(workers: int = 1) -> None:
    """The start line says whether the fast path runs compiled (one warning if not) and
    how many processes serve PostgreSQL agents."""
    from hoopy import __version__, compiled

    procs = f", postgres served by {workers} processes (postgres.workers)" if workers > 1 else ""
    warning = compiled.startup_warning()
    if warning is not None:
        log.warning("hoopy %s%s: %s", __version__, procs, warning)
    else:
        log.info("hoopy %s, fast path %s%s", __version__, compiled.describe(), procs)


def _tune_gc() -> None:
    """What is alive once the listeners run (modules, config, parsers' tables: ~10^5
    objects) lives as long as the process: frozen, the cyclic collector stops walking it
    on every full pass.  A larger first generation makes a request's short-lived
    containers die by reference counting before a pass looks at them.  Cycles are still
    collected; memory stays bounded by the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


async def serve_forever(config: Config) -> None:
    from hoopy.pgworkers import worker_forever, worker_spec

    spec = worker_spec()
    if spec is not None:  # a postgres worker started by the gateway process
        await worker_forever(config, spec)
        return
    running = await start(config)
    _tune_gc()
    if running.ssh_host_key:
        print(f"hoopy ssh host key {running.ssh_host_key}", flush=True)
    _log_build(config.postgres.workers if config.listen.postgres is not None else 1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before `ready`: a stop right after it
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print("hoopy ready " + json.dumps(running.addresses), flush=True)
    try:
        await stop.wait()
    finally:
        print("hoopy stopping", file=sys.stderr, flush=True)
        await running.close()
