"""Containers: the id in a process's cgroup, the name and image from the runtime's state,
and what a policy's `container` and `image` keys make of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfguard.audit import audit_event, text_line
from nfguard.config import ContainersConfig
from nfguard.engine import Decision
from nfguard.policy.clients import client_matches
from nfguard.policy.load import PolicyError, parse_policy_texts
from nfguard.procs import ProcessInfo
from nfguard.procs.containers import (
    CONTAINERD_ANNOTATIONS,
    CRIO_ANNOTATIONS,
    RETRY,
    Container,
    Containers,
    container_in,
    docker_identity,
    image_id,
    pod_identity,
    podman_identity,
)

ID = "4f1d2c7b9e0a" + "5" * 52
OTHER_ID = "a" * 64


@pytest.mark.parametrize(("cgroup", "found"), [
    (f"/system.slice/docker-{ID}.scope", ("docker", ID)),
    (f"/docker/{ID}", ("docker", ID)),  # cgroupfs driver
    (f"/system.slice/docker-{ID}.scope/init.scope", ("docker", ID)),  # systemd inside
    (f"/system.slice/docker-{ID}.scope/docker/{OTHER_ID}", ("docker", ID)),  # outermost
    (f"/machine.slice/libpod-{ID}.scope/container", ("podman", ID)),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/"
     f"cri-containerd-{ID}.scope", ("containerd", ID)),
    (f"/kubepods.slice/crio-{ID}.scope", ("cri-o", ID)),
    (f"/machine.slice/libpod-conmon-{ID}.scope", None),  # podman's monitor, on the host
    ("/system.slice/docker.service", None),  # dockerd itself
    ("/user.slice/user-1000.slice/session-2.scope", None),
    (f"/system.slice/docker-{ID[:12]}.scope", None),
    (f"/system.slice/mydocker-{ID}.scope", None),
])
def test_the_container_id_in_a_cgroup_path(cgroup: str, found: tuple[str, str] | None) -> None:
    assert container_in(cgroup) == found


@given(st.text())
def test_any_cgroup_path_gives_a_known_runtime_and_a_full_id_or_nothing(path: str) -> None:
    found = container_in(path)
    if found is not None:
        assert found[0] in {"docker", "podman", "containerd", "cri-o"} and len(found[1]) == 64


DOCKER_STATE = {"ID": ID, "Name": "/ci-build-17", "Image": "sha256:" + "b" * 64,
                "Config": {"Image": "python:3.12-slim", "Labels": {}}, "State": {"Pid": 4242}}
PODMAN_RECORDS = [
    {"id": OTHER_ID, "names": ["other"], "metadata": "{}"},
    {"id": ID, "names": ["web"], "image": "c" * 64, "metadata": json.dumps(
        {"image-name": "docker.io/library/nginx:1.27", "name": "web", "created-at": 1})},
]


def test_names_and_images_from_the_runtimes_state() -> None:
    assert docker_identity(json.dumps(DOCKER_STATE)) == (
        "ci-build-17", "python:3.12-slim", "sha256:" + "b" * 64)
    assert docker_identity("{}") == (None, None, None)
    assert docker_identity('{"Name": 3, "Config": [], "Image": "sha256:b"}') == (
        None, None, None)
    assert podman_identity(json.dumps(PODMAN_RECORDS), ID) == (
        "web", "docker.io/library/nginx:1.27", "sha256:" + "c" * 64)
    assert podman_identity(json.dumps(PODMAN_RECORDS), OTHER_ID) == ("other", None, None)
    assert podman_identity(json.dumps(PODMAN_RECORDS), "d" * 64) is None
    with pytest.raises(ValueError):
        docker_identity("{not json")


CONTAINERD_SPEC = {"ociVersion": "1.1.0", "annotations": {
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.sandbox-namespace": "ci", "io.kubernetes.cri.sandbox-name": "runner-7f9c",
    "io.kubernetes.cri.container-name": "build",
    "io.kubernetes.cri.image-name": "registry.test/ci/build:3"}}
CRIO_SPEC = {"ociVersion": "1.0.2", "annotations": {
    "io.kubernetes.pod.namespace": "ci", "io.kubernetes.pod.name": "runner-7f9c",
    "io.kubernetes.container.name": "build",
    "io.kubernetes.cri-o.ImageName": "registry.test/ci/build:3",
    "io.kubernetes.cri-o.ImageRef": "d" * 64}}


def test_a_pods_container_is_named_from_its_runtime_config_annotations() -> None:
    pod = ("ci/runner-7f9c/build", "registry.test/ci/build:3")
    assert pod_identity(json.dumps(CONTAINERD_SPEC), CONTAINERD_ANNOTATIONS) == (*pod, None)
    assert pod_identity(json.dumps(CRIO_SPEC), CRIO_ANNOTATIONS) == (*pod, "sha256:" + "d" * 64)
    digest_ref = {"annotations": {**CRIO_SPEC["annotations"],
                                  "io.kubernetes.cri-o.ImageRef": "registry.test/ci@sha256:"
                                  + "e" * 64}}
    assert pod_identity(json.dumps(digest_ref), CRIO_ANNOTATIONS) == (*pod, None), \
        "a manifest digest is not the image's id"
    assert pod_identity(json.dumps(CRIO_SPEC), CONTAINERD_ANNOTATIONS) == (None, None, None)
    sandbox = {"annotations": {k: v for k, v in CONTAINERD_SPEC["annotations"].items()
                               if k != "io.kubernetes.cri.container-name"}}
    assert pod_identity(json.dumps(sandbox), CONTAINERD_ANNOTATIONS)[0] == "ci/runner-7f9c"
    no_namespace = {"annotations": {"io.kubernetes.pod.name": "runner-7f9c",
                                    "io.kubernetes.container.name": "build"}}
    assert pod_identity(json.dumps(no_namespace), CRIO_ANNOTATIONS) == (None, None, None)
    for odd in ("[]", '{"annotations": []}', '{"annotations": {"io.kubernetes.pod.name": 7}}'):
        assert pod_identity(odd, CRIO_ANNOTATIONS) == (None, None, None)
    with pytest.raises(ValueError):
        pod_identity("{not json", CRIO_ANNOTATIONS)


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(value))


def test_a_pods_container_is_found_in_its_runtimes_state(tmp_path: Path) -> None:
    """containerd's task bundle in whichever containerd namespace holds it, CRI-O's
    userdata; until the config is there, the container is known by id and looked up again."""
    now = [0.0]
    settings = ContainersConfig(containerd_state=str(tmp_path / "containerd"),
                                crio_runroot=str(tmp_path / "crio"))
    containers = Containers(settings, clock=lambda: now[0])
    tasks = tmp_path / "containerd" / "io.containerd.runtime.v2.task"
    write_json(tasks / "moby" / OTHER_ID / "config.json", {"annotations": {}})
    write_json(tasks / "k8s.io" / ID / "config.json", CONTAINERD_SPEC)
    build = ("ci/runner-7f9c/build", "registry.test/ci/build:3")
    assert containers.of(f"/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope") \
        == Container("containerd", ID, *build)
    crio = f"/kubepods.slice/crio-{ID}.scope"
    assert containers.of(crio) == Container("cri-o", ID)
    write_json(tmp_path / "crio" / "overlay-containers" / ID / "userdata" / "config.json",
               CRIO_SPEC)
    now[0] += RETRY
    assert containers.of(crio) == Container("cri-o", ID, *build, "sha256:" + "d" * 64)
    assert containers.of(f"/kubepods.slice/cri-containerd-{'e' * 64}.scope") == Container(
        "containerd", "e" * 64), "no task of that id in any containerd namespace"


def docker_root(tmp_path: Path, container_id: str, state: dict) -> Path:
    directory = tmp_path / "docker" / "containers" / container_id
    directory.mkdir(parents=True)
    (directory / "config.v2.json").write_text(json.dumps(state))
    return tmp_path / "docker"


def test_a_containers_identity_is_read_once_and_a_missing_one_again_later(
        tmp_path: Path) -> None:
    now = [100.0]
    root = docker_root(tmp_path, ID, DOCKER_STATE)
    containers = Containers(ContainersConfig(docker_root=str(root)), clock=lambda: now[0])
    cgroup = f"/system.slice/docker-{ID}.scope"
    build = Container("docker", ID, "ci-build-17", "python:3.12-slim", "sha256:" + "b" * 64)
    assert containers.of(cgroup) == build
    (root / "containers" / ID / "config.v2.json").unlink()
    assert containers.of(cgroup) == build

    late = f"/system.slice/docker-{OTHER_ID}.scope"
    assert containers.of(late) == Container("docker", OTHER_ID)  # state not there (yet)
    docker_root(tmp_path, OTHER_ID, {**DOCKER_STATE, "Name": "/late"})
    assert containers.of(late) == Container("docker", OTHER_ID), "not read again at once"
    now[0] += RETRY
    assert containers.of(late).name == "late"  # type: ignore[union-attr]

    assert containers.of("/system.slice/ssh.service") is None
    assert containers.of(None) is None
    assert containers.of(f"/kubepods.slice/crio-{ID}.scope") == Container("cri-o", ID)


POLICY = """\
[[client]]
name = "host-curl"
match = { exe = "/usr/bin/curl" }
policies = ["p"]

