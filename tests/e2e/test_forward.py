"""Forwarded traffic end to end: a container behind a bridge on the client host (as Docker
sets one up) is judged like a local process, by the interface its flows come in on and the
process inside that sent them; its DNS answers teach names; the host's own iptables rules
still apply to flows nfguard allows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.lab import (
    ALLOWED_V4,
    ALLOWED_V6,
    CONTAINER_V4,
    CONTAINER_V6,
    OTHER_V4,
    OTHER_V6,
    SERVER_V4,
    Lab,
)
from tests.e2e.test_clients import CURL, PYTHON, urllib_get
from tests.unit.procs.test_containers import CONTAINERD_SPEC, CRIO_SPEC

CUT = {7, 56}  # curl: refused / reset during connect or receive

POLICY = f"""
    [[client]]
    name = "containers"
    match = {{ interface = "docker0" }}
    policies = ["web"]

    [[policy]]
    name = "web"

    [[policy.rule]]
    name = "dns"
    action = "allow"
    to = ["{SERVER_V4}"]
    ports = [53]

    [[policy.rule]]
    name = "server"
    action = "allow"
    to = ["{ALLOWED_V4}", "{ALLOWED_V6}", "allowed.test"]
    ports = [80]
    proto = "tcp"
"""


def from_container(event: dict, address: str) -> bool:
    return event["source"]["ip"] == address


@pytest.mark.parametrize(("source", "allowed", "other"), [
    (CONTAINER_V4, ALLOWED_V4, OTHER_V4), (CONTAINER_V6, ALLOWED_V6, OTHER_V6)],
    ids=["ipv4", "ipv6"])
def test_a_containers_flows_are_judged_by_its_interface(
        lab: Lab, source: str, allowed: str, other: str) -> None:
    lab.add_container("docker0")
    lab.serve_http(80)
    lab.start_engine(lab.write_config(POLICY))

    assert lab.curl(allowed, 80, ns=lab.container) == (0, "port 80\n")
    code, _ = lab.curl(other, 80, ns=lab.container)
    assert code in CUT, "default deny: cut at once"
    allow = lab.wait_for_event(lambda e: from_container(e, source)
                               and e["destination"]["ip"] == allowed)
    assert allow["event"]["action"] == "allow"
    assert allow["nfguard"]["client"] == "containers"
    assert allow["rule"]["name"] == "web/server"
    assert allow["observer"] == {"ingress": {"interface": {"name": "docker0"}}}
    # found in the container's network namespace, through /proc
    assert allow["process"]["executable"] == CURL and allow["process"]["pid"] > 0
    assert allow["user"]["id"] == "0"
    deny = lab.wait_for_event(lambda e: from_container(e, source)
                              and e["destination"]["ip"] == other)
    assert (deny["event"]["action"], deny["event"]["reason"]) == ("deny", "no_rule_match")
    # the host's own processes have no ingress interface: the containers' client is not
    # theirs (no client matches them, so the default decides)
    code, _ = lab.curl(allowed, 80)
    assert code in CUT
    host = lab.wait_for_event(lambda e: e["source"]["ip"] not in (CONTAINER_V4, CONTAINER_V6)
                              and e["destination"]["ip"] == allowed)
    assert host["event"]["reason"] == "no_client_match" and "observer" not in host


def start_with_curl_clients(lab: Lab, name: str, origin: str,
                            containers: dict | None = None) -> None:
    """The engine on POLICY's policies with two clients: the host's own curl, denied
    everything (it must never cover a container's), then `name`, curl where `origin`
    (a match key) holds, allowed the web."""
    clients = f"""
    [[client]]
    name = "host-curl"
    match = {{ exe = "{CURL}" }}
    policies = ["deny-all"]

    [[client]]
    name = "{name}"
    match = {{ {origin}, exe = "{CURL}" }}
    policies = ["web"]

    [[policy]]
    name = "deny-all"
    """
    lab.start_engine(lab.write_config(
        POLICY.replace(POLICY[:POLICY.index("[[policy]]")], clients, 1), containers=containers))


def test_a_container_program_is_matched_only_with_its_interface(lab: Lab) -> None:
    """curl inside the container is allowed by a client of the bridge and curl's path;
    python there is not; the host's own curl client does not cover the container's curl."""
    lab.add_container("docker0")
    lab.serve_http(80)
    start_with_curl_clients(lab, "container-curl", 'interface = "docker0"')
    url = f"http://{ALLOWED_V4}:80/"
    assert lab.curl(ALLOWED_V4, 80, ns=lab.container) == (0, "port 80\n")
    assert urllib_get(lab, url, ns=lab.container) != "ok"
    curl = lab.wait_for_event(lambda e: from_container(e, CONTAINER_V4)
                              and e["event"]["action"] == "allow")
    assert curl["nfguard"]["client"] == "container-curl"
    python = lab.wait_for_event(lambda e: from_container(e, CONTAINER_V4)
                                and e["event"]["action"] == "deny")
    assert python["process"]["executable"] == PYTHON
    assert python["event"]["reason"] == "no_client_match"
    assert python["observer"]["ingress"]["interface"]["name"] == "docker0"


IMAGE_ID = "sha256:" + "5eed" * 16


@pytest.mark.parametrize("image", ["nfguard-test/build:*", IMAGE_ID[:19] + "*"],
                         ids=["reference", "id"])
def test_a_container_is_matched_by_its_image(lab: Lab, docker_scope: Path, image: str) -> None:
    """A process in a Docker container's cgroup, the container recorded in Docker's
    data-root: curl there is allowed by a client of the image (by the reference it was
    started from, or by the image's id) and curl's path, behind the bridge and on the
    host's own network alike; the same curl outside the container is not, nor does the
    host's exe-only curl client cover the container's."""
    container_id = docker_scope.name.removeprefix("docker-").removesuffix(".scope")
    state = lab.workdir / "docker" / "containers" / container_id
    state.mkdir(parents=True)
    (state / "config.v2.json").write_text(json.dumps(
        {"ID": container_id, "Name": "/ci-build-17", "Image": IMAGE_ID,
         "Config": {"Image": "nfguard-test/build:1", "Labels": {}}}))
    lab.add_container("docker0")
    lab.serve_http(80)
    start_with_curl_clients(lab, "build-curl", f'image = "{image}"',
                            containers={"docker_root": str(lab.workdir / "docker")})
    in_scope = ("sh", "-c", 'echo $$ > "$0"/cgroup.procs && exec "$@"', str(docker_scope))
    url = f"http://{ALLOWED_V4}:80/"
    fetch = ("curl", "-sS", "--max-time", "3", url)
    assert lab.exec(lab.container, *in_scope, *fetch).stdout == "port 80\n"
    assert lab.exec(lab.container, *fetch).returncode in CUT, "not in the container's cgroup"
    assert lab.exec(lab.client, *in_scope, *fetch).stdout == "port 80\n", "host network"
    forwarded, host_network = (
        lab.wait_for_event(lambda e, where=where: e["event"]["action"] == "allow" and where(e))
        for where in (lambda e: from_container(e, CONTAINER_V4),
                      lambda e: "observer" not in e))
    for event in (forwarded, host_network):
        assert event["nfguard"]["client"] == "build-curl"
        assert event["container"] == {"id": container_id, "runtime": "docker",
                                      "name": "ci-build-17",
                                      "image": {"name": "nfguard-test/build:1",
                                                "hash": {"all": [IMAGE_ID]}}}
        assert event["process"]["executable"] == CURL
    outside = lab.wait_for_event(lambda e: from_container(e, CONTAINER_V4)
                                 and e["event"]["action"] == "deny")
    assert outside["event"]["reason"] == "no_client_match" and "container" not in outside


def test_a_kubernetes_pods_container_is_matched_by_its_name(
        lab: Lab, pod_scope: tuple[str, Path]) -> None:
    """A process in a pod container's cgroup, the container's OCI runtime config where its
    CRI runtime keeps it: curl there is allowed by a client of the pod's namespace and
    container name; the same curl outside the cgroup is not."""
    runtime, scope = pod_scope
    container_id = scope.name.split("-")[-1].removesuffix(".scope")
    image = {"name": "registry.test/ci/build:3"}
    if runtime == "containerd":
        config = lab.workdir / "containerd/io.containerd.runtime.v2.task/k8s.io" / \
            container_id / "config.json"
        spec = CONTAINERD_SPEC
    else:
        config = lab.workdir / "crio/overlay-containers" / container_id / \
            "userdata/config.json"
        spec = CRIO_SPEC
        storage_id = CRIO_SPEC["annotations"]["io.kubernetes.cri-o.ImageRef"]
        image["hash"] = {"all": [f"sha256:{storage_id}"]}
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps(spec))
    lab.add_container("docker0")
    lab.serve_http(80)
    start_with_curl_clients(lab, "pod-curl", 'container = "ci/runner-*/build"', containers={
        "containerd_state": str(lab.workdir / "containerd"),
        "crio_runroot": str(lab.workdir / "crio")})
    in_scope = ("sh", "-c", 'echo $$ > "$0"/cgroup.procs && exec "$@"', str(scope))
    fetch = ("curl", "-sS", "--max-time", "3", f"http://{ALLOWED_V4}:80/")
    assert lab.exec(lab.container, *in_scope, *fetch).stdout == "port 80\n"
    assert lab.exec(lab.container, *fetch).returncode in CUT, "not in the pod's cgroup"
    allowed = lab.wait_for_event(lambda e: from_container(e, CONTAINER_V4)
                                 and e["event"]["action"] == "allow")
    assert allowed["nfguard"]["client"] == "pod-curl"
    assert allowed["container"] == {"id": container_id, "runtime": runtime,
                                    "name": "ci/runner-7f9c/build", "image": image}
    denied = lab.wait_for_event(lambda e: from_container(e, CONTAINER_V4)
                                and e["event"]["action"] == "deny")
    assert denied["event"]["reason"] == "no_client_match" and "container" not in denied


def test_forwarded_traffic_is_left_alone_without_forward_from(lab: Lab) -> None:
    lab.add_container("docker0")
    lab.serve_http(80)
    config = lab.write_config(POLICY, forward_from=[])
    lab.start_engine(config)
    status = lab.nfguard("status", "--config", str(config)).stdout
    assert "forwarded:    left alone (engine.forward_from is empty)" in status
    assert lab.curl(OTHER_V4, 80, ns=lab.container) == (0, "port 80\n")
    code, _ = lab.curl(OTHER_V4, 80)
    assert code in CUT, "the host's own flows are still judged"
    lab.wait_for_event(lambda e: e["destination"]["ip"] == OTHER_V4)
    assert not [e for e in lab.audit_events() if from_container(e, CONTAINER_V4)]


def test_a_containers_dns_answers_teach_names(named: Lab) -> None:
    named.serve_dns(f"--host-record=allowed.test,{ALLOWED_V4}")
    named.add_container("docker0")
    by_name = POLICY.replace(f'"{ALLOWED_V4}", "{ALLOWED_V6}", ', "")
    assert by_name != POLICY
    named.start_engine(named.write_config(by_name))

    def fetch() -> tuple[int, str]:
        done = named.exec(named.container, "curl", "-sS", "--max-time", "3", "--resolve",
                          f"allowed.test:80:{ALLOWED_V4}", "http://allowed.test/")
        return done.returncode, done.stdout

    assert fetch()[0] in CUT, "anti-fronting: the name does not resolve there (yet)"
    # No name of the address could allow it yet: denied on its SYN, before any name.
    named.wait_for_event(lambda e: e["destination"]["ip"] == ALLOWED_V4
                         and e["event"]["action"] == "deny")
    assert named.dig("allowed.test", ns=named.container) == [ALLOWED_V4]
    assert fetch() == (0, "port 80\n"), "the forwarded answer taught the name"
    event = named.wait_for_event(lambda e: from_container(e, CONTAINER_V4)
                                 and e["event"]["action"] == "allow"
                                 and e["destination"]["port"] == 80)
    assert event["destination"]["domain"] == "allowed.test"
    assert event["rule"]["name"] == "web/server"


@pytest.mark.parametrize("sender", ["host", "container"])
def test_the_hosts_own_iptables_rules_still_apply(lab: Lab, sender: str) -> None:
    """A queued packet's accept ends only the chain that queued it: another firewall's
    drop (Docker's isolation, ufw) after nfguard's allow still holds, for the first
    packet of a flow too (one datagram is all a UDP sender needs)."""
    lab.add_container("docker0")
    for address in (ALLOWED_V4, OTHER_V4):
        lab.serve_udp_echo(address, 7777)
    chain, ns = ("OUTPUT", None) if sender == "host" else ("FORWARD", lab.container)
    # there before nfguard, as Docker's and ufw's rules are
    lab.exec(lab.client, "iptables", "-w", "-A", chain, "-d", OTHER_V4, "-p", "udp",
             "--dport", "7777", "-j", "DROP", check=True)
    lab.start_engine(lab.write_config(f"""
        [[client]]
        name = "everyone"
        policies = ["echo"]

        [[policy]]
        name = "echo"

        [[policy.rule]]
        action = "allow"
        to = ["{ALLOWED_V4}", "{OTHER_V4}"]
        ports = [7777]
    """))
    assert lab.udp_echo(ALLOWED_V4, 7777, ns=ns) == "ok"
    # dropped: the host's own sender may hear EPERM ("refused": a drop before the queue,
    # on the xt path), otherwise nothing comes back
    assert lab.udp_echo(OTHER_V4, 7777, ns=ns) in ("refused", "timeout"), "the drop holds"
