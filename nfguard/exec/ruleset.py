"""The private engine's ruleset: the service's, scoped to one command's cgroup.

`nfguard.nft.ruleset.render` makes the same chains the service installs; `scope` renames
the table and puts a classifier in front of each hook chain, so only the command's packets
meet the rest (everything else passes there, in the kernel, without a trip to user space):
- on output, `socket cgroupv2 level N "<path>"` picks the command's sockets and tags
  the conntrack entries of the flows they start with a ct label of this exec's own (an
  entry another process made is not the command's to reuse: its packets there are cut);
- every hook chain (output, verdict, input: DNS answers) then follows that label, which
  also tells the xt queue rules (no nft `queue` on some kernels) of concurrent execs and
  the service apart: each matches its own label and queue number only.
nft resolves a cgroupv2 path under /sys/fs/cgroup; on a hybrid hierarchy (v2 mounted at
/sys/fs/cgroup/unified) the ruleset is loaded in a mount namespace of its own where the
v2 root is bound there, so the path resolves to the same cgroup.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from typing import NamedTuple

from nfguard import marks
from nfguard.config import EngineConfig
from nfguard.nft import XT
from nfguard.nft.installer import NftError
from nfguard.nft.ruleset import Ruleset, render
from nfguard.nft.xt import XT_TABLE, XT_TOOLS, XtRule

NFT_CGROUP_ROOT = "/sys/fs/cgroup"  # where nft looks a cgroupv2 path up
# The hook chains the classifier guards; `refusals` (before conntrack) stays as it is:
# it only ever touches the engine's own refusals of DNS queries.
SCOPED_CHAINS = ("output", "verdict", "input", "input_verdict")


class Scope(NamedTuple):
    """One command: its table, cgroup (path relative to the v2 root, and depth), the ct
    label its flows carry and the queue its engine reads."""

    table: str
    cgroup: str
    level: int
    label: int
    queue: int
    tag: str  # the comment of its xt rules

    def classifier(self, chain: str) -> str:
        socket = f'socket cgroupv2 level {self.level} "{self.cgroup}"'
        rules = []
        if chain == "output":
            rules.append(f"{socket} ct state new ct label set {self.label}"
                         "\t# the flows the command starts")
        rules.append(f"ct label {self.label} goto {chain}_command")
        if chain == "output":
            # An entry someone else made (a UDP flow lingers after its last packet) is
            # no judgement of the command: reusing its tuple is cut, not waved through.
            rules.append(f"{socket} ct direction original ct state established,related "
                         "jump cut\t# another's conntrack entry")
        if chain in ("output", "verdict"):
            rules.append(f"{socket} goto {chain}_command\t# without conntrack; replies")
        return "".join(f"\t\t{rule}\n" for rule in rules)


_CHAIN = re.compile(r"\tchain (?P<name>\w+) \{\n(?P<hook>\t\ttype [^\n]*\n)")


def render_scoped(settings: EngineConfig, path: str, queries: bool, scope: Scope) -> Ruleset:
    """The service's ruleset for the command alone (pure)."""
    base = render(replace(settings, queue=scope.queue, workers=1, forward_from=()), path,
                  queries)
    text = base.nft.replace("table inet nfguard {", f"table inet {scope.table} {{", 1)

    def split(found: re.Match[str]) -> str:
        name = found["name"]
        if name not in SCOPED_CHAINS:
            return found[0]
        return (f"\tchain {name} {{\n{found['hook']}{scope.classifier(name)}\t}}\n\n"
                f"\tchain {name}_command {{\n")

    text = _CHAIN.sub(split, text)
    return Ruleset(path, text, _xt_rules(scope) if path == XT else ())


def _xt_rules(scope: Scope) -> tuple[XtRule, ...]:
    """Its own queue rules, in front: the command's label, marked for the queue, not the
    engine's own refusals."""
    spec = ("-m", "connlabel", "--label", str(scope.label),
            "-m", "mark", "--mark", f"0x{marks.QUEUED:08x}/0x{marks.QUEUED:08x}",
            "-m", "mark", "!", "--mark", f"0x{marks.INJECTED:08x}/0x{marks.MASK:08x}",
            "-m", "comment", "--comment", scope.tag,
            "-j", "NFQUEUE", "--queue-num", str(scope.queue))
    return tuple(XtRule(binary, chain, 1, spec)
                 for binary in XT_TOOLS for chain in ("OUTPUT", "INPUT"))


# ---------------------------------------------------------------------------- loading


def _nft(text: str, cgroup_root: str) -> None:
    argv = ["nft", "-f", "-"]
    if cgroup_root.rstrip("/") != NFT_CGROUP_ROOT:
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f'mount --bind "$0" {NFT_CGROUP_ROOT} && exec nft -f -', cgroup_root]
    done = subprocess.run(argv, input=text, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NftError(done.stderr.strip())


def install(ruleset: Ruleset, scope: Scope, cgroup_root: str) -> None:
    """The table (replaced whole if a dead exec left one of this name), then its xt rules."""
    _nft(f"table inet {scope.table}\ndelete table inet {scope.table}\n{ruleset.nft}",
         cgroup_root)
    for rule in ruleset.xt_rules:
        done = subprocess.run([rule.binary, "-w", *rule.arguments()], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise NftError(f"{rule.command()}: {done.stderr.strip()}")


def uninstall(ruleset: Ruleset, scope: Scope) -> None:
    """Remove the xt rules and the table; what is already gone is fine. Never raises:
    it runs on the way out, also in the watchdog."""
    for rule in ruleset.xt_rules:
        subprocess.run([rule.binary, "-w", "-t", XT_TABLE, "-D", rule.chain, *rule.spec],
                       capture_output=True, check=False)
    subprocess.run(["nft", f"delete table inet {scope.table}"], capture_output=True,
                   check=False)
