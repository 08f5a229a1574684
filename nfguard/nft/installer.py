"""Loads nfguard's ruleset into the kernel and removes it: one nft transaction for the
table, one iptables-restore per family for the xt path's queue rules, and the probe that
picks the path. Needs CAP_NET_ADMIN; the pids of its own commits let the ruleset watch
tell nfguard's changes from others'.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections import deque

from nfguard.nft import NATIVE, TABLE, XT
from nfguard.nft.ruleset import Ruleset
from nfguard.nft.xt import XT_CHAINS, XT_COMMENT, XT_OLD_TABLES, XT_TABLE, XT_TOOLS, quote

OWN_PIDS = 256  # pids of nfguard's own recent commits remembered (Installer.pids)


class NftError(RuntimeError):
    """nft or iptables refused a change (its message)."""


class Installer:
    """Applies and removes the ruleset. Needs CAP_NET_ADMIN in the target network namespace."""

    def __init__(self) -> None:
        import nftables

        self._nft = nftables.Nftables()
        # Who commits nfguard's own changes: this process (libnftables) and each iptables
        # it ran, newest last; nfguard.ruleset_watch tells their batches from others'.
        self.pids: deque[int] = deque([os.getpid()], maxlen=OWN_PIDS)

    def _cmd(self, text: str) -> None:
        rc, _out, err = self._nft.cmd(text)
        if rc != 0:
            raise NftError(err.strip())

    def probe_path(self) -> str:
        """NATIVE if the kernel accepts an nft `queue` rule, else XT. Leaves nothing behind."""
        probe = f"table inet {TABLE}_probe {{\nchain c {{\nqueue num 0 bypass\n}}\n}}\n" \
                f"delete table inet {TABLE}_probe\n"
        rc, _out, _err = self._nft.cmd(probe)
        return NATIVE if rc == 0 else XT

    def installed(self) -> bool:
        rc, _out, _err = self._nft.cmd(f"list table inet {TABLE}")
        return rc == 0

    def install(self, ruleset: Ruleset) -> None:
        """Our table, then the xt queue rules (idempotent)."""
        self.install_table(ruleset)
        self.install_xt(ruleset)

    def install_table(self, ruleset: Ruleset) -> None:
        """Atomic replace of our table (one transaction)."""
        self._cmd(f"table inet {TABLE}\ndelete table inet {TABLE}\n{ruleset.nft}")

    def install_xt(self, ruleset: Ruleset) -> None:
        """The xt queue rules: ours removed wherever they are, then inserted by one
        iptables-restore per family (a process each instead of one per rule)."""
        self._remove_xt_rules()
        for tool in XT_TOOLS:
            lines = [" ".join(map(quote, ("-I", rule.chain, str(rule.position), *rule.spec)))
                     for rule in ruleset.xt_rules if rule.binary == tool]
            if lines:
                text = f"*{XT_TABLE}\n" + "\n".join(lines) + "\nCOMMIT\n"
                self._run([_xt_restore_binary(tool), "-w", "--noflush"], text)

    def _run(self, argv: list[str], text: str | None = None, check: bool = True) -> None:
        with subprocess.Popen(argv, stdin=subprocess.PIPE if text else subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) as process:
            self.pids.append(process.pid)
            _out, err = process.communicate(text)
        if check and process.returncode != 0:
            raise NftError(f"{' '.join(argv)}: {err.strip()}")

    def uninstall(self) -> bool:
        """Remove exactly what install added; True if anything was there."""
        removed = self._remove_xt_rules()
        if removed:
            self._remove_empty_xt_chains()
        if self.installed():
            self._cmd(f"delete table inet {TABLE}")
            removed = True
        return removed

    def _remove_xt_rules(self) -> bool:
        removed = False
        for binary in map(_xt_binary, XT_TOOLS):
            if not shutil.which(binary):
                continue
            for table in (XT_TABLE, *XT_OLD_TABLES):
                for chain, spec in _tagged_rules(binary, table):
                    # unchecked: a flush between the listing and here took it already
                    self._run([binary, "-w", "-t", table, "-D", chain, *spec],
                              check=False)
                    removed = True
        return removed

    def _remove_empty_xt_chains(self) -> None:
        """iptables-nft makes XT_TABLE and its chains as rules need them, and leaves them
        when the last rule goes. An empty chain that accepts only costs each packet a hook:
        dropped, and the table with its last chain (iptables-nft makes them again when a
        rule needs them). Chains with rules, or that drop, are someone's, and stay."""
        for family in ("ip", "ip6"):
            rc, listing, _err = self._nft.json_cmd({"nftables": [
                {"list": {"table": {"family": family, "name": XT_TABLE}}}]})
            if rc == 0:
                commands = _empty_chain_deletions(family, listing["nftables"])
                if commands:
                    self._cmd("\n".join(commands))


def _empty_chain_deletions(family: str, items: list[dict]) -> list[str]:
    """nft commands that delete XT_TABLE's empty accepting base chains from its JSON listing,
    and the table when nothing else is in it."""
    used = {item["rule"]["chain"] for item in items if "rule" in item}
    chains = [item["chain"] for item in items if "chain" in item]
    idle = [chain["name"] for chain in chains
            if chain.get("policy") == "accept" and chain["name"] not in used]
    others = any(not {"metainfo", "table", "chain"} & item.keys() for item in items)
    if len(idle) == len(chains) and not others:
        return [f"delete table {family} {XT_TABLE}"]
    return [f"delete chain {family} {XT_TABLE} {name}" for name in idle]


def _tagged_rules(binary: str, table: str) -> list[tuple[str, list[str]]]:
    """Our rules in `table`'s XT_CHAINS, as (chain, the rule as `-S` prints it, to be passed
    to `-D`): one listing of the whole table."""
    listing = subprocess.run([binary, "-w", "-t", table, "-S"], capture_output=True,
                             text=True, check=False)
    if listing.returncode != 0:
        return []
    rules = []
    for line in listing.stdout.splitlines():
        if f'--comment "{XT_COMMENT}"' not in line:
            continue
        words = shlex.split(line)
        if len(words) > 2 and words[0] == "-A" and words[1] in XT_CHAINS:
            rules.append((words[1], words[2:]))
    return rules


def _xt_binary(tool: str) -> str:
    """The nft-backed variant where both are installed (iptables-legacy would not mix)."""
    return f"{tool}-nft" if shutil.which(f"{tool}-nft") else tool


def _xt_restore_binary(tool: str) -> str:
    """iptables-nft-restore where both variants are installed (see _xt_binary)."""
    return f"{tool}-nft-restore" if shutil.which(f"{tool}-nft-restore") else f"{tool}-restore"

