"""Config + policy files -> a ready Engine, as `run`, a reload, `explain` and `suggest` need.

It lives with the policy, not the daemon, so the tools that only judge flows import no
queue, ruleset or control socket."""

from __future__ import annotations

from pathlib import Path

from nfguard.config import Config
from nfguard.engine import Engine
from nfguard.names.resolvers import TrustedServers
from nfguard.policy.collector import collector_paused
from nfguard.policy.load import load_policy_dir
from nfguard.policy.match import CompiledPolicySet


def build_engine(config: Config, resolvers: TrustedServers | None = None) -> Engine:
    """Config + every policy file -> a ready engine; raises PolicyError naming file and line.
    `resolvers`: the running daemon's (a reload configures it); None: the host's now."""
    resolvers = resolvers or TrustedServers(config.names.resolvers)
    return Engine(config.engine, compile_policy_dir(config.engine.policy_dir),
                  verify=config.names.verify, resolvers=resolvers.serves)


def compile_policy_dir(directory: str | Path) -> CompiledPolicySet:
    """Read, check and compile every policy file, as at start and on reload, in one
    collector pause (see policy.collector: what the build made is frozen at its end)."""
    with collector_paused():
        return CompiledPolicySet(load_policy_dir(directory))
