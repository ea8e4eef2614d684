"""`hoopy demo`: the whole gateway on embedded defaults, on one machine.

It starts a throwaway PostgreSQL (initdb from the installed binaries, SCRAM,
loopback), loads a small fake customer schema, writes a config into a temp
folder (dev OIDC issuer on, example policies), runs the gateway in-process and
prints ready-to-paste agent commands with a fresh token.  With OpenSSH's server
binaries it adds an SSH target (sshtarget.py); it always adds a Kubernetes target, the
built-in API emulator (kubetarget.py).  Ctrl-C stops and removes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import asyncpg

from hoopy import pgcluster
from hoopy.config import load_config
from hoopy.kubetarget import NAMESPACE, DemoKube
from hoopy.serve import Running, start
from hoopy.sshtarget import DemoSshd

SCHEMA = """
CREATE TABLE customers (
    id serial PRIMARY KEY, name text NOT NULL, email text, ssn text, card text,
    created_at timestamptz DEFAULT now());
CREATE TABLE orders (
    id serial PRIMARY KEY, customer_id int REFERENCES customers(id),
    amount numeric(10,2), status text DEFAULT 'new');
INSERT INTO customers (name, email, ssn, card) VALUES
    ('Ada Lovelace', 'ada@example.com', '078-05-1120', '4111 1111 1111 1111'),
    ('Alan Turing', 'alan@example.org', '219-09-9999', '5500-0000-0000-0004'),
    ('Grace Hopper', 'grace@example.net', '457-55-5462', '3400 0000 0000 009'),
    ('Edsger Dijkstra', 'edsger@example.com', '123-45-6789', '6011000000000004');
INSERT INTO orders (customer_id, amount, status)
    SELECT 1 + (i % 4), (i * 7.5)::numeric(10,2), CASE WHEN i % 3 = 0 THEN 'paid' ELSE 'new' END
    FROM generate_series(1, 20) AS i;
"""

POLICY = """\
mode: enforce
rules:
  - name: agents-use-app-db
    effect: allow
    match: {groups: [agents], connectors: [app-db]}
  - name: no-schema-changes
    effect: deny
    reason: schema changes go through migrations
    match: {sql: {statements: [drop, truncate, alter]}}
  - name: writes-need-a-dba
    effect: require_approval
    approvers: [dba]
    timeout: 10m
    match: {sql: {statements: [delete, update]}}
  - name: agents-look-around-the-demo-host
    effect: allow
    match:
      groups: [agents]
      connectors: [demo-ssh]
      ssh: {commands: ["uptime", "ls", "ls *", "cat *", "echo *", "df *", "ps *", "id", "whoami"]}
  - name: no-deleting
    effect: deny
    reason: deleting files is not allowed
    match: {ssh: {commands: ["rm *", "shred *"]}}
  - name: restarts-need-ops
    effect: require_approval
    approvers: [ops]
    timeout: 10m
    match: {groups: [agents], connectors: [demo-ssh], ssh: {commands: ["systemctl *", "touch *"]}}
  - name: hide-pii
    effect: mask
    columns: ["*.email", "customers.ssn"]
    detectors: [email, credit_card]
    match: {connectors: [app-db]}
  - name: agents-read-the-demo-cluster
    effect: allow
    match: {groups: [agents], connectors: [demo-k8s], kubernetes: {verbs: [get, list, watch]}}
  - name: no-deleting-in-the-cluster
    effect: deny
    reason: agents do not delete cluster objects
    match: {connectors: [demo-k8s], kubernetes: {verbs: [delete, deletecollection]}}
  - name: no-exec-in-the-demo-cluster
    effect: deny
    reason: the demo's API emulator would run it on this machine, not in a container
    match: {connectors: [demo-k8s], kubernetes: {resources: [pods/exec, pods/attach]}}
  - name: cluster-writes-need-ops
    effect: require_approval
    approvers: [ops]
    timeout: 10m
    match: {groups: [agents], connectors: [demo-k8s], kubernetes: {verbs: [create, update, patch]}}
  - name: hide-emails-in-the-cluster
    effect: mask
    detectors: [email]
    match: {connectors: [demo-k8s]}
