"""The ``nsproxy`` command: check, run, status, reload, upgrade."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import stat
import sys

from nsproxy import __version__, config, daemonlog


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
        ("status", "show tenants, listeners, upstream health and workers"),
        ("reload", "make the running daemon re-read its configuration"),
        (
            "upgrade",
            "make the running daemon re-execute the installed nsproxy (same PID, no "
            "listener closed)",
        ),
    ):
        p = sub.add_parser(name, help=text)
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--config", help="the daemon's configuration file (for its socket)")
        where.add_argument("--socket", help="the daemon's admin socket")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print the status document")
    args = parser.parse_args(argv)
    commands = {
        "check": cmd_check,
        "run": cmd_run,
        "status": cmd_status,
        "reload": cmd_reload,
        "upgrade": cmd_upgrade,
    }
    if args.command == "run":
        return cmd_run(args)
    try:
        code = commands[args.command](args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went (``nsproxy status | head -1``): exit quietly, as the Python docs
        # recommend (library/signal.html, "Note on SIGPIPE"): stdout goes to /dev/null so that
        # the interpreter's own flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


def cmd_check(args) -> int:
    """Exit 0 with a count, or 1 with one line per problem on stdout (config.load raises
    nothing but ConfigError; its traceback, if any, goes to stderr at --log-level debug)."""
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="nsproxy check %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    from nsproxy import tls

    tls.record_verified()
    try:
        cfg = config.load(args.file)
        tls.save_verified()  # for the run that follows (ExecStartPre): see tls.VERIFIED_STORE
    except config.ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        return 1
    finally:
        tls.forget_verified()
    problem = _admin_socket_in_use(cfg)
    if problem:
        print(problem)
        return 1
    print(f"ok: {len(cfg.tenants)} tenants, {cfg.listener_count()} listeners")
    return 0


def _admin_socket_in_use(cfg) -> str | None:
    """Why ``run`` would refuse the config's admin socket: a process serves it that is not
    this instance's daemon (an existing socket is connected to, and asked for its status only
    when something answers). The running daemon of the same ``instance`` is the one a reload
    or restart applies this file to: its socket is fine. None when nothing is wrong."""
    from nsproxy import admin, schema

    path = cfg.admin_socket
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return None  # config.load has said what is wrong with it
        live = admin.answering(path)
    except OSError:
        # Gone, or not ours to connect to (check run by another user than the daemon's):
        # run, as root, decides.
        return None
    if not live:
        return None  # left by a daemon that died: run replaces it
    try:
        instance = admin.request(path, "status", timeout=10)["status"]["instance"]
    except (admin.AdminError, KeyError, TypeError):
        instance = None
    if instance == cfg.instance:
        return None
    who = (
        f"nsproxy instance {schema.shown(instance)}"
        if isinstance(instance, str)
        else f"not the nsproxy of instance {schema.shown(cfg.instance)}"
    )
    return schema.one_line(f"admin_socket: {path}: {admin.IN_USE} ({who})")


def cmd_run(args) -> int:
    from nsproxy.binder import early_signals

    early_signals.hold()  # first: a SIGHUP or SIGUSR1 while starting must not end the process
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s nsproxy %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    from nsproxy.binder import main as binder
    from nsproxy.binder import upgrade

    try:
        handoff = upgrade.take_handoff()
    except (OSError, ValueError) as exc:
        print(f"nsproxy: the state handed over by the previous binder is unreadable: {exc}",
              file=sys.stderr)  # fmt: skip
        return 1
    from nsproxy import tls

    tls.trust_verified()  # certificates `nsproxy check` has just loaded are not loaded again
    try:
        if handoff is None:
            cfg, data = binder.load_config(args.config)
        else:
            cfg, data, warning = upgrade.load_config(args.config, handoff)
            if warning:
                logging.getLogger("nsproxy").error("upgrade: %s", warning)
    except config.ConfigError as exc:
        for problem in exc.problems:
            print(f"nsproxy: {args.config}: {problem}", file=sys.stderr)
        return 1
    finally:
        if tls.verdicts["trusted"]:
            logging.getLogger("nsproxy").info(
                "certificates: %d sets found valid by nsproxy check were not loaded again, "
                "%d loaded",
                tls.verdicts["trusted"],
                tls.verdicts["loaded"],
            )
        tls.forget_verified()
    try:
        daemonlog.configure(
            args.log_level, getattr(cfg, "log_format", "text"), getattr(cfg, "log_path", None)
        )
    except OSError as exc:
        print(f"nsproxy: log.path {cfg.log_path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        import uvloop  # noqa: F401 (imported before the workers fork: shared, not per worker)
    except ImportError:
        logging.getLogger("nsproxy").info("uvloop not installed: workers use the asyncio loop")
    return asyncio.run(binder.serve(args.config, cfg, data, handoff))


def _socket_path(args) -> str:
    """The admin socket: ``--socket``, or ``admin_socket`` (else the default for
    ``instance``) of the ``--config`` file, both checked as ``nsproxy check`` checks them
    (the rest of the file is not: a daemon may run a file that has been edited since).
    Exits with one line when the file cannot be read or those keys are not valid."""
    from nsproxy import schema
    from nsproxy.config_schema import TOP

    if args.socket:
        return args.socket
    try:
        raw = config.parse_json(config.read_file(args.config))
    except config.ConfigError as exc:
        raise SystemExit(schema.one_line(f"nsproxy: {args.config}: {exc.problems[0]}")) from None
    if not isinstance(raw, dict):
        raise SystemExit(
            schema.one_line(f"nsproxy: {args.config}: the top level must be a JSON object")
        )
    found = {}
    for key, default in (("instance", "nsproxy"), ("admin_socket", None)):
        check = TOP.fields[key][0]
        try:
            found[key] = check.convert(raw[key]) if key in raw else default
        except schema.Invalid as exc:
            raise SystemExit(schema.one_line(f"nsproxy: {args.config}: {key}: {exc}")) from None
    return found["admin_socket"] or f"/run/nsproxy/{found['instance']}.sock"


def cmd_status(args) -> int:
    from nsproxy import admin, schema

    try:
        answer = admin.request(_socket_path(args), "status", timeout=30)
    except admin.AdminError as exc:
        print(schema.one_line(f"nsproxy: {exc}"), file=sys.stderr)
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


def cmd_upgrade(args) -> int:
    return _ask(args, "upgrade", 300, lambda answer: answer.get("message"), "")


def _ask(args, command: str, timeout: float, say, refused: str) -> int:
    """One admin command: print ``say(answer)`` and exit 0, or the reason and exit 1."""
    from nsproxy import admin, schema

    try:
        answer = admin.request(_socket_path(args), command, timeout=timeout)
    except admin.AdminError as exc:
        print(schema.one_line(f"nsproxy: {exc}"), file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(schema.one_line(f"nsproxy: {refused}{answer.get('error')}"), file=sys.stderr)
        return 1
    print(say(answer))
    return 0


def cmd_reload(args) -> int:
    return _ask(
        args, "reload", 120, lambda a: f"generation {a.get('generation')}", "reload refused: "
    )
