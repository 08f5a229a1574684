"""The services `nfguard run` is made of, built from one Config and held in one object.

Building them here, apart from the loop (daemon) and the reload (reloader), lets each of
those take what it needs by name, and lets new features add a service in one place. In
the main process this installs the ruleset (and starts the workers when asked for more
than one); a worker (`--worker N`) only binds its own queue.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from nfguard.audit import AuditLog
from nfguard.config import Config, load_config
from nfguard.control import ControlServer, Handler
from nfguard.engine import Engine
from nfguard.metrics import Latency, Sources, Stats, serve
from nfguard.names.inject import Refusals
from nfguard.names.peers import Peers
from nfguard.names.queries import queued
from nfguard.names.resolvers import TrustedServers
from nfguard.nft import PATH_DESCRIPTIONS, CounterReader, Installer, Ruleset, render
from nfguard.pipeline import Pipeline, make_name_cache
from nfguard.policy.build import build_engine
from nfguard.procs import Attributor
from nfguard.procs.containers import Containers
from nfguard.queue import QueueAdapter
from nfguard.ruleset_watch import RulesetGuard, open_events
from nfguard.undecided import Undecided, set_verdicts
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
        if self.config.control.socket:
            self.control = ControlServer(self.config.control.socket, handler)

    def close(self) -> None:
        """Stop everything, workers first; the ruleset stays in place (fail closed)."""
        if self.team is not None:
            self.team.stop()
        self.queue.close()
        if self.guard is not None:
            self.guard.close()
        self.attributor.close()
        self.refusals.close()
        self.audit.close()
        if self.control is not None:
            self.control.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()  # type: ignore[attr-defined]


def ruleset_for(config: Config, engine: Engine, queue_path: str) -> Ruleset:
    """The ruleset for this config; DNS queries queued only if some are judged."""
    return render(config.engine, queue_path, queued(config.names.queries, engine.policies.clients))


def build_services(config_path: str, worker: WorkerLink | None) -> Services:
    """Load the config and policy, install the ruleset (main process), bind the queue."""
    config = load_config(config_path)
    resolvers = TrustedServers(config.names.resolvers)
    engine = build_engine(config, resolvers)
    guard = None
    if worker is None:
        installer = Installer()
        queue_path = installer.probe_path()
        enforcing = config.engine.mode == "enforce" and config.engine.fail == "closed"
        guard = RulesetGuard(ruleset_for(config, engine, queue_path), installer,
                             open_events(), Undecided().cut if enforcing else None)
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
                        trusted=resolvers, refusals=refusals)
    pipeline.set_verdicts = set_verdicts  # flows that sent nothing by hello_timeout
    latency = Latency()
    queue = QueueAdapter(queue_num, pipeline.handle,
                         fail_open=config.engine.fail == "open",
                         maxlen=config.engine.queue_maxlen, latency=latency)
    pipeline.release = queue.release
    sources = Sources(stats, latency, queue=queue_num, names=pipeline.names,
                      attribution=attributor.stats, queue_errors=lambda: queue.errors,
                      workers=team.snapshots if team is not None else None,
                      restores=guard.count if guard else None,
                      kernel_counters=CounterReader() if worker is None else None)
    return Services(config_path=config_path, config=config, worker=worker,
                    queue_path=queue_path, queue_num=queue_num, guard=guard, team=team,
                    attributor=attributor, refusals=refusals, pipeline=pipeline, queue=queue,
                    sources=sources)