"""


def _config(
    folder: Path,
    pg_port: int,
    ports: dict[str, int],
    sshd: DemoSshd | None = None,
    kube: DemoKube | None = None,
) -> Path:
    (folder / "connectors").mkdir()
    (folder / "policies").mkdir()
    if sshd is not None:
        (folder / "connectors" / "demo-ssh.yaml").write_text(sshd.connector())
    if kube is not None:
        (folder / "connectors" / "demo-k8s.yaml").write_text(kube.connector())
    (folder / "connectors" / "app-db.yaml").write_text(
        f"type: postgres\naddress: 127.0.0.1:{pg_port}\ndatabase: app\nuser: app_rw\n"
        "password: env:HOOPY_DEMO_DB_PASSWORD\nsslmode: disable\n"
    )
    (folder / "policies" / "agents.yaml").write_text(POLICY)
    cfg = folder / "hoopy.yaml"
    cfg.write_text(
        "listen:\n"
        f"  postgres: 127.0.0.1:{ports['postgres']}\n"
        f"  admin: 127.0.0.1:{ports['admin']}\n"
        + (f"  ssh: 127.0.0.1:{ports['ssh']}\n" if sshd is not None else "")
        + (f"  kubernetes: 127.0.0.1:{ports['kubernetes']}\n" if kube is not None else "")
        + "tls: {cert: tls/cert.pem, key: tls/key.pem}\n"
        "state: sqlite:state/state.db\n"
        "admin_token: env:HOOPY_ADMIN_TOKEN\n"
        f"dev_issuer: {{listen: 127.0.0.1:{ports['dev_issuer']}}}\n"
        "recordings: recordings/\n"
        "connectors_dir: connectors/\npolicies_dir: policies/\n"
    )
    return cfg


def _port(preferred: int) -> int:
    """The documented port when it is free, else any free one."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return pgcluster.free_port()


async def seed(cluster: pgcluster.PgCluster, app_password: str) -> None:
    conn = await asyncpg.connect(cluster.dsn)
    try:
        await conn.execute(f"CREATE ROLE app_rw LOGIN PASSWORD '{app_password}'")
        await conn.execute("CREATE DATABASE app OWNER app_rw")
    finally:
        await conn.close()
    conn = await asyncpg.connect(
        user="app_rw", password=app_password, host="127.0.0.1", port=cluster.port, database="app"
    )
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()


def banner(folder: Path, running: Running, token: str) -> str:
    a = running.addresses
    host, port = a["postgres"].rsplit(":", 1)
    cfg = folder / "hoopy.yaml"
    return (
        _pg_banner(folder, host, port, token)
        + _ssh_banner(folder, running, token)
        + _kube_banner(folder, running)
        + _tail(cfg, a)
    )


def _pg_banner(folder: Path, host: str, port: str, token: str) -> str:
    return f"""
hoopy demo is running (Ctrl-C stops it and removes {folder}).

An agent's token (group 'agents', valid 1h) is its PostgreSQL password:

  PGPASSWORD={token} psql "host={host} port={port} dbname=app-db user=agent sslmode=require"

Try, in that psql:
  select name, email from customers;          -- allowed (recorded)
  drop table orders;                           -- denied by rule no-schema-changes (42501)
  delete from orders where id = 1;             -- needs approval by a dba
"""


