"""The `hoopy` command (DESIGN §4)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from hoopy.config import Config, ConfigError, check_config, load_config


def _config(args: argparse.Namespace) -> Config:
    try:
        return load_config(Path(args.config))
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        raise SystemExit(2) from None


def cmd_demo(args: argparse.Namespace) -> int:
    from hoopy.demo import run_demo
    from hoopy.serve import install_uvloop

    install_uvloop()
    asyncio.run(run_demo())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from hoopy.serve import install_uvloop, serve_forever

    cfg = _config(args)
    install_uvloop()
    asyncio.run(serve_forever(cfg))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    problems = check_config(Path(args.config))
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    cfg = load_config(Path(args.config))
    print(
        f"ok: {len(cfg.connectors)} connector(s), "
        f"{sum(len(p.rules) for p in cfg.policies)} rule(s) in {len(cfg.policies)} policy set(s)"
    )
    return 0


def cmd_token_mint(args: argparse.Namespace) -> int:
    from hoopy.devissuer import DevIssuer, parse_ttl

    cfg = _config(args)
    if cfg.dev_issuer is None:
        print(
            "error: no dev_issuer in the config; tokens come from your identity provider",
            file=sys.stderr,
        )
        return 2
    d = cfg.dev_issuer
    issuer = DevIssuer(
        cfg.state_dir,
        f"http://{d.listen.host}:{d.listen.port}",
        audience=d.audience,
        groups_claim=d.groups_claim,
    )
    print(issuer.mint(args.sub, args.group or [], ttl=parse_ttl(args.ttl)))
    return 0


def _store(cfg: Config):  # type: ignore[no-untyped-def]
    from hoopy.state import StateStore

    return StateStore(cfg.state_path or cfg.state_dir / "state.db")


def cmd_sessions(args: argparse.Namespace) -> int:
    from hoopy.recorder import read_events

    cfg = _config(args)
    store = _store(cfg)
    if args.action == "list":
        for r in store.list_sessions(
            subject=args.subject, connector=args.connector, limit=args.limit
        ):
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started))
            print(
                f"{r.id}  {started}  {r.protocol:<10} {r.connector:<16} {r.subject:<20} "
                f"{r.outcome or 'open':<14} {r.events} events"
            )
        return 0
    row = store.get_session(args.id)
    if row is None:
        print(f"error: no session {args.id}", file=sys.stderr)
        return 1
    for ev in read_events(Path(row.path)):
        print(json.dumps(ev, ensure_ascii=False))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from hoopy.recorder import verify_all, verify_session

    cfg = _config(args)
    store = _store(cfg)
    if args.id:
        results = {args.id: verify_session(args.id, cfg.recordings, store)}
    else:
        results = verify_all(cfg.recordings, store)
    bad = 0
    for sid, res in sorted(results.items()):
        if res.ok:
            print(f"ok      {sid}  {res.events} events")
        else:
            bad += 1
            for p in res.problems:
                print(f"BROKEN  {sid}  {p}")
    print(f"{len(results)} recording(s), {bad} broken", file=sys.stderr)
    return 1 if bad else 0


def cmd_replay(args: argparse.Namespace) -> int:
    from hoopy.replay import replay

    cfg = _config(args)
    row = _store(cfg).get_session(args.id)
    if row is None:
        print(f"error: no session {args.id}", file=sys.stderr)
        return 1
    replay(Path(row.path), speed=args.speed)
    return 0


def cmd_approvals(args: argparse.Namespace) -> int:
    from hoopy.approvals import APPROVED, DENIED, ApprovalStore

    cfg = _config(args)
    store = ApprovalStore(_store(cfg))
    if args.action == "list":
        for a in store.list(None if args.all else "pending", limit=args.limit):
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a.created))
            print(
                f"{a.id}  {created}  {a.state:<9} {a.connector:<14} {a.subject:<18} "
                f"rule={a.rule}  {a.command[:80]!r}"
            )
        return 0
    if not args.id:
        print(f"error: approvals {args.action} needs an approval id", file=sys.stderr)
        return 2
    import getpass

    by = f"cli:{getpass.getuser()}"
    to = APPROVED if args.action == "approve" else DENIED
    done = store.transition(args.id, to, by, args.reason or "", time.time())
    if done is None:
        cur = store.get(args.id)
        msg = "no such approval" if cur is None else f"approval is already {cur.state}"
        print(f"error: {args.id}: {msg}", file=sys.stderr)
        return 1
    print(f"{done.id} {done.state} by {by}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hoopy", description="identity-aware gateway for agents")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", default="hoopy.yaml", help="config file (./hoopy.yaml)")
        return sp

    sub.add_parser("demo", help="run everything on embedded defaults").set_defaults(fn=cmd_demo)
    with_config(sub.add_parser("serve", help="run the gateway")).set_defaults(fn=cmd_serve)
    with_config(sub.add_parser("check", help="validate the config")).set_defaults(fn=cmd_check)

    tok = sub.add_parser("token", help="development tokens").add_subparsers(
        dest="tcmd", required=True
    )
    mint = with_config(tok.add_parser("mint", help="mint a dev-issuer token"))
    mint.add_argument("--sub", required=True)
    mint.add_argument("--group", action="append")
    mint.add_argument("--ttl", default="15m")
    mint.set_defaults(fn=cmd_token_mint)

    ses = with_config(sub.add_parser("sessions", help="recorded sessions"))
    ses.add_argument("action", choices=["list", "show"])
    ses.add_argument("id", nargs="?")
    ses.add_argument("--subject")
    ses.add_argument("--connector")
    ses.add_argument("--limit", type=int, default=100)
    ses.set_defaults(fn=cmd_sessions)

    rep = with_config(sub.add_parser("replay", help="replay a session in the terminal"))
    rep.add_argument("id")
    rep.add_argument("--speed", type=float, default=1.0)
    rep.set_defaults(fn=cmd_replay)

    apr = with_config(sub.add_parser("approvals", help="pending approvals"))
    apr.add_argument("action", choices=["list", "approve", "deny"])
    apr.add_argument("id", nargs="?")
    apr.add_argument("--reason", default="")
    apr.add_argument("--all", action="store_true", help="list decided ones too")
    apr.add_argument("--limit", type=int, default=100)
    apr.set_defaults(fn=cmd_approvals)

    ver = with_config(sub.add_parser("verify", help="check recordings' hash chains"))
    ver.add_argument("id", nargs="?")
    ver.set_defaults(fn=cmd_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.cmd == "sessions" and args.action == "show" and not args.id:
        print("error: sessions show needs a session id", file=sys.stderr)
        return 2
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
