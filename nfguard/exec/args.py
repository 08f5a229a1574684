"""The `nfguard exec` command line (kept light: the parser is built for every command)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", metavar="FILE_OR_DIR",
                        help="the command's policy (nfguard's format); reloaded on change")
    parser.add_argument("--allow", metavar="DEST", action="append", default=[],
                        help="also allow DEST: NAME[:PORT][/PROTO], '**.domain', CIDR")
    parser.add_argument("--audit", action="store_true",
                        help="let everything through; at the end, print what was reached "
                             "and the policy that allows it")
    parser.add_argument("--allow-all", action="store_true",
                        help="run unfiltered, still recorded")
    parser.add_argument("--quiet", action="store_true", help="no summary at the end")
    parser.add_argument("--as-root", action="store_true",
                        help="under sudo, run the command as root, not as the sudo caller")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
