"""The services `nfguard run` is made of, built from one Config and held in one object.

Building them here, apart from the loop (daemon) and the reload (reloader), lets each of
those take what it needs by name, and lets new features add a service in one place. In
the main process this installs the ruleset (and starts the workers when asked for more
than one); a worker (`--worker N`) only binds its own queue.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from nfguard.audit import AuditLog
from nfguard.config import Config, group_id, load_config
from nfguard.control import ControlServer, Handler
from nfguard.engine import Engine
from nfguard.exec.requests import COMMANDS as EXEC_COMMANDS
from nfguard.exec.requests import ExecRequests
from nfguard.exec.transient import Transients
from nfguard.hostnets import HostNetworks
from nfguard.metrics.counts import Latency, Stats
from nfguard.metrics.exporter import serve
from nfguard.metrics.sources import Sources, build, running_modes
from nfguard.names.inject import Refusals
from nfguard.names.peers import Peers
from nfguard.names.queries import queued
from nfguard.names.resolvers import TrustedServers
from nfguard.nft import PATH_DESCRIPTIONS
from nfguard.nft.counters import CounterReader
from nfguard.nft.installer import Installer
from nfguard.nft.ruleset import Ruleset, render
from nfguard.onetrip import OneTrip, nft_apply
from nfguard.pipeline import Pipeline, make_name_cache
from nfguard.policy.build import build_engine
from nfguard.procs import Attributor
from nfguard.procs.containers import Containers
from nfguard.queue import QueueAdapter
from nfguard.ruleset_watch import RulesetGuard, open_events
from nfguard.undecided import Undecided, kernel_pending, set_verdicts
from nfguard.workers import Team, WorkerLink

log = logging.getLogger(__name__)


@dataclass
class Services:
    """What one engine process runs. `config` is the running one (a reload replaces it);
    the audit log is the pipeline's (a reload may replace that too). guard, team, control
    and metrics_server exist in the main process only (control and metrics once `listen`
    started them)."""

    config_path: str
    config: Config
    worker: WorkerLink | None
    queue_path: str
    queue_num: int
    guard: RulesetGuard | None
    team: Team | None
    attributor: Attributor
    refusals: Refusals
    pipeline: Pipeline
    queue: QueueAdapter
    sources: Sources
    control: ControlServer | None = None
    metrics_server: object | None = None
    # `nfguard exec` commands' clients, in front of the host's (every engine the reloads
    # build asks them first), and the control requests that add and end them.
    transients: Transients = field(default_factory=Transients)
    exec: ExecRequests | None = None

    @property
    def audit(self) -> AuditLog:
        return self.pipeline.audit

    def ruleset(self, config: Config, engine: Engine) -> Ruleset:
        """The ruleset for this config; DNS queries queued only if some are judged."""
        return ruleset_for(config, engine, self.queue_path)

    def summary(self) -> str:
        """One line for systemd's status (sd_notify STATUS=)."""
        engine = self.pipeline.engine
        return (f"{self.config.engine.mode}, {engine.policies.source.rule_count} rules, "
                f"queue {self.config.engine.queue}")

    def listen(self, handler: Handler) -> None:
        """Start the metrics exporter and the control socket (main process only)."""
        if self.worker is not None:
            return
        self.metrics_server = serve(self.config.metrics, self.sources)
        control = self.config.control
        if control.socket:
            self.control = ControlServer(control.socket, handler,
                                         group_id(control.group) if control.group else None,
                                         EXEC_COMMANDS)

    def transients_changed(self) -> None:
        """An exec client came or went: DNS queries are queued while any exists (its
        queries are judged whatever [names] queries says for the host)."""
        guard = self.guard
        if guard is None:
            return
        ruleset = self.ruleset(self.config, self.pipeline.engine)
        if ruleset != guard.ruleset:
            guard.ruleset = ruleset
            guard.install()

    def close(self) -> None:
        """Stop everything, workers first; the ruleset stays in place (fail closed)."""
        if self.team is not None:
            self.team.stop()
        self.queue.close()
        if self.guard is not None:
            self.guard.close()
        self.attributor.close()
        self.refusals.close()
        self.pipeline.flush_events()
        self.audit.close()
        if self.control is not None:
            self.control.close()
        if self.exec is not None:
            self.exec.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()  # type: ignore[attr-defined]


def ruleset_for(config: Config, engine: Engine, queue_path: str) -> Ruleset:
    """The ruleset for this config; DNS queries queued only if some are judged (an exec
    client's always are)."""
    return render(config.engine, queue_path,
                  queued(config.names.queries, engine.policies.clients)
                  or bool(engine.transients))