def _ssh_banner(folder: Path, running: Running, token: str) -> str:
    if "ssh" not in running.addresses:
        return "\n(no SSH target: install openssh-server to try SSH through hoopy)\n"
    host, port = running.addresses["ssh"].rsplit(":", 1)
    askpass = folder / "askpass.sh"  # prints the token: ssh reads its password from it
    fd = os.open(askpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
    with os.fdopen(fd, "w") as f:
        f.write(f"#!/bin/sh\necho '{token}'\n")
    known = folder / "agent_known_hosts"
    pub = (folder / "state" / "ssh_host_ed25519_key.pub").read_text().strip()
    known.write_text(f"[{host}]:{port} {pub}\n")
    ssh = (
        f"SSH_ASKPASS={askpass} SSH_ASKPASS_REQUIRE=force DISPLAY=:0 ssh -p {port} "
        f"-o UserKnownHostsFile={known} -o PubkeyAuthentication=no demo-ssh@{host}"
    )
    return f"""
SSH to a throwaway sshd as connector 'demo-ssh' (the token is the password; host key
{running.ssh_host_key}):

  {ssh} 'uptime; ls /'

Try:  … 'rm -rf /tmp/x'  (denied by rule no-deleting, exit 126)   … 'touch /tmp/x'  (needs ops)
"""


def _kube_banner(folder: Path, running: Running) -> str:
    if "kubernetes" not in running.addresses:
        return ""
    from hoopy.protocols.kube.kubeconfig import kubeconfig

    cfg = folder / "hoopy.yaml"
    # `hoopy kubeconfig demo-k8s --source dev:demo-agent`: kubectl runs hoopy's exec
    # credential plugin, which mints a fresh dev-issuer token (group agents) each time
    command = (sys.executable, "-m", "hoopy.cli")
    kc = folder / "kubeconfig"
    server = f"https://{running.addresses['kubernetes']}"
    text = kubeconfig(running.gateway.config, cfg, "demo-k8s", "dev:demo-agent", server, command)
    kc.write_text(text)
    k = f"kubectl --kubeconfig {kc}"
    return f"""
Kubernetes as connector 'demo-k8s': hoopy in front of its built-in API emulator (not a
real cluster: pods run nothing; see README).  The kubeconfig is `hoopy kubeconfig
demo-k8s --source dev:demo-agent`'s:

  {k} get pods -A

Try:  {k} get secret -n {NAMESPACE} db-credentials -o yaml    (values masked)
      {k} get configmap -n {NAMESPACE} app-config -o yaml      (e-mail masked)
      {k} delete pod -n {NAMESPACE} worker-0    (denied by rule no-deleting-in-the-cluster)
      {k} label pod -n {NAMESPACE} worker-0 tier=batch    (needs ops: hoopy approvals list)
"""


def _tail(cfg: Path, a: dict[str, str]) -> str:
    return f"""
Mint more tokens:     hoopy token mint --config {cfg} --sub agent-2 --group agents
Recorded sessions:    hoopy sessions list --config {cfg}
Verify recordings:    hoopy verify --config {cfg}
Admin API:            curl -H "Authorization: Bearer $HOOPY_ADMIN_TOKEN" http://{a["admin"]}/api/sessions
                      (HOOPY_ADMIN_TOKEN={os.environ["HOOPY_ADMIN_TOKEN"]})
"""


async def run_demo(ready: asyncio.Event | None = None) -> None:
    folder = Path(tempfile.mkdtemp(prefix="hoopy-demo-"))
    cluster: pgcluster.PgCluster | None = None
    running: Running | None = None
    sshd: DemoSshd | None = None
    kube: DemoKube | None = None
    try:
        print("starting a throwaway PostgreSQL ...", flush=True)
        cluster = await asyncio.to_thread(pgcluster.create)
        app_password = secrets.token_urlsafe(18)
        await seed(cluster, app_password)
        os.environ["HOOPY_DEMO_DB_PASSWORD"] = app_password
        os.environ.setdefault("HOOPY_ADMIN_TOKEN", secrets.token_urlsafe(18))
        ports = {"postgres": _port(15432), "admin": _port(18080), "dev_issuer": _port(18081)}
        ports["ssh"] = _port(12222)
        sshd = await asyncio.to_thread(DemoSshd.start, folder / "sshd")
        ports["kubernetes"] = _port(16443)
        kube = await DemoKube.start(folder / "kube-emulator")
        cfg = load_config(_config(folder, cluster.port, ports, sshd, kube))
        running = await start(cfg)
        assert running.dev_issuer is not None
        token = running.dev_issuer.mint("demo-agent", ["agents"], ttl=3600)
        print(banner(folder, running, token), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        await stop.wait()
        print("stopping ...", flush=True)
    finally:
        if running is not None:
            await running.close()
        if cluster is not None:
            await asyncio.to_thread(cluster.destroy)
        if sshd is not None:
            sshd.stop()
        if kube is not None:
            await kube.stop()
        shutil.rmtree(folder, ignore_errors=True)
