"""The `nfguard` command line (also `python -m nfguard`)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from nfguard import journal
from nfguard.config import DEFAULT_PATH, load_config
from nfguard.package import version
from nfguard.policy.load import PolicyError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(journal.formatter(sys.stderr, os.environ))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        handlers=[handler])
    try:
        return int(args.func(args))
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:
        # nft/netlink refusals (not root, no CAP_NET_ADMIN, queue already bound, ...).
        hint = " (nfguard needs root or CAP_NET_ADMIN)" if os.geteuid() != 0 else ""
        print(f"nfguard: error: {exc}{hint}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nfguard", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"nfguard {version()}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, func: object, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", default=DEFAULT_PATH, metavar="PATH",
                         help=f"default {DEFAULT_PATH}")
        sub.set_defaults(func=func)
        return sub

    run = command("run", _run, "run the engine in the foreground (installs the ruleset if needed)")
    # engine.workers > 1: how the main process starts the others (nfguard.workers)
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    install = command("install", _install, "install the nftables ruleset, or with --systemd "
                      "the systemd unit")
    install.add_argument("--dry-run", action="store_true", help="print it, load nothing")
    install.add_argument("--systemd", action="store_true",
                         help="install the systemd unit (nfguard.service) instead, and the "
                         "default config and policy where --config names none; the service "
                         "installs the ruleset when it starts")
    install.add_argument("--unit-dir", default=None, metavar="DIR",
                         help="where --systemd writes the unit (default /etc/systemd/system)")
    command("uninstall", _uninstall, "remove everything nfguard added to the ruleset")
    command("check", _check, "validate the config and every policy file")
    status = command("status", _status, "what the running daemon is doing")
    status.add_argument("--json", action="store_true", help="the daemon's answer as JSON")
    reload = command("reload", _reload, "re-read config and policy in the running daemon; "
                     "exit 1 (and the running policy stays) if they have errors")
    names = command("names", _names, "what the running daemon's name cache holds for an "
                    "address or a name, and which DNS answer taught it")
    names.add_argument("query", nargs="?", default="", metavar="ADDR|NAME",
                       help="an address or a name (none: every pair, most recent first)")
    names.add_argument("--json", action="store_true", help="the daemon's answer as JSON")
    for sub in (status, reload, names):
        sub.add_argument("--socket", metavar="PATH",
                         help="the daemon's control socket (default: control.socket of --config)")
    log = command("log", _log, "decisions from the audit log as lines a person reads "
                  "(coloured on a terminal; NO_COLOR turns it off)")
    log.add_argument("-f", "--follow", action="store_true",
                     help="then show new decisions as they are written, across log rotation")
    log.add_argument("--deny", action="store_true",
                     help="only what the policy denies (in audit mode too)")
    log.add_argument("--client", metavar="NAME", help="only this client's decisions")
    log.add_argument("--since", metavar="TIME",
                     help="only from TIME on (10m, 2h, 1d, 14:30, 2026-12-07T14:30); rotated "
                     "files written since are read too")
    log.add_argument("-n", "--lines", type=int, metavar="N",
                     help="only the last N of what was written before (default: all; 10 "
                     "with -f)")
    log.add_argument("--json", action="store_true", help="the events as JSON lines, unchanged")
    log.add_argument("--file", metavar="PATH",
                     help="the audit log to read (default: audit.path of --config)")
    explain = command("explain", _explain, "which client, policy and rule decide a flow, and why")
    explain.add_argument("--to", required=True, metavar="HOST_OR_IP[:PORT]")
    explain.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    explain.add_argument("--exe", metavar="PATH", help="executable of the client process")
    explain.add_argument("--user", help="user name (or uid) of the client process")
    explain.add_argument("--interface", metavar="NAME",
                         help="a forwarded flow (a container's, a VM's) coming in on NAME; "
                         "with --exe/--user, from that process in the container")
    explain.add_argument("--source", metavar="ADDR", type=_address,
                         help="a routed or forwarded flow from source address ADDR "
                         "(clients' match.source); with --interface, coming in on it")
    explain.add_argument("--container", metavar="NAME",
                         help="from a process in the container named NAME")
    explain.add_argument("--image", metavar="REF",
                         help="from a process in a container of image REF (a reference, "
                         "or an image id: sha256:...)")
    suggest = commands.add_parser("suggest", help="a policy (TOML) that allows what audit "
                                  "events show", description="a policy (TOML on stdout) that "
                                  "allows the flows and DNS queries in audit logs; with "
                                  "--policy, what the policy in DIR would deny or refuse of "
                                  "them instead")
    suggest.add_argument("audit", nargs="+", metavar="AUDIT.jsonl",
                         help='audit logs (JSON lines; .gz read as gzip; "-" for stdin)')
    suggest.add_argument("--policy", metavar="DIR",
                         help="list what this policy would deny (flows) or refuse (queries); "
                         "exit 1 if it would deny or refuse any (0 if none, 2 if a log or "
                         "the policy cannot be read)")
    suggest.add_argument("--default", choices=("deny", "allow"), default="deny",
                         help="engine.default assumed with --policy (default deny)")
    suggest.add_argument("--private", choices=("allow", "deny"), default="allow",
                         help="[names] private assumed with --policy (default allow)")
    suggest.add_argument("--min-siblings", type=int, default=3, metavar="N",
                         help="names under one registrable domain that collapse into a "
                         "wildcard (default 3; 0 never)")
    suggest.set_defaults(func=_suggest)
    exec_ = command("exec", _exec, "run one command (and everything it starts) under a "
                    "policy of its own; exits with its status")
    from nfguard.exec.args import add_arguments

    add_arguments(exec_)
    return parser


def _exec(args: argparse.Namespace) -> int:
    from nfguard.exec.main import run

    if not args.verbose:  # stderr is the command's too: only what needs saying
        logging.getLogger().setLevel(logging.WARNING)
    return run(args)


def _run(args: argparse.Namespace) -> int:
    from nfguard.daemon import Daemon
    from nfguard.workers import ENV, WorkerLink

    worker = None
    if args.worker is not None:
        if ENV not in os.environ:
            raise RuntimeError("--worker is started by the main nfguard process only")
        worker = WorkerLink.from_env(os.environ[ENV])
    return Daemon(args.config, worker).run()


def _install(args: argparse.Namespace) -> int:
    from nfguard.nft import NATIVE, PATH_DESCRIPTIONS
    from nfguard.nft.installer import Installer, NftError
    from nfguard.nft.ruleset import render

    if args.systemd:
        return _install_unit(args)
    config = load_config(args.config)
    try:
        installer = Installer()
        path = installer.probe_path()
    except (OSError, NftError) as exc:
        if not args.dry_run:
            raise
        print(f"# cannot probe the kernel ({exc}); showing the native path", file=sys.stderr)
        installer, path = None, NATIVE
    ruleset = render(config.engine, path)
    if args.dry_run:
        print(ruleset.describe(), end="")
        return 0
    assert installer is not None
    installer.install(ruleset)
    print(f"nfguard ruleset installed; queue path: {PATH_DESCRIPTIONS[path]}")
    return 0


def _install_unit(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    from nfguard import package, service

    unit = service.render_unit(service.this_command(), os.path.abspath(args.config))
    if args.dry_run:
        if os.path.exists(args.config):
            load_config(args.config)
        print(unit, end="")
        return 0
    # A host set up by `pip install` alone has no config yet: the package's default one
    # (audit mode) and base.toml, as ./bootstrap.sh run and the Debian package lay them out.
    for path in package.install_defaults(args.config):
        print(f"wrote {path} (the default shipped with nfguard {version()})")
    directory = Path(args.unit_dir or service.UNIT_DIR)
    path = directory / service.UNIT_NAME
    directory.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(unit, encoding="utf-8")
    temporary.chmod(0o644)
    temporary.replace(path)
    print(f"installed {path}")
    if args.unit_dir is None and os.path.isdir("/run/systemd/system"):  # systemd is running
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        print("start it with: systemctl enable --now nfguard")
    return 0


def _daemon_request(args: argparse.Namespace, command: str, **arguments: Any) -> dict | None:
    from nfguard.config import control_socket
    from nfguard.control import ControlError, request

    path = args.socket or control_socket(args.config)
    if not path:
        print(f"nfguard: control.socket is off in {args.config}", file=sys.stderr)
        return None
    try:
        return request(path, command, **arguments)
    except ControlError as exc:
        print(f"nfguard: {exc}", file=sys.stderr)
        return None


def _status(args: argparse.Namespace) -> int:
    from nfguard.logview import wants_colour
    from nfguard.status import render_status

    colour = wants_colour(sys.stdout.isatty(), os.environ)
    return _show(args, "status", "status", lambda status: render_status(status, colour))


def _names(args: argparse.Namespace) -> int:
    from nfguard.names import listing

    return _show(args, "names", "names", listing.render, query=args.query)


def _show(args: argparse.Namespace, command: str, key: str, render: Callable[[Any], str],
          **arguments: Any) -> int:
    """Ask the daemon and print its answer's `key`: as JSON with --json, else rendered."""
    import json

    answer = _daemon_request(args, command, **arguments)
    if answer is None:
        return 1
    if not answer.get("ok"):
        print(f"nfguard: {answer.get('error')}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer[key], indent=2))
    else:
        print(render(answer[key]), end="")
    return 0


def _reload(args: argparse.Namespace) -> int:
    answer = _daemon_request(args, "reload")
    if answer is None:
        return 1
    if not answer.get("ok"):
        print(f"nfguard: reload rejected, the running policy stays:\n{answer.get('error')}",
              file=sys.stderr)
        return 1
    for warning in answer.get("warnings", []):
        print(f"nfguard: warning: {warning}", file=sys.stderr)
    print(f"nfguard: reloaded, {answer.get('rules')} rules")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    from nfguard.nft.installer import Installer

    # The config is not read: what install added is known without it, and a config broken
    # since (or gone) must not keep the ruleset in place (the Debian package's prerm).
    removed = Installer().uninstall()
    print("nfguard ruleset removed" if removed else "nfguard ruleset was not installed")
    return 0


def _check(args: argparse.Namespace) -> int:
    from nfguard.policy.load import load_policy_dir

    config = load_config(args.config)
    policies = load_policy_dir(config.engine.policy_dir)
    print(f"{args.config}: ok; {len(policies.files)} policy files, {len(policies.clients)} "
          f"clients, {len(policies.policies)} policies, {policies.rule_count} rules")
    return 0


def _log(args: argparse.Namespace) -> int:
    import time

    from nfguard import follow, logview

    path = args.file
    if path is None:
        audit = load_config(args.config).audit
        path = audit.path
        if path == "-" or audit.format != "json":
            print(f"nfguard log: {args.config} writes the audit log "
                  f"{'to stdout' if path == '-' else 'as text'}; it reads JSON audit files "
                  "(journalctl -u nfguard shows stdout)", file=sys.stderr)
            return 2
    try:
        since = logview.parse_since(args.since, time.time()) if args.since else None
    except ValueError as exc:
        print(f"nfguard log: {exc}", file=sys.stderr)
        return 2
    colour = not args.json and logview.wants_colour(sys.stdout.isatty(), os.environ)
    return follow.show(path, logview.Filter(args.deny, args.client, since), follow=args.follow,
                       lines=args.lines, as_json=args.json, colour=colour)


def _explain(args: argparse.Namespace) -> int:
    from nfguard.explain import explain

    config = load_config(args.config)
    host, port = _split_target(args.to)
    print(explain(config, host, port, args.proto, exe=args.exe, user=args.user,
                  interface=args.interface, container=args.container, image=args.image,
                  source=args.source, resolve=socket.getaddrinfo))
    return 0


SUGGEST_CLEAN, SUGGEST_DENIED, SUGGEST_ERROR = 0, 1, 2  # `suggest --policy` exit codes


def _suggest(args: argparse.Namespace) -> int:
    """Exits SUGGEST_DENIED when the policy of --policy denies a flow or refuses a query of
    the audit logs (a CI gate), SUGGEST_ERROR when a log or the policy cannot be read."""
    try:
        return _suggest_or_judge(args)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return SUGGEST_ERROR


def _suggest_or_judge(args: argparse.Namespace) -> int:
    import gzip

    from nfguard.config import SYSTEM_RESOLVERS
    from nfguard.hostnets import HostNetworks
    from nfguard.names.resolvers import TrustedServers
    from nfguard.policy.load import load_policy_dir
    from nfguard.suggest.build import suggest
    from nfguard.suggest.check import denied, refused, render_denied
    from nfguard.suggest.events import read_flows, with_carriers
    from nfguard.suggest.text import comment_text

    policies = load_policy_dir(args.policy) if args.policy else None
    sources = []
    for path in args.audit:
        try:
            if path == "-":
                sources.append(("<stdin>", sys.stdin.buffer.readlines()))
            else:
                opener = gzip.open if path.endswith(".gz") else open
                with opener(path, "rb") as file:
                    sources.append((path, file.readlines()))
        except (OSError, EOFError) as exc:  # EOFError: a truncated .gz
            print(f"nfguard suggest: cannot read {path}: {exc}", file=sys.stderr)
            return SUGGEST_ERROR
    read = read_flows(sources)
    if read.malformed or read.without_flow:
        print(f"nfguard suggest: skipped {read.malformed} lines that are not audit events and "
              f"{read.without_flow} events without a flow", file=sys.stderr)
        for example in read.examples:
            print(f"  {comment_text(example)}", file=sys.stderr)
    if not read.flows and not read.queries:
        print("nfguard suggest: no flows found", file=sys.stderr)
    resolvers = TrustedServers(SYSTEM_RESOLVERS).serves  # "@resolvers": this host's
    hostnets = HostNetworks()  # this host's networks are inside too
    if policies is not None:
        found = denied(read.flows, policies, args.default, resolvers, read.queries,
                       args.private, hostnets.kind)
        total = len(with_carriers(read.flows, read.queries))
        refusals = refused(read.queries, policies, args.default) if read.queries else None
        print(render_denied(found, total, args.policy, args.default, refusals,
                            len(read.queries)), end="")
        return SUGGEST_DENIED if found or refusals else SUGGEST_CLEAN
    else:
        print(suggest(read.flows, args.min_siblings, resolvers, read.queries,
                      hostnets.kind_of), end="")
    return 0


def _split_target(target: str) -> tuple[str, int | None]:
    """"host", "host:443", "1.2.3.4:80", "[2001:db8::1]:443", "2001:db8::1"."""
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    try:
        ipaddress.ip_address(target)
        return target, None
    except ValueError:
        pass
    host, sep, port = target.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return target, None


def _address(text: str) -> str:
    """An --source: an IPv4 or IPv6 address, as the engine writes it."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None