[[client]]
name = "python-builds"
match = { image = "python:3.*", exe = "/usr/bin/curl" }
policies = ["p"]

[[client]]
name = "ci"
match = { container = "ci-*" }
policies = ["p"]

[[client]]
name = "by-cgroup"
match = { cgroup = "/system.slice", exe = "/usr/bin/wget" }
policies = ["p"]

[[policy]]
name = "p"

[[policy.rule]]
name = "r"
action = "allow"
"""


def first_client(process: ProcessInfo) -> str | None:
    clients = parse_policy_texts([("p.toml", POLICY)]).clients
    return next((c.name for c in clients if client_matches(c, process)), None)


def test_container_and_image_keys_and_where_a_containers_process_is_matched() -> None:
    python = Container("docker", ID, "ci-build-17", "python:3.12-slim")
    curl = ProcessInfo(uid=0, exe="/usr/bin/curl", cgroup=f"/system.slice/docker-{ID}.scope")
    assert first_client(curl) == "host-curl", "not in a container: the host's own curl"
    assert first_client(curl._replace(container=python)) == "python-builds", \
        "a container's curl matches no exe-only client, even on the host's network"
    assert first_client(curl._replace(container=python, interface="docker0")) == \
        "python-builds"
    node = Container("docker", ID, "ci-build-17", "node:22")
    assert first_client(curl._replace(container=node)) == "ci"
    assert first_client(curl._replace(container=node._replace(name="web"))) is None
    assert first_client(curl._replace(container=Container("docker", ID))) is None, \
        "a container known by id alone has no name or image to match"
    wget = ProcessInfo(exe="/usr/bin/wget", cgroup=f"/system.slice/docker-{ID}.scope",
                       container=Container("docker", ID))
    assert first_client(wget) == "by-cgroup", "a cgroup prefix also says where it runs"


def test_the_audit_event_names_the_container() -> None:
    decision = Decision("allow", "allow", "enforce", "rule_match", "cidr", "ci", "p/r")
    process = ProcessInfo(uid=0, pid=7, exe="/usr/bin/curl",
                          container=Container("docker", ID, "ci-build-17", "python:3.12"))
    event = audit_event(decision, None, 1_700_000_000.0, process)
    assert event["container"] == {"id": ID, "runtime": "docker", "name": "ci-build-17",
                                  "image": {"name": "python:3.12"}}
    pinned = audit_event(decision, None, 1_700_000_000.0, process._replace(
        container=Container("podman", ID, None, None, "sha256:" + "c" * 64)))
    assert pinned["container"] == {"id": ID, "runtime": "podman",
                                   "image": {"hash": {"all": ["sha256:" + "c" * 64]}}}
    assert "exe=/usr/bin/curl container=ci-build-17 " in text_line(event)
    unnamed = audit_event(decision, None, 1_700_000_000.0,
                          process._replace(container=Container("cri-o", ID)))
    assert unnamed["container"] == {"id": ID, "runtime": "cri-o"}
    assert f"container={ID[:12]} " in text_line(unnamed)


@pytest.mark.parametrize(("value", "expected"), [
    ("sha256:" + "a" * 64, "sha256:" + "a" * 64),
    ("a" * 64, "sha256:" + "a" * 64),  # Podman's storage writes it bare
    ("sha256:" + "A" * 64, None), ("sha256:" + "a" * 63, None), ("sha512:" + "a" * 64, None),
    ("", None), (None, None), (7, None),
])
def test_an_image_id_is_a_sha256_digest_or_nothing(value: object, expected: str | None) -> None:
    assert image_id(value) == expected


BY_ID = """\
[[client]]
name = "pinned"
match = { image = "SHA256:%s" }
policies = ["p"]

