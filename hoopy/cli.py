"""The `hoopy` command (DESIGN §4)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hoopy.config import Config, ConfigError, Secret, check_config, load_config

if TYPE_CHECKING:
    from hoopy.recorder import VerifyResult
    from hoopy.state import SessionRow


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


# Everything recorded came from agents (or whoever can write the files): it is printed
# through hoopy.replay's clean_* so no control character reaches the terminal.
def cmd_sessions(args: argparse.Namespace) -> int:
    from hoopy.recorder import read_events
    from hoopy.replay import clean_json, clean_line

    cfg = _config(args)
    store = _store(cfg)
    if args.action == "list":
        for r in store.list_sessions(
            subject=args.subject, connector=args.connector, limit=args.limit
        ):
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started))
            print(
                f"{clean_line(r.id)}  {started}  {clean_line(r.protocol):<10} "
                f"{clean_line(r.connector):<16} {clean_line(r.subject):<20} "
                f"{clean_line(r.outcome or 'open'):<14} {r.events} events"
            )
        return 0
    row = store.get_session(args.id)
    if row is None:
        print(f"error: no session {clean_line(args.id)}", file=sys.stderr)
        return 1
    path = Path(row.path)

    def show() -> None:
        for ev in read_events(path):
            print(clean_json(ev))

    return _show_verified(row, show)


def _show_verified(row: SessionRow, show: Callable[[], None]) -> int:
    """Verify a recording before `sessions show` / `replay` print it.  One that fails is
    still shown (the security team needs to see it) between two warnings on stderr, and
    the exit status is then 1."""
    from hoopy.recorder import RecorderError, verify_row
    from hoopy.replay import clean_line

    res = verify_row(row)
    warning = ""
    if res.problems:
        more = len(res.problems) - 1
        warning = "WARNING: this recording fails verification: " + clean_line(res.problems[0])
        warning += f" (and {more} more: hoopy verify {clean_line(row.id)})" if more else ""
        print(warning, file=sys.stderr, flush=True)
    elif res.open or res.crashed:
        state = "still open" if res.open else "cut short: its gateway died"
        print(f"note: this session is {state}; shown up to its last line", file=sys.stderr)
    try:
        show()
    except RecorderError as e:
        print(f"error: {clean_line(e)}", file=sys.stderr)
        return 1
    if warning:
        sys.stdout.flush()
        print(warning, file=sys.stderr)
        return 1
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from hoopy.recorder import verify_all, verify_session
    from hoopy.replay import clean_line
    from hoopy.state import owners_dir

    cfg = _config(args)
    store = _store(cfg)
    if args.id:
        results = {args.id: verify_session(args.id, cfg.recordings, store)}
    else:
        results = verify_all(cfg.recordings, store)
    from hoopy.state import owner_state

    owners = owners_dir(cfg.state_dir)
    states: dict[str, str] = {}  # one lock probe per gateway, not per open session

    def state_of(owner: str) -> str:
        if owner not in states:
            states[owner] = owner_state(owners, owner)
        return states[owner]

    counts = dict.fromkeys(("BROKEN", "unfinished", "open", "crashed", "ok"), 0)
    for sid, res in sorted(results.items()):
        label, detail = _verdict(res, state_of)
        counts[label] += 1
        if label == "BROKEN":
            for p in res.problems:
                print(f"BROKEN  {clean_line(sid)}  {clean_line(p)}")
        else:
            print(f"{label:<7} {clean_line(sid)}  {res.events} events{detail}")
    print(
        f"{len(results)} recording(s), {counts['BROKEN']} broken, {counts['unfinished']} "
        f"unfinished, {counts['open']} open, {counts['crashed']} crashed",
        file=sys.stderr,
    )
    return 1 if counts["BROKEN"] or counts["unfinished"] else 0


def _verdict(res: VerifyResult, state_of: Callable[[str], str]) -> tuple[str, str]:
    """How `hoopy verify` reports a recording whose chain holds (README, Operating it):
    ok (ended), crashed (ended by a later gateway after its own died), open (its gateway
    runs, or this host cannot tell), unfinished (open, but its gateway is provably gone:
    exit status 1 until the next `hoopy serve` ends it as crashed)."""
    from hoopy.replay import clean_line
    from hoopy.state import ALIVE, DEAD

    if not res.ok:
        return "BROKEN", ""
    if res.crashed:
        return "crashed", " (its gateway died: verified up to the last line it wrote)"
    if not res.open:
        return "ok", ""
    upto = "not finished: verified up to the last line on disk"
    state = state_of(res.owner)
    if state == DEAD:
        return "unfinished", f" ({upto}; its gateway {clean_line(res.owner)} is gone)"
    runs = "its gateway is running" if state == ALIVE else "cannot tell if its gateway runs"
    return "open", f" ({upto}; {runs})"


def cmd_replay(args: argparse.Namespace) -> int:
    from hoopy.replay import clean_line, replay

    cfg = _config(args)
    row = _store(cfg).get_session(args.id)
    if row is None:
        print(f"error: no session {clean_line(args.id)}", file=sys.stderr)
        return 1
    path = Path(row.path)
    return _show_verified(row, lambda: replay(path, speed=args.speed))


ADMIN_TOKEN_ENV = "HOOPY_ADMIN_TOKEN"


def _presented_token(token_file: str | None) -> str:
    """The admin token the caller presents: --token-file, else $HOOPY_ADMIN_TOKEN."""
    import os

    if token_file:
        return Secret(f"file:{token_file}").get()  # read as any file: secret is
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        raise ValueError(
            f"deciding an approval needs the admin token: set {ADMIN_TOKEN_ENV} "
            "or pass --token-file FILE"
        )
    return token


def _admin_refusal(cfg: Config, token_file: str | None) -> str | None:
    """Why this caller may not decide approvals (None: it may).  The token it presents
    must equal the configured admin_token (DESIGN §5), compared in constant time."""
    if cfg.admin_token is None:
        return "no admin_token is configured, so approvals cannot be decided from the CLI"
    try:
        presented = _presented_token(token_file)
    except ConfigError as e:
        return f"cannot read --token-file {token_file}: {e.problems[0]}"
    except ValueError as e:
        return str(e)
    try:
        if cfg.admin_token.matches(presented):
            return None
    except ConfigError as e:  # names the secret's reference, never its value
        return f"cannot read the configured admin_token: {e.problems[0]}"
    return "the admin token presented does not match the configured admin_token"


def cmd_approvals(args: argparse.Namespace) -> int:
    from hoopy.approvals import APPROVED, DENIED, ApprovalStore
    from hoopy.replay import clean_json, clean_line

    cfg = _config(args)
    store = ApprovalStore(_store(cfg))
    if args.action == "list":
        for a in store.list(None if args.all else "pending", limit=args.limit):
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a.created))
            print(
                f"{a.id}  {created}  {a.state:<9} {clean_line(a.connector):<14} "
                f"{clean_line(a.subject):<18} rule={clean_line(a.rule)}  {a.command[:80]!r}"
            )
        return 0
    if not args.id:
        print(f"error: approvals {args.action} needs an approval id", file=sys.stderr)
        return 2
    if args.action == "show":  # the whole command, for an approver to read before deciding
        shown = store.get(args.id)
        if shown is None:
            print(f"error: {args.id}: no such approval", file=sys.stderr)
            return 1
        print(clean_json(shown.to_json(), indent=2))  # agent text: no raw control characters
        return 0
    refused = _admin_refusal(cfg, args.token_file)
    if refused is not None:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    import getpass

    by = f"cli:{getpass.getuser()}"
    to = APPROVED if args.action == "approve" else DENIED
    now = time.time()
    done = store.transition(args.id, to, by, args.reason or "", now)
    if done is None:
        print(f"error: {args.id}: {store.refusal(args.id, now)}", file=sys.stderr)
        return 1
    print(f"{done.id} {done.state} by {by}")
    return 0


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    from hoopy.protocols.kube.kubeconfig import kubeconfig

    cfg = _config(args)
    try:
        text = kubeconfig(
            cfg, Path(args.config), args.connector, args.source, args.server,
            tuple(args.exec_command.split()),
        )  # fmt: skip
        print(text, end="")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_credential(args: argparse.Namespace) -> int:
    from hoopy.protocols.kube.kubeconfig import main_credential

    cfg = _config(args) if args.source.startswith("dev:") else None
    return main_credential(args.source, cfg, args.group or [])


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
    apr.add_argument("action", choices=["list", "show", "approve", "deny"])
    apr.add_argument("id", nargs="?")
    apr.add_argument("--reason", default="")
    apr.add_argument(
        "--token-file", help=f"file holding the admin token (default: ${ADMIN_TOKEN_ENV})"
    )
    apr.add_argument("--all", action="store_true", help="list decided ones too")
    apr.add_argument("--limit", type=int, default=100)
    apr.set_defaults(fn=cmd_approvals)

    ver = with_config(sub.add_parser("verify", help="check recordings' hash chains"))
    ver.add_argument("id", nargs="?")
    ver.set_defaults(fn=cmd_verify)

    kc = with_config(sub.add_parser("kubeconfig", help="a kubeconfig for a kubernetes connector"))
    kc.add_argument("connector")
    kc.add_argument("--source", default="env:HOOPY_TOKEN", help="file:PATH | env:NAME | dev:SUB")
    kc.add_argument("--server", default="", help="https://host:port agents reach hoopy at")
    kc.add_argument("--exec-command", default="hoopy", help="how kubectl runs hoopy")
    kc.set_defaults(fn=cmd_kubeconfig)
    cred = with_config(sub.add_parser("credential", help="kubectl exec credential plugin"))
    cred.add_argument("--source", required=True, help="file:PATH | env:NAME | dev:SUB")
    cred.add_argument("--group", action="append", help="groups of a dev: token")
    cred.set_defaults(fn=cmd_credential)
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