def build_services(config_path: str, worker: WorkerLink | None) -> Services:
    """Load the config and policy, install the ruleset (main process), bind the queue."""
    config = load_config(config_path)
    resolvers = TrustedServers(config.names.resolvers)
    hostnets = HostNetworks()  # for [names] private; the loop follows them
    engine = build_engine(config, resolvers, hostnets)
    engine.transients = transients = Transients()
    guard = None
    if worker is None:
        installer = Installer()
        queue_path = installer.probe_path()
        enforcing = config.engine.mode == "enforce" and config.engine.fail == "closed"
        guard = RulesetGuard(ruleset_for(config, engine, queue_path), installer,
                             open_events(),
                             Undecided(config.engine.forward_from).cut if enforcing else None)
        guard.install()
        log.info("ruleset installed; queue path: %s", PATH_DESCRIPTIONS[queue_path])
    else:
        queue_path = worker.queue_path
    queue_num = config.engine.queue + (worker.index if worker is not None else 0)
    log.info("policy: %d clients, %d policies, %d rules; mode %s, default %s, fail %s",
             len(engine.policies.clients), len(engine.policies.policies),
             engine.policies.source.rule_count, config.engine.mode, config.engine.default,
             config.engine.fail)
    stats = Stats(policy_loaded_at=time.time(), policy_rules=engine.policies.source.rule_count)
    audit = AuditLog(config.audit.path, config.audit.format)
    attributor = Attributor(containers=Containers(config.containers))
    log.info("attribution: cgroup v2 at %s; process events %s; socket owners recorded "
             "by eBPF: %s; execs seen: %s",
             attributor.cgroup_root or "(not mounted: by owner uid)",
             "on" if attributor.live_members else "off (cgroup.procs read per miss)",
             "on" if attributor.recorded_owners
             else f"off ({attributor.owners_error}; /proc searched)", attributor.exec_times)
    team = None
    if worker is None and config.engine.workers > 1:
        team = Team(config_path, config.engine.workers, queue_path,
                    verbose=log.isEnabledFor(logging.DEBUG)).start()
    peers = (worker.peers() if worker is not None
             else Peers(team.inbox, team.outboxes) if team is not None
             else None)
    refusals = Refusals()  # the raw sockets that answer refused DNS queries
    # The name cache lives as long as the daemon: reloads keep what DNS taught it.
    pipeline = Pipeline(engine, audit, stats, names=make_name_cache(config.names),
                        settings=config.names, attributor=attributor, peers=peers,
                        trusted=resolvers, refusals=refusals, hostnets=hostnets)
    pipeline.set_verdicts = set_verdicts  # flows that sent nothing by hello_timeout
    if worker is None and team is None:
        # One trip for flows decided by name (one engine only: with workers, a flow the
        # kernel made pending could not be told whose it is when it stays silent).
        pipeline.use_one_trip(OneTrip(nft_apply(), time.time,
                                      guard.count if guard is not None else lambda: 0))
        pipeline.kernel_pending = kernel_pending
    pipeline.defer_events = True  # written after the verdicts of each batch
    latency = Latency()
    queue = QueueAdapter(queue_num, pipeline.handle,
                         fail_open=config.engine.fail == "open",
                         maxlen=config.engine.queue_maxlen, latency=latency)
    pipeline.release = queue.release
    queue.after_batch = pipeline.flush_events
    sources = Sources(stats, latency, queue=queue_num, names=pipeline.names,
                      attribution=attributor.stats, queue_errors=lambda: queue.errors,
                      workers=team.snapshots if team is not None else None,
                      restores=guard.count if guard else None,
                      kernel_counters=CounterReader() if worker is None else None,
                      build=build(queue_path),
                      # the engine and the audit log a reload swapped in
                      modes=lambda: running_modes(pipeline.engine.settings.mode,
                                                  pipeline.engine.policies.clients),
                      audit=lambda: pipeline.audit.figures())
    services = Services(config_path=config_path, config=config, worker=worker,
                        queue_path=queue_path, queue_num=queue_num, guard=guard, team=team,
                        attributor=attributor, refusals=refusals, pipeline=pipeline,
                        queue=queue, sources=sources, transients=transients)
    if worker is None:
        # Several workers each judge a share of the flows with their own engine: a
        # transient client in the main process alone would miss the others' shares.
        services.exec = ExecRequests(
            transients, lambda: pipeline.engine, attributor.cgroup_root,
            services.transients_changed,
            refusal=None if config.engine.workers == 1 else
            "this service runs engine.workers > 1: nfguard exec under it needs 1")
    return services