[[client]]
name = "pinned-prefix"
match = { image = "sha256:%s*" }
policies = ["p"]

[[policy]]
name = "p"
"""


def test_an_image_key_of_sha256_digits_matches_the_image_id_not_the_reference() -> None:
    digest = "b" * 64
    clients = parse_policy_texts([("p.toml", BY_ID % (digest, "d" * 12))]).clients
    assert clients[0].match == (("image", f"sha256:{digest}"),), "lower-cased"

    def matching(container: Container) -> list[str]:
        process = ProcessInfo(uid=0, exe="/usr/bin/curl", container=container)
        return [c.name for c in clients if client_matches(c, process)]

    pinned = Container("docker", ID, "build", "python:3.12", f"sha256:{digest}")
    assert matching(pinned) == ["pinned"]
    assert matching(pinned._replace(image_id="sha256:" + "d" * 64)) == ["pinned-prefix"]
    assert matching(pinned._replace(image_id=None)) == [], "an unknown id matches no id"
    assert matching(pinned._replace(image=f"sha256:{digest}", image_id=None)) == [], \
        "a reference spelled like an id is not the image's id"


@pytest.mark.parametrize("image", ["sha256:xyz", "sha256:", "sha256:" + "a" * 65,
                                   "sha256:ab*cd"])
def test_an_image_id_that_cannot_be_one_is_an_error_with_its_line(image: str) -> None:
    text = BY_ID.replace('"SHA256:%s"', f'"{image}"') % "d"
    with pytest.raises(PolicyError) as error:
        parse_policy_texts([("p.toml", text)])
    assert "p.toml:3" in str(error.value) and "match.image by id" in str(error.value)
