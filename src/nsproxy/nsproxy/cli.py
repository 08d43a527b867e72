"""The ``nsproxy`` command: check, run, status, reload."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from nsproxy import __version__, config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nsproxy",
        description="Reverse proxy with listeners inside many network namespaces.",
    )
    parser.add_argument("--version", action="version", version=f"nsproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="validate a configuration file")
    p.add_argument("file")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p = sub.add_parser("run", help="serve a configuration file")
    p.add_argument("--config", required=True)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    for name, text in (
        ("status", "show tenants, listeners and upstream health"),
        ("reload", "make the running daemon re-read its configuration"),
    ):
        p = sub.add_parser(name, help=text)
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--config", help="the daemon's configuration file (for its socket)")
        where.add_argument("--socket", help="the daemon's admin socket")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print the status document")
    args = parser.parse_args(argv)
    return {"check": cmd_check, "run": cmd_run, "status": cmd_status, "reload": cmd_reload}[
        args.command
    ](args)


def cmd_check(args) -> int:
    """Exit 0 with a count, or 1 with one line per problem on stdout (config.load raises
    nothing but ConfigError; its traceback, if any, goes to stderr at --log-level debug)."""
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="nsproxy check %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = config.load(args.file)
    except config.ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        return 1
    print(f"ok: {len(cfg.tenants)} tenants, {cfg.listener_count()} listeners")
    return 0


def cmd_run(args) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s nsproxy %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        for problem in exc.problems:
            print(f"nsproxy: {args.config}: {problem}", file=sys.stderr)
        return 1
    from nsproxy import server

    try:
        import uvloop
    except ImportError:
        uvloop = None
        logging.getLogger("nsproxy").info("uvloop not installed: using the asyncio event loop")
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(server.serve(args.config, cfg))


def _socket_path(args) -> str:
    if args.socket:
        return args.socket
    try:
        with open(args.config, "rb") as f:
            raw = json.load(f)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"nsproxy: cannot read {args.config}: {exc}") from None
    instance = raw.get("instance", "nsproxy") if isinstance(raw, dict) else "nsproxy"
    return (raw.get("admin_socket") if isinstance(raw, dict) else None) or (
        f"/run/nsproxy/{instance}.sock"
    )


def cmd_status(args) -> int:
    from nsproxy import admin

    try:
        answer = admin.request(_socket_path(args), "status", timeout=30)
    except admin.AdminError as exc:
        print(f"nsproxy: {exc}", file=sys.stderr)
        return 1
    status = answer.get("status", {})
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(
        f"instance {status.get('instance')}  pid {status.get('pid')}  "
        f"generation {status.get('generation')}  config {status.get('config_digest', '')[:12]}"
    )
    if status.get("last_reload_error"):
        print(f"last reload refused: {status['last_reload_error']}")
    rows = [
        (
            "TENANT",
            "NETNS",
            "STATE",
            "LISTENER",
            "PROTO",
            "LISTENER STATE",
            "UPSTREAMS",
            "LAST ERROR",
        )
    ]
    for t in status.get("tenants", []):
        ups = (
            " ".join(
                f"{u['name']}({sum(s['healthy'] for s in u['servers'])}/{len(u['servers'])})"
                for u in t["upstreams"]
            )
            or "-"
        )
        listeners = t["listeners"] or [{"listen": "-", "protocol": "-", "state": "-"}]
        for i, li in enumerate(listeners):
            rows.append(
                (
                    t["name"] if i == 0 else "",
                    (t["netns"] or "-") if i == 0 else "",
                    t["state"] if i == 0 else "",
                    li["listen"],
                    li["protocol"],
                    li["state"],
                    ups if i == 0 else "",
                    (t["last_error"] or "-") if i == 0 else "",
                )
            )
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)) + "  " + str(r[-1]))
    return 0


def cmd_reload(args) -> int:
    from nsproxy import admin

    try:
        answer = admin.request(_socket_path(args), "reload")
    except admin.AdminError as exc:
        print(f"nsproxy: {exc}", file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"nsproxy: reload refused: {answer.get('error')}", file=sys.stderr)
        return 1
    print(f"generation {answer.get('generation')}")
    return 0
